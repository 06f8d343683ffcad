"""Is training bound by the input pipeline or by the training step?

For one model and batch size, times in one run:

- `step`: `fit` on one batch held as tensors (`Dataset.from_tensors(...)
  .repeat()`), the training step alone: forward, backward and update;
- `pipeline`: iterating the recipes' input pipeline without training: the
  in-memory images shuffled and batched (`kerastrain.data.load`, which decodes
  every JPEG once, up front), then the augmentation (`--augment`) and
  prefetch, exactly as `recipes.train` feeds `fit`;
- `fit`: `fit` on that pipeline, what a recipe runs.

Each is measured after a warm-up (tracing, first batches), as images per
second. The pipeline is the bottleneck when it delivers fewer images per
second than the step consumes: then `fit` runs at the pipeline's rate and an
accelerator waits. The one-off decode of the files is reported too
(`decode`). The `fit`/`step` ratio says how much of the step's rate a recipe
gets (1.0: none lost to the input).

Writes `results/step_rate.json` and `results/step_rate.md` (one row per
device and setting: runs on other machines add their rows).

Run here (CPU), or unchanged on a GPU machine:

    python -m benchmarks.step_rate
    python -m benchmarks.step_rate --architecture=MobileNetV3Small --batch_size=256 \\
        --mixed_precision --data=folder:PATH/cifar10-bench
"""

import json
import os
import pathlib
import platform
import time

import keras
import tensorflow as tf
from absl import app, flags

import kerastrain as kt

flags.DEFINE_string("data", "cifar10_mini", "Data spec (kerastrain.data.load).")
flags.DEFINE_string("architecture", "MobileNetV3Small",
                    "small_cnn or a keras.applications name (weights=None).")
flags.DEFINE_integer("batch_size", 64, "Images per step (global batch).")
flags.DEFINE_integer("steps", 40, "Timed steps per measurement.")
flags.DEFINE_integer("warmup_steps", 5, "Untimed steps before each measurement.")
flags.DEFINE_enum("augment", "standard", list(kt.augment.POLICIES), "Augmentation policy.")
flags.DEFINE_bool("mixed_precision", False, "Build the model under mixed precision "
                  "(mixed_float16; mixed_bfloat16 on TPU).")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                  "Keras compile's jit_compile.")
flags.DEFINE_string("output_dir", str(pathlib.Path(__file__).parent / "results"),
                    "Where results go.")
FLAGS = flags.FLAGS


class _StepTimer(keras.callbacks.Callback):
    """Wall time of the batches after the warm-up ones."""

    def __init__(self, warmup):
        super().__init__()
        self.warmup, self.start, self.seconds = warmup, None, None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


def _model(num_classes, image_shape):
    policy = kt.distribute.mixed_precision_policy() if FLAGS.mixed_precision else None
    with kt.distribute.dtype_policy(policy):
        if FLAGS.architecture == "small_cnn":
            model = kt.models.small_cnn(num_classes, input_shape=image_shape)
        else:
            model = kt.transfer.scratch_classifier(FLAGS.architecture, num_classes,
                                                   image_shape, seed=0)
    jit = {"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile]
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    return model


def _fit_rate(model, dataset):
    """Images per second of `fit` on `dataset` (steps after the warm-up)."""
    timer = _StepTimer(FLAGS.warmup_steps)
    model.fit(dataset, epochs=1, steps_per_epoch=FLAGS.warmup_steps + FLAGS.steps,
              callbacks=[timer], verbose=0)
    return FLAGS.steps * FLAGS.batch_size / timer.seconds


def _pipeline_rate(dataset):
    """Images per second the pipeline delivers alone."""
    iterator = iter(dataset)
    for _ in range(FLAGS.warmup_steps):
        next(iterator)
    start = time.perf_counter()
    images = 0
    for _ in range(FLAGS.steps):
        x, _ = next(iterator)
        images += int(x.shape[0])
    return images / (time.perf_counter() - start)


def _measure():
    start = time.perf_counter()
    data = kt.data.load(FLAGS.data, batch_size=FLAGS.batch_size, validation_fraction=0.0,
                        seed=0)
    decode = (data.num_train + data.num_test) / (time.perf_counter() - start)
    augmentation = kt.augment.Augmentation.from_policy(FLAGS.augment, seed=0)
    pipeline = augmentation.apply(data.train).repeat()
    model = _model(data.num_classes, data.image_shape)
    x, y = next(iter(pipeline))
    cached = tf.data.Dataset.from_tensors((x, y)).repeat()
    rates = {"step": _fit_rate(model, cached), "pipeline": _pipeline_rate(pipeline),
             "fit": _fit_rate(model, pipeline), "decode": decode}
    bottleneck = "input pipeline" if rates["pipeline"] < rates["step"] else "training step"
    gpus = tf.config.list_physical_devices("GPU")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
              if gpus else f"CPU ({platform.processor() or platform.machine()}, "
                           f"{len(os.sched_getaffinity(0))} cores)")
    return {"device": device, "architecture": FLAGS.architecture,
            "batch_size": FLAGS.batch_size, "augment": FLAGS.augment,
            "dtype_policy": keras.config.dtype_policy().name if not FLAGS.mixed_precision
            else kt.distribute.mixed_precision_policy(),
            "jit_compile": bool(model.jit_compile),
            "images_per_second": {k: round(v, 1) for k, v in rates.items()},
            "fit_over_step": round(rates["fit"] / rates["step"], 3),
            "pipeline_over_step": round(rates["pipeline"] / rates["step"], 3),
            "bottleneck": bottleneck}


def _write(result, output_dir):
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "step_rate.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    key = ("device", "architecture", "batch_size", "augment", "dtype_policy", "jit_compile")
    rows = [r for r in rows if tuple(r[k] for k in key) != tuple(result[k] for k in key)]
    rows.append(result)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Training step vs input pipeline (images per second)", "",
             "`python -m benchmarks.step_rate` (see its docstring). step: `fit` on one "
             "cached batch; pipeline: the recipes' input pipeline alone; fit: `fit` on "
             "it; decode: the one-off JPEG decode of `kerastrain.data.load`.", "",
             "| device | model | batch | policy | XLA | step | pipeline | fit | fit/step "
             "| decode | bottleneck |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["images_per_second"]
        lines.append(f"| {r['device']} | {r['architecture']} | {r['batch_size']} | "
                     f"{r['dtype_policy']} | {r['jit_compile']} | {s['step']:.0f} | "
                     f"{s['pipeline']:.0f} | {s['fit']:.0f} | {r['fit_over_step']:.2f} | "
                     f"{s['decode']:.0f} | {r['bottleneck']} |")
    (output_dir / "step_rate.md").write_text("\n".join(lines) + "\n")


def main(argv):
    del argv
    result = _measure()
    _write(result, FLAGS.output_dir)
    s = result["images_per_second"]
    print(f"{result['device']}, {result['architecture']}, batch {result['batch_size']}, "
          f"{result['dtype_policy']}, XLA {result['jit_compile']}: training step "
          f"{s['step']:.0f} img/s, input pipeline {s['pipeline']:.0f} img/s, fit "
          f"{s['fit']:.0f} img/s (fit/step {result['fit_over_step']:.2f}); the "
          f"bottleneck is the {result['bottleneck']}.")


if __name__ == "__main__":
    app.run(main)
