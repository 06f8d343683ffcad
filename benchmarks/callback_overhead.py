"""Epoch-time overhead of the weight-averaging, snapshot and LR-logging callbacks.

Trains the same small CNN on the embedded `cifar10_mini` train split with
the same optimizer (SGD with momentum on a `WarmRestarts` schedule whose
cycle lasts one epoch) under four callback settings:

- `plain`: no callback,
- `swa`: `StochasticWeightAveraging(start_epoch=0, swa_learning_rate=...,
  state_path=...)`, which averages at every epoch end and writes its
  resumable state atomically each time (the most work it ever does per
  epoch),
- `snapshot`: `SnapshotEnsemble(schedule=...)`, which saves a `.keras` file
  and rewrites its manifest at every epoch end (one cycle per epoch; Huang et
  al. use cycles of 40 epochs and more),
- `swa+snapshot`: both,
- `lr_logger`: `LearningRateLogger()`, which keeps each step's counter and
  rate as tensors and converts them once per epoch,
- `lr_logger_host_read`: the same record made the direct way, copying the
  step counter and the rate to the host at every step (`float(...)`), the
  reference the logger is measured against (on an accelerator each such
  copy waits for the step to finish).

An epoch's time runs from the end of the previous epoch to the end of this
one, callbacks included; the first epoch of every run (tracing) is left out,
and so is the one-off BatchNorm pass of SWA at the end of training, which is
reported separately. Runs are interleaved across settings so that load from
other processes hits all of them alike; the ratios compare median epoch
times (wall clock, and CPU time of all threads). On a loaded machine epoch
times of runs vary by more than the overhead, so the time spent inside the
timed callbacks' hooks is also measured directly: the hook ratio
`1 + hook seconds per epoch / plain epoch seconds` is the steadier estimate.
Target: ratio <= 1.05.

Writes `results/callback_overhead.json` and `results/callback_overhead.md`.

Run:

    python -m benchmarks.callback_overhead --epochs=4 --repeats=3
"""

import json
import os
import pathlib
import platform
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from kerastrain import callbacks, data, models, schedules

flags.DEFINE_integer("width", 16, "Filters of the first block of `models.small_cnn`.")
flags.DEFINE_integer("blocks", 2, "Blocks of `models.small_cnn`.")
flags.DEFINE_integer("batch_size", 64, "Images per batch.")
flags.DEFINE_integer("epochs", 4, "Epochs per run; the first is not timed.")
flags.DEFINE_integer("repeats", 3, "Runs per setting, interleaved.")
flags.DEFINE_string("output_dir", str(pathlib.Path(__file__).parent / "results"),
                    "Where results go.")
FLAGS = flags.FLAGS

SETTINGS = ("plain", "swa", "snapshot", "swa+snapshot", "lr_logger", "lr_logger_host_read")
TARGET = 1.05
_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end")


class _HostReadLogger(keras.callbacks.Callback):
    """Records every step's rate by reading it to the host at once."""

    def on_train_begin(self, logs=None):
        self.steps, self.rates = [], []

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        step = int(optimizer.iterations.numpy()) - 1
        self.steps.append(step)
        self.rates.append(float(optimizer._learning_rate(step)))


