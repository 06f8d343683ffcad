"""Dataset specs -> batched `tf.data` splits of (uint8 NHWC images, int64 labels).

- `"cifar10_mini"`: the embedded 32x32 CIFAR-10 sample (500 train, 100 test
  JPEGs per class) in `kerastrain/datasets/cifar10_mini`.
- `"folder:PATH"`: ImageFolder `PATH/train/<class>/*` + `PATH/test/<class>/*`
  (+ optional `val/` or `validation/`), or flat `PATH/<class>/*`, of which
  each class gives a seeded `DEFAULT_TEST_FRACTION` to the test split.
- `"tfrecord:PATH"`: TFRecord shards written by `to_tfrecord` (the format
  TPUs read fastest).
- `"tfds:NAME"`, `"tfds:NAME:TRAIN:TEST"`, `"tfds:NAME:TRAIN:VALIDATION:TEST"`
  (slices like `train[:90%]` allowed): a TensorFlow Datasets classification set.

Keras' `image_dataset_from_directory` neither carves a stratified validation
split, nor selects and re-orders classes, nor draws a seeded few-shot
subset, nor names the file when an image is corrupt or of an odd size.
`load` resolves every file and label up front (that is where all of that is
decided, before a pixel is decoded), then takes one of two paths:

- in memory (`cache="memory"`): each image is decoded once, in parallel,
  into one array (kept for the next `load` of the same files, size and
  modification times, up to 512 MB of such arrays in all), and
  `tf.data` only shuffles and batches. Best for data that fits: the epoch
  costs no decoding.
- streamed (`cache="none"`, or `"disk:PATH"`): `tf.data` reads, decodes and
  resizes each file in parallel every epoch (`num_parallel_calls=AUTOTUNE`)
  and holds only a few batches at a time, so memory does not grow with the
  number of images; `"disk:PATH"` keeps the decoded, resized images in files
  under PATH after the first epoch.

`cache="auto"` (the default) keeps data in memory when its decoded size
(images x height x width x 3 bytes, at `image_size` or the first image's
size) is at most `MEMORY_FRACTION` (1/10) of the memory available now
(Linux: `MemAvailable` of `/proc/meminfo`), and streams it otherwise: the
in-memory path peaks at about 3x the decoded size (the decoding, the array
and its tensor; benchmarks/data_throughput.py). Both paths
give the same splits, labels, class order and few-shot draw; for a folder
they give the same images in the same seeded order too.
"""

import collections
import dataclasses
import hashlib
import os
import warnings
import zlib

import numpy as np
import tensorflow as tf

from kerastrain import _checks, _io
from kerastrain import distribute as _distribute
from kerastrain.data import _epochs, _pipeline, _sources
from kerastrain.data._epochs import set_epoch  # noqa: F401
from kerastrain.data._pipeline import (  # noqa: F401
    RESIZE_MODES, crop_decoded, decode_image, random_resized_crop, resize)
from kerastrain.data._scan import FolderReport, check_folder  # noqa: F401
from kerastrain.data._sources import IMAGE_EXTENSIONS  # noqa: F401
from kerastrain.data._tfds import DataNotPreparedError  # noqa: F401 (re-exported)
from kerastrain.data._tfrecord import to_tfrecord  # noqa: F401

