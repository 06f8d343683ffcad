"""The shared argument checks and atomic file writes."""

import functools
import json
import math
import os

import numpy as np
import pytest

from kerastrain import _checks, _io


@pytest.mark.parametrize("value", [float("inf"), -math.inf, float("nan"), True, "1", None])
def test_real_rejects_non_finite_booleans_and_strings(value):
    with pytest.raises(ValueError, match="Invalid value for `lr`"):
        _checks.check_real("lr", value, low=0, low_open=True)


def test_real_bounds_open_and_closed():
    assert _checks.check_real("x", 0, low=0) == 0.0
    with pytest.raises(ValueError, match=r"expected 0 < x"):
        _checks.check_real("x", 0, low=0, low_open=True)
    with pytest.raises(ValueError, match=r"x < 1"):
        _checks.check_real("x", 1, high=1, high_open=True)
    assert _checks.check_real("x", np.float32(0.5), 0, 1) == 0.5
    assert _checks.check_real("x", float("inf"), finite=False) == float("inf")


def test_int_rejects_booleans_and_floats():
    assert _checks.check_int("n", np.int64(3), minimum=1) == 3
    for value in (True, 2.0, -1):
        with pytest.raises(ValueError, match="expected an int >= 0"):
            _checks.check_int("n", value, minimum=0)
    with pytest.raises(ValueError, match=r"an int in \[1, 3\]"):
        _checks.check_int("n", 4, 1, 3)


