"""Tests for kerastrain.augment on real CIFAR-10 images."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kerastrain import augment
from kerastrain import data


@pytest.fixture(scope="module")
def splits():
    return data.load("cifar10_mini", batch_size=32, classes=["cat", "ship"], seed=0)


def _fixed(splits, batches):
    """A few training batches frozen in order (the train split reshuffles)."""
    pairs = list(splits.train.take(batches).as_numpy_iterator())
    images = np.stack([x for x, _ in pairs])
    labels = np.stack([y for _, y in pairs])
    return tf.data.Dataset.from_tensor_slices((images, labels))


@pytest.fixture(scope="module")
def batch(splits):
    images, labels = next(iter(splits.train))
    return images.numpy(), labels.numpy()


def _reference_warp(images, matrices, interpolation="BILINEAR", fill_mode="REFLECT"):
    """TensorFlow's own kernel: one ImageProjectiveTransformV3 call."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=tf.reshape(matrices, [-1, 9])[:, :8],
        output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation=interpolation, fill_mode=fill_mode).numpy()


def _random_matrices(policy, n, height, width, seed=1):
    draws = tf.random.stateless_uniform([n, len(augment._DRAWS)], seed=[seed, 0])
    return policy._matrices(augment._named_draws(draws), height, width)


@pytest.mark.parametrize("policy", ["none", "light", "standard", "heavy"])
def test_apply_keeps_labels_shapes_and_dtype(splits, policy):
    augmentation = augment.Augmentation.from_policy(policy, seed=3)
    source = _fixed(splits, 3)
    out = list(augmentation.apply(source).as_numpy_iterator())
    ref = list(source.as_numpy_iterator())
    assert len(out) == len(ref)
    for (x, y), (x0, y0) in zip(out, ref):
        assert x.dtype == np.uint8 and x.shape == x0.shape
        np.testing.assert_array_equal(y, y0)
    changed = np.mean([np.mean(x != x0) for (x, _), (x0, _) in zip(out, ref)])
    if policy == "none":
        assert changed == 0.0
    else:
        assert changed > 0.3


def test_seeded_runs_reproduce_and_epochs_differ(splits):
    source = _fixed(splits, 2)

    def run(seed):
        dataset = augment.Augmentation.from_policy("standard", seed=seed).apply(source)
        first = [x for x, _ in dataset.as_numpy_iterator()]
        second = [x for x, _ in dataset.as_numpy_iterator()]
        return first, second

    a1, a2 = run(7)
    b1, _ = run(7)
    c1, _ = run(8)
    for x, y in zip(a1, b1):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a1, c1))
    # A new epoch draws new augmentations, reproducibly.
    assert any(not np.array_equal(x, y) for x, y in zip(a1, a2))


def test_flip_only_mirrors_exactly(batch):
    images, _ = batch
    out = augment.Augmentation(flip=True, seed=0).augment_batch(images, tf.constant([4, 0]))
    out = out.numpy()
    for original, augmented in zip(images, out):
        assert (np.array_equal(augmented, original)
                or np.array_equal(augmented, original[:, ::-1]))
    flipped = [not np.array_equal(a, o) for a, o in zip(out, images)]
    assert 0 < sum(flipped) < len(images)


