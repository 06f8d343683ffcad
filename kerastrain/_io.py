"""File access shared by every module (private): atomic writes and messages.

Every file kerastrain writes goes through `atomic_write`: the content is
written to a temporary path next to the target and renamed over it, so an
interrupted run leaves either the previous file or the new one, never half
of one. Paths go through `tf.io.gfile`, so run directories on `gs://` (what
TPU users have) work too; object stores replace a whole object on upload,
so remote files are written locally and copied.

Messages for people go through Keras' `io_utils.print_msg`, which honours
`keras.config.disable_interactive_logging()` like Keras' own callbacks.
"""

import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid

import tensorflow as tf
from keras.src.utils import io_utils


def is_remote(path):
    """True for paths such as `gs://bucket/run` that only `tf.io.gfile` opens."""
    return "://" in os.fspath(path)


def exists(path):
    return tf.io.gfile.exists(os.fspath(path))


def isdir(path):
    return tf.io.gfile.isdir(os.fspath(path))


def makedirs(path):
    tf.io.gfile.makedirs(os.fspath(path))


def listdir(path):
    return sorted(tf.io.gfile.listdir(os.fspath(path)))


def remove(path):
    """Removes a file or a directory tree; a missing path is no error."""
    path = os.fspath(path)
    if not tf.io.gfile.exists(path):
        return
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    else:
        tf.io.gfile.remove(path)


def atomic_write(path, write):
    """Calls `write(temporary_path)`, then moves the result to `path`.

    Args:
        path: the file to write (local or `gs://...`).
        write: a function that writes the whole content to the path it is
            given (e.g. `model.save`, `np.savez`).

    Returns:
        `path`.
    """
    path = os.fspath(path)
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="kerastrain-") as local:
            temporary = os.path.join(local, os.path.basename(path))
            write(temporary)
            tf.io.gfile.copy(temporary, path, overwrite=True)
        return path
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(
        directory, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
    try:
        write(temporary)
        replace_path(temporary, path)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)
    return path


def replace_path(source, path):
    """Moves the local file or directory `source` to `path`.

    An existing `path` (a file or a whole directory) is swapped out in two
    renames and deleted only once `source` is in its place, so at every
    moment `path` holds either the old content or the new one; if the second
    rename fails, the old content is put back. Whether `path` may be
    replaced at all is the caller's decision.
    """
    source, path = os.fspath(source), os.fspath(path)
    if not os.path.lexists(path):
        os.replace(source, path)
        return
    previous = f"{source}.previous"
    os.replace(path, previous)
    try:
        os.replace(source, path)
    except BaseException:
        os.replace(previous, path)
        raise
    if os.path.isdir(previous) and not os.path.islink(previous):
        shutil.rmtree(previous)
    else:
        os.remove(previous)


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, write)


def write_json(path, payload):
    """Writes `payload` as indented, key-sorted JSON atomically; NumPy
    scalars become numbers, anything else unknown its `str`."""
    return write_text(path, _dumps(payload))


def jsonable(payload):
    """`payload` as `read_json` reads back what `write_json` wrote: plain
    dicts, lists, strings and numbers (to compare with a saved file)."""
    return json.loads(_dumps(payload))


def read_json(path):
    with tf.io.gfile.GFile(os.fspath(path), "r") as f:
        return json.load(f)


def say(message):
    """Prints a line for the user the way Keras' callbacks do."""
    io_utils.print_msg(message)


def progress(target, title, *, verbose=1, unit_name="step", stateful_metrics=None):
    """A progress display for a loop outside `fit`, with `update(current,
    values=None, finalize=None)` like `keras.utils.Progbar`.

    On a terminal (or in a notebook) it is Keras' `Progbar`. When stdout is a
    file or a pipe (a log, CI), the bar's carriage returns and backspaces
    would fill it with garbage, so a plain line is printed instead at every
    tenth of the way (or every 10 s without a known `target`) and at the end:
    `title: 40/100 steps, lr 0.0012, smoothed_loss 2.281 (3 s)`.

    Args:
        target: number of steps, or `None` when unknown.
        title: what the loop does, starting the plain lines.
        verbose: 0 silent, 1 progress. Defaults to 1.
        unit_name: what a step is called. Defaults to `"step"`.
        stateful_metrics: names of the values shown as they are, not averaged
            (the bar's averaging is kept only on a terminal).
    """
    interactive = (getattr(sys.stdout, "isatty", lambda: False)()
                   or "ipykernel" in sys.modules)
    if interactive or not verbose:
        import keras

        return keras.utils.Progbar(target, verbose=verbose, unit_name=unit_name,
                                   stateful_metrics=stateful_metrics)
    return _PlainProgress(target, title, unit_name)


class _PlainProgress:
    """Progress as plain lines, for logs (see `progress`)."""

    def __init__(self, target, title, unit_name):
        self.target, self.title, self.unit_name = target, title, unit_name
        self._every = max(1, math.ceil(target / 10)) if target else None
        self._start = self._last = time.monotonic()
        self._printed = 0

    def update(self, current, values=None, finalize=None):
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        now = time.monotonic()
        if self._every is not None:
            due = current // self._every > self._printed // self._every
        else:
            due = now - self._last >= 10
        if not (finalize or due) or current == self._printed:
            return
        self._printed, self._last = current, now
        count = f"{current}/{self.target}" if self.target else f"{current}"
        shown = "".join(f", {name} {_number(value)}" for name, value in values or ())
        unit = self.unit_name + ("es" if self.unit_name.endswith(("s", "x", "ch", "sh"))
                                 else "s")
        say(f"{self.title}: {count} {unit}{shown} ({now - self._start:.0f} s)")


def _number(value):
    return f"{float(value):.4g}"


def _dumps(payload):
    return json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n"


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
