"""Tests for kerastrain.optimizers: classes, closed-form updates, validation."""

import keras
import numpy as np
import pytest

from kerastrain import optimizers
from kerastrain.schedules import StepDecay

# A tiny least-squares problem: loss(w) = |X w - y|^2 / (2 n).
_RNG = np.random.default_rng(0)
_X = _RNG.normal(size=(8, 3))
_Y = _RNG.normal(size=8)
_W0 = np.array([0.5, -1.0, 2.0])
_STEPS = 3


def _grad(w):
    return _X.T @ (_X @ w - _Y) / len(_Y)


def _run_keras(optimizer, steps=_STEPS):
    """Applies `steps` updates with gradients of the least-squares loss."""
    w = keras.Variable(_W0.astype("float32"))
    for _ in range(steps):
        g = _grad(np.asarray(w.numpy(), dtype=np.float64)).astype("float32")
        optimizer.apply_gradients([(g, w)])
    return np.asarray(w.numpy(), dtype=np.float64)


def _sgd(lr, momentum=0.0, nesterov=False, steps=_STEPS):
    w, v = _W0.copy(), np.zeros(3)
    for t in range(steps):
        g = _grad(w)
        rate = lr(t) if callable(lr) else lr
        if momentum == 0:
            w = w - rate * g
            continue
        v = momentum * v - rate * g
        w = w + (momentum * v - rate * g if nesterov else v)
    return w


def _adam(lr, beta_1=0.9, beta_2=0.999, eps=1e-7, weight_decay=0.0, steps=_STEPS):
    """Kingma & Ba's Adam with Keras' epsilon placement; AdamW decays first."""
    w, m, v = _W0.copy(), np.zeros(3), np.zeros(3)
    for t in range(1, steps + 1):
        g = _grad(w)
        w = w - lr * weight_decay * w
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w = w - alpha * m / (np.sqrt(v) + eps)
    return w


def _rmsprop(lr, rho=0.9, eps=1e-7, steps=_STEPS):
    w, s = _W0.copy(), np.zeros(3)
    for _ in range(steps):
        g = _grad(w)
        s = rho * s + (1 - rho) * g**2
        w = w - lr * g / np.sqrt(s + eps)
    return w


def _adagrad(lr, initial=0.1, eps=1e-7, steps=_STEPS):
    w, s = _W0.copy(), np.full(3, initial)
    for _ in range(steps):
        g = _grad(w)
        s = s + g**2
        w = w - lr * g / np.sqrt(s + eps)
    return w


@pytest.mark.parametrize("name, cls, expected", [
    ("sgd", keras.optimizers.SGD, {"momentum": 0.0, "nesterov": False}),
    ("momentum", keras.optimizers.SGD, {"momentum": 0.9, "nesterov": False}),
    ("nesterov", keras.optimizers.SGD, {"momentum": 0.9, "nesterov": True}),
    ("adagrad", keras.optimizers.Adagrad, {"initial_accumulator_value": 0.1}),
    ("rmsprop", keras.optimizers.RMSprop, {"rho": 0.9, "momentum": 0.0}),
    ("adam", keras.optimizers.Adam, {"beta_1": 0.9, "beta_2": 0.999}),
    ("adamw", keras.optimizers.AdamW, {"weight_decay": 0.004}),
    ("Nadam", keras.optimizers.Nadam, {"beta_1": 0.9}),
    ("lion", keras.optimizers.Lion, {"beta_2": 0.99}),
])
def test_names_give_keras_classes(name, cls, expected):
    optimizer = optimizers.build(name, learning_rate=0.05)
    assert type(optimizer) is cls
    config = optimizer.get_config()
    assert config["learning_rate"] == pytest.approx(0.05)
    assert {key: config[key] for key in expected} == pytest.approx(expected)


def test_default_learning_rate_is_keras_default():
    assert float(optimizers.build("sgd").learning_rate) == pytest.approx(0.01)
    assert float(optimizers.build("adam").learning_rate) == pytest.approx(0.001)


def test_keyword_arguments_reach_keras():
    optimizer = optimizers.build("momentum", learning_rate=0.1, momentum=0.5,
                                 weight_decay=5e-4, clipnorm=1, use_ema=True,
                                 ema_momentum=0.9)
    config = optimizer.get_config()
    assert config["momentum"] == 0.5 and config["weight_decay"] == pytest.approx(5e-4)
    assert config["clipnorm"] == 1.0 and config["use_ema"] and config["ema_momentum"] == 0.9


