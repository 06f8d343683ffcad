"""Augmentation policies applied in the `tf.data` pipeline, on whole batches.

Keras already ships `RandomFlip`, `RandomRotation`, `RandomZoom`,
`RandomShear`, `RandomTranslation` and `RandomColorJitter`. Stacked, each
geometric layer resamples the image once, which costs time and blurs the
image a little more at every step. `Augmentation` composes flip, rotation,
stretch, shear and translation into ONE affine matrix per image and resamples
each batch once; colour jitter (brightness, contrast, saturation, hue) is
likewise one 3x3 colour matrix plus an offset per image. The resampling
follows `ImageProjectiveTransformV3`'s conventions but is written as
coordinate arithmetic plus gathers, so that XLA fuses the whole chain into a
few loops: `benchmarks/augment_throughput.py` measures it at 1.8x the
throughput of the same policy resampled by one `ImageProjectiveTransformV3`
call per batch, and 5x a stack of Keras preprocessing layers. It runs on
uint8 batches, in `tf.data` (`Augmentation.apply`, where it is fastest) or
as a Keras layer inside a model, and is reproducible when seeded.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from kerastrain import _checks
from kerastrain import plots
from kerastrain.data import _epochs

POLICIES = {
    "none": dict(flip=False),
    "light": dict(flip=True, translate=0.125),
    "standard": dict(
        flip=True, rotate=10.0, stretch=0.1, shear=8.0, translate=0.1,
        color_jitter=dict(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02),
    ),
    "heavy": dict(
        flip=True, rotate=20.0, stretch=0.2, shear=15.0, translate=0.15,
        color_jitter=dict(brightness=0.2, contrast=0.3, saturation=0.3, hue=0.05),
    ),
}
_JITTER_BOUNDS = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.5}
_FILL_MODES = ("reflect", "wrap", "constant", "nearest")
_INTERPOLATIONS = ("bilinear", "nearest")
# NTSC YIQ: Y is the luminance tf.image.rgb_to_grayscale uses; I and Q hold
# the chroma, so saturation scales (I, Q) and a hue shift rotates them.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
# The uniform [0, 1) numbers each image draws, one per name, laid out as the
# columns of one `[batch, len(_DRAWS)]` draw in this order. A transform reads
# its numbers by name, so a new one is one entry here; append it, and note
# that a longer draw changes every number a given seed gives.
_DRAWS = (
    "flip", "rotate", "stretch_x", "stretch_y", "shear_x", "shear_y",
    "translate_x", "translate_y", "brightness", "contrast", "saturation", "hue",
)


def _normalize_jitter(color_jitter):
    if color_jitter is None:
        return None
    if isinstance(color_jitter, (tuple, list)):
        if len(color_jitter) != 4:
            raise ValueError(
                "Invalid value for `color_jitter`: expected None, a dict or a "
                "tuple (brightness, contrast, saturation, hue), received "
                f"color_jitter={color_jitter!r}"
            )
        color_jitter = dict(zip(_JITTER_BOUNDS, color_jitter))
    if not isinstance(color_jitter, dict):
        raise ValueError(
            "Invalid value for `color_jitter`: expected None, a dict or a tuple "
            f"(brightness, contrast, saturation, hue), received {color_jitter!r}"
        )
    unknown = sorted(set(color_jitter) - set(_JITTER_BOUNDS))
    if unknown:
        raise ValueError(
            f"Invalid value for `color_jitter`: unknown keys {unknown}; "
            f"expected keys among {list(_JITTER_BOUNDS)}"
        )
    return {
        key: _checks.check_real(f"color_jitter['{key}']", color_jitter.get(key, 0.0),
                                0.0, bound)
        for key, bound in _JITTER_BOUNDS.items()
    }


def _named_draws(draws):
    """Names the columns of a `[batch, len(_DRAWS)]` draw: `{name: [batch]}`."""
    return dict(zip(_DRAWS, tf.unstack(draws, num=len(_DRAWS), axis=1)))


def _symmetric(u, bound):
    """Maps uniform [0, 1) samples to uniform [-bound, bound)."""
    return (2.0 * u - 1.0) * bound


def _affine(a, b, c, d, e, f):
    """Stacks per-image affine rows into `[batch, 3, 3]` matrices."""
    zero, one = tf.zeros_like(a), tf.ones_like(a)
    rows = [a, b, c, d, e, f, zero, zero, one]
    return tf.reshape(tf.stack(rows, axis=-1), [-1, 3, 3])


def _inverse_transform(flip, theta, zx, zy, kx, ky, tx, ty, height, width):
    """Output-to-input matrices of `out = c + T + R H S F (in - c)`.

    `c` is the image centre, `F` a horizontal mirror (`flip` = -1) or not
    (+1), `S = diag(zx, zy)`, `H = [[1, kx], [ky, 1]]` a shear, `R` a rotation
    by `theta` radians and `T = (tx, ty)` a shift in pixels, all `[batch]`
    tensors. The inverse is composed from the inverted factors in reverse
    order, so the whole chain costs one resample.
    """
    zero, one = tf.zeros_like(theta), tf.ones_like(theta)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin, det = tf.cos(theta), tf.sin(theta), 1.0 - kx * ky
    factors = [
        _affine(one, zero, zero + cx, zero, one, zero + cy),
        _affine(flip, zero, zero, zero, one, zero),
        _affine(1.0 / zx, zero, zero, zero, 1.0 / zy, zero),
        _affine(one / det, -kx / det, zero, -ky / det, one / det, zero),
        _affine(cos, sin, zero, -sin, cos, zero),
        _affine(one, zero, -tx - cx, zero, one, -ty - cy),
    ]
    matrix = factors[0]
    for factor in factors[1:]:
        matrix = tf.matmul(matrix, factor)
    return matrix


def _source_index(i, n, fill_mode):
    """Maps integer source coordinates outside `[0, n)` back inside."""
    if fill_mode == "reflect":  # (d c b a | a b c d | d c b a)
        i = tf.math.floormod(i, 2 * n)
        return tf.where(i >= n, 2 * n - 1 - i, i)
    if fill_mode == "wrap":
        return tf.math.floormod(i, n)
    return tf.clip_by_value(i, 0, n - 1)


def _warp(images, matrices, fill_mode="reflect", fill_value=0.0, interpolation="bilinear"):
    """Resamples float images `[batch, h, w, c]` once, given output-to-input matrices.

    Same conventions as `ImageProjectiveTransformV3` (pixel centres at
    integer coordinates, `(d c b a | a b c d | d c b a)` reflection), written
    as coordinate arithmetic plus gathers so that XLA fuses it: on CPU this
    takes about half the CPU time of that kernel, which computes the
    source coordinates again for every channel. One difference: `"wrap"`
    interpolates across the seam between the last and the first pixel,
    where TensorFlow's kernel clamps.
    """
    shape = tf.shape(images)
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)]).astype(np.float32)
    source = tf.einsum("bij,jp->bip", matrices[:, :2, :], tf.constant(grid))
    flat = tf.reshape(images, [-1, channels])
    offsets = (tf.range(shape[0]) * (height * width))[:, None]

    def read(y, x):
        value = tf.gather(flat, offsets + _source_index(y, height, fill_mode) * width
                          + _source_index(x, width, fill_mode))
        if fill_mode != "constant":
            return value
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        return tf.where(inside[..., None], value, fill_value)

    if interpolation == "nearest":
        rounded = tf.cast(tf.floor(source + 0.5), tf.int32)
        return tf.reshape(read(rounded[:, 1], rounded[:, 0]), shape)
    corner = tf.floor(source)
    fx, fy = tf.unstack((source - corner)[..., None], axis=1)
    x0, y0 = tf.unstack(tf.cast(corner, tf.int32), axis=1)
    top_left, bottom_left = read(y0, x0), read(y0 + 1, x0)
    top = top_left + (read(y0, x0 + 1) - top_left) * fx
    bottom = bottom_left + (read(y0 + 1, x0 + 1) - bottom_left) * fx
    return tf.reshape(top + (bottom - top) * fy, shape)


@keras.saving.register_keras_serializable(package="kerastrain")
class Augmentation(keras.layers.Layer):
    """Random flip, rotation, stretch, shear, translation and colour jitter.

    Every geometric transform is folded into one affine matrix per image,
    `out = c + T + R H S F (in - c)` about the image centre `c`, and each
    batch is resampled once; colour jitter is one per-image colour matrix.
    Each image gets independent magnitudes drawn uniformly from the ranges
    below; a zero range switches that transform off.

    It works on uint8 batches `[batch, height, width, channels]` in two
    places. In `tf.data`, `apply(dataset)` augments the batches in parallel
    with the training step, each batch with its own seed (the faster way).
    As a Keras layer inside a model (after `keras.Input(shape,
    dtype="uint8")`), it augments only while training (`fit`, or a call
    with `training=True`) and passes images through unchanged otherwise
    (`predict`, `evaluate`, an exported model); its seed state is a
    `keras.random.SeedGenerator`.

    Args:
        flip: whether to mirror each image left-right with probability 0.5.
            Defaults to `True`.
        rotate: largest rotation, in degrees. Defaults to `0.0`.
        stretch: largest relative scale change, drawn independently for x
            and y: scales lie in `[1 - stretch, 1 + stretch]`. Defaults to `0.0`.
        shear: largest shear angle, in degrees (`0 <= shear < 45`), drawn
            independently for x and y; the shear factor is `tan(angle)`.
            Defaults to `0.0`.
        translate: largest shift, as a fraction of the image height/width.
            Shifts are whole pixels, so flip plus translate alone is an exact
            pad-and-crop. Defaults to `0.0`.
        color_jitter: `None`, or a dict/4-tuple of `brightness` (largest
            additive shift, fraction of 255), `contrast` (factor in
            `[1 - c, 1 + c]` around each channel's mean), `saturation`
            (factor in `[1 - s, 1 + s]` on the chroma), `hue` (largest hue
            rotation as a fraction of a full turn, at most 0.5). Defaults to `None`.
        fill_mode: `"reflect"`, `"wrap"`, `"constant"` or `"nearest"`.
            Defaults to `"reflect"`.
        fill_value: value used outside the image with `fill_mode="constant"`.
            Defaults to `0.0`.
        interpolation: `"bilinear"` or `"nearest"`. Defaults to `"bilinear"`.
        seed: an int >= 0 or `None`. The same seed gives the same augmented
            batches. Defaults to `None`.
        **kwargs: base layer arguments (`name`, ...).

    Example:

    >>> aug = Augmentation.from_policy("standard", seed=0)
    >>> train = aug.apply(kerastrain.data.load("cifar10_mini").train)
    >>> inputs = keras.Input((32, 32, 3), dtype="uint8")
    >>> x = keras.layers.Rescaling(1 / 255)(Augmentation(flip=True, seed=0)(inputs))
    """

    def __init__(self, flip=True, rotate=0.0, stretch=0.0, shear=0.0, translate=0.0,
                 color_jitter=None, fill_mode="reflect", fill_value=0.0,
                 interpolation="bilinear", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.flip = _checks.check("flip", flip, isinstance(flip, bool), "True or False")
        self.rotate = _checks.check_real("rotate", rotate, 0.0, 180.0)
        self.stretch = _checks.check_real("stretch", stretch, 0.0, 1.0, high_open=True)
        self.shear = _checks.check_real("shear", shear, 0.0, 45.0, high_open=True)
        self.translate = _checks.check_real("translate", translate, 0.0, 0.5)
        self.color_jitter = _normalize_jitter(color_jitter)
        self.fill_mode = _checks.check_choice("fill_mode", fill_mode, _FILL_MODES)
        self.fill_value = _checks.check_real("fill_value", fill_value, 0.0, 255.0)
        self.interpolation = _checks.check_choice("interpolation", interpolation,
                                                  _INTERPOLATIONS)
        _checks.check_seed("seed", seed)
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        # XLA fuses the whole chain into a few loops; compiled once per shape.
        self._compiled = tf.function(self._augment, jit_compile=True)

    @classmethod
    def from_policy(cls, name, seed=None):
        """Builds a preset: `"none"`, `"light"`, `"standard"` or `"heavy"`."""
        _checks.check_choice("name", name, POLICIES)
        return cls(**POLICIES[name], seed=seed)

    def get_config(self):
        return {
            **super().get_config(),
            "flip": self.flip, "rotate": self.rotate, "stretch": self.stretch,
            "shear": self.shear, "translate": self.translate,
            "color_jitter": None if self.color_jitter is None else dict(self.color_jitter),
            "fill_mode": self.fill_mode, "fill_value": self.fill_value,
            "interpolation": self.interpolation, "seed": self.seed,
        }

    def apply(self, dataset):
        """Augments a dataset of batched `(uint8 images, labels, ...)` elements.

        Only the images change (same shape, uint8); the rest of each element
        passes through. Batches are augmented in parallel, in order, and
        prefetched (augmented while the model trains on earlier ones). Batch
        `i` of epoch `e` draws from the seed `(seed, e, i)`: each iteration of
        the returned dataset is the next epoch (fresh draws), and
        `kerastrain.data.set_epoch(e)` (which
        `kerastrain.callbacks.BackupAndRestore` calls) makes the next one
        epoch `e` in any process, so a resumed run augments as the
        uninterrupted one did.

        Args:
            dataset: a `tf.data.Dataset` of image batches or of tuples whose
                first item is the image batch.

        Returns:
            A `tf.data.Dataset` with the same element structure (and
            cardinality).
        """
        spec = dataset.element_spec
        self._check_images(spec[0] if isinstance(spec, tuple) else spec, "dataset")
        base = self.seed if self.seed is not None else int(
            np.random.default_rng().integers(2**31))
        batches = int(dataset.cardinality())

        def make_pass(epoch, skip):
            def augment(position, element):
                seed = _epochs.seed(base, epoch, skip + position)
                if isinstance(element, tuple):
                    return (self.augment_batch(element[0], seed),) + element[1:]
                return self.augment_batch(element, seed)

            return dataset.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE)

        ds, _ = _epochs.passes(make_pass, batches if batches >= 0 else None)
        # Prefetch: the next batches are augmented while the model trains.
        return ds.prefetch(tf.data.AUTOTUNE)

    # `training` defaults to False, as for `Dropout`: Keras' `model.export`
    # serves `model(x)` without it, and a served model must not augment.
    def call(self, images, training=False):
        """Augments one uint8 batch while training; the identity otherwise."""
        if not training:
            return images
        return self.augment_batch(images, self.seed_generator.next())

    def compute_output_spec(self, images, training=False):
        self._check_images(images, "images")
        return keras.KerasTensor(images.shape, images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def augment_batch(self, images, seed):
        """Augments a uint8 batch with a stateless `[2]`-int `seed`."""
        images = tf.convert_to_tensor(images)
        self._check_images(images, "images")
        if not (self._geometric() or self.color_jitter):
            return images
        # Drawn outside XLA, whose CPU random-number kernel is ~10x slower.
        draws = tf.random.stateless_uniform([tf.shape(images)[0], len(_DRAWS)], seed=seed)
        return tf.ensure_shape(self._compiled(images, _named_draws(draws)), images.shape)

    def _geometric(self):
        return bool(self.flip or self.rotate or self.stretch or self.shear or self.translate)

    def _augment(self, images, u):
        x = tf.cast(images, tf.float32)
        # Colour first: a per-image affine colour map commutes with the
        # (weights sum to one) interpolation, and jittering the 1x source
        # pixels is cheaper than the warped ones that XLA would recompute.
        if self.color_jitter is not None:
            x = self._jitter(x, tf.reduce_mean(x, axis=[1, 2]), u)
        if self._geometric():
            x = _warp(x, self._matrices(u, images.shape[1], images.shape[2]),
                      self.fill_mode, self.fill_value, self.interpolation)
        return tf.saturate_cast(tf.round(x), tf.uint8)

    def _matrices(self, u, height, width):
        """Output-to-input matrices from the named draws `u` (`_named_draws`)."""
        degrees = math.pi / 180.0
        flip = tf.where(u["flip"] < 0.5, -1.0, 1.0) if self.flip else tf.ones_like(u["flip"])
        return _inverse_transform(
            flip,
            _symmetric(u["rotate"], self.rotate * degrees),
            1.0 + _symmetric(u["stretch_x"], self.stretch),
            1.0 + _symmetric(u["stretch_y"], self.stretch),
            tf.tan(_symmetric(u["shear_x"], self.shear * degrees)),
            tf.tan(_symmetric(u["shear_y"], self.shear * degrees)),
            tf.round(_symmetric(u["translate_x"], self.translate * width)),
            tf.round(_symmetric(u["translate_y"], self.translate * height)),
            height, width,
        )

    def _jitter(self, x, mean, u):
        """`y = M (c (x - mean) + mean + b)` per image, as one multiply-add.

        `b` is the brightness shift, `c` the contrast factor around the
        source image's per-channel `mean`, and `M` the saturation and hue
        matrix, `M = YIQ^-1 [[1, 0], [0, s R(h)]] YIQ`; `u` are the named
        draws (`_named_draws`).
        """
        jitter = self.color_jitter
        shift = _symmetric(u["brightness"], 255.0 * jitter["brightness"])[:, None]
        contrast = 1.0 + _symmetric(u["contrast"], jitter["contrast"])
        offset = (1.0 - contrast)[:, None] * mean + shift
        if not (jitter["saturation"] or jitter["hue"]):
            return contrast[:, None, None, None] * x + offset[:, None, None, :]
        chroma = 1.0 + _symmetric(u["saturation"], jitter["saturation"])
        angle = _symmetric(u["hue"], 2.0 * math.pi * jitter["hue"])
        cos, sin, zero = chroma * tf.cos(angle), chroma * tf.sin(angle), tf.zeros_like(angle)
        rotation = tf.roll(_affine(cos, -sin, zero, sin, cos, zero), shift=[1, 1], axis=[1, 2])
        color = tf.constant(_YIQ_TO_RGB, tf.float32) @ rotation @ tf.constant(_RGB_TO_YIQ, tf.float32)
        offset = tf.einsum("bij,bj->bi", color, offset)[:, None, None, :]
        # Column-by-column multiply-adds fuse with the warp; a batched matmul
        # of [pixels, 3] x [3, 3] would not.
        linear = (contrast[:, None, None] * color)[:, None, None]
        return sum(x[..., i:i + 1] * linear[..., i] for i in range(3)) + offset

    def _check_images(self, images, name):
        shape = tf.TensorShape(images.shape)
        dtype = keras.backend.standardize_dtype(images.dtype)
        if dtype != "uint8" or shape.rank != 4:
            raise ValueError(
                f"Invalid `{name}`: expected uint8 image batches of shape "
                f"[batch, height, width, channels], received dtype={dtype} "
                f"shape={shape}. Batch the dataset and keep images as uint8 "
                "(in a model: keras.Input(shape, dtype=\"uint8\"))."
            )
        if None in shape[1:3] or (self.color_jitter is not None and shape[-1] != 3):
            raise ValueError(
                f"Invalid `{name}`: expected a known height and width (and 3 "
                f"channels for colour jitter), received shape={shape}."
            )


def preview(dataset_or_images, path, n=16, augmentation=None, seed=0):
    """Saves a PNG grid of `n` images next to their augmented versions.

    Args:
        dataset_or_images: a batched dataset as `Augmentation.apply` takes, or
            a uint8 array `[batch, height, width, 3]`.
        path: where to write the PNG.
        n: how many images to show. Defaults to `16`.
        augmentation: an `Augmentation`, a policy name, or `None` for
            `"standard"`. Defaults to `None`.
        seed: seed for the augmentation. Defaults to `0`.

    Returns:
        `path`.
    """
    _checks.check_int("n", n, minimum=1)
    if augmentation is None or isinstance(augmentation, str):
        augmentation = Augmentation.from_policy(augmentation or "standard", seed=seed)
    if not isinstance(augmentation, Augmentation):
        raise ValueError(
            "Invalid value for `augmentation`: expected an Augmentation, a policy "
            f"name or None, received augmentation={augmentation!r}"
        )
    if isinstance(dataset_or_images, tf.data.Dataset):
        images = dataset_or_images.map(lambda *e: e[0]).unbatch().take(n)
        originals = np.stack(list(images.as_numpy_iterator()))
    else:
        originals = np.asarray(dataset_or_images)[:n]
    augmented = augmentation.augment_batch(originals, tf.constant([seed, 0], tf.int64))
    return plots.augmentation_grid(originals, np.asarray(augmented), path)
