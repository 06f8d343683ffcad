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
import os
import shutil
import tempfile
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
        os.replace(temporary, path)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)
    return path


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


def _dumps(payload):
    return json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n"


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