@pytest.mark.parametrize("name, kwargs, reference", [
    ("sgd", {}, lambda: _sgd(0.1)),
    ("momentum", {}, lambda: _sgd(0.1, momentum=0.9)),
    ("momentum", {"momentum": 0.5}, lambda: _sgd(0.1, momentum=0.5)),
    ("nesterov", {}, lambda: _sgd(0.1, momentum=0.9, nesterov=True)),
    ("adam", {}, lambda: _adam(0.1)),
    ("adam", {"beta_1": 0.8, "beta_2": 0.99}, lambda: _adam(0.1, 0.8, 0.99)),
    ("adamw", {"weight_decay": 0.1}, lambda: _adam(0.1, weight_decay=0.1)),
    ("rmsprop", {}, lambda: _rmsprop(0.1)),
    ("adagrad", {}, lambda: _adagrad(0.1)),
])
def test_updates_match_closed_form(name, kwargs, reference):
    updated = _run_keras(optimizers.build(name, learning_rate=0.1, **kwargs))
    expected = reference()
    assert not np.allclose(expected, _W0)
    np.testing.assert_allclose(updated, expected, rtol=1e-5, atol=1e-6)


def test_momentum_variants_differ():
    # Guards the references above: three steps tell the three rules apart.
    plain, heavy, nesterov = _sgd(0.1), _sgd(0.1, 0.9), _sgd(0.1, 0.9, nesterov=True)
    assert np.abs(plain - heavy).max() > 1e-3 and np.abs(heavy - nesterov).max() > 1e-3


def test_schedule_sets_the_rate_of_each_step():
    schedule = StepDecay(0.2, drop_every_steps=2, factor=0.1)
    updated = _run_keras(optimizers.build("sgd", learning_rate=schedule), steps=4)
    expected = _sgd(lambda t: 0.2 * 0.1 ** (t // 2), steps=4)
    np.testing.assert_allclose(updated, expected, rtol=1e-5, atol=1e-6)


def test_config_dict_with_schedule_config():
    config = {"name": "nesterov", "learning_rate": {"name": "step", "initial_learning_rate": 0.2,
                                                    "drop_every_steps": 2, "factor": 0.1},
              "momentum": 0.8}
    optimizer = optimizers.build(config)
    assert isinstance(optimizer.get_config()["learning_rate"], dict)
    updated = _run_keras(optimizer, steps=4)
    expected = _sgd(lambda t: 0.2 * 0.1 ** (t // 2), momentum=0.8, nesterov=True, steps=4)
    np.testing.assert_allclose(updated, expected, rtol=1e-5, atol=1e-6)


def test_clipnorm_passes_through_to_the_update():
    optimizer = optimizers.build("sgd", learning_rate=0.1, clipnorm=0.01)
    w = keras.Variable(np.zeros(3, "float32"))
    optimizer.apply_gradients([(np.array([3.0, 4.0, 0.0], "float32"), w)])
    np.testing.assert_allclose(w.numpy(), [-0.1 * 0.006, -0.1 * 0.008, 0.0], rtol=1e-5)


def test_instance_passes_through():
    optimizer = keras.optimizers.SGD(0.1)
    assert optimizers.build(optimizer) is optimizer


@pytest.mark.parametrize("name, kwargs, message", [
    ("adagrad2", {}, r"Unknown optimizer 'adagrad2': expected one of \['sgd', 'momentum'"),
    ("sgd", {"learning_rate": -0.1}, "Invalid value for `learning_rate`"),
    ("sgd", {"learning_rate": 0.0}, "Invalid value for `learning_rate`"),
    ("sgd", {"learning_rate": "fast"}, "Invalid value for `learning_rate`"),
    ("momentum", {"momentum": 1.0}, "0 <= momentum < 1"),
    ("momentum", {"momentum": -0.1}, "0 <= momentum < 1"),
    ("adam", {"momentum": 0.9}, r"Invalid arguments \['momentum'\] .*valid arguments: "
                                r"\['learning_rate', 'beta_1'"),
    ("adam", {"beta_1": 1.0}, "0 <= beta_1 < 1"),
    ("adam", {"epsilon": 0.0}, "0 < epsilon < inf"),
    ("adamw", {"weight_decay": -1e-4}, "0 <= weight_decay < inf"),
    ("sgd", {"clipnorm": 0.0}, "0 < clipnorm < inf"),
    ("nesterov", {"nesterov": False}, "needs nesterov=True"),
    ("nesterov", {"momentum": 0.0}, "Nesterov momentum needs 0 < momentum < 1"),
    ({"learning_rate": 0.1}, {}, "expected a `name` key"),
    (keras.optimizers.SGD(0.1), {"momentum": 0.9}, "one or the other"),
])
def test_invalid_arguments(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimizers.build(name, **kwargs)
