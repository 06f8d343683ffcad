"""The run directory of a recipe: checked first, written once training starts.

Every training recipe writes the same run directory (the output contract):
`config.json` (all flags), `history.csv`, `metrics.json`, PNG plots and,
with `--export_dir`, a SavedModel. This module owns those paths:

- `check` refuses, before any work, a run directory or export path that
  holds a user's files, and an interrupted run started again with other
  flags; it writes nothing, so a run that fails before training (a bad
  flag, missing data, dead CNN codes) leaves nothing behind;
- `create` (or the `CreateOnTrainBegin` callback, when `fit` starts)
  writes `config.json`, and says when the run resumes an interrupted one;
- `write_outputs` and `export_model` write the results, every file through
  the library's atomic writer (a temporary path, then a rename).
"""

import os

import keras
import tensorflow as tf
from absl import logging

import kerastrain as kt
from kerastrain import _io
from kerastrain import callbacks as kt_callbacks

BACKUP = "backup"  # keras.callbacks.BackupAndRestore's directory


def path(config):
    """The run directory of `config`: `--output_dir`, or for workers other
    than the chief of a cluster `--output_dir/workers/TYPE_INDEX`."""
    if kt.distribute.is_chief():
        return config["output_dir"]
    task_type, index = kt.distribute.current_task()
    return os.path.join(config["output_dir"], "workers", f"{task_type}_{index}")


def check(config, resumes=True):
    """Checks the run directory and `--export_dir` of `config`; writes nothing.

    A run directory must be new, empty, or the run directory of an earlier
    run (it holds a recipe's `config.json`): a run writes, replaces and
    deletes files there. An interrupted run (its Keras backup) is resumed
    only with the same flags. A recipe that does not resume (`resumes=False`)
    warns when the directory holds an interrupted run, which it replaces.

    Returns:
        The run directory's path.

    Raises:
        ValueError: saying which path is refused and what to pass instead.
    """
    directory = path(config)
    previous = _previous_config(directory)
    interrupted = previous is not None and not _io.exists(
        os.path.join(directory, "metrics.json"))
    if not resumes and interrupted:
        logging.warning(
            "%r holds an interrupted run, and this recipe does not resume "
            "interrupted runs (recipes.train does): this run starts again from "
            "the first epoch and replaces it.", directory)
    elif resumes and previous is not None and _io.isdir(os.path.join(directory, BACKUP)):
        changed = sorted(k for k in set(previous) | set(config)
                         if previous.get(k) != config.get(k))
        if changed:
            raise ValueError(
                f"{directory!r} holds an interrupted run with other flags "
                f"({changed}), which this run would resume; pass the same flags "
                f"to resume it, or delete {os.path.join(directory, BACKUP)!r} "
                "to start afresh.")
    _check_export_dir(config)
    return directory


def create(config):
    """Creates the run directory and writes `config.json`; returns its path.

    Call it when training is about to start, after `check`. When the
    directory holds the backup of an interrupted run, says from which epoch
    the run resumes.
    """
    directory = path(config)
    _io.makedirs(directory)
    _io.write_json(os.path.join(directory, "config.json"), config)
    epoch = resumed_epoch(directory)
    if epoch is not None:
        _io.say(f"Resuming the interrupted run in {directory!r} from its backup: "
                f"{epoch} epochs were complete, training goes on with epoch "
                f"{epoch + 1}.")
    return directory


class CreateOnTrainBegin(keras.callbacks.Callback):
    """Calls `create(config)` when the first `fit` begins, so that a run that
    fails while building (a bad flag found late, a layer that does not fit)
    leaves nothing behind. Put it first among the callbacks."""

    def __init__(self, config):
        super().__init__()
        self._config, self._created = config, False

    def on_train_begin(self, logs=None):
        if not self._created:
            create(self._config)
            self._created = True


def resumed_epoch(directory):
    """The epochs an interrupted run in `directory` completed (read from
    Keras' `BackupAndRestore` metadata), or `None` without a backup."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        metadata = os.path.join(directory, BACKUP, name)
        if _io.exists(metadata):
            try:
                return int(_io.read_json(metadata)["epoch"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def _previous_config(directory):
    """The `config.json` a recipe wrote in `directory`, or `None` for a new
    or empty directory. Refuses a file, and a non-empty directory no recipe
    wrote."""
    if not os.path.lexists(directory) and not _io.exists(directory):
        return None
    if not _io.isdir(directory):
        raise ValueError(f"--output_dir={directory!r} is a file; pass a directory "
                         "(new, empty, or the run directory of an earlier run).")
    if not _io.listdir(directory):
        return None
    try:
        previous = _io.read_json(os.path.join(directory, "config.json"))
    except (OSError, ValueError, tf.errors.OpError):
        previous = None
    if not isinstance(previous, dict) or "output_dir" not in previous:
        raise ValueError(
            f"--output_dir={directory!r} is a non-empty directory that is not a "
            "kerastrain run directory (it has no config.json written by a recipe); "
            "a run would write and delete files there. Pass a new or empty "
            "directory, or the run directory of an earlier run.")
    return previous


def _check_export_dir(config):
    """Refuses an `--export_dir` that holds anything but a kerastrain export
    (unless `--overwrite_export`)."""
    target = config.get("export_dir")
    if (not target or config.get("overwrite_export") or not os.path.lexists(target)
            or kt.export.is_export(target)):
        return
    what = "a directory" if os.path.isdir(target) else "a file"
    raise ValueError(f"--export_dir={target!r} is {what} that is not a kerastrain "
                     "export; the export would delete it. Choose another "
                     "--export_dir, or pass --overwrite_export to replace it.")


def write_outputs(directory, history, schedule, total_steps, metrics, callbacks=()):
    """Writes `metrics.json`, the training curves and the learning-rate plot:
    the rates a `LearningRateLogger` among `callbacks` recorded at every step
    (what the optimizer applied, `--swa_lr` included), else `schedule`."""
    _io.write_json(os.path.join(directory, "metrics.json"), metrics)
    kt.plots.training_curves(history.history,
                             os.path.join(directory, "training_curves.png"))
    logged = [c for c in callbacks if isinstance(c, kt_callbacks.LearningRateLogger)]
    if logged and logged[0].steps:
        schedule = {"learning rate applied": logged[0].rate_at}
        total_steps = logged[0].steps[-1] + 1
    kt.plots.plot_schedule(schedule, total_steps,
                           os.path.join(directory, "learning_rate.png"))


def export_model(model, config, class_names):
    """Exports `model` to `--export_dir` (chief only); returns the path or None."""
    if not config.get("export_dir") or not kt.distribute.is_chief():
        return None
    return kt.export.export_saved_model(model, config["export_dir"], class_names,
                                        overwrite=True,
                                        force=bool(config.get("overwrite_export")))


def save_keras(model, target):
    """Saves a `.keras` file atomically (temporary file, then rename)."""
    if not str(target).endswith(".keras"):
        raise ValueError(f"Invalid path {target!r}: expected a file name ending in .keras")
    return _io.atomic_write(target, model.save)


def save_backbone(model, target):
    """Saves the feature extractor of `model` (no classifier) as `.keras`:
    its nested `backbone` model (a keras.applications network), or
    small_cnn's layers up to the pooled features."""
    nested = {layer.name: layer for layer in model.layers}.get("backbone")
    if isinstance(nested, keras.Model):
        return save_keras(nested, target)
    return save_keras(kt.transfer.cut_backbone(model), target)
