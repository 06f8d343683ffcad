"""Dataset specs -> batched `tf.data` splits of (uint8 NHWC images, int64 labels).

- `"cifar10_mini"`: the embedded 32x32 CIFAR-10 sample (500 train, 100 test
  JPEGs per class) in `kerastrain/datasets/cifar10_mini`.
- `"folder:PATH"`: ImageFolder `PATH/train/<class>/*` + `PATH/test/<class>/*`
  (+ optional `val/` or `validation/`), or flat `PATH/<class>/*`, of which
  each class gives a seeded `DEFAULT_TEST_FRACTION` to the test split.
- `"tfds:NAME"`, `"tfds:NAME:TRAIN:TEST"`, `"tfds:NAME:TRAIN:VALIDATION:TEST"`
  (slices like `train[:90%]` allowed): a TensorFlow Datasets classification set.

Keras' `image_dataset_from_directory` decodes lazily and neither carves a
stratified validation split, nor selects and re-orders classes, nor draws a
seeded few-shot subset, nor names the file when an image is corrupt or of an
odd size. Our datasets are small, so each image is decoded once, eagerly, into
memory (cached per folder and size); `tf.data` then only shuffles and batches.
"""

import collections
import dataclasses
import functools
import os
import pathlib
import re
import zlib

import numpy as np
import tensorflow as tf
from PIL import Image

from kerastrain import _checks, _tfds
from kerastrain._tfds import DataNotPreparedError  # noqa: F401 (re-exported)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DEFAULT_TEST_FRACTION = 0.2
_EMBEDDED = pathlib.Path(__file__).parent / "datasets" / "cifar10_mini"
_SPECS = ("'cifar10_mini', 'folder:PATH', 'tfds:NAME', 'tfds:NAME:TRAIN:TEST' "
          "or 'tfds:NAME:TRAIN:VALIDATION:TEST'")