class _EpochClock(keras.callbacks.Callback):
    """Wall and CPU clock at every epoch end and at the end of training.

    Placed last, so that its hooks run after those of the timed callbacks.
    """

    def __init__(self, timed):
        super().__init__()
        self.hook_seconds = 0.0
        for callback in timed:
            for hook in _HOOKS:
                method = getattr(callback, hook)
                if not getattr(method, "_is_default", False):  # overridden
                    setattr(callback, hook, self._timed(method))

    def _timed(self, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.hook_seconds += time.perf_counter() - start
        return timed

    def on_train_begin(self, logs=None):
        self.epoch_ends, self.epoch_hook_seconds, self.train_end = [], [], None

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append((time.perf_counter(), time.process_time()))
        self.epoch_hook_seconds.append(self.hook_seconds)

    def on_train_end(self, logs=None):
        self.train_end = (time.perf_counter(), time.process_time())


def _run(setting, train, steps, workdir):
    keras.utils.set_random_seed(0)
    model = models.small_cnn(10, width=FLAGS.width, blocks=FLAGS.blocks)
    schedule = schedules.WarmRestarts(0.05, first_cycle_steps=steps, t_mul=1.0)
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    used = []
    if "swa" in setting:
        used.append(callbacks.StochasticWeightAveraging(
            start_epoch=0, swa_learning_rate=0.02, bn_update_data=train,
            state_path=os.path.join(workdir, "swa_state.npz")))
    if "snapshot" in setting:
        used.append(callbacks.SnapshotEnsemble(os.path.join(workdir, "snapshots"),
                                               schedule=schedule))
    if setting == "lr_logger":
        used.append(callbacks.LearningRateLogger())
    if setting == "lr_logger_host_read":
        used.append(_HostReadLogger())
    clock = _EpochClock(used)
    model.fit(train, epochs=FLAGS.epochs, verbose=0, callbacks=used + [clock])
    ends = np.array(clock.epoch_ends)
    epochs = np.diff(ends, axis=0)  # epochs 1.., from one epoch end to the next
    hooks = np.diff(clock.epoch_hook_seconds)
    one_off = np.array(clock.train_end) - ends[-1]
    return epochs[:, 0].tolist(), epochs[:, 1].tolist(), hooks.tolist(), float(one_off[0])


def _write(results, output_dir):
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "callback_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    s, m = results["settings"], results["machine"]
    lines = [
        "# Callback overhead: epoch time with SWA / snapshot / LR-logging callbacks vs "
        "without",
        "",
        f"`small_cnn(width={s['width']}, blocks={s['blocks']})` on cifar10_mini "
        f"({s['train_images']} train images, batch {s['batch_size']}, "
        f"{s['steps_per_epoch']} steps per epoch), {s['timed_epochs_per_run']} timed "
        f"epochs per run, {s['repeats']} interleaved runs per setting; "
        f"{m['usable_cpus']} usable CPUs, TensorFlow {m['tensorflow']}, Keras "
        f"{m['keras']}; load average {m['load_average_before'][0]:.1f} before, "
        f"{m['load_average_after'][0]:.1f} after.",
        "",
        "| setting | median epoch s (min-max) | median CPU s | ratio (wall) | ratio (CPU) | "
        "hook s per epoch | hook ratio | one-off end-of-training s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in SETTINGS:
        epochs = results["epoch_seconds"][name]
        lines.append(
            f"| {name} | {results['median_epoch_seconds'][name]:.3f} "
            f"({min(epochs):.2f}-{max(epochs):.2f}) | "
            f"{results['median_epoch_cpu_seconds'][name]:.3f} | "
            f"{results['ratios'][name]:.3f} | {results['cpu_ratios'][name]:.3f} | "
            f"{results['median_hook_seconds_per_epoch'][name]:.4f} | "
            f"{results['hook_ratios'][name]:.3f} | "
            f"{results['median_end_of_training_seconds'][name]:.2f} |")
    lines += ["", f"Target: ratio <= {TARGET}. The hook ratio adds the time measured inside "
              "the callbacks' hooks to the plain epoch time; the wall and CPU ratios compare "
              "whole epochs of different runs and, on a loaded machine, carry the run-to-run "
              "spread shown in the first column. The one-off column is the time from the "
              "last epoch end to the end of `fit`: for SWA, swapping the average in and "
              "the BatchNorm pass over the training set (not part of the ratios)."]
    (output_dir / "callback_overhead.md").write_text("\n".join(lines) + "\n")


def main(argv):
    del argv
    if FLAGS.epochs < 2:
        raise app.UsageError("--epochs must be >= 2: the first epoch is not timed.")
    load_before = os.getloadavg()
    splits = data.load("cifar10_mini", batch_size=FLAGS.batch_size, validation_fraction=0.0)
    train = splits.train
    steps = int(train.cardinality())
    wall = {name: [] for name in SETTINGS}
    cpu = {name: [] for name in SETTINGS}
    hooks = {name: [] for name in SETTINGS}
    one_off = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(FLAGS.repeats):
            for name in SETTINGS:
                run_dir = tempfile.mkdtemp(dir=workdir)
                w, c, h, o = _run(name, train, steps, run_dir)
                wall[name] += w
                cpu[name] += c
                hooks[name] += h
                one_off[name].append(o)
                print(f"{name}: epochs {np.round(w, 3).tolist()} s, hooks "
                      f"{np.round(h, 4).tolist()} s, end of training {o:.2f} s")
    median = {name: float(np.median(v)) for name, v in wall.items()}
    median_cpu = {name: float(np.median(v)) for name, v in cpu.items()}
    median_hooks = {name: float(np.median(v)) for name, v in hooks.items()}
    results = {
        "median_epoch_seconds": median,
        "median_epoch_cpu_seconds": median_cpu,
        "ratios": {name: median[name] / median["plain"] for name in SETTINGS},
        "cpu_ratios": {name: median_cpu[name] / median_cpu["plain"] for name in SETTINGS},
        "median_hook_seconds_per_epoch": median_hooks,
        "hook_ratios": {n: 1.0 + median_hooks[n] / median["plain"] for n in SETTINGS},
        "median_end_of_training_seconds": {n: float(np.median(v)) for n, v in one_off.items()},
        "epoch_seconds": wall,
        "epoch_cpu_seconds": cpu,
        "hook_seconds_per_epoch": hooks,
        "target_ratio": TARGET,
        "settings": {"width": FLAGS.width, "blocks": FLAGS.blocks,
                     "batch_size": FLAGS.batch_size, "epochs": FLAGS.epochs,
                     "timed_epochs_per_run": FLAGS.epochs - 1, "repeats": FLAGS.repeats,
                     "train_images": splits.num_train, "steps_per_epoch": steps},
        "machine": {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "gpus": len(tf.config.list_physical_devices("GPU")),
                    "load_average_before": list(load_before),
                    "load_average_after": list(os.getloadavg()),
                    "tensorflow": tf.__version__, "keras": keras.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
    }
    _write(results, FLAGS.output_dir)
    print((pathlib.Path(FLAGS.output_dir) / "callback_overhead.md").read_text())


if __name__ == "__main__":
    app.run(main)
