"""Snapshot ensembles (Huang et al., 2017) as a Keras callback."""

import os
import re

import keras

from kerastrain import _checks, _introspect, _io, _manifest
from kerastrain.schedules import cycle_end_steps as _cycle_end_steps

_SNAPSHOT = re.compile(r"snapshot_\d+\.keras$")
# The temporaries `_io.atomic_write` leaves when a save of ours is interrupted.
_TEMPORARY = re.compile(r"\.tmp-.*-(snapshot_\d+\.keras|%s)$" % re.escape(_manifest.NAME))
_LRS = keras.optimizers.schedules.LearningRateSchedule


class SnapshotEnsemble(keras.callbacks.Callback):
    """Saves the model at the end of every learning-rate cycle.

    Huang et al., "Snapshot Ensembles: Train 1, get M for free" (ICLR 2017):
    with a cyclic schedule such as warm restarts, the model at each cycle's
    learning-rate minimum is a different good solution, and averaging the M
    snapshots' predictions (`kerastrain.ensemble.Ensemble.from_directory`)
    beats the last one. Keras' `ModelCheckpoint` saves per epoch or every N
    batches, not at the (possibly mid-epoch, unevenly spaced) cycle ends, and
    keeps no record of which file belongs to which cycle.

    Cycle `i` (1-based) is saved as `directory/snapshot_{i:02d}.keras`, written
    to a temporary file and renamed, so an interrupted save leaves no partial
    file. `directory/manifest.json` (rewritten atomically) lists the kept
    snapshots in order: `{"version": 1, "snapshots": [{"index", "file",
    "epoch", "step", "learning_rate", "metrics"}, ...]}`, where `index` is
    the 1-based cycle, `epoch` the 0-based epoch,
    `step` the index of the last optimizer step before the save and
    `learning_rate` the rate of that step. `metrics` holds the epoch's logs
    (validation included) when the cycle ends on an epoch's last batch, and
    the running training metrics of the epoch so far when it ends mid-epoch.

    Steps are counted by `optimizer.iterations`, so a run resumed by
    `keras.callbacks.BackupAndRestore` saves the remaining cycles: snapshots
    the resumed run will train again are dropped, as are stray files left by
    a crash. A run that starts at step 0 clears earlier snapshots from
    `directory`. Only the callback's own files are ever deleted (snapshots
    in a directory with its manifest, and its interrupted temporaries): a
    directory holding `snapshot_NN.keras` files but no manifest is refused,
    and other files are left alone. With `steps_per_execution > 1`, a
    snapshot is taken at the end of the execution that contains the cycle's
    last step.

    Args:
        directory: where snapshots and the manifest go (created if needed).
        schedule: the optimizer's cyclic learning-rate schedule (anything
            `kerastrain.schedules.cycle_end_steps` knows: `WarmRestarts`,
            `CyclicalLearningRate`, a `Warmup` around one, Keras'
            `CosineDecayRestarts`); its cycles within
            `epochs * steps_per_epoch` steps are saved. Training refuses to
            start when the optimizer runs another rate, whose cycles these
            are not.
        cycle_end_steps: alternatively, the 0-based indices of the last step
            of each cycle (increasing).
        cycle_end_epochs: alternatively, the 0-based epochs after which to
            save (increasing). Give exactly one of the three.
        keep: keep only the last `keep` snapshots. Defaults to `None` (all).
        verbose: 1 prints a line per snapshot. Defaults to 0.

    Example:

    >>> schedule = kerastrain.schedules.WarmRestarts(0.1, 5 * steps, t_mul=1.0)
    >>> model.compile(keras.optimizers.SGD(schedule, momentum=0.9), ...)
    >>> model.fit(data.train, epochs=20, callbacks=[
    ...     SnapshotEnsemble("snapshots", schedule=schedule)])
    >>> ensemble = kerastrain.ensemble.Ensemble.from_directory("snapshots")
    """

    def __init__(self, directory, schedule=None, cycle_end_steps=None,
                 cycle_end_epochs=None, keep=None, verbose=0):
        super().__init__()
        given = [n for n, v in (("schedule", schedule), ("cycle_end_steps", cycle_end_steps),
                                ("cycle_end_epochs", cycle_end_epochs)) if v is not None]
        if len(given) != 1:
            raise ValueError("Pass exactly one of `schedule`, `cycle_end_steps` and "
                             f"`cycle_end_epochs`, received {given or 'none'}.")
        if schedule is not None:
            _cycle_end_steps(schedule, 1)  # raises for a schedule without cycles
        for name, ends in (("cycle_end_steps", cycle_end_steps),
                           ("cycle_end_epochs", cycle_end_epochs)):
            if ends is not None and not _increasing_indices(ends):
                raise ValueError(f"Invalid value for `{name}`: expected a non-empty, "
                                 f"increasing list of integers >= 0, received {name}={ends!r}")
        if keep is not None:
            _checks.check_int("keep", keep, minimum=1)
        self.directory = os.fspath(directory)
        self.schedule = schedule
        self.cycle_end_steps = None if cycle_end_steps is None else list(cycle_end_steps)
        self.cycle_end_epochs = None if cycle_end_epochs is None else list(cycle_end_epochs)
        self.keep, self.verbose = keep, verbose

    @property
    def manifest_path(self):
        return _manifest.path(self.directory)

    def on_train_begin(self, logs=None):
        self._by_epoch = self.cycle_end_epochs is not None
        self._ends = self.cycle_end_epochs if self._by_epoch else self.cycle_end_steps
        if self.schedule is not None:
            self._check_schedule_is_the_optimizers()
            steps = self.params.get("steps")
            if not steps:
                raise ValueError("SnapshotEnsemble(schedule=...) needs the number of steps "
                                 "per epoch, which this dataset does not tell: pass "
                                 "`steps_per_epoch` to fit, or pass `cycle_end_steps`.")
            self._ends = _cycle_end_steps(self.schedule, int(self.params["epochs"]) * int(steps))
        os.makedirs(self.directory, exist_ok=True)
        self._check_directory_is_ours()
        self._entries = self._read_manifest()
        # BackupAndRestore may restore `iterations` after this hook, so the
        # directory is reconciled with it at the first epoch.
        self._synced = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_step = int(self.model.optimizer.iterations.numpy())
        if not self._synced:
            self._sync(epoch)
            self._synced = True

    def on_train_batch_begin(self, batch, logs=None):
        # The model holds the weights after step `_epoch_step + batch - 1`:
        # steps are counted on the host, without reading `iterations` per
        # batch, and a cycle that ends an epoch waits for `on_epoch_end`.
        if self._by_epoch:
            return
        last = self._epoch_step + batch - 1
        while self._pending and self._pending[0][1] <= last:
            self._save(self._pending.pop(0)[0], last, self.model.get_metrics_result())

    def on_epoch_end(self, epoch, logs=None):
        # Cycles that end on the epoch's last step are saved here, with the
        # epoch's validation metrics.
        step = int(self.model.optimizer.iterations.numpy()) - 1
        last = epoch if self._by_epoch else step
        while self._pending and self._pending[0][1] <= last:
            self._save(self._pending.pop(0)[0], step, logs)

    # -- bookkeeping ------------------------------------------------------------

    def _check_schedule_is_the_optimizers(self):
        rate = _introspect.learning_rate_source(self.model.optimizer)
        serialize = keras.optimizers.schedules.serialize
        if rate is self.schedule or (isinstance(rate, _LRS)
                                     and serialize(rate) == serialize(self.schedule)):
            return
        running = (f"the schedule {type(rate).__name__}" if isinstance(rate, _LRS)
                   else f"the constant rate {float(keras.ops.convert_to_numpy(rate)):g}")
        raise ValueError(
            f"SnapshotEnsemble(schedule={type(self.schedule).__name__}(...)) saves at the "
            f"cycle ends of that schedule, but the optimizer runs {running}, so those "
            "steps are not its cycle ends. Compile the model with the schedule "
            "(e.g. keras.optimizers.SGD(schedule)), or pass `cycle_end_steps` or "
            "`cycle_end_epochs` instead of `schedule`.")

    def _check_directory_is_ours(self):
        """Snapshots are replaced and pruned, so files named like them must be
        listed by a manifest of ours, not someone else's."""
        if _io.exists(self.manifest_path):
            return
        foreign = sorted(n for n in os.listdir(self.directory) if _SNAPSHOT.fullmatch(n))
        if foreign:
            raise ValueError(
                f"Invalid value for `directory`: {self.directory!r} holds {foreign} but "
                f"no {_manifest.NAME}, so they are not snapshots of this callback and "
                "training would replace or delete them. Move them away, or choose "
                "another directory.")

    def _sync(self, epoch):
        """Drops snapshots that lie ahead of where training starts, and strays."""
        last = self._epoch_step - 1
        keep = [e for e in self._entries if e["step"] <= last]
        if keep != self._entries:
            self._entries = keep
            self._write_manifest()
        listed = {e["file"] for e in self._entries}
        for name in os.listdir(self.directory):
            if _TEMPORARY.fullmatch(name) or (_SNAPSHOT.fullmatch(name) and name not in listed):
                os.remove(os.path.join(self.directory, name))
        done = {e["index"] for e in self._entries}
        now = epoch if self._by_epoch else self._epoch_step
        self._pending = [(i + 1, end) for i, end in enumerate(self._ends)
                         if end >= now and i + 1 not in done]

    def _save(self, index, step, logs):
        name = f"snapshot_{index:02d}.keras"
        path = os.path.join(self.directory, name)
        _io.atomic_write(path, self.model.save)
        entry = {"index": index, "file": name, "epoch": int(self._epoch), "step": step,
                 "learning_rate": self._learning_rate(step),
                 "metrics": {k: float(v) for k, v in (logs or {}).items() if _is_scalar(v)}}
        entries = sorted([e for e in self._entries if e["index"] != index] + [entry],
                         key=lambda e: e["index"])
        pruned = entries[:-self.keep] if self.keep else []
        self._entries = entries[len(pruned):]
        self._write_manifest()
        for old in pruned:  # after the manifest stops listing them
            old_path = os.path.join(self.directory, old["file"])
            if os.path.exists(old_path):
                os.remove(old_path)
        if self.verbose:
            _io.say(f"\nEpoch {self._epoch + 1}, step {step}: saved snapshot {index} to {path}")

    def _learning_rate(self, step):
        return _introspect.learning_rate_at(self.model.optimizer, step)

    def _read_manifest(self):
        entries = _manifest.read(self.directory) or []
        return [e for e in entries
                if os.path.exists(os.path.join(self.directory, e["file"]))]

    def _write_manifest(self):
        _manifest.write(self.directory, self._entries)


def _is_scalar(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _increasing_indices(ends):
    try:
        ends = list(ends)
    except TypeError:
        return False
    return bool(ends) and all(_checks.is_int(e) and e >= 0 for e in ends) and all(
        a < b for a, b in zip(ends, ends[1:]))
