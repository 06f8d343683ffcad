"""Converting a data spec to TFRecord shards, read back with `tfrecord:PATH`."""

import os

import tensorflow as tf

from kerastrain import _checks, _io
from kerastrain.data import _sources


def to_tfrecord(spec, directory, *, shard_mb=100, data_dir=None, verbose=1):
    """Writes a dataset's files once as TFRecord shards (what TPUs read).

    Each stored split (a folder's `train/`, `test/` and `val/`, or all the
    images of a flat folder) becomes shards of at most about `shard_mb` MB
    holding each file's original bytes (nothing is decoded or re-encoded),
    its label and its index, plus a `kerastrain-tfrecord.json` with the class
    names and every split's labels and file names. `load("tfrecord:PATH")`
    then gives exactly the splits, labels and images that `load(spec)` gives.
    Under `MultiWorkerMirroredStrategy` each worker reads its own shards
    (`tf.data` auto-shards by file), so write at least as many shards per
    split as there are workers.

    The shards are written to a temporary directory next to `directory`,
    which is renamed into place only when complete (a `gs://` directory gets
    its metadata file last, which is what `load` looks for).

    Args:
        spec: a data spec of `kerastrain.data.load` (not `tfrecord:`).
        directory: where the shards go: a new or empty directory, or one
            written by `to_tfrecord` before (it is replaced).
        shard_mb: the size at which a split starts its next shard, in MB.
            Defaults to 100.
        data_dir: where TFDS finds prepared data (`tfds:` specs only).
        verbose: 0 silent, 1 a progress bar. Defaults to 1.

    Returns:
        `directory`.

    Example:

    ```python
    kerastrain.data.to_tfrecord("folder:~/photos", "~/photos-tfrecord")
    data = kerastrain.data.load("tfrecord:~/photos-tfrecord", image_size=224)
    ```
    """
    _checks.check_real("shard_mb", shard_mb, 0, None, low_open=True)
    directory = os.path.expanduser(os.fspath(directory))
    if isinstance(spec, str) and spec.startswith("tfrecord:"):
        raise ValueError(f"{spec!r} is TFRecord already; pass the folder or TFDS "
                         "spec it was written from")
    _check_target(directory)
    source = _sources.resolve(spec, data_dir)
    if _io.is_remote(directory):
        _write(source, directory, shard_mb, verbose)
    else:
        _io.atomic_write(directory, lambda temporary: _write(source, temporary,
                                                             shard_mb, verbose))
    return directory


def _check_target(directory):
    if not _io.exists(directory):
        return
    if not _io.isdir(directory):
        raise FileExistsError(f"{directory!r} is a file; pass a directory for the "
                              "TFRecord shards")
    entries = _io.listdir(directory)
    if entries and _sources.TFRECORD_METADATA not in entries:
        raise FileExistsError(
            f"{directory!r} holds files that to_tfrecord did not write "
            f"({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); "
            "pass a new or empty directory (nothing was changed)")


def _write(source, directory, shard_mb, verbose):
    _io.makedirs(directory)
    limit = int(shard_mb * (1 << 20))
    total = sum(len(labels) for labels in source.labels.values())
    bar = _io.progress(total, f"Writing TFRecord shards to {directory}",
                       verbose=verbose, unit_name="image")
    splits, done = {}, 0
    for key, labels in source.labels.items():
        names = source.names(key)
        shards, writer, size = [], None, limit
        for index, encoded in _encoded(source, key):
            if size >= limit:
                if writer is not None:
                    writer.close()
                shards.append(f"{key}-{len(shards):05d}.tfrecord")
                writer = tf.io.TFRecordWriter(os.path.join(directory, shards[-1]))
                size = 0
            record = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "label": _int64(labels[index]), "index": _int64(index)}))
            payload = record.SerializeToString()
            writer.write(payload)
            size += len(payload)
            done += 1
            if done % 256 == 0:
                bar.update(done)
        if writer is not None:
            writer.close()
        splits[key] = {"labels": labels.tolist(), "names": [str(n) for n in names],
                       "shards": shards}
    bar.update(done, finalize=True)
    _io.write_json(os.path.join(directory, _sources.TFRECORD_METADATA), {
        "format": _sources.TFRECORD_FORMAT, "version": 1,
        "class_names": list(source.class_names), "splits": splits})


def _encoded(source, key):
    """`(index, encoded bytes)` of every example of a stored split, in order."""
    if source.random_access:
        for index, path in enumerate(source.names(key)):
            with open(path, "rb") as f:
                yield index, f.read()
        return
    for index, encoded in source.stream(key).as_numpy_iterator():
        yield int(index), encoded


def _int64(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

