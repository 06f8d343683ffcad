"""Where examples come from: a data spec resolved to a `Source`.

A source knows, before any image is decoded, its class names and the labels
of its stored splits (a folder's `train/`, `test/` and `val/`, or `all` for a
flat folder; a TFDS or TFRecord set's splits). That is where the splits,
class subsets, few-shot draws and the empty/unknown-class errors of
`kerastrain.data.load` are decided. Images are then read by index: a
random-access source (a folder) gives the `payloads(key, indices)` of any
subset (paths), a streamed one (TFRecord shards, TFDS) `stream(key)`s
`(index, payload)` in stored order; `read(payload)` gives the encoded bytes.
"""

import os
import pathlib
import re
import time

import numpy as np
import tensorflow as tf

from kerastrain import _io
from kerastrain.data import _tfds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
EMBEDDED = pathlib.Path(__file__).parent.parent / "datasets" / "cifar10_mini"
SPECS = ("'cifar10_mini', 'folder:PATH', 'tfrecord:PATH', 'tfds:NAME', "
         "'tfds:NAME:TRAIN:TEST' or 'tfds:NAME:TRAIN:VALIDATION:TEST'")
TFRECORD_METADATA = "kerastrain-tfrecord.json"
TFRECORD_FORMAT = "kerastrain-tfrecord"
TFRECORD_FEATURES = {"image": tf.io.FixedLenFeature([], tf.string),
                     "label": tf.io.FixedLenFeature([], tf.int64),
                     "index": tf.io.FixedLenFeature([], tf.int64)}
# Listing that takes longer than this many seconds says how far it has got.
_LIST_PROGRESS_SECONDS = 2.0


class FolderSource:
    """Image files in class folders; random access by path."""

    random_access = True

    def __init__(self, root, class_names, files):
        self.root = root
        self.class_names = class_names
        self.labels = {key: np.asarray([label for _, label in split], np.int64)
                       for key, split in files.items()}
        self._paths = {key: np.asarray([path for path, _ in split], dtype=object)
                       for key, split in files.items()}

    def names(self, key):
        return self._paths[key]

    def payloads(self, key, indices):
        """What `read` takes for `indices` of split `key`: their paths."""
        return self._paths[key][indices].astype(str)

    @staticmethod
    def read(path):
        """The encoded bytes of a payload."""
        return tf.io.read_file(path)

    def identity(self, key):
        """What a decoded copy of split `key` depends on (edited files too)."""
        paths = tuple(self._paths[key])
        return "folder", paths, tuple(os.stat(path).st_mtime_ns for path in paths)


class TFRecordSource:
    """Shards written by `kerastrain.data.to_tfrecord`; streamed in order."""

    random_access = False

    @staticmethod
    def read(encoded):
        """The encoded bytes of a payload: streamed payloads are the bytes."""
        return encoded

    def __init__(self, root):
        path = os.path.join(root, TFRECORD_METADATA)
        if not _io.exists(path):
            raise FileNotFoundError(
                f"No {TFRECORD_METADATA} in {str(root)!r}: 'tfrecord:PATH' reads "
                "shards written by kerastrain.data.to_tfrecord(spec, PATH)")
        meta = _io.read_json(path)
        if meta.get("format") != TFRECORD_FORMAT or meta.get("version") != 1:
            raise ValueError(f"{path!r} is not a version-1 {TFRECORD_FORMAT} "
                             "metadata file; write the shards again with to_tfrecord")
        self.root = root
        self.class_names = list(meta["class_names"])
        self._splits = meta["splits"]
        self.labels = {key: np.asarray(split["labels"], np.int64)
                       for key, split in self._splits.items()}
        self._stamp = tf.io.gfile.stat(path).mtime_nsec

    def names(self, key):
        return np.asarray(self._splits[key]["names"], dtype=object)

    def shards(self, key):
        return [os.path.join(self.root, name) for name in self._splits[key]["shards"]]

    shards_by_file = True

    def stream(self, key, shuffle_seed=None, shard=None):
        """`(index, encoded)` records of split `key`; with `shuffle_seed` (a
        stateless `[2]` seed), the shard order is shuffled and four shards
        are read interleaved; with `shard`, `(count, index)`, only every
        count-th shard file from `index` on is read (one worker's files)."""
        files = tf.constant(self.shards(key))
        if shard is not None:
            files = files[shard[1]::shard[0]]
        if shuffle_seed is None:
            records = tf.data.TFRecordDataset(files)
        else:
            count = int(files.shape[0])
            files = tf.gather(files, tf.random.experimental.stateless_shuffle(
                tf.range(count), seed=shuffle_seed))
            records = tf.data.Dataset.from_tensor_slices(files).interleave(
                tf.data.TFRecordDataset, cycle_length=min(4, count),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        def parse(records):
            examples = tf.io.parse_example(records, TFRECORD_FEATURES)
            return examples["index"], examples["image"]

        # Parsed in batches: one record at a time, parsing alone held the
        # decode to half the folder's images/s (benchmarks/data_throughput.py).
        return records.batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True).unbatch()

    def identity(self, key):
        return "tfrecord", self.root, key, self._stamp