DEFAULT_TEST_FRACTION = 0.2
MEMORY_FRACTION = 0.1
CACHE_MODES = ("auto", "memory", "none", "disk:PATH")
BAD_IMAGE_MODES = ("error", "skip")
# A guess at an encoded image's size, for the shuffle buffer of a stream.
_ENCODED_BYTES = 50_000
# Decoded stored splits kept for the next load(), up to this many bytes in
# all (least recently used out): small data is decoded once per process.
_DECODED, _DECODED_BYTES = collections.OrderedDict(), 512 << 20
# One random stream per purpose, so that no draw depends on another.
_TEST_STREAM, _VALIDATION_STREAM, _FEW_SHOT_STREAM = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """What `load()` returns.

    `train`, `validation` and `test` yield `(uint8 images of shape (batch,
    height, width, 3), int64 labels)` batches; `validation` is `None` when
    `validation_fraction=0`. Labels index `class_names`; `num_*` count examples
    (a streamed split's count includes files `on_bad_image="skip"` may skip). `cache` is the
    path taken: `"memory"`, `"none"` (streamed) or `"disk:PATH"`.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    class_names: tuple
    image_shape: tuple
    num_train: int
    num_validation: int
    num_test: int
    batch_size: int
    cache: str = "memory"

    @property
    def num_classes(self):
        return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class _Part:
    """A split of `load`'s result: `indices` into the source's stored split
    `stored` (increasing), with the labels they have in the result."""

    stored: str
    indices: np.ndarray
    labels: np.ndarray


def load(spec="cifar10_mini", *, image_size=None, batch_size=64, classes=None,
         labels_per_class=None, validation_fraction=0.1, seed=0, data_dir=None,
         cache="auto", on_bad_image="error", resize_mode="stretch",
         drop_remainder=False, random_resized_crop=None):
    """Loads an image classification dataset as batched `tf.data` splits.

    Grayscale, palette, CMYK and RGBA images are converted to RGB (alpha is
    dropped). Validation is carved off each training class with the seed,
    unless the source has its own validation split, which is then used.

    Args:
        spec: `"cifar10_mini"`, `"folder:PATH"`, `"tfrecord:PATH"` or
            `"tfds:NAME[:SPLITS]"` (see the module docstring). Defaults to
            `"cifar10_mini"`.
        image_size: int or `(height, width)` to resize every image to
            (bilinear, see `resize_mode`); images may then be of any, mixed
            sizes. `None` keeps the stored size, which must then be the same
            for all images. Defaults to `None`.
        batch_size: examples per batch (the global batch under a
            `tf.distribute` strategy). Defaults to 64.
        classes: class names (list, or comma-separated string) to keep, in
            the order that defines the new labels `0..k-1`. Defaults to all.
        labels_per_class: keep only this many training images per class,
            drawn with the seed (few-shot). Defaults to all.
        validation_fraction: fraction of each training class held out for
            validation, in `[0, 1)`; 0 means no validation split. Defaults
            to 0.1.
        seed: int >= 0 for the splits, the few-shot draw and the training
            shuffle (a new order each epoch). Defaults to 0.
        data_dir: where TFDS finds prepared data (`tfds:` specs only).
            Defaults to TFDS' default (`$TFDS_DATA_DIR`).
        cache: `"auto"`, `"memory"`, `"none"` or `"disk:PATH"` (see the
            module docstring). Defaults to `"auto"`.
        on_bad_image: `"error"` stops at a file that cannot be decoded, with
            an error naming it; `"skip"` leaves it out with a warning that
            counts the skipped files. Defaults to `"error"`.
        resize_mode: with `image_size`, `"stretch"` (each side scaled to
            fit), `"crop"` (aspect ratio kept, central crop) or `"pad"`
            (aspect ratio kept, black borders). Defaults to `"stretch"`.
        drop_remainder: drop each split's last, smaller batch, so that every
            batch has the static shape TPUs need. Defaults to `False`.
        random_resized_crop: `(low, high)` with `0 < low <= high <= 1`: each
            training image becomes a random part of it covering that
            fraction of its area (aspect ratio 3/4 to 4/3, the Inception
            crop) resized to `image_size` (needed), drawn anew each epoch
            from the seed. Streamed JPEGs decode only that part
            (`tf.io.decode_and_crop_jpeg`); in memory the part is cut from
            the stored `image_size` copy. Defaults to `None` (no crop).

    Returns:
        A `DataSplits`.

    Example:

    ```python
    data = kerastrain.data.load("cifar10_mini", classes="dog,cat", seed=1)
    model.fit(data.train, validation_data=data.validation, epochs=3)

    photos = kerastrain.data.load("folder:~/photos", image_size=224,
                                  on_bad_image="skip")  # streamed if large
    ```
    """
    image_size = _check_image_size(image_size)
    _checks.check_int("batch_size", batch_size, minimum=1)
    _checks.check_int("seed", seed, minimum=0)
    if labels_per_class is not None:
        _checks.check_int("labels_per_class", labels_per_class, minimum=1)
    _checks.check_real("validation_fraction", validation_fraction, 0, 1, high_open=True)
    classes = _check_classes(classes)
    _check_cache(cache)
    _checks.check_choice("on_bad_image", on_bad_image, BAD_IMAGE_MODES)
    _checks.check_choice("resize_mode", resize_mode, RESIZE_MODES)
    _checks.check("drop_remainder", drop_remainder, isinstance(drop_remainder, bool),
                  "True or False")

    crop = _check_crop(random_resized_crop, image_size)
    source = _sources.resolve(spec, data_dir)
    class_names, parts = _parts(source, spec, classes, labels_per_class,
                                validation_fraction, seed)
    pixels = (image_size or _first_shape(source, parts["train"])[:2])
    if cache == "auto":
        cache = "memory" if _decoded_bytes(source, pixels) <= (
            MEMORY_FRACTION * available_memory()) else "none"
    settings = dict(image_size=image_size, resize_mode=resize_mode,
                    on_bad_image=on_bad_image, batch_size=batch_size,
                    drop_remainder=drop_remainder, seed=seed, crop=crop)
    if cache == "memory":
        splits, counts, shape = _in_memory(source, parts, **settings)
    else:
        shape = tuple(pixels) + (3,)
        splits = {key: _streamed(source, part, key, shape, cache, **settings)
                  for key, part in parts.items()}
        counts = {key: len(part.labels) for key, part in parts.items()}
    return DataSplits(
        train=splits["train"], validation=splits.get("validation"),
        test=splits["test"], class_names=tuple(class_names), image_shape=shape,
        num_train=counts["train"], num_validation=counts.get("validation", 0),
        num_test=counts["test"], batch_size=batch_size, cache=cache)


def available_memory():
    """Bytes of memory available to a new allocation now (Linux:
    `MemAvailable`; elsewhere the free physical pages; 4 GiB if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _parts(source, spec, classes, labels_per_class, validation_fraction, seed):
    """Decides every split from labels alone: {key: _Part}."""
    class_names = list(source.class_names)
    parts = {key: _Part(key, np.arange(len(labels)), labels)
             for key, labels in source.labels.items()}
    if "all" in parts:
        parts["train"], parts["test"] = _split(parts.pop("all"), DEFAULT_TEST_FRACTION,
                                               seed, _TEST_STREAM)
    if validation_fraction == 0:
        parts.pop("validation", None)
    elif "validation" not in parts:
        parts["train"], parts["validation"] = _split(
            parts["train"], validation_fraction, seed, _VALIDATION_STREAM)
    if classes is not None:
        unknown = [name for name in classes if name not in class_names]
        if unknown:
            raise ValueError(f"Unknown class names {unknown} in `classes` for "
                             f"{spec!r}; available classes: {class_names}")
        order = [class_names.index(name) for name in classes]
        parts = {key: _select(part, order, len(class_names))
                 for key, part in parts.items()}
        class_names = classes
    if labels_per_class is not None:
        parts["train"] = _few_shot(parts["train"], labels_per_class, seed, class_names)
    if not len(parts["train"].labels):
        raise ValueError(f"No training images in {spec!r}")
    return class_names, parts


def _first_shape(source, part):
    """The size of the first decodable image among the first few of `part`."""
    indices = part.indices[:16]
    images, _ = _pipeline.materialize(_elements(source, part.stored, indices),
                                      source.read, len(indices), None,
                                      "stretch", "")
    if not len(images):
        raise ValueError("None of the first images could be decoded (e.g. "
                         f"{source.names(part.stored)[indices[0]]!r}); check the "
                         "data with kerastrain.data.check_folder")
    return images[0].shape


def _decoded_bytes(source, pixels):
    count = sum(len(labels) for labels in source.labels.values())
    return count * pixels[0] * pixels[1] * 3


# -- the two paths ------------------------------------------------------------


def _in_memory(source, parts, *, image_size, resize_mode, on_bad_image, batch_size,
               drop_remainder, seed, crop):
    """Splits decoded once into arrays: {key: dataset}, {key: count}, shape."""
    splits, counts, shape = {}, {}, None
    for key, part in parts.items():
        images, position = _decoded_split(source, part.stored, image_size, resize_mode,
                                          on_bad_image)
        keep = position[part.indices] >= 0
        rows = position[part.indices[keep]]
        if not np.array_equal(rows, np.arange(len(images))):  # Else: no copy.
            images = images[rows]
        shape = shape or images.shape[1:]
        counts[key] = len(images)
        if key == "train":
            splits[key] = _memory_passes(images, part.labels[keep], batch_size,
                                         drop_remainder, seed, crop, image_size)
            continue
        ds = tf.data.Dataset.from_tensor_slices((images, part.labels[keep]))
        splits[key] = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(
            tf.data.AUTOTUNE)
    return splits, counts, tuple(shape)


def _memory_passes(images, labels, batch_size, drop_remainder, seed, crop, image_size):
    """The training split in memory: each pass (epoch) a seeded permutation.

    Images are gathered by index, so no shuffle buffer holds a second copy.
    """
    images, labels = tf.constant(images), tf.constant(labels)

    def make_pass(epoch, skip):
        def example(position, index):
            image = tf.gather(images, index)
            if crop is not None:
                image = _pipeline.crop_decoded(image, image_size, crop,
                                               _epochs.seed(seed, epoch, position))
            return image, tf.gather(labels, index)

        return _positions(len(labels), seed, epoch, skip * batch_size).map(
            example, num_parallel_calls=tf.data.AUTOTUNE).batch(
            batch_size, drop_remainder=drop_remainder)

    ds, _ = _epochs.passes(make_pass, _batches(len(labels), batch_size, drop_remainder))
    return ds.prefetch(tf.data.AUTOTUNE)


def _positions(count, seed, epoch, start):
    """`(position, index)` of epoch `epoch`'s seeded order of `count`
    examples, from position `start` on."""
    order = tf.random.experimental.stateless_shuffle(
        tf.range(count, dtype=tf.int64), seed=_epochs.seed(seed, epoch, -1))
    return tf.data.Dataset.from_tensor_slices(order).enumerate().skip(start)


def _batches(count, batch_size, drop_remainder):
    return count // batch_size if drop_remainder else -(-count // batch_size)


def _decoded_split(source, stored, image_size, resize_mode, on_bad_image):
    """All images of a stored split, and each index's row in them (-1: bad)."""
    images, ok = _decode_cached(source, stored, image_size, resize_mode)
    bad = source.names(stored)[~ok]
    if len(bad) and on_bad_image == "error":
        raise ValueError(f"Cannot decode image {bad[0]!r}"
                         + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                         + "; replace or delete the file, find every such file with "
                         "kerastrain.data.check_folder, or pass on_bad_image='skip'")
    if len(bad):
        warnings.warn(f"Skipped {len(bad)} unreadable image(s) of the {stored!r} "
                      f"split (on_bad_image='skip'): {', '.join(bad[:5])}"
                      + (", ..." if len(bad) > 5 else ""), stacklevel=4)
    return images, np.where(ok, np.cumsum(ok) - 1, -1)


def _decode_cached(source, stored, image_size, resize_mode):
    """Decodes a stored split once per identity (its paths and modification
    times: edited files are decoded again), size and mode."""
    key = (source.identity(stored), image_size, resize_mode)
    if key in _DECODED:
        _DECODED.move_to_end(key)
        return _DECODED[key]
    names = source.names(stored)
    images, ok = _pipeline.materialize(
        _elements(source, stored, np.arange(len(names))), source.read,
        len(names), image_size, resize_mode, f"Decoding {stored}")
    if isinstance(images, list):
        images = _stacked(images, names[ok]) if images else np.zeros(
            (0,) + (image_size or (1, 1)) + (3,), np.uint8)
    images.flags.writeable = False  # Shared by every load() that hits the cache.
    _DECODED[key] = images, ok
    while sum(images.nbytes for images, _ in _DECODED.values()) > _DECODED_BYTES:
        _DECODED.popitem(last=False)
    return images, ok


def _stacked(images, names):
    shapes = [image.shape for image in images]
    common = max(set(shapes), key=shapes.count)
    for name, shape in zip(names, shapes):
        if shape != common:
            raise ValueError(
                f"Image {name!r} has size {shape[:2]} (height, width) but "
                f"most images have size {common[:2]}; pass image_size= (e.g. "
                f"image_size={common[:2]}) to resize all images to one size")
    return np.stack(images)


def _streamed(source, part, key, shape, cache, *, image_size, resize_mode,
              on_bad_image, batch_size, drop_remainder, seed, crop):
    """One split read, decoded and resized by `tf.data` every epoch."""
    workers = _distribute.cluster_size()
    # Known (a cluster's workers each read a part): Keras then need not find
    # the steps of an epoch by running out of data, with a warning.
    declared = on_bad_image == "error" and workers == 1
    decode = dict(image_size=image_size, resize_mode=resize_mode,
                  on_bad_image=on_bad_image, shape=shape)
    if key != "train":
        ds = _decoded(source, part, _stored_order(source, part), **decode)
        if declared:
            ds = ds.apply(tf.data.experimental.assert_cardinality(len(part.labels)))
        if cache != "none":
            ds = ds.cache(_cache_file(cache, source, part, key, image_size, resize_mode))
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(
            tf.data.AUTOTUNE)
    if cache != "none":  # Decoded whole once, in stored order; shuffled after.
        cached = _decoded(source, part, _stored_order(source, part), **decode).cache(
            _cache_file(cache, source, part, key, image_size, resize_mode))
        buffer = _pipeline.shuffle_buffer(int(np.prod(shape)), len(part.labels))

        def make_pass(epoch, skip):
            ds = _epochs.window_shuffle(cached, buffer, seed, epoch)
            if crop is not None:
                ds = ds.enumerate().map(lambda position, example: (_pipeline.crop_decoded(
                    example[0], image_size, crop, _epochs.seed(seed, epoch, position)),
                    example[1]), num_parallel_calls=tf.data.AUTOTUNE)
            return ds.skip(skip * batch_size).batch(batch_size, drop_remainder=drop_remainder)
    else:
        # Each worker of a cluster reads (and decodes) only its own files: a
        # part of the shuffled file list, or of the TFRecord shard files.
        shard = (workers, _distribute.worker_index()) if workers > 1 else None
        by_file = shard is not None and getattr(source, "shards_by_file", False)
        # Made once, outside the pass function: captured, not copied into
        # its graph (a file list may hold a million paths).
        table = _table(source, part)

        def make_pass(epoch, skip):
            order = (_shuffled_order(table, part, seed, epoch) if source.random_access
                     else _stream_order(source, table, part, seed, epoch,
                                        shard if by_file else None))
            order = order.skip(skip * batch_size)
            if shard is not None and not by_file:
                order = order.shard(*shard)
            return _decoded(source, part, order, crop=crop, seed=seed, epoch=epoch,
                            **decode).batch(batch_size, drop_remainder=drop_remainder)

    batches = _batches(len(part.labels), batch_size, drop_remainder) if declared else None
    ds, _ = _epochs.passes(make_pass, batches)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if workers == 1:
        return ds
    options = tf.data.Options()  # Sharded above, by worker.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    return ds.with_options(options)


def _table(source, part):
    """Tensors to look `part`'s examples up in: for a random-access source
    `(payloads, labels, names)` of its examples, for a streamed one
    `(label of each stored index, -1 outside part; name of each)`."""
    if source.random_access:
        return (tf.constant(source.payloads(part.stored, part.indices)),
                tf.constant(part.labels),
                tf.constant(source.names(part.stored)[part.indices].astype(str)))
    label_of = np.full(len(source.labels[part.stored]), -1, np.int64)
    label_of[part.indices] = part.labels
    return tf.constant(label_of), tf.constant(source.names(part.stored).astype(str))


def _stored_order(source, part):
    """`(position, payload, label, name)` of `part` in stored order."""
    if source.random_access:
        elements = tf.data.Dataset.from_tensor_slices(_table(source, part))
    else:
        elements = _labelled(source.stream(part.stored), _table(source, part))
    return elements.enumerate().map(lambda position, element: (position, *element))


def _shuffled_order(table, part, seed, epoch):
    """`(position, payload, label, name)` of a random-access `part` in epoch
    `epoch`'s seeded order."""
    payloads, labels, names = table
    return _positions(len(part.labels), seed, epoch, 0).map(
        lambda position, index: (position, tf.gather(payloads, index),
                                 tf.gather(labels, index), tf.gather(names, index)))


def _stream_order(source, table, part, seed, epoch, shard):
    """`(position, payload, label, name)` of a streamed `part` in an order
    seeded by (seed, epoch): shards shuffled and interleaved, then records
    shuffled within windows."""
    records = _labelled(source.stream(part.stored, shuffle_seed=_epochs.seed(seed, epoch, -2),
                                      shard=shard), table)
    buffer = _pipeline.shuffle_buffer(_ENCODED_BYTES, len(part.labels))
    return _epochs.window_shuffle(records, buffer, seed, epoch).enumerate().map(
        lambda position, element: (position, *element))


def _labelled(records, table):
    """`(payload, label, name)` of the `(index, payload)` records in the part
    `table` (`_table` of a streamed source) describes."""
    label_of, names = table
    return records.map(lambda index, payload: (
        payload, tf.gather(label_of, index), tf.gather(names, index))).filter(
        lambda payload, label, name: label >= 0)


def _decoded(source, part, order, *, image_size, resize_mode, on_bad_image, shape,
             crop=None, seed=None, epoch=None):
    """`(image, label)` of the `(position, payload, label, name)` `order`."""
    if crop is None:
        elements = order.map(lambda position, payload, label, name: (payload, label, name))
    else:
        elements = order.map(lambda position, payload, label, name: (
            payload, label, name, _epochs.seed(seed, epoch, position)))
    return _pipeline.streamed(elements, source.read, image_size, resize_mode,
                              on_bad_image, shape, crop)


def _cache_file(cache, source, part, key, image_size, resize_mode):
    """A file prefix under `disk:PATH` unique to what the split holds."""
    directory = os.path.expanduser(cache[len("disk:"):])
    _io.makedirs(directory)
    digest = hashlib.sha256(repr((source.identity(part.stored)[:2], image_size,
                                  resize_mode)).encode())
    digest.update(part.indices.tobytes())
    digest.update(part.labels.tobytes())
    return os.path.join(directory, f"{key}-{digest.hexdigest()[:16]}")


def _elements(source, stored, indices):
    """`(payload, name)` of `indices` of a stored split, in order."""
    if source.random_access:
        return tf.data.Dataset.from_tensor_slices(
            (source.payloads(stored, indices), source.names(stored)[indices].astype(str)))
    keep = np.zeros(len(source.labels[stored]), bool)
    keep[indices] = True
    keep, names = tf.constant(keep), tf.constant(source.names(stored).astype(str))
    return source.stream(stored).filter(
        lambda index, _: tf.gather(keep, index)).map(
        lambda index, encoded: (encoded, tf.gather(names, index)))


# -- argument checks ----------------------------------------------------------


def _check_crop(area, image_size):
    if area is None:
        return None
    if not (isinstance(area, (tuple, list)) and len(area) == 2
            and all(_checks.is_real(a) for a in area) and 0 < area[0] <= area[1] <= 1):
        raise ValueError("Invalid value for `random_resized_crop`: expected None or "
                         "(low, high) area fractions with 0 < low <= high <= 1, "
                         f"received random_resized_crop={area!r}")
    if image_size is None:
        raise ValueError("Invalid value for `random_resized_crop`: it needs "
                         "image_size= (the size crops are resized to)")
    return float(area[0]), float(area[1])


def _check_cache(cache):
    if not (cache in ("auto", "memory", "none") or (
            isinstance(cache, str) and cache.startswith("disk:") and len(cache) > 5)):
        raise ValueError("Invalid value for `cache`: expected 'auto', 'memory', "
                         f"'none' or 'disk:PATH', received cache={cache!r}")


def _check_image_size(image_size):
    if image_size is None:
        return None
    size = (image_size,) * 2 if _checks.is_int(image_size) else image_size
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
            _checks.is_int(s) and s >= 1 for s in size)):
        raise ValueError("Invalid value for `image_size`: expected None, an int "
                         f">= 1 or (height, width), received image_size={image_size!r}")
    return int(size[0]), int(size[1])