# One random stream per purpose, so that no draw depends on another.
_TEST_STREAM, _VALIDATION_STREAM, _FEW_SHOT_STREAM = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """What `load()` returns.

    `train`, `validation` and `test` yield `(uint8 images of shape (batch,
    height, width, 3), int64 labels)` batches; `validation` is `None` when
    `validation_fraction=0`. Labels index `class_names`; `num_*` count examples.
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

    @property
    def num_classes(self):
        return len(self.class_names)


def load(spec="cifar10_mini", *, image_size=None, batch_size=64, classes=None,
         labels_per_class=None, validation_fraction=0.1, seed=0, data_dir=None):
    """Loads an image classification dataset as batched `tf.data` splits.

    Grayscale, palette and RGBA images are converted to RGB (alpha is
    dropped). Validation is carved off each training class with the seed,
    unless the source has its own validation split, which is then used.

    Args:
        spec: `"cifar10_mini"`, `"folder:PATH"` or `"tfds:NAME[:SPLITS]"`
            (see the module docstring). Defaults to `"cifar10_mini"`.
        image_size: int or `(height, width)` to resize every image to
            (bilinear); `None` keeps the stored size, which must then be the
            same for all images. Defaults to `None`.
        batch_size: examples per batch. Defaults to 64.
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

    Returns:
        A `DataSplits`.

    Example:

    ```python
    data = kerastrain.data.load("cifar10_mini", classes="dog,cat", seed=1)
    model.fit(data.train, validation_data=data.validation, epochs=3)
    ```
    """
    image_size = _check_image_size(image_size)
    _checks.check_int("batch_size", batch_size, minimum=1)
    _checks.check_int("seed", seed, minimum=0)
    if labels_per_class is not None:
        _checks.check_int("labels_per_class", labels_per_class, minimum=1)
    _checks.check_real("validation_fraction", validation_fraction, 0, 1, high_open=True)
    classes = _check_classes(classes)

    class_names, splits = _read_spec(spec, image_size, seed, data_dir)
    if validation_fraction == 0:
        splits.pop("validation", None)
    elif "validation" not in splits:
        splits["train"], splits["validation"] = _split(
            *splits["train"], validation_fraction, seed, _VALIDATION_STREAM)
    if classes is not None:
        unknown = [name for name in classes if name not in class_names]
        if unknown:
            raise ValueError(f"Unknown class names {unknown} in `classes` for "
                             f"{spec!r}; available classes: {list(class_names)}")
        order = [class_names.index(name) for name in classes]
        splits = {key: _select(*arrays, order, len(class_names))
                  for key, arrays in splits.items()}
        class_names = classes
    if labels_per_class is not None:
        splits["train"] = _few_shot(*splits["train"], labels_per_class, seed,
                                    class_names)

    def pipeline(images, labels, shuffle=False):
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        if shuffle:
            ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    validation = splits.get("validation")
    return DataSplits(
        train=pipeline(*splits["train"], shuffle=True),
        validation=None if validation is None else pipeline(*validation),
        test=pipeline(*splits["test"]),
        class_names=tuple(class_names),
        image_shape=tuple(splits["train"][0].shape[1:]),
        num_train=len(splits["train"][1]),
        num_validation=0 if validation is None else len(validation[1]),
        num_test=len(splits["test"][1]),
        batch_size=batch_size,
    )


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


def _read_spec(spec, image_size, seed, data_dir):
    """Returns (class_names, {split: (images, labels)})."""
    kind, _, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if spec == "cifar10_mini":
        return _read_folder(_EMBEDDED, image_size, seed)
    if kind == "folder" and rest:
        return _read_folder(pathlib.Path(rest).expanduser(), image_size, seed)
    if kind == "tfds" and rest:
        # ':' inside brackets belongs to a slice such as 'train[:90%]'.
        name, *split_names = re.split(r":(?![^\[]*\])", rest)
        if len(split_names) in (0, 2, 3):
            class_names, names, images, labels = _tfds.read(name, split_names,
                                                            data_dir)
            return class_names, _slice(_decode(names, images, image_size), labels)
    raise ValueError(f"Unknown data spec {spec!r}: expected {_SPECS}")


def _read_folder(root, image_size, seed):
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder {str(root)!r} does not exist; pass "
                                "'folder:PATH' with an existing folder")
    split_dirs = {name: root / name for name in ("train", "test", "val", "validation")
                  if (root / name).is_dir()}
    if not split_dirs:  # Flat layout: PATH/<class>/*.
        class_names = _class_names(root)
        files = {"all": _list_images(root, class_names, required=True)}
    elif {"train", "test"} <= set(split_dirs) and len(split_dirs) < 4:  # One val dir.
        class_names = _class_names(split_dirs["train"])
        files = {"validation" if name == "val" else name: _list_images(
            folder, class_names, required=name == "train")
            for name, folder in split_dirs.items()}
    else:
        raise ValueError(f"Folder {str(root)!r} has split folders "
                         f"{sorted(split_dirs)}; expected train/ and test/ (and "
                         "at most one of val/, validation/), or class folders only")
    paths = tuple(path for split in files.values() for path, _ in split)
    stamps = tuple(os.stat(path).st_mtime_ns for path in paths)
    images = _decode_files(paths, stamps, image_size)
    splits = _slice(images, {key: [label for _, label in split]
                             for key, split in files.items()})
    if "all" in splits:
        splits["train"], splits["test"] = _split(
            *splits.pop("all"), DEFAULT_TEST_FRACTION, seed, _TEST_STREAM)
    return class_names, splits


def _class_names(folder):
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"No class folders in {str(folder)!r}: expected "
                         "PATH/<class>/*.jpg, or PATH/train/<class>/*.jpg and "
                         "PATH/test/<class>/*.jpg")
    return names


def _list_images(folder, class_names, required):
    """Returns sorted [(path, label)] of the images in folder/<class>/."""
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir()
                   and not p.name.startswith(".") and p.name not in class_names)
    if extra:
        raise ValueError(f"Class folders {extra} in {str(folder)!r} are not "
                         f"among the training classes {class_names}")
    files = []
    for label, name in enumerate(class_names):
        paths = sorted(entry.path for entry in os.scandir(folder / name)
                       if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                       ) if (folder / name).is_dir() else []
        if required and not paths:
            raise ValueError(f"Class {name!r} has no images in "
                             f"{str(folder / name)!r}; add images "
                             f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder")
        files += [(path, label) for path in paths]
    return files


@functools.lru_cache(maxsize=8)
def _decode_files(paths, stamps, image_size):
    """Decodes once per (paths, modification times, image_size)."""
    del stamps  # Only part of the cache key: edited files are decoded again.
    images = _decode(paths, map(_open_file, paths), image_size)
    images.flags.writeable = False  # Shared by every load() that hits the cache.
    return images


def _open_file(path):
    # PIL decodes JPEGs with libjpeg's accurate integer DCT, bit-identical to
    # the `kerastrain.export.decode_image` of the `serving_bytes` signature.
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"Cannot decode image {path!r} ({err}); replace or "
                         "delete the file") from err


def _decode(names, images, image_size):
    """Stacks RGB PIL `images` into uint8 NHWC; `names` name them in errors."""
    arrays = []
    for image in images:
        if image_size is not None and image.size != image_size[::-1]:
            image = image.resize(image_size[::-1], Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    if not arrays:
        raise ValueError("No images found in the data")
    common = collections.Counter(a.shape for a in arrays).most_common(1)[0][0]
    for name, array in zip(names, arrays):
        if array.shape != common:
            raise ValueError(
                f"Image {name!r} has size {array.shape[:2]} (height, width) but "
                f"most images have size {common[:2]}; pass image_size= (e.g. "
                f"image_size={common[:2]}) to resize all images to one size")
    return np.stack(arrays)


def _slice(images, labels):
    """Cuts stacked images into {split: (images, int64 labels)} by `labels`."""
    splits, start = {}, 0
    for key, split_labels in labels.items():
        stop = start + len(split_labels)
        splits[key] = images[start:stop], np.asarray(split_labels, np.int64)
        start = stop
    return splits


def _split(images, labels, fraction, seed, stream):
    """Holds out `fraction` of each class; returns (kept, held_out) arrays."""
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        # At least one held out per class, but never the class's last image.
        count = min(max(round(fraction * len(index)), 1), len(index) - 1)
        rng = np.random.default_rng([seed, stream, int(label)])
        held[rng.permutation(index)[:count]] = True
    return (images[~held], labels[~held]), (images[held], labels[held])


def _select(images, labels, order, num_classes):
    """Keeps the classes in `order` and renumbers them 0..k-1."""
    new_label = np.full(num_classes, -1, dtype=np.int64)
    new_label[order] = np.arange(len(order))
    keep = new_label[labels] >= 0
    return images[keep], new_label[labels[keep]]


def _few_shot(images, labels, per_class, seed, class_names):
    keep = []
    for label, name in enumerate(class_names):
        index = np.flatnonzero(labels == label)
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
    keep = np.sort(keep)
    return images[keep], labels[keep]
