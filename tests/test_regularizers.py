"""Tests for kerastrain.regularizers: ElasticNet and apply()."""

import math

import keras
import numpy as np
import pytest

from kerastrain import data, regularizers
from kerastrain.regularizers import ElasticNet, apply

_L2 = lambda f: lambda w: f * np.sum(w**2)  # noqa: E731
_L1 = lambda f: lambda w: f * np.sum(np.abs(w))  # noqa: E731


def _elastic(strength, ratio):
    return lambda w: strength * ((1 - ratio) * np.sum(w**2) + ratio * np.sum(np.abs(w)))


def _leaves(layer):
    for sublayer in getattr(layer, "layers", None) or []:
        if isinstance(sublayer, keras.Model):
            yield from _leaves(sublayer)
        else:
            yield sublayer


def _matching(model, include):
    """The trainable weights named in `include`, as float64 arrays."""
    return [
        np.asarray(weight, "float64")
        for layer in _leaves(model)
        for name in include
        if isinstance(weight := getattr(layer, name, None), keras.Variable)
        and weight.trainable
    ]


def _penalty(model, include, per_weight):
    return sum(per_weight(w) for w in _matching(model, include))


def _total(losses):
    return float(sum(np.asarray(loss, "float64") for loss in losses))


def _cnn():
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(8, 3, strides=2)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.SeparableConv2D(16, 3, strides=2, activation="relu")(h)
    h = keras.layers.DepthwiseConv2D(3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="cnn")


def _compile(model):
    model.compile(
        keras.optimizers.SGD(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _crossentropy(logits, labels):
    logits = logits.astype("float64")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


@pytest.fixture(scope="module")
def cifar():
    splits = data.load("cifar10_mini", batch_size=128, validation_fraction=0.0, seed=0)
    images, labels = next(iter(splits.train))
    test_images = next(iter(splits.test))[0][:32]
    return (np.asarray(images, "float32"), np.asarray(labels),
            np.asarray(test_images, "float32"))


@pytest.fixture(scope="module")
def trained(cifar):
    keras.utils.set_random_seed(0)
    model = _compile(_cnn())
    model.fit(cifar[0], cifar[1], batch_size=32, epochs=1, verbose=0)
    return model


def test_apply_keeps_predictions_and_weights(trained, cifar):
    before = [w.copy() for w in trained.get_weights()]
    regularized = apply(trained, keras.regularizers.L2(1e-3))
    assert regularized is not trained and not trained.losses
    np.testing.assert_allclose(
        regularized.predict(cifar[2], verbose=0),
        trained.predict(cifar[2], verbose=0), rtol=1e-5, atol=1e-5,
    )
    for old, new, kept in zip(trained.get_weights(), regularized.get_weights(), before):
        np.testing.assert_array_equal(old, new)
        np.testing.assert_array_equal(old, kept)


@pytest.mark.parametrize(
    "regularizer, per_weight",
    [
        (keras.regularizers.L2(1e-3), _L2(1e-3)),
        (keras.regularizers.L1(1e-4), _L1(1e-4)),
        (ElasticNet(1e-3, l1_ratio=0.3), _elastic(1e-3, 0.3)),
    ],
    ids=["l2", "l1", "elastic_net"],
)
@pytest.mark.parametrize(
    "include",
    [("kernel",), ("kernel", "bias"),
     ("kernel", "depthwise_kernel", "pointwise_kernel", "gamma", "beta")],
    ids=["kernel", "kernel+bias", "all_kernels+bn"],
)
def test_losses_equal_closed_form_penalty(trained, regularizer, per_weight, include):
    regularized = apply(trained, regularizer, include=include)
    assert len(regularized.losses) == len(_matching(trained, include)) > 0
    np.testing.assert_allclose(
        _total(regularized.losses), _penalty(trained, include, per_weight), rtol=1e-5
    )


def test_bias_penalty_is_added(trained):
    l2 = keras.regularizers.L2(1e-2)
    kernels = _total(apply(trained, l2).losses)
    both = _total(apply(trained, l2, include=("kernel", "bias")).losses)
    biases = _penalty(trained, ("bias",), _L2(1e-2))
    assert biases > 0
    np.testing.assert_allclose(both - kernels, biases, rtol=1e-4)


def test_fit_and_evaluate_loss_include_penalty(trained, cifar):
    images, labels, _ = cifar
    include = ("kernel", "bias")
    regularized = apply(trained, ElasticNet(1e-2, l1_ratio=0.5), include=include)
    assert regularized.compiled  # compiled like `trained`
    penalty = _penalty(trained, include, _elastic(1e-2, 0.5))
    # One full-batch step reports the loss of the weights before the update.
    expected = _crossentropy(np.asarray(regularized(images, training=True)), labels)
    history = regularized.fit(images, labels, batch_size=len(images), epochs=1,
                              shuffle=False, verbose=0)
    reported = history.history["loss"][0]
    np.testing.assert_allclose(reported, expected + penalty, rtol=1e-4)
    assert not np.allclose(regularized.layers[-1].kernel, trained.layers[-1].kernel)
    loss = regularized.evaluate(images, labels, batch_size=len(images), verbose=0)
    plain = _crossentropy(regularized.predict(images, verbose=0), labels)
    new_penalty = _penalty(regularized, include, _elastic(1e-2, 0.5))
    np.testing.assert_allclose(loss - plain, new_penalty, rtol=1e-3)


def test_sequential_model(cifar):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(4, 3), keras.layers.Flatten(), keras.layers.Dense(10),
    ])
    regularized = apply(model, {"l2": 1e-3})
    assert isinstance(regularized, keras.Sequential)
    np.testing.assert_allclose(regularized.predict(cifar[2], verbose=0),
                               model.predict(cifar[2], verbose=0), rtol=1e-6)
    np.testing.assert_allclose(_total(regularized.losses),
                               _penalty(model, ("kernel",), _L2(1e-3)), rtol=1e-5)


