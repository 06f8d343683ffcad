"""Tests for kerastrain.averaging: the weight average and the BatchNorm pass,
against NumPy over real CIFAR-10 images."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrain import averaging
from kerastrain import data as kt_data

CLASSES = ("airplane", "automobile", "ship", "truck")
EXAMPLES = 45


@pytest.fixture(scope="module")
def images():
    splits = kt_data.load("cifar10_mini", classes=CLASSES, labels_per_class=12,
                          batch_size=64, validation_fraction=0, seed=0)
    x = np.concatenate([x for x, _ in splits.train.as_numpy_iterator()])
    return x[:EXAMPLES]


# -- WeightAverage ------------------------------------------------------------------


def _weights(seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]


def test_equal_average_is_the_mean_and_resumes_from_its_state():
    updates = [_weights(s) for s in range(5)]
    average = averaging.WeightAverage()
    for weights in updates[:3]:
        average.update(weights)
    state = average.get_state()
    resumed = averaging.WeightAverage()
    resumed.set_state(state)
    for weights in updates[3:]:
        average.update(weights)
        resumed.update(weights)
    assert average.count == resumed.count == 5
    for i, (a, r) in enumerate(zip(average.average, resumed.average)):
        expected = np.mean([np.float64(u[i]) for u in updates], axis=0)
        np.testing.assert_allclose(a, expected, rtol=1e-12)
        np.testing.assert_array_equal(a, r)
        assert a.dtype == np.float64
    # The state is a copy: later updates do not change it.
    assert state["count"] == 3
    np.testing.assert_allclose(state["average"][0],
                               np.mean([u[0] for u in updates[:3]], axis=0), rtol=1e-6)


def test_ema_avg_fn_matches_the_closed_form():
    decay, updates = 0.9, [_weights(s) for s in range(4)]
    average = averaging.WeightAverage(avg_fn=averaging.ema_avg_fn(decay))
    for weights in updates:
        average.update(weights)
    # The first update is copied, then a <- decay * a + (1 - decay) * w.
    coefficients = [decay ** 3] + [(1 - decay) * decay ** (3 - k) for k in (1, 2, 3)]
    for i, a in enumerate(average.average):
        expected = sum(c * np.float64(u[i]) for c, u in zip(coefficients, updates))
        np.testing.assert_allclose(a, expected, rtol=1e-12)


def test_weight_average_rejects_bad_input():
    average = averaging.WeightAverage()
    average.update(_weights(0))
    with pytest.raises(ValueError, match="Invalid value for `weights`"):
        average.update(_weights(0)[:1])
    with pytest.raises(ValueError, match="Invalid value for `avg_fn`"):
        averaging.WeightAverage(avg_fn=0.9)
    with pytest.raises(ValueError, match="Invalid value for `decay`"):
        averaging.ema_avg_fn(1.5)
    with pytest.raises(ValueError, match="Invalid value for `state`"):
        average.set_state({"count": 2, "average": None})


# -- update_batch_norm ----------------------------------------------------------------


def _model(kind):
    keras.utils.set_random_seed(0)
    if kind == "dense":
        body = [keras.layers.Flatten(), keras.layers.Dense(8, name="features")]
        axes = (0,)
    else:
        body = [keras.layers.Conv2D(6, 3, name="features")]
        axes = (0, 1, 2)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
                              *body, keras.layers.BatchNormalization(name="bn"),
                              keras.layers.ReLU(), keras.layers.Flatten(),
                              keras.layers.Dense(len(CLASSES))])
    return model, axes


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("batch_size", [5, 16, 20])  # 16 and 20 end on a short batch
def test_statistics_are_those_of_the_whole_data(images, kind, batch_size):
    model, axes = _model(kind)
    data = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    assert averaging.update_batch_norm(model, data) == EXAMPLES

    z = images
    for layer in model.layers[:model.layers.index(model.get_layer("features")) + 1]:
        z = layer(z)
    z = np.asarray(z, np.float64)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), z.mean(axis=axes), rtol=1e-5, atol=1e-6)
    # The population (biased) variance, what BatchNorm divides by at inference.
    np.testing.assert_allclose(bn.moving_variance.numpy(), z.var(axis=axes),
                               rtol=1e-5, atol=1e-7)
    assert bn.momentum == 0.99


class _CountCalls(keras.layers.Layer):
    """Counts the training-mode calls it sees (in a compiled function too)."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     name="calls")

    def call(self, x, training=False):
        if training:
            self.calls.assign_add(1.0)
        return x