def _shifted(image, dx, dy):
    """`image` moved right by `dx` and down by `dy` pixels, zeros shifted in."""
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        image[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return out


def test_translate_is_whole_pixel_shift(batch):
    images, _ = batch
    policy = augment.Augmentation(flip=False, translate=0.125, fill_mode="constant", seed=0)
    out = policy.augment_batch(images, tf.constant([5, 0])).numpy()
    # Every output is exactly its source shifted by one whole-pixel (dx, dy)
    # with |dx|, |dy| <= 0.125 * 32, zeros shifted in: no interpolation.
    shifts = []
    for original, augmented in zip(images, out):
        matches = [(dx, dy) for dx in range(-4, 5) for dy in range(-4, 5)
                   if np.array_equal(_shifted(original, dx, dy), augmented)]
        assert len(matches) == 1, matches
        shifts.append(matches[0])
    # ... and translate does move them: the shifts are spread over the range
    # (a translate that did nothing would give (0, 0) for every image).
    moved = [shift for shift in shifts if shift != (0, 0)]
    assert len(moved) >= 0.75 * len(images), shifts
    assert len(set(shifts)) >= len(images) // 4, shifts
    assert {abs(dx) for dx, _ in shifts} >= {1, 2, 3}, shifts
    assert {abs(dy) for _, dy in shifts} >= {1, 2, 3}, shifts


def test_fused_warp_matches_single_reference_warp(batch):
    images, _ = batch
    policy = augment.Augmentation.from_policy("heavy")
    matrices = _random_matrices(policy, len(images), 32, 32)
    for mode in ("reflect", "nearest", "constant"):
        ours = augment._warp(tf.cast(images, tf.float32), matrices, fill_mode=mode).numpy()
        ref = _reference_warp(images, matrices, fill_mode=mode.upper())
        assert np.abs(ours - ref).max() < 1e-2, mode
    # TensorFlow's "wrap" clamps between the last and the first pixel; ours
    # interpolates across that seam. Where no wrapping happens they agree.
    ours = augment._warp(tf.cast(images, tf.float32), matrices, fill_mode="wrap").numpy()
    ref = _reference_warp(images, matrices, fill_mode="WRAP")
    ys, xs = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    source = np.einsum("bij,jp->bip", matrices.numpy()[:, :2], grid)
    inside = np.all((source >= 0) & (source <= 31), axis=1).reshape(-1, 32, 32)
    assert np.abs(ours - ref)[inside].max() < 1e-2
    assert inside.mean() > 0.5
    ours = augment._warp(tf.cast(images, tf.float32), matrices, interpolation="nearest").numpy()
    ref = _reference_warp(images, matrices, interpolation="NEAREST")
    # Rounding ties may pick the other neighbour on a few pixels.
    assert np.mean(ours != ref) < 0.01


def _smooth_image(size=32):
    """A band-limited test pattern whose value is known at any real point."""
    def value(x, y):
        return 127.5 + 60 * np.sin(2 * np.pi * x / 13) + 60 * np.cos(2 * np.pi * y / 11)
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return value, value(xs, ys)


def test_one_resample_is_closer_to_truth_than_chained_resamples():
    value, image = _smooth_image()
    images = tf.constant(image[None, :, :, None], tf.float32)
    one = tf.ones([1])
    zero = tf.zeros([1])
    steps = [  # rotate, stretch, shear as three separate warps
        augment._inverse_transform(one, zero + 0.3, one, one, zero, zero, zero, zero, 32, 32),
        augment._inverse_transform(one, zero, one * 1.15, one * 0.9, zero, zero, zero, zero, 32, 32),
        augment._inverse_transform(one, zero, one, one, zero + 0.2, zero, zero, zero, 32, 32),
    ]
    # Output-to-input matrices compose in application order: M1 @ M2 @ M3.
    combined = steps[0] @ steps[1] @ steps[2]
    chained = images
    for matrix in reversed(steps):
        chained = augment._warp(chained, matrix)
    fused = augment._warp(images, combined)
    ys, xs = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    source = np.einsum("ij,jp->ip", combined[0].numpy(),
                       np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)]))
    truth = value(source[0], source[1]).reshape(32, 32)
    inside = ((source[0] >= 0) & (source[0] <= 31) & (source[1] >= 0)
              & (source[1] <= 31)).reshape(32, 32)
    # Chained warps also read reflected borders in between; compare well inside.
    inside &= np.pad(np.ones((24, 24), bool), 4)
    fused_error = np.abs(fused.numpy()[0, :, :, 0] - truth)[inside].mean()
    chained_error = np.abs(chained.numpy()[0, :, :, 0] - truth)[inside].mean()
    assert fused_error < 0.8 * chained_error, (fused_error, chained_error)


def test_color_jitter_brightness_and_saturation(batch):
    images, _ = batch
    bright = augment.Augmentation(
        flip=False, color_jitter=dict(brightness=0.2, contrast=0, saturation=0, hue=0))
    out = bright.augment_batch(images, tf.constant([1, 0])).numpy().astype(float)
    diff = (out - images).reshape(len(images), -1)
    # A pure brightness shift moves every unsaturated pixel by the same amount.
    unclipped = (out > 0) & (out < 255)
    for d, keep in zip(diff, unclipped.reshape(len(images), -1)):
        assert np.ptp(d[keep]) <= 1.0
    assert np.abs(diff.mean(axis=1)).max() > 5
    gray = augment.Augmentation(
        flip=False, color_jitter=dict(brightness=0, contrast=0, saturation=1.0, hue=0))
    rgb = images.astype(float)
    outs = gray.augment_batch(images, tf.constant([2, 0])).numpy().astype(float)
    spread_in = np.std(rgb, axis=-1).mean(axis=(1, 2))
    spread_out = np.std(outs, axis=-1).mean(axis=(1, 2))
    # Saturation factors in [0, 2]: some images lose colour, some gain it.
    assert (spread_out < 0.8 * spread_in).any() and (spread_out > 1.1 * spread_in).any()


