"""Tests for kerastrain.layers: InvertedDropout and mc_predict."""

import keras
import numpy as np
import pytest

from kerastrain import data
from kerastrain.layers import InvertedDropout, mc_predict

# Bound, in standard deviations, for checks of sample means: a normal
# deviate exceeds 6 with probability 2e-9, so even the per-element checks
# below (a few thousand elements) fail by chance with probability < 1e-5.
Z = 6.0


def _masks(layer, x, n):
    return np.stack([np.asarray(layer(x, training=True)) for _ in range(n)])


@pytest.fixture
def x():
    rng = np.random.default_rng(0)
    return rng.uniform(0.5, 1.5, size=(32, 128)).astype("float32")


def test_expectation_preserved(x):
    rate, n = 0.3, 300
    # One call on n stacked copies draws n independent masks.
    stacked = np.broadcast_to(x, (n,) + x.shape)
    outputs = np.asarray(InvertedDropout(rate, seed=0)(stacked, training=True))
    # Each output is x / (1 - rate) * Bernoulli(1 - rate): mean x and
    # variance x**2 * rate / (1 - rate).
    sigma = x * np.sqrt(rate / (1 - rate) / n)
    assert np.all(np.abs(outputs.mean(axis=0) - x) < Z * sigma)
    pooled_sigma = np.sqrt(rate / (1 - rate) / (n * x.size))
    assert abs((outputs / x).mean() - 1.0) < Z * pooled_sigma


def test_every_output_is_zero_or_scaled_input(x):
    rate = 0.4
    y = np.asarray(InvertedDropout(rate, seed=1)(x, training=True))
    scaled = x / (1 - rate)
    dropped, kept = y == 0, np.isclose(y, scaled, rtol=1e-6, atol=0)
    assert np.all(dropped | kept)
    assert dropped.any() and kept.any()


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_fraction_kept_is_one_minus_rate(rate):
    inputs = np.ones((200, 500), "float32")
    outputs = InvertedDropout(rate, seed=2)(inputs, training=True)
    kept = np.mean(np.asarray(outputs) != 0)
    sigma = np.sqrt(rate * (1 - rate) / inputs.size)
    assert abs(kept - (1 - rate)) < Z * sigma


def test_identity_at_inference(x):
    layer = InvertedDropout(0.5, seed=0)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    np.testing.assert_array_equal(
        np.asarray(InvertedDropout(0.0)(x, training=True)), x
    )


def test_mc_drops_at_inference(x):
    layer = InvertedDropout(0.5, seed=0, mc=True)
    first, second = np.asarray(layer(x)), np.asarray(layer(x, training=False))
    assert np.mean(first == 0) > 0.4 and not np.array_equal(first, second)
    np.testing.assert_allclose(first[first != 0], 2 * x[first != 0], rtol=1e-6)


def test_noise_shape_drops_whole_channels():
    rate, channels = 0.5, 64
    inputs = np.ones((16, 6, 6, channels), "float32")
    layer = InvertedDropout(rate, noise_shape=(None, 1, 1, channels), seed=3)
    y = np.asarray(layer(inputs, training=True))
    per_channel = y.reshape(16, 36, channels)
    # Within one image and channel, all 36 positions share a fate.
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))
    assert set(np.unique(per_channel)) == {0.0, 2.0}
    dropped = np.mean(per_channel[:, 0, :] == 0)
    assert abs(dropped - rate) < Z * np.sqrt(rate * (1 - rate) / (16 * channels))