def _check_classes(classes):
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [name.strip() for name in classes.split(",")]
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes) or not all(
            isinstance(name, str) and name for name in classes):
        raise ValueError("Invalid value for `classes`: expected distinct class "
                         f"names (a list or 'a,b,c'), received classes={classes!r}")
    return classes


def _split(part, fraction, seed, stream):
    """Holds out `fraction` of each class; returns (kept, held_out) parts."""
    labels = part.labels
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        # At least one held out per class, but never the class's last image.
        count = min(max(round(fraction * len(index)), 1), len(index) - 1)
        rng = np.random.default_rng([seed, stream, int(label)])
        held[rng.permutation(index)[:count]] = True
    return (_Part(part.stored, part.indices[~held], labels[~held]),
            _Part(part.stored, part.indices[held], labels[held]))


def _select(part, order, num_classes):
    """Keeps the classes in `order` and renumbers them 0..k-1."""
    new_label = np.full(num_classes, -1, dtype=np.int64)
    new_label[order] = np.arange(len(order))
    keep = new_label[part.labels] >= 0
    return _Part(part.stored, part.indices[keep], new_label[part.labels[keep]])


def _few_shot(part, per_class, seed, class_names):
    keep = []
    for label, name in enumerate(class_names):
        index = np.flatnonzero(part.labels == label)
        if per_class > len(index):
            raise ValueError(
                f"Invalid value for `labels_per_class`: class {name!r} has only "
                f"{len(index)} training images (after the validation split), "
                f"received labels_per_class={per_class}; lower it or "
                "validation_fraction")
        # Keyed by name: a class gets the same draw whatever `classes` selects.
        rng = np.random.default_rng([seed, _FEW_SHOT_STREAM,
                                     zlib.crc32(name.encode())])
        keep += rng.choice(index, per_class, replace=False).tolist()
    keep = np.sort(np.asarray(keep, np.int64))
    return _Part(part.stored, part.indices[keep], part.labels[keep])