def test_get_config_round_trip():
    policy = augment.Augmentation.from_policy("heavy", seed=5)
    config = policy.get_config()
    clone = augment.Augmentation.from_config(config)
    assert clone.get_config() == config
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    seed = tf.constant([9, 0])
    np.testing.assert_array_equal(policy.augment_batch(images, seed), clone.augment_batch(images, seed))


@pytest.mark.parametrize("kwargs, message", [
    (dict(rotate=-1), "rotate"),
    (dict(stretch=1.0), "stretch"),
    (dict(shear=45), "shear"),
    (dict(translate=0.7), "translate"),
    (dict(flip="yes"), "flip"),
    (dict(color_jitter=dict(brightness=0.1, sparkle=1)), "sparkle"),
    (dict(color_jitter=dict(hue=0.9)), "hue"),
    (dict(fill_mode="mirror"), "fill_mode"),
    (dict(seed=1.5), "seed"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment.Augmentation(**kwargs)


def test_bad_policy_and_bad_images():
    with pytest.raises(ValueError, match="standard"):
        augment.Augmentation.from_policy("extreme")
    policy = augment.Augmentation.from_policy("standard")
    with pytest.raises(ValueError, match="uint8"):
        policy.augment_batch(np.zeros((2, 32, 32, 3), np.float32), tf.constant([0, 0]))
    with pytest.raises(ValueError, match="Batch"):
        policy.apply(tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 8, 3), np.uint8)))


def test_preview_writes_png_grid(splits, tmp_path):
    path = augment.preview(splits.train, str(tmp_path / "preview.png"), n=8)
    with Image.open(path) as picture:
        width, height = picture.size
    # 8 columns, one row of originals and one of augmented images.
    assert width == 8 * 100 and height == 2 * 100
    with pytest.raises(ValueError, match="n"):
        augment.preview(splits.train, str(tmp_path / "x.png"), n=0)


def test_augmented_training_still_learns(splits):
    """End to end in model.fit: augmented uint8 batches train a real model."""
    import keras
    from kerastrain import models

    keras.utils.set_random_seed(0)
    model = models.small_cnn(2, width=8, blocks=2)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train = augment.Augmentation.from_policy("standard", seed=0).apply(splits.train)
    history = model.fit(train, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.evaluate(splits.test, verbose=0)[1] > 0.65
    assert not math.isnan(history.history["loss"][-1])


def _augmenting_model(seed=0):
    import keras

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = augment.Augmentation.from_policy("standard", seed=seed)(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_augmentation_is_a_layer_in_a_model(batch, tmp_path):
    """In a model it augments while training, is the identity in inference,
    trains, and survives a `.keras` save/load."""
    import keras

    images, labels = batch
    keras.utils.set_random_seed(0)
    model = _augmenting_model()
    layer = model.layers[1]
    assert isinstance(layer, augment.Augmentation) and isinstance(layer, keras.layers.Layer)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # Training mode augments (new draws every call), inference mode passes through.
    seen = keras.Model(model.input, layer.output)
    first, second = (seen(images, training=True).numpy() for _ in range(2))
    assert np.mean(first != images) > 0.3 and not np.array_equal(first, second)
    np.testing.assert_array_equal(seen.predict(images, verbose=0), images)
    np.testing.assert_array_equal(layer(images), images)
    # Keras' export serves `model(x)` without `training`: no augmentation.
    model.export(str(tmp_path / "served"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(served.serve(tf.constant(images)).numpy(),
                               model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)

    path = str(tmp_path / "augmenting.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[1], augment.Augmentation)
    assert loaded.layers[1].get_config() == layer.get_config()
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    assert np.isfinite(loaded.train_on_batch(images, labels))


def test_layer_calls_are_seeded(batch):
    images, _ = batch

    def two_calls(seed):
        layer = augment.Augmentation.from_policy("heavy", seed=seed)
        return (layer(images, training=True).numpy(),
                layer(images, training=True).numpy())

    a1, a2 = two_calls(4)
    b1, b2 = two_calls(4)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    assert not np.array_equal(a1, two_calls(5)[0])


def test_layer_rejects_float_model_inputs():
    import keras

    with pytest.raises(ValueError, match='uint8.*keras.Input'):
        augment.Augmentation(flip=True)(keras.Input((32, 32, 3)))