class TFDSSource:
    """A TensorFlow Datasets classification set; streamed in stored order."""

    random_access = False
    shards_by_file = False

    @staticmethod
    def read(encoded):
        """The encoded bytes of a payload: streamed payloads are the bytes."""
        return encoded

    def __init__(self, name, split_names, data_dir):
        self.builder, self.class_names, self._splits = _tfds.open_builder(
            name, split_names, data_dir)
        self._name = name
        self.labels = {key: _tfds.labels(self.builder, split)
                       for key, split in self._splits.items()}

    def names(self, key):
        split = self._splits[key]
        return np.asarray([f"{self._name}:{split} example {i}"
                           for i in range(len(self.labels[key]))], dtype=object)

    def stream(self, key, shuffle_seed=None, shard=None):
        del shuffle_seed, shard  # Stored order; the caller shuffles and shards.
        return _tfds.encoded(self.builder, self._splits[key]).enumerate().map(
            lambda index, example: (index, example[0]))

    def identity(self, key):
        return ("tfds", self._name, self._splits[key], self.builder.data_dir,
                str(self.builder.info.version), len(self.labels[key]))


def resolve(spec, data_dir=None):
    """The `Source` of a data spec (see `kerastrain.data`)."""
    kind, _, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if spec == "cifar10_mini":
        return _folder(EMBEDDED)
    if kind == "folder" and rest:
        return _folder(pathlib.Path(rest).expanduser())
    if kind == "tfrecord" and rest:
        return TFRecordSource(os.path.expanduser(rest))
    if kind == "tfds" and rest:
        # ':' inside brackets belongs to a slice such as 'train[:90%]'.
        name, *split_names = re.split(r":(?![^\[]*\])", rest)
        if len(split_names) in (0, 2, 3):
            return TFDSSource(name, split_names, data_dir)
    raise ValueError(f"Unknown data spec {spec!r}: expected {SPECS}")


def _folder(root):
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder {str(root)!r} does not exist; pass "
                                "'folder:PATH' with an existing folder")
    split_dirs = {name: root / name for name in ("train", "test", "val", "validation")
                  if (root / name).is_dir()}
    listing = _Listing()
    if not split_dirs:  # Flat layout: PATH/<class>/*.
        class_names = _class_names(root)
        files = {"all": listing.images(root, class_names, required=True)}
    elif {"train", "test"} <= set(split_dirs) and len(split_dirs) < 4:  # One val dir.
        class_names = _class_names(split_dirs["train"])
        files = {"validation" if name == "val" else name: listing.images(
            folder, class_names, required=name == "train")
            for name, folder in split_dirs.items()}
    else:
        raise ValueError(f"Folder {str(root)!r} has split folders "
                         f"{sorted(split_dirs)}; expected train/ and test/ (and "
                         "at most one of val/, validation/), or class folders only")
    listing.done()
    return FolderSource(root, class_names, files)


def _class_names(folder):
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"No class folders in {str(folder)!r}: expected "
                         "PATH/<class>/*.jpg, or PATH/train/<class>/*.jpg and "
                         "PATH/test/<class>/*.jpg")
    return names


class _Listing:
    """Lists class folders; says how far it got once there are many files."""

    def __init__(self):
        self.count, self._bar, self._start = 0, None, time.monotonic()

    def images(self, folder, class_names, required):
        """Returns sorted [(path, label)] of the images in folder/<class>/."""
        extra = sorted(p.name for p in folder.iterdir() if p.is_dir()
                       and not p.name.startswith(".") and p.name not in class_names)
        if extra:
            raise ValueError(f"Class folders {extra} in {str(folder)!r} are not "
                             f"among the training classes {class_names}")
        files = []
        for label, name in enumerate(class_names):
            paths = sorted(entry.path for entry in os.scandir(folder / name)
                           if not entry.name.startswith(".")  # e.g. macOS ._x.jpg
                           and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                           ) if (folder / name).is_dir() else []
            if required and not paths:
                raise ValueError(f"Class {name!r} has no images in "
                                 f"{str(folder / name)!r}; add images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder")
            files += [(path, label) for path in paths]
            self._advance(len(paths), folder)
        return files

    def _advance(self, count, folder):
        self.count += count
        if self._bar is None and (
                time.monotonic() - self._start > _LIST_PROGRESS_SECONDS):
            self._bar = _io.progress(None, f"Listing {folder.parent}", unit_name="file")
        if self._bar is not None:
            self._bar.update(self.count)

    def done(self):
        if self._bar is not None:
            self._bar.update(self.count, finalize=True)