def test_nested_keras_applications_backbone(cifar):
    keras.utils.set_random_seed(2)
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, minimalistic=True
    )
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(features))
    regularized = apply(model, ElasticNet(1e-3, 0.5))
    images = cifar[2][:8]  # eager calls: no tf.function to trace
    np.testing.assert_allclose(
        np.asarray(regularized(images, training=False)),
        np.asarray(model(images, training=False)), rtol=1e-4, atol=1e-5,
    )
    # Conv2D and DepthwiseConv2D kernels of the backbone, plus the head.
    assert len(regularized.losses) == len(_matching(model, ("kernel",))) > 30
    expected = _penalty(model, ("kernel",), _elastic(1e-3, 0.5))
    np.testing.assert_allclose(_total(regularized.losses), expected, rtol=1e-5)
    # A frozen backbone stays frozen; Keras adds no penalty for frozen weights.
    backbone.trainable = False
    frozen = apply(model, ElasticNet(1e-3, 0.5))
    assert frozen.layers[1].trainable is False and len(frozen.losses) == 1
    head = model.layers[-1].kernel.numpy()
    expected = _elastic(1e-3, 0.5)(head.astype("float64"))
    np.testing.assert_allclose(_total(frozen.losses), expected, rtol=1e-5)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_elastic_net_closed_form(ratio):
    w = np.random.default_rng(0).normal(size=(5, 7)).astype("float32")
    value = float(ElasticNet(0.01, ratio)(keras.ops.convert_to_tensor(w)))
    expected = _elastic(0.01, ratio)(w.astype("float64"))
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_elastic_net_serialization(tmp_path, cifar):
    regularizer = ElasticNet(1e-3, l1_ratio=0.25)
    config = regularizer.get_config()
    assert config == {"strength": 1e-3, "l1_ratio": 0.25}
    assert ElasticNet.from_config(config).get_config() == config
    restored = keras.regularizers.deserialize(keras.regularizers.serialize(regularizer))
    assert isinstance(restored, ElasticNet) and restored.get_config() == config
    model = apply(_cnn(), regularizer, include=("kernel", "depthwise_kernel"))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    conv = loaded.layers[2]
    assert isinstance(conv.kernel_regularizer, ElasticNet)
    assert conv.kernel_regularizer.get_config() == config
    np.testing.assert_allclose(_total(loaded.losses), _total(model.losses), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strength": -1e-3, "l1_ratio": 0.5}, "Invalid value for `strength`"),
        ({"strength": math.nan, "l1_ratio": 0.5}, "Invalid value for `strength`"),
        ({"strength": "1e-3", "l1_ratio": 0.5}, "Invalid value for `strength`"),
        ({"strength": 1e-3, "l1_ratio": -0.1}, "Invalid value for `l1_ratio`"),
        ({"strength": 1e-3, "l1_ratio": 1.5}, "Invalid value for `l1_ratio`"),
    ],
    ids=["strength<0", "strength_nan", "strength_str", "ratio<0", "ratio>1"],
)
def test_elastic_net_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ElasticNet(**kwargs)