def test_seeded_determinism(x):
    a, b, c = (InvertedDropout(0.5, seed=s) for s in (7, 7, 8))
    masks_a, masks_b, masks_c = (_masks(l, x, 3) for l in (a, b, c))
    np.testing.assert_array_equal(masks_a, masks_b)
    assert not np.array_equal(masks_a[0], masks_a[1])  # a stream, not a mask
    assert not np.array_equal(masks_a, masks_c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rate": -0.1}, "Invalid value for `rate`"),
        ({"rate": 1.0}, "Invalid value for `rate`"),
        ({"rate": "0.5"}, "Invalid value for `rate`"),
        ({"rate": 0.5, "noise_shape": "1,1"}, "Invalid value for `noise_shape`"),
        ({"rate": 0.5, "noise_shape": 3}, "Invalid value for `noise_shape`"),
        ({"rate": 0.5, "noise_shape": (None, 0)}, "Invalid value for `noise_shape`"),
        ({"rate": 0.5, "noise_shape": (None, 1.5)}, "Invalid value for `noise_shape`"),
        ({"rate": 0.5, "seed": "0"}, "Invalid value for `seed`"),
        ({"rate": 0.5, "mc": 1}, "Invalid value for `mc`"),
    ],
    ids=["rate<0", "rate=1", "rate_str", "noise_str", "noise_int", "noise_zero",
         "noise_float", "seed", "mc"],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InvertedDropout(**kwargs)


@pytest.mark.parametrize(
    "noise_shape, match",
    [((None, 1, 8), "rank 3"), ((None, 3, 1, 8), "does not broadcast")],
    ids=["rank", "broadcast"],
)
def test_noise_shape_checked_against_inputs(noise_shape, match):
    layer = InvertedDropout(0.5, noise_shape=noise_shape)
    with pytest.raises(ValueError, match=match):
        layer(np.ones((2, 4, 4, 8), "float32"), training=True)


@pytest.mark.parametrize("mc", [False, True])
def test_keras_round_trip_inside_model(tmp_path, mc):
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3)(inputs)
    dropout = InvertedDropout(
        0.25, noise_shape=(None, 1, 1, 4), seed=3, mc=mc, name="drop"
    )
    h = dropout(h)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    layer = loaded.get_layer("drop")
    assert isinstance(layer, InvertedDropout)
    assert layer.get_config() == model.get_layer("drop").get_config()
    assert layer.noise_shape == (None, 1, 1, 4) and layer.mc is mc
    images = np.random.default_rng(0).uniform(size=(4, 8, 8, 3)).astype("float32")
    first, second = (loaded.predict(images, verbose=0) for _ in range(2))
    if mc:
        assert not np.allclose(first, second)
    else:
        np.testing.assert_allclose(first, model.predict(images, verbose=0), rtol=1e-6)
        np.testing.assert_array_equal(first, second)


# --- mc_predict, on a small CNN trained on real CIFAR-10 images --------------


