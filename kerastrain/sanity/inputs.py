"""Check the training data itself: labels, pixel values and class balance."""

import numpy as np
import tensorflow as tf

from kerastrain._checks import check_real
from kerastrain._checks import fail
from kerastrain._checks import is_real
from kerastrain.sanity.core import CheckResult
from kerastrain.sanity.core import _batches
from kerastrain.sanity.core import _num_classes
from kerastrain.sanity.core import _take


def data_check(data, num_classes=None, *, value_range=(0, 255),
               max_imbalance=10.0):
    """Checks labels, pixel values and class balance of a whole dataset.

    Looks at every example for the data bugs that let training run but learn
    the wrong thing: labels outside `[0, num_classes)` (1-based labels, a
    wrong class count), non-integer labels, NaN/inf pixels, pixels outside
    `value_range` or already scaled to `[0, 1]` when `0..255` is expected
    (scaling twice), constant images, and classes that are missing or far
    rarer than others (`max(count) / min(count) > max_imbalance`).

    Args:
        data: `(images, labels)` arrays, a batched `tf.data.Dataset`, or the
            result of `kerastrain.data.load()` (its training split is
            checked). Labels are class indices, or one-hot rows.
        num_classes: the number of classes. Defaults to `data.num_classes`;
            required otherwise.
        value_range: `(low, high)` the pixels must lie in. Defaults to
            `(0, 255)`, raw images as `kerastrain.data.load` yields them and
            `kerastrain.models.small_cnn` takes them; use `(0, 1)` for
            images scaled in the pipeline.
        max_imbalance: the largest accepted ratio of the most to the least
            frequent class. Defaults to `10.0`.

    Returns:
        A `CheckResult` with figures `examples`, `class_counts`,
        `imbalance`, `labels_out_of_range`, `labels_not_integer`,
        `label_min`, `label_max`, `nonfinite_pixels`, `pixel_min`,
        `pixel_max` and `dtype`.

    Example:

    >>> data_check(kerastrain.data.load("cifar10_mini")).figures["class_counts"]
    [450, 450, 450, 450, 450, 450, 450, 450, 450, 450]
    """
    if getattr(data, "num_classes", None) is None and num_classes is None:
        raise ValueError(
            "Invalid value for `num_classes`: required unless `data` has a "
            "`num_classes` attribute, received num_classes=None"
        )
    num_classes = _num_classes(num_classes, data)
    low, high = _check_range(value_range)
    check_real("max_imbalance", max_imbalance, 1)
    totals = _Totals(num_classes)
    source = getattr(data, "train", data)
    if isinstance(source, tf.data.Dataset):
        for x, y in _batches(source):
            totals.add(np.asarray(x), np.asarray(y))
    else:
        totals.add(*_take(source))
    figures = totals.figures()
    problems = []
    if figures["labels_out_of_range"]:
        shifted = figures["label_min"] == 1 and figures["label_max"] == num_classes
        problems.append(
            f"{figures['labels_out_of_range']} labels lie outside "
            f"[0, {num_classes}) (min {figures['label_min']:g}, max "
            f"{figures['label_max']:g})"
            + ("; they look 1-based: subtract 1" if shifted else ""))
    if figures["labels_not_integer"]:
        problems.append(f"{figures['labels_not_integer']} labels are not "
                        "whole numbers")
    if figures["nonfinite_pixels"]:
        problems.append(f"{figures['nonfinite_pixels']} pixels are NaN/inf")
    if figures["pixel_min"] < low or figures["pixel_max"] > high:
        problems.append(f"pixels span [{figures['pixel_min']:g}, "
                        f"{figures['pixel_max']:g}], outside value_range "
                        f"[{low:g}, {high:g}]")
    elif high > 1 and figures["pixel_max"] <= 1 and figures["dtype"] != "uint8":
        problems.append(f"pixels lie in [{figures['pixel_min']:g}, "
                        f"{figures['pixel_max']:g}] although [{low:g}, "
                        f"{high:g}] is expected: scaled twice? Pass "
                        "value_range=(0, 1) if intended")
    if figures["pixel_min"] == figures["pixel_max"]:
        problems.append("every pixel has the same value")
    counts = figures["class_counts"]
    missing = [i for i, count in enumerate(counts) if count == 0]
    if missing:
        problems.append(f"classes {missing} have no examples")
    elif figures["imbalance"] > max_imbalance:
        problems.append(f"classes are imbalanced {figures['imbalance']:.1f}:1 "
                        f"(counts {min(counts)}..{max(counts)}); resample or "
                        "pass class_weight to fit")
    if problems:
        advice = "; ".join(problems)
        return CheckResult("data_check", False, figures,
                           advice[0].upper() + advice[1:] + ".")
    return CheckResult("data_check", True, figures,
                       f"{figures['examples']} examples: labels in range, "
                       f"pixels in [{figures['pixel_min']:g}, "
                       f"{figures['pixel_max']:g}], classes balanced "
                       f"{figures['imbalance']:.1f}:1.")


class _Totals:
    """Running counts over the batches of a dataset."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.examples = self.out_of_range = self.not_integer = 0
        self.nonfinite = 0
        self.label_min = self.pixel_min = np.inf
        self.label_max = self.pixel_max = -np.inf
        self.dtype = None

    def add(self, images, labels):
        if labels.ndim == 2 and labels.shape[-1] == self.num_classes:
            labels = np.argmax(labels, axis=-1)
        labels = labels.reshape(-1).astype(np.float64)
        self.examples += len(labels)
        self.dtype = str(images.dtype)
        whole = labels == np.round(labels)
        inside = whole & (labels >= 0) & (labels < self.num_classes)
        self.not_integer += int(np.sum(~whole))
        self.out_of_range += int(np.sum(whole & ~inside))
        self.counts += np.bincount(labels[inside].astype(np.int64),
                                   minlength=self.num_classes)
        if len(labels):
            self.label_min = min(self.label_min, float(labels.min()))
            self.label_max = max(self.label_max, float(labels.max()))
        pixels = images.astype(np.float64)
        finite = np.isfinite(pixels)
        self.nonfinite += int(np.sum(~finite))
        if finite.any():
            self.pixel_min = min(self.pixel_min, float(pixels[finite].min()))
            self.pixel_max = max(self.pixel_max, float(pixels[finite].max()))

    def figures(self):
        present = self.counts[self.counts > 0]
        imbalance = float(present.max() / present.min()) if len(present) else 0.0
        return {
            "examples": self.examples,
            "class_counts": self.counts.tolist(),
            "imbalance": imbalance,
            "labels_out_of_range": self.out_of_range,
            "labels_not_integer": self.not_integer,
            "label_min": self.label_min,
            "label_max": self.label_max,
            "nonfinite_pixels": self.nonfinite,
            "pixel_min": self.pixel_min,
            "pixel_max": self.pixel_max,
            "dtype": self.dtype,
        }


def _check_range(value_range):
    pair = tuple(value_range) if isinstance(value_range, (list, tuple)) else ()
    if len(pair) != 2 or not all(is_real(v) for v in pair) or not pair[0] < pair[1]:
        fail("value_range", value_range, "(low, high) with low < high, such as (0, 255)")
    return float(pair[0]), float(pair[1])