def test_nested_layers_in_one_pass_per_batch(images):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    z = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs))
    z = _CountCalls()(keras.layers.BatchNormalization(name="inner_bn")(z))
    backbone = keras.Model(inputs, keras.layers.ReLU()(z), name="backbone")
    model = keras.Sequential([keras.Input((32, 32, 3)), backbone,
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5),
                              keras.layers.BatchNormalization(name="top_bn"),
                              keras.layers.Dense(len(CLASSES))])
    data = tf.data.Dataset.from_tensor_slices(images).batch(16)
    averaging.update_batch_norm(model, data)
    counter = backbone.layers[-2]
    assert float(counter.calls.numpy()) == 3  # one forward pass per batch
    moving = {n: [v.numpy() for v in layer.non_trainable_weights]
              for n, layer in (("inner_bn", backbone.get_layer("inner_bn")),
                               ("top_bn", model.get_layer("top_bn")))}

    # The layers' inputs in the same training-mode pass, pooled over the data.
    inner_bn, top_bn = backbone.get_layer("inner_bn"), model.get_layer("top_bn")
    inner_bn.momentum = 0.0  # as in the pass, which it must not change
    probe = keras.Model(backbone.input, [inner_bn.input, backbone.output])
    gap, dense = model.layers[1], model.layers[2]
    inner, top = [], []
    for x in data:
        z, features = probe(x, training=True)
        inner.append(np.asarray(z, np.float64))
        top.append(np.asarray(dense(gap(features)), np.float64))
    for name, z, axes in (("inner_bn", inner, (0, 1, 2)), ("top_bn", top, (0,))):
        z = np.concatenate(z)
        np.testing.assert_allclose(moving[name][0], z.mean(axis=axes), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(moving[name][1], z.var(axis=axes), rtol=1e-5, atol=1e-7)


def test_keras_applications_backbone_inside_a_classifier(images):
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                              include_top=False, weights=None)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 127.5, -1),
                              backbone, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(len(CLASSES))])
    layers = averaging._batch_norm_layers(model)[1]
    assert len(layers) == len([l for l in backbone.layers
                               if isinstance(l, keras.layers.BatchNormalization)]) > 40
    before = [layer.moving_variance.numpy() for layer in layers]
    data = tf.data.Dataset.from_tensor_slices(images).batch(EXAMPLES)
    averaging.update_batch_norm(model, data)
    # One batch: every layer holds the moments of its input in that pass.
    first = layers[0]
    z = keras.Model(backbone.input, first.input)(images * (1 / 127.5) - 1)
    np.testing.assert_allclose(first.moving_variance.numpy(),
                               np.var(np.asarray(z, np.float64), axis=(0, 1, 2)), rtol=1e-4)
    assert all(not np.allclose(layer.moving_variance.numpy(), b)
               for layer, b in zip(layers, before))


def _generator(images, fail_after):
    for i in range(0, EXAMPLES, 16):
        if i // 16 == fail_after:
            raise RuntimeError("data source failed")
        yield images[i:i + 16]


def test_failed_pass_leaves_every_statistic(images):
    model, _ = _model("conv")
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(6, 0.5, np.float32))
    with pytest.raises(RuntimeError, match="data source failed"):
        averaging.update_batch_norm(model, _generator(images, fail_after=2))
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.full(6, 0.5))
    np.testing.assert_array_equal(bn.moving_variance.numpy(), np.ones(6))
    assert bn.momentum == 0.99
    with pytest.raises(ValueError, match="no batches"):
        averaging.update_batch_norm(model, tf.data.Dataset.from_tensor_slices(images).take(0))
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.full(6, 0.5))


def test_frozen_layers_and_models_without_batch_norm_are_left_alone(images):
    model, _ = _model("dense")
    bn = model.get_layer("bn")
    bn.trainable = False
    assert averaging.update_batch_norm(model, _generator(images, fail_after=0)) == 0
    np.testing.assert_array_equal(bn.moving_variance.numpy(), np.ones(8))


@pytest.mark.parametrize("args, match", [
    (("model", []), "Invalid value for `model`"),
    ((None, 3), "Invalid value for `data`"),
    ((None, tf.data.Dataset.range(3).repeat()), "repeats forever"),
])
def test_update_batch_norm_rejects_bad_arguments(args, match):
    model = args[0] if args[0] is not None else _model("dense")[0]
    with pytest.raises(ValueError, match=match):
        averaging.update_batch_norm(model, args[1])


def test_renorm_is_rejected(images):
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 3),
                              keras.layers.BatchNormalization(renorm=True)])
    with pytest.raises(ValueError, match="renorm=True"):
        averaging.update_batch_norm(model, [images[:4]])