def _cnn(dropout):
    layers = [
        keras.Input((32, 32, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(16, 3, strides=2),
        keras.layers.BatchNormalization(momentum=0.8),
        keras.layers.ReLU(),
        keras.layers.Conv2D(32, 3, strides=2),
        keras.layers.BatchNormalization(momentum=0.8),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
    ]
    if dropout is not None:
        layers.append(dropout)
    layers.append(keras.layers.Dense(10))  # linear logits
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def cifar():
    splits = data.load("cifar10_mini", batch_size=256, validation_fraction=0.0, seed=0)
    train = [batch for batch, _ in zip(splits.train, range(4))]
    x = np.concatenate([np.asarray(b[0], "float32") for b in train])
    y = np.concatenate([np.asarray(b[1]) for b in train])
    test_images = np.asarray(next(iter(splits.test))[0][:64], "float32")
    return x, y, test_images


@pytest.fixture(scope="module")
def trained(cifar):
    x, y, _ = cifar
    keras.utils.set_random_seed(0)
    model = _cnn(keras.layers.Dropout(0.5, seed=0))
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    return model


def _bn_statistics(model):
    return [
        np.array(v) for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    ]


def test_mc_predict_keeps_batchnorm_in_inference_mode(trained, cifar):
    images, samples = cifar[2], 200
    before = _bn_statistics(trained)
    mean, std = mc_predict(trained, images, samples=samples, seed=0)
    for old, new in zip(before, _bn_statistics(trained)):
        np.testing.assert_array_equal(old, new)
    # Dropout feeds a linear layer, so with BatchNorm in inference mode the
    # expected MC output is exactly the deterministic prediction.
    expected = trained.predict(images, verbose=0)
    tolerance = Z * std / np.sqrt(samples) + 1e-5
    assert np.all(np.abs(mean - expected) <= tolerance)
    assert np.all(std > 0)
    # The check can fail: `model(x, training=True)` (BatchNorm on batch
    # statistics) has, in expectation over masks, the output of the same
    # network without dropout in training mode, which is far from `expected`.
    no_dropout = _cnn(None)
    no_dropout.set_weights(trained.get_weights())
    naive = np.asarray(no_dropout(images, training=True))
    assert np.max(np.abs(naive - expected) / tolerance) > 3


@pytest.mark.parametrize(
    "dropout",
    [lambda: InvertedDropout(0.5), lambda: InvertedDropout(0.5, mc=True),
     lambda: keras.layers.Dropout(0.5)],
    ids=["inverted", "inverted_mc", "keras_dropout"],
)
def test_mc_predict_spread_for_every_dropout_kind(trained, cifar, dropout):
    model = _cnn(dropout())
    model.set_weights(trained.get_weights())
    images = cifar[2][:16]
    deterministic = model.predict(images, verbose=0)
    mean, std = mc_predict(model, images, samples=10, seed=1)
    assert mean.shape == std.shape == deterministic.shape
    assert np.all(std > 0)
    again, _ = mc_predict(model, images, samples=10, seed=1)
    np.testing.assert_array_equal(mean, again)
    other, _ = mc_predict(model, images, samples=10, seed=2)
    assert not np.allclose(mean, other)
    if not getattr(model.layers[-2], "mc", False):  # input model unchanged
        np.testing.assert_array_equal(model.predict(images, verbose=0), deterministic)


def test_mc_predict_reaches_nested_models(trained, cifar):
    inputs = keras.Input((32, 32, 3))
    outputs = trained(inputs)
    wrapper = keras.Model(inputs, outputs)
    _, std = mc_predict(wrapper, cifar[2][:8], samples=5, seed=0)
    assert np.all(std > 0)


def test_mc_predict_rejects_model_without_dropout(trained):
    model = _cnn(None)
    with pytest.raises(ValueError, match="has no dropout layer"):
        mc_predict(model, np.zeros((2, 32, 32, 3)), samples=5)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"samples": 1}, "`samples`"), ({"samples": 2.5}, "`samples`"),
     ({"batch_size": 0}, "`batch_size`"), ({"seed": "0"}, "`seed`")],
    ids=["one_sample", "float_samples", "batch_size", "seed"],
)
def test_mc_predict_validation(trained, kwargs, match):
    with pytest.raises(ValueError, match=f"Invalid value for {match}"):
        mc_predict(trained, np.zeros((2, 32, 32, 3)), **kwargs)


class SubclassedNet(keras.Model):
    def __init__(self, dropout):
        super().__init__()
        self.dense = keras.layers.Dense(4)
        self.dropout = dropout

    def call(self, inputs, training=False):
        return self.dropout(self.dense(inputs), training=training)


def test_mc_predict_subclassed_models():
    inputs = np.ones((8, 3), "float32")
    model = SubclassedNet(InvertedDropout(0.5, seed=0, mc=True))
    _, std = mc_predict(model, inputs, samples=10)
    assert np.any(std > 0)
    with pytest.raises(ValueError, match="seed the `InvertedDropout` layers"):
        mc_predict(model, inputs, samples=10, seed=0)
    plain = SubclassedNet(keras.layers.Dropout(0.5))
    plain(inputs)
    with pytest.raises(ValueError, match="Cannot force dropout"):
        mc_predict(plain, inputs, samples=10)
