"""Decoding and `tf.data` pipelines of `kerastrain.data.load`.

Every image, whichever path loads it, is decoded by `decode_image` and
resized by `resize` here, so the in-memory and the streamed paths give the
same pixels, and the exported model's serving signatures (which call the
same two functions) see what training saw.

A file that cannot be decoded must be named (or skipped and counted), but a
failing op inside `tf.data` names nothing. The streamed pipeline therefore
numbers its elements and hands each the name of the one before it; the
parallel decode's failures are dropped by `ignore_errors`, and the gap they
leave in the numbers names the file (the element after the gap carries its
name), in an error or in a warning. A last element that never fails closes
the sequence, so a bad last file is caught too.
"""

import sys

import numpy as np
import tensorflow as tf

from kerastrain import _io

RESIZE_MODES = ("stretch", "crop", "pad")
# Decoding loops over more images than this say how far they got.
_PROGRESS_IMAGES = 20_000


def decode_image(encoded):
    """Decodes one JPEG, PNG, GIF or BMP file's bytes to uint8 RGB.

    TensorFlow's `tf.io.decode_jpeg` and `tf.io.decode_image` default to the
    fast DCT, which puts pixels a few levels off PIL's (libjpeg's accurate
    integer DCT) on every JPEG. JPEGs are therefore decoded with
    `dct_method="INTEGER_ACCURATE"`, which equals PIL bit for bit; other
    formats are lossless and decode alike anyway. Grayscale and CMYK become
    RGB, alpha is dropped, an animated GIF gives its first frame.

    Args:
        encoded: a scalar `tf.string` tensor holding the file's bytes.

    Returns:
        A uint8 tensor of shape `(height, width, 3)`.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
    return tf.ensure_shape(image, [None, None, 3])


def resize(image, size, mode="stretch"):
    """Resizes a uint8 image (or a batch of them) to `size` `(height, width)`.

    Bilinear, rounded back to uint8. `"stretch"` scales each side to fit;
    `"crop"` keeps the aspect ratio and cuts the longer side's excess evenly
    (a central crop); `"pad"` keeps the aspect ratio and fills the shorter
    side with black evenly. An image already of `size` is returned as it is.
    """
    height, width = size
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)

    def resized():
        x = image
        if mode == "crop":
            h = tf.cast(shape[-3], tf.float32)
            w = tf.cast(shape[-2], tf.float32)
            scale = tf.minimum(h / height, w / width)
            crop_h = tf.cast(tf.round(scale * height), tf.int32)
            crop_w = tf.cast(tf.round(scale * width), tf.int32)
            x = tf.image.crop_to_bounding_box(
                x, (shape[-3] - crop_h) // 2, (shape[-2] - crop_w) // 2, crop_h, crop_w)
        if mode == "pad":
            x = tf.image.resize_with_pad(x, height, width, method="bilinear")
        else:
            x = tf.image.resize(x, (height, width), method="bilinear")
        return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)

    same = tf.logical_and(tf.equal(shape[-3], height), tf.equal(shape[-2], width))
    static = [None] * (image.shape.rank - 3) + [height, width, 3]
    return tf.ensure_shape(tf.cond(same, lambda: image, resized), static)


def random_resized_crop(encoded, size, area, seed):
    """Decodes a random part of an encoded image, resized to `size`.

    The part covers a fraction in `area` `(low, high)` of the image with an
    aspect ratio in [3/4, 4/3] (the Inception crop), drawn statelessly from
    `seed` (shape `(2,)`). A JPEG decodes only that part
    (`tf.io.decode_and_crop_jpeg`): at photo sizes most pixels are never
    decoded. Other formats are decoded whole, then cut (`crop_decoded`).
    """
    def jpeg():
        begin, extent = _window(tf.io.extract_jpeg_shape(encoded), area, seed)
        part = tf.io.decode_and_crop_jpeg(
            encoded, tf.stack([begin[0], begin[1], extent[0], extent[1]]), channels=3,
            dct_method="INTEGER_ACCURATE")
        return resize(tf.ensure_shape(part, [None, None, 3]), size)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg,
                   lambda: crop_decoded(decode_image(encoded), size, area, seed))


def crop_decoded(image, size, area, seed):
    """`random_resized_crop` of a decoded uint8 image."""
    begin, extent = _window(tf.shape(image), area, seed)
    return resize(tf.slice(image, begin, extent), size)


def _window(shape, area, seed):
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=area, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return begin, extent


def streamed(elements, read, image_size, resize_mode, on_bad_image, shape, crop=None):
    """Maps `(payload, label, name)` to `(image, label)`, decoded in parallel.

    A file that cannot be read or decoded is named in an error that stops
    iteration (`on_bad_image="error"`), or skipped with a warning line that
    counts the skipped files (`"skip"`); an image of another size than
    `shape` stops iteration with an error naming it. With `crop`, an area
    range `(low, high)`, elements are `(payload, label, name, seed)` and each
    image is a `random_resized_crop` drawn from its stateless `[2]` seed.
    """
    closing = (tf.constant(""), tf.constant(-1, tf.int64), tf.constant(""))
    if crop is not None:
        closing += (tf.zeros([2], tf.int64),)
    end = tf.data.Dataset.from_tensors(closing)
    # Number the elements and give each the name of the one before it: the
    # name a gap left by `ignore_errors` is reported under.
    def numbered(state, element):
        number, previous = state
        return (number + 1, element[2]), (number, *element, previous)

    ds = elements.concatenate(end).scan((tf.constant(0, tf.int64), tf.constant("")),
                                        numbered)

    def image_of(number, payload, label, name, *rest):
        *draw, previous = rest

        def image():
            if crop is not None:
                return random_resized_crop(read(payload), image_size, crop, draw[0])
            x = decode_image(read(payload))
            return x if image_size is None else resize(x, image_size, resize_mode)

        x = tf.cond(label < 0, lambda: tf.zeros(shape, tf.uint8), image)  # The end.
        size = tf.shape(x)[:2]
        sized = tf.reduce_all(tf.equal(size, shape[:2]))
        x = tf.ensure_shape(tf.cond(sized, lambda: x, lambda: tf.zeros(shape, tf.uint8)),
                            shape)
        return number, x, label, name, previous, size

    ds = ds.map(image_of, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True).ignore_errors()

    def checked(state, element):
        # Scalars only: the image passes through untouched.
        expected, skipped = state
        number, image, label, name, previous, size = element
        missing = number - expected
        if on_bad_image == "error":
            bad = tf.debugging.Assert(tf.equal(missing, 0), [
                "Cannot decode image", previous, "(and", missing - 1, "more before it"
                "); replace or delete the file (kerastrain.data.check_folder finds "
                "every such file), or load with on_bad_image set to skip"])
        else:
            bad = tf.cond(missing > 0, lambda: tf.print(
                "WARNING: kerastrain.data skipped unreadable image", previous, "(and",
                missing - 1, "more before it;", skipped + missing, "skipped so far "
                "this pass; on_bad_image set to skip)", output_stream=sys.stderr),
                tf.no_op)
        sized = tf.debugging.Assert(tf.reduce_all(tf.equal(size, shape[:2])), [
            "Image", name, "has size", size, "(height, width) but the first image "
            f"has size {tuple(shape[:2])}; pass image_size= to resize all images "
            "to one size"])
        with tf.control_dependencies([bad, sized]):
            label = tf.identity(label)
        return (number + 1, skipped + missing), (image, label)

    zero = tf.constant(0, tf.int64)
    return ds.scan((zero, zero), checked).filter(lambda image, label: label >= 0)


def materialize(elements, read, count, image_size, resize_mode, title):
    """Decodes `count` `(payload, name)` elements, in order.

    Returns `(images, ok)`: `ok` flags each element as decodable; `images`
    holds the decodable ones, as one uint8 NHWC array when they share a
    size, else as a list of arrays. The common case (every file fine, one
    size) is decoded in parallel batches; a failure there (a bad file, an odd
    size) decodes again one file at a time to find which.
    """
    bar = _io.progress(count, title, unit_name="image") if count > _PROGRESS_IMAGES else None
    try:
        return _materialize_batched(elements, read, count, image_size, resize_mode,
                                    bar)
    except tf.errors.OpError:
        pass  # Found below, file by file.

    @tf.function
    def image_of(payload):
        image = decode_image(read(payload))
        return image if image_size is None else resize(image, image_size, resize_mode)

    images, ok = [], []
    for payload, _ in elements:
        try:
            images.append(image_of(payload).numpy())
        except tf.errors.OpError:
            ok.append(False)
        else:
            ok.append(True)
    return images, np.asarray(ok, bool)


def _materialize_batched(elements, read, count, image_size, resize_mode, bar):
    def image_of(payload, name):
        del name
        image = decode_image(read(payload))
        return image if image_size is None else resize(image, image_size, resize_mode)

    ds = elements.map(image_of, num_parallel_calls=tf.data.AUTOTUNE)
    shape = (image_size or next(iter(ds.take(1))).shape[:2]) + (3,)
    images = np.empty((count,) + tuple(shape), np.uint8)  # Filled in place.
    done = 0
    for batch in ds.map(lambda image: tf.ensure_shape(image, shape)).batch(
            256).as_numpy_iterator():
        images[done:done + len(batch)] = batch
        done += len(batch)
        if bar is not None:
            bar.update(done)
    return images[:done], np.ones(done, bool)


def shuffle_buffer(image_bytes, count, budget=256 << 20):
    """Elements a bounded shuffle buffer holds: `budget` bytes, 1,000 to all."""
    return int(min(count, max(1000, budget // max(image_bytes, 1))))