@pytest.mark.parametrize(
    "identifier, expected",
    [("l2", keras.regularizers.L2(0.01)), ({"l1": 1e-4}, keras.regularizers.L1(1e-4)),
     ({"l1": 1e-4, "l2": 1e-3}, keras.regularizers.L1L2(1e-4, 1e-3)),
     ({"class_name": "L2", "config": {"l2": 1e-3}}, keras.regularizers.L2(1e-3))],
    ids=["string", "shorthand", "shorthand_both", "keras_config"],
)
def test_regularizer_identifiers(trained, identifier, expected):
    regularized = apply(trained, identifier)
    conv = regularized.get_layer(trained.layers[2].name)
    assert type(conv.kernel_regularizer) is type(expected)
    assert conv.kernel_regularizer.get_config() == expected.get_config()


def test_unregularizable_weight_warns(trained):
    with pytest.warns(UserWarning, match="no regularizer argument"):
        regularized = apply(trained, "l2", include=("kernel", "moving_mean"))
    assert len(regularized.losses) == len(_matching(trained, ("kernel",)))


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


@pytest.mark.parametrize(
    "model, regularizer, include, match",
    [
        ("cnn", "nonsense", ("kernel",), "Invalid value for `regularizer`"),
        ("cnn", 0.01, ("kernel",), "Invalid value for `regularizer`"),
        ("cnn", "l2", (), "Invalid value for `include`"),
        ("cnn", "l2", ("kernal",), "No weight of model"),
        ("layer", "l2", ("kernel",), "Invalid value for `model`"),
        ("subclassed", "l2", ("kernel",), "only Sequential and functional"),
    ],
    ids=["bad_string", "number", "empty_include", "no_match", "not_model",
         "subclassed"],
)
def test_apply_validation(trained, model, regularizer, include, match):
    if model == "subclassed":
        model = SubclassedNet()
        model(np.ones((1, 3)))
    else:
        model = {"cnn": trained, "layer": keras.layers.Dense(2)}[model]
    with pytest.raises(ValueError, match=match):
        apply(model, regularizer, include=include)


def test_sparse_label_smoothing_is_keras_categorical_smoothing_on_integer_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype("float32")
    labels = np.array([0, 3, 1, 2, 2, 0])
    plain = regularizers.SparseCategoricalCrossentropy(label_smoothing=0.0)
    np.testing.assert_allclose(
        float(plain(labels, logits)),
        float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)),
        rtol=1e-6)
    smoothed = regularizers.SparseCategoricalCrossentropy(label_smoothing=0.2)
    reference = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    np.testing.assert_allclose(float(smoothed(labels[:, None], logits)),
                               float(reference(np.eye(4)[labels], logits)), rtol=1e-6)
    # By hand: targets 1 - s + s/k and s/k.
    targets = np.full((6, 4), 0.05)
    targets[np.arange(6), labels] = 0.85
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(float(smoothed(labels, logits)),
                               -(targets * log_p).sum(-1).mean(), rtol=1e-5)
    restored = keras.losses.deserialize(keras.losses.serialize(smoothed))
    assert restored.label_smoothing == 0.2 and restored.from_logits
    with pytest.raises(ValueError, match="label_smoothing"):
        regularizers.SparseCategoricalCrossentropy(label_smoothing=1.0)
