"""`BackupAndRestore`: resume an interrupted `fit` so that it ends as if
never interrupted."""

import contextlib
import math
import os
import re
import warnings

import keras
import numpy as np

from kerastrain import _io
from kerastrain.data import _epochs

POINTER = "checkpoint.json"
_FORMAT = "kerastrain.backup"
_STATE = re.compile(r"^state-(\d+)-(\d+)\.(weights\.h5|npz)$")


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up training every epoch (and every `save_freq` steps); a `fit`
    started again with the same callback resumes from the backup and, on
    CPU with `tf.config.experimental.enable_op_determinism()`, ends with
    bit-identical weights.

    What Keras' `BackupAndRestore` does not do, and this one does:

    - **Mid-epoch resume.** A backup taken at step S of epoch E resumes at
      step S + 1 of epoch E, not at the epoch's first step: the running
      loss and metrics of the epoch are restored too, and kerastrain's
      training pipelines (`kerastrain.data.load`'s `train`,
      `Augmentation.apply`) start that epoch at batch S
      (`kerastrain.data.set_epoch(E, S)`, called at every epoch's start).
    - **The same data as the run it replaces.** Those pipelines draw every
      order and augmentation from (seed, epoch, batch), not from the
      iterator's history, so a fresh process at epoch E sees what the
      original saw at epoch E.
    - **Random state.** The model's `SeedGenerator` states (dropout masks,
      an `Augmentation` layer) are backed up with the weights and optimizer.
    - **Nothing half-written.** Each backup is written to new files, then a
      small pointer file (`checkpoint.json`) is replaced atomically; a
      process killed at any moment leaves the previous backup intact.
    - **No backup of a diverged model.** Once a loss or a weight is NaN or
      infinite nothing more is backed up, and the last good backup is kept
      when training ends.

    Args:
        backup_dir: the directory of the backup (created on the first save).
        save_freq: `"epoch"`, or an int N: also back up every N steps.
            Defaults to `"epoch"`.
        delete_checkpoint: delete the backup when training completes.
            Defaults to `True`.

    Example:

    ```python
    data = kt.data.load("cifar10_mini", seed=0)
    augmentation = kt.augment.Augmentation.from_policy("standard", seed=0)
    model.fit(augmentation.apply(data.train), epochs=30,
              callbacks=[kt.callbacks.BackupAndRestore("run/backup")])
    ```
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError("Invalid value for `backup_dir`: expected a directory path")
        if save_freq != "epoch" and not (isinstance(save_freq, int)
                                         and not isinstance(save_freq, bool)
                                         and save_freq > 0):
            raise ValueError("Invalid value for `save_freq`: expected 'epoch' or an "
                             f"int > 0, received {save_freq!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.delete_checkpoint = delete_checkpoint
        self.restored = None  # (epoch, step) resumed from, if any
        self._epoch, self._offset, self._steps = 0, 0, 0
        self._metrics = None  # Saved metric values of a resumed epoch
        self._last_step = []  # Step counters after a resumed epoch's last step
        self._diverged = False  # A non-finite loss was seen: no more backups
        self._quiet = None

    # -- training events ----------------------------------------------------

    def on_train_begin(self, logs=None):
        self.restored, self._metrics, self._diverged = None, None, False
        pointer = read_pointer(self.backup_dir)
        if pointer is None:
            return
        if not self.model.built:
            raise ValueError("BackupAndRestore needs a built model: call the model on "
                             "a batch (or build it) before fit()")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        prefix = os.path.join(self.backup_dir, pointer["files"])
        self.model.load_weights(prefix + ".weights.h5")
        with np.load(prefix + ".npz") as state:
            for i, variable in enumerate(_random_state(self.model)):
                variable.assign(state[f"random_{i}"])
            self._metrics = [state[f"metric_{i}"] for i in range(int(state["metrics"]))]
        epoch, step = int(pointer["epoch"]), int(pointer["step"])
        self.model._initial_epoch = epoch
        self.restored = (epoch, step)
        _epochs.set_epoch(epoch, step)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._offset = epoch, 0
        if self.restored is not None and self.restored[0] == epoch and self.restored[1]:
            self._offset = self.restored[1]
            for variable, value in zip(self.model.metrics_variables, self._metrics):
                variable.assign(value)
            # The epoch's data begins at batch `offset`: Keras sees it end
            # early and warns that "the input ran out of data". It did not.
            self._quiet = warnings.catch_warnings()
            self._quiet.__enter__()
            warnings.filterwarnings("ignore", message="Your input ran out of data")
        _epochs.set_epoch(epoch, self._offset)

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._offset:
            self._last_step = self._counters()
        if not _finite(logs):
            self._diverged = True
        elif self.save_freq != "epoch" and self._steps % self.save_freq == 0:
            self.save(self._epoch, self._offset + batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None
            # Keras' step that finds the data ended still runs the stateful
            # ops that need no data (the optimizer's step count, the seed
            # generators): put them back as the last real step left them.
            for variable, value in zip(self._counter_variables(), self._last_step):
                variable.assign(value)
        self.restored = None
        if _finite(logs) and not self._diverged:
            self.save(epoch + 1, 0)

    def on_train_end(self, logs=None):
        # A diverged run keeps its last good backup.
        if self.delete_checkpoint and not self._diverged:
            _io.remove(self.backup_dir)

    def _counter_variables(self):
        optimizer = self.model.optimizer
        return ([optimizer.iterations] if optimizer is not None else []) + _random_state(
            self.model)

    def _counters(self):
        return [np.asarray(v) for v in self._counter_variables()]

    # -- the backup ----------------------------------------------------------

    def save(self, epoch, step):
        """Backs up the model now as `step` steps into epoch `epoch`; a model
        with a non-finite weight is not backed up (nor anything after it).
        The loss a step reports is computed before its update, so the
        weights themselves are checked."""
        weights = [np.asarray(v) for v in self.model.weights]
        if self._diverged or not all(np.isfinite(w).all() for w in weights
                                     if np.issubdtype(w.dtype, np.floating)):
            self._diverged = True
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"state-{epoch:06d}-{step:09d}"
        prefix = os.path.join(self.backup_dir, name)
        _io.atomic_write(prefix + ".weights.h5", self.model.save_weights)
        state = {f"random_{i}": np.asarray(v) for i, v in enumerate(_random_state(self.model))}
        metrics = self.model.metrics_variables if step else []
        state.update({f"metric_{i}": np.asarray(v) for i, v in enumerate(metrics)})
        state["metrics"] = np.asarray(len(metrics))
        _io.atomic_write(prefix + ".npz", lambda path: _savez(path, state))
        _io.write_json(os.path.join(self.backup_dir, POINTER), {
            "format": _FORMAT, "version": 1, "epoch": epoch, "step": step, "files": name})
        for entry in os.listdir(self.backup_dir):  # Older backups, half-writes.
            match = _STATE.match(entry)
            if match and not entry.startswith(name + "."):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.backup_dir, entry))


def read_pointer(backup_dir):
    """The pointer of the backup in `backup_dir` (`epoch`, `step`, `files`),
    or `None` when there is none."""
    path = os.path.join(os.fspath(backup_dir), POINTER)
    if not os.path.exists(path):
        return None
    pointer = _io.read_json(path)
    if not isinstance(pointer, dict) or pointer.get("format") != _FORMAT:
        raise ValueError(f"{path!r} is not a kerastrain backup pointer; delete "
                         f"{os.fspath(backup_dir)!r} to start afresh")
    return pointer


def _random_state(model):
    """The model's variables that are neither weights nor optimizer state:
    its `SeedGenerator` states."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _finite(logs):
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


def _savez(path, state):
    with open(path, "wb") as f:  # np.savez would append ".npz" to a bare path
        np.savez(f, **state)