def test_choice_and_seed():
    assert _checks.check_choice("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"one of \['a', 'b'\]"):
        _checks.check_choice("mode", "c", ("a", "b"))
    assert _checks.check_seed("seed", None) is None
    with pytest.raises(ValueError):
        _checks.check_seed("seed", -1)


def test_atomic_write_replaces_whole_file_or_leaves_the_old_one(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    _io.write_json(path, {"b": np.float32(0.5), "a": np.int64(2)})
    assert json.loads(path.read_text()) == {"a": 2, "b": 0.5}

    def broken(temporary):
        with open(temporary, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _io.atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"a": 2, "b": 0.5}
    assert sorted(os.listdir(path.parent)) == ["metrics.json"]


def test_atomic_write_of_a_directory_leaves_no_temporary(tmp_path):
    def broken(temporary):
        os.makedirs(os.path.join(temporary, "inner"))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        _io.atomic_write(tmp_path / "model.keras", broken)
    assert os.listdir(tmp_path) == []


def test_atomic_write_replaces_a_whole_directory(tmp_path):
    target = tmp_path / "export"
    (target / "old").mkdir(parents=True)
    (target / "old" / "weights").write_text("old")

    def write(temporary):
        os.makedirs(os.path.join(temporary, "new"))

    _io.atomic_write(target, write)
    assert os.listdir(target) == ["new"]
    assert os.listdir(tmp_path) == ["export"]


def test_replace_path_puts_the_old_content_back_when_the_move_fails(tmp_path, monkeypatch):
    old, new = tmp_path / "model", tmp_path / "staging"
    old.mkdir()
    (old / "weights").write_text("old")
    new.mkdir()
    real_replace = os.replace

    def failing(source, destination):
        if os.fspath(source) == os.fspath(new):
            raise OSError("device busy")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        _io.replace_path(new, old)
    assert (old / "weights").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["model", "staging"]


def test_remove_and_read_json(tmp_path):
    _io.write_json(tmp_path / "a" / "x.json", [1, 2])
    assert _io.read_json(tmp_path / "a" / "x.json") == [1, 2]
    _io.remove(tmp_path / "a")
    _io.remove(tmp_path / "missing")
    assert not _io.exists(tmp_path / "a")


def test_is_number_keeps_nan_and_inf_but_not_booleans():
    assert _checks.is_number(float("nan")) and _checks.is_number(np.float32("inf"))
    assert not _checks.is_number(True) and not _checks.is_number("1")
    assert not _checks.is_real(float("nan"), finite=False)
    assert _checks.is_real(float("inf"), finite=False)


def test_messages_say_finite_and_show_flags_as_typed():
    with pytest.raises(ValueError, match=r"^Invalid value for `lr`: expected 0 < lr < inf, "
                                         r"received lr=inf$"):
        _checks.check_real("lr", float("inf"), low=0, low_open=True)
    with pytest.raises(ValueError, match=r"expected -inf < x <= 1, received x=nan"):
        _checks.check_real("x", float("nan"), high=1)
    with pytest.raises(ValueError, match=r"^Invalid value for --steps: expected an int >= 1"):
        _checks.check_int("--steps", 0, minimum=1)


def test_jsonable_is_what_read_json_returns(tmp_path):
    payload = {"space": {"low": np.float32(0.5), "values": ("a", "b")}, "n": np.int64(3)}
    _io.write_json(tmp_path / "s.json", payload)
    assert _io.jsonable(payload) == _io.read_json(tmp_path / "s.json")


# Every public constructor or function whose argument is a real number
# rejects inf, nan and booleans for it, before any work is done.
def _real_arguments():
    import kerastrain as kt
    from kerastrain.schedules import (CyclicalLearningRate, OneCycle, StepDecay,
                                      WarmRestarts, Warmup)

    curve = (np.logspace(-5, 0, 10), np.linspace(2.0, 1.0, 10))
    return {
        "find_learning_rate(min_lr)": lambda v: kt.lr_finder.find_learning_rate(
            None, None, min_lr=v),
        "find_learning_rate(max_lr)": lambda v: kt.lr_finder.find_learning_rate(
            None, None, max_lr=v),
        "find_learning_rate(smoothing)": lambda v: kt.lr_finder.find_learning_rate(
            None, None, smoothing=v),
        "find_learning_rate(diverge_factor)": lambda v: kt.lr_finder.find_learning_rate(
            None, None, diverge_factor=v),
        "suggest_learning_rate(skip_start)": lambda v: kt.lr_finder.suggest_learning_rate(
            *curve, skip_start=v),
        "suggest_learning_rate(window)": lambda v: kt.lr_finder.suggest_learning_rate(
            *curve, window=v),
        "optimizers.build(learning_rate)": lambda v: kt.optimizers.build("sgd", v),
        "optimizers.build(momentum)": lambda v: kt.optimizers.build("sgd", momentum=v),
        "optimizers.build(epsilon)": lambda v: kt.optimizers.build("adam", epsilon=v),
        "optimizers.build(weight_decay)": lambda v: kt.optimizers.build("adamw",
                                                                          weight_decay=v),
        "ElasticNet(strength)": lambda v: kt.regularizers.ElasticNet(v, 0.5),
        "ElasticNet(l1_ratio)": lambda v: kt.regularizers.ElasticNet(1e-4, v),
        "InvertedDropout(rate)": lambda v: kt.layers.InvertedDropout(v),
        "data.load(validation_fraction)": lambda v: kt.data.load(validation_fraction=v),
        "Augmentation(rotate)": lambda v: kt.augment.Augmentation(rotate=v),
        "Augmentation(stretch)": lambda v: kt.augment.Augmentation(stretch=v),
        "Augmentation(shear)": lambda v: kt.augment.Augmentation(shear=v),
        "Augmentation(translate)": lambda v: kt.augment.Augmentation(translate=v),
        "Augmentation(fill_value)": lambda v: kt.augment.Augmentation(fill_value=v),
        "Augmentation(color_jitter)": lambda v: kt.augment.Augmentation(
            color_jitter={"hue": v}),
        "search.uniform(high)": lambda v: kt.search.uniform(0.0, v),
        "search.log_uniform(low)": lambda v: kt.search.log_uniform(v, 1.0),
        "toy_problems.quadratic": lambda v: kt.toy_problems.ill_conditioned_quadratic(v),
        "toy_problems.rosenbrock(a)": lambda v: kt.toy_problems.rosenbrock(a=v),
        "toy_problems.rosenbrock(b)": lambda v: kt.toy_problems.rosenbrock(b=v),
        "steps_to_tolerance(tolerance)": lambda v: kt.toy_problems.steps_to_tolerance(
            [1.0], 0.0, v),
        "StepDecay(initial_learning_rate)": lambda v: StepDecay(v, drop_every_steps=5),
        "StepDecay(factor)": lambda v: StepDecay(0.1, drop_every_steps=5, factor=v),
        "CyclicalLearningRate(base_lr)": lambda v: CyclicalLearningRate(v, 0.1, 5),
        "CyclicalLearningRate(max_lr)": lambda v: CyclicalLearningRate(0.01, v, 5),
        "CyclicalLearningRate(gamma)": lambda v: CyclicalLearningRate(
            0.01, 0.1, 5, "exp_range", gamma=v),
        "WarmRestarts(initial_learning_rate)": lambda v: WarmRestarts(v, 10),
        "WarmRestarts(t_mul)": lambda v: WarmRestarts(0.1, 10, t_mul=v),
        "WarmRestarts(m_mul)": lambda v: WarmRestarts(0.1, 10, m_mul=v),
        "WarmRestarts(alpha)": lambda v: WarmRestarts(0.1, 10, alpha=v),
        "OneCycle(max_lr)": lambda v: OneCycle(v, 100),
        "OneCycle(pct_start)": lambda v: OneCycle(0.1, 100, pct_start=v),
        "OneCycle(div_factor)": lambda v: OneCycle(0.1, 100, div_factor=v),
        "OneCycle(final_div_factor)": lambda v: OneCycle(0.1, 100, final_div_factor=v),
        "Warmup(schedule)": lambda v: Warmup(v, 5),
        "Warmup(initial_learning_rate)": lambda v: Warmup(0.1, 5, initial_learning_rate=v),
        "schedules.get(k)": lambda v: kt.schedules.get(
            "exponential", initial_learning_rate=0.1, k=v),
        "schedules.get(alpha)": lambda v: kt.schedules.get(
            "cosine", initial_learning_rate=0.1, decay_steps=10, alpha=v),
        "schedules.get(learning_rate)": lambda v: kt.schedules.get("constant",
                                                                    learning_rate=v),
        "LinearProbe(l2)": lambda v: kt.transfer.LinearProbe(3, l2=v),
        "LinearProbe(learning_rate)": lambda v: kt.transfer.LinearProbe(3, learning_rate=v),
        "build_classifier(dropout)": lambda v: kt.transfer.build_classifier(None, 3,
                                                                             dropout=v),
        "discriminative_optimizer(decay)": lambda v: kt.transfer.discriminative_optimizer(
            None, decay=v),
        "Ensemble(weights)": lambda v: kt.ensemble.Ensemble(_two_members(), weights=[1.0, v]),
    }


@functools.cache
def _two_members():
    from kerastrain.models import small_cnn

    return [small_cnn(3, width=4, blocks=1), small_cnn(3, width=4, blocks=1)]


@pytest.mark.parametrize("value", [float("inf"), float("nan"), True, False],
                         ids=["inf", "nan", "True", "False"])
@pytest.mark.parametrize("name", sorted(_real_arguments()))
def test_public_real_arguments_reject_inf_nan_and_booleans(name, value):
    with pytest.raises(ValueError, match="Invalid value for `"):
        _real_arguments()[name](value)
