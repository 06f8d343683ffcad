"""Tests for kerastrain.schedules: closed forms, serialization, validation, fit."""

import math

import keras
import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf

import kerastrain.data
import kerastrain.models
import kerastrain.transfer
from kerastrain import plots, schedules
from kerastrain.callbacks import LearningRateLogger
from kerastrain.schedules import (
    CyclicalLearningRate, OneCycle, StepDecay, WarmRestarts, Warmup,
)


# ---- numpy references, written from the papers / PyTorch, not from our code ----

def _clr(t, base, top, s, mode="triangular", gamma=1.0):
    cycle = np.floor(1 + t / (2 * s))
    x = np.abs(t / s - 2 * cycle + 1)
    scale = {"triangular": 1.0, "triangular2": 1 / 2.0 ** (cycle - 1),
             "exp_range": gamma ** t}[mode]
    return base + (top - base) * np.maximum(0, 1 - x) * scale


def _sgdr(t, lr, first, t_mul=2.0, m_mul=1.0, alpha=0.0):
    start, length, i = 0.0, float(first), 0
    while t >= start + length:
        start, length, i = start + length, length * t_mul, i + 1
    cosine = 0.5 * m_mul ** i * (1 + math.cos(math.pi * (t - start) / length))
    return lr * ((1 - alpha) * cosine + alpha)


def _torch_one_cycle(step, max_lr, total_steps, pct_start=0.3, div_factor=25.0,
                     final_div_factor=1e4, anneal="cos"):
    """PyTorch's OneCycleLR.get_lr (three_phase=False) for one step."""
    initial = max_lr / div_factor
    phases = [(float(pct_start * total_steps) - 1, initial, max_lr),
              (total_steps - 1, max_lr, initial / final_div_factor)]
    start_step = 0
    for i, (end_step, start, end) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            pct = (step - start_step) / (end_step - start_step)
            if anneal == "cos":
                return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
            return (end - start) * pct + start
        start_step = end_step


def _warmup(t, inner, warmup_steps, initial=0.0):
    if t < warmup_steps:
        return initial + (inner(0) - initial) * t / warmup_steps
    return inner(t - warmup_steps)


# name -> (schedule factory, reference, steps to compare)
CASES = {
    "step_periodic": (lambda: StepDecay(0.1, drop_every_steps=7, factor=0.5),
                      lambda t: 0.1 * 0.5 ** np.floor(t / 7), range(50)),
    "step_milestones": (lambda: StepDecay(0.1, boundaries=[5, 12, 30], factor=0.2),
                        lambda t: 0.1 * 0.2 ** sum(t >= b for b in (5, 12, 30)), range(40)),
    "exponential": (lambda: schedules.get("exponential", initial_learning_rate=0.2, k=0.05),
                    lambda t: 0.2 * math.exp(-0.05 * t), range(0, 200, 7)),
    "inverse_time": (lambda: schedules.get("inverse_time", initial_learning_rate=0.2, k=0.1),
                     lambda t: 0.2 / (1 + 0.1 * t), range(0, 200, 7)),
    "triangular": (lambda: CyclicalLearningRate(0.01, 0.1, 5),
                   lambda t: _clr(t, 0.01, 0.1, 5), range(41)),
    "triangular2": (lambda: CyclicalLearningRate(0.01, 0.1, 5, mode="triangular2"),
                    lambda t: _clr(t, 0.01, 0.1, 5, "triangular2"), range(41)),
    "exp_range": (lambda: CyclicalLearningRate(0.01, 0.1, 5, "exp_range", gamma=0.97),
                  lambda t: _clr(t, 0.01, 0.1, 5, "exp_range", 0.97), range(41)),
    "restarts": (lambda: WarmRestarts(0.1, 8, t_mul=2.0, m_mul=0.5, alpha=0.1),
                 lambda t: _sgdr(t, 0.1, 8, 2.0, 0.5, 0.1), range(130)),
    "restarts_t1": (lambda: WarmRestarts(0.1, 6, t_mul=1.0),
                    lambda t: _sgdr(t, 0.1, 6, 1.0), range(40)),
    "restarts_t1.5": (lambda: WarmRestarts(0.1, 4, t_mul=1.5),
                      lambda t: _sgdr(t, 0.1, 4, 1.5), range(60)),
    "one_cycle": (lambda: OneCycle(0.5, 50),
                  lambda t: _torch_one_cycle(t, 0.5, 50), range(50)),
    "one_cycle_linear": (
        lambda: OneCycle(0.5, 37, pct_start=0.25, div_factor=10, final_div_factor=100,
                         anneal="linear"),
        lambda t: _torch_one_cycle(t, 0.5, 37, 0.25, 10, 100, "linear"), range(37)),
    "warmup_float": (lambda: Warmup(0.3, 5, initial_learning_rate=0.01),
                     lambda t: _warmup(t, lambda _: 0.3, 5, 0.01), range(12)),
    "warmup_step": (lambda: Warmup(StepDecay(0.1, drop_every_steps=4), 6),
                    lambda t: _warmup(t, lambda u: 0.1 * 0.1 ** (u // 4), 6), range(20)),
}


def _values(schedule, steps):
    """The schedule at `steps`, computed in one compiled graph as in `fit`."""
    steps = tf.constant(list(steps), tf.int64)  # the dtype of `optimizer.iterations`
    compute = tf.function(lambda s: tf.map_fn(
        lambda t: tf.cast(schedule(t), tf.float32), s, fn_output_signature=tf.float32))
    return compute(steps).numpy().astype(np.float64)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_closed_form(case):
    make, reference, steps = CASES[case]
    schedule = make()
    expected = np.array([reference(t) for t in steps])
    np.testing.assert_allclose(_values(schedule, steps), expected, rtol=2e-5, atol=1e-8)
    # Eager calls (outside any graph) give the same values.
    for step in (0, 3, 17, 33):
        assert float(schedule(step)) == pytest.approx(reference(step), rel=2e-5, abs=1e-8)


def test_values_at_cycle_boundaries():
    clr = CyclicalLearningRate(0.01, 0.1, step_size=5, mode="triangular2")
    assert _values(clr, [0, 5, 10, 15, 20]) == pytest.approx([0.01, 0.1, 0.01, 0.055, 0.01])
    sgdr = WarmRestarts(1.0, 10, t_mul=2.0, m_mul=0.5)
    # step 10 starts cycle 1 at half the peak; its last step 29 is near 0.
    assert _values(sgdr, [0, 10, 30]) == pytest.approx([1.0, 0.5, 0.25])
    assert float(sgdr(29)) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 19 / 20)),
                                            rel=1e-5)
    one = OneCycle(1.0, 100, pct_start=0.3)
    assert _values(one, [0, 29, 99]) == pytest.approx([0.04, 1.0, 0.04 / 1e4], rel=1e-5)
    # After total_steps the final rate is kept.
    assert _values(one, [100, 1000]) == pytest.approx([0.04 / 1e4] * 2, rel=1e-5)


@pytest.mark.parametrize("t_mul, expected", [
    (2.0, [9, 29, 69, 149]),
    (1.0, [9, 19, 29, 39, 49, 59, 69, 79, 89, 99, 109, 119, 129, 139, 149]),
])
def test_cycle_end_steps(t_mul, expected):
    schedule = WarmRestarts(0.1, 10, t_mul=t_mul, m_mul=0.8)
    ends = schedule.cycle_end_steps(150)
    assert ends == expected
    rates = _values(schedule, range(151))
    starts = [0] + [end + 1 for end in ends]
    for start, end in zip(starts, ends):
        assert rates[end] == rates[start:end + 1].min()  # the cycle's minimum
        assert rates[end + 1] > rates[end]  # and a restart follows


def test_cycle_ends_fractional_t_mul_and_epochs():
    # Cycle lengths 4, 6, 9, 13.5: cycles end before steps 4, 10, 19, 32.5.
    assert WarmRestarts(0.1, 4, t_mul=1.5).cycle_end_steps(40) == [3, 9, 18, 32]
    schedule = WarmRestarts(0.1, 20, t_mul=2.0)  # ends at steps 19, 59, 139
    assert schedule.cycle_end_epochs(epochs=14, steps_per_epoch=10) == [1, 5, 13]
    assert schedule.cycle_end_epochs(epochs=13, steps_per_epoch=10) == [1, 5]


def _restart_ends(first, t_mul, total, offset=0):
    """Closed form: cycle i ends before step first * (1 + t_mul + ... + t_mul**i)."""
    ends, i = [], 0
    while True:
        end = offset + math.ceil(first * sum(t_mul ** j for j in range(i + 1))) - 1
        if end >= total:
            return ends
        ends.append(end)
        i += 1


# name -> (schedule, total steps, closed-form cycle ends)
CYCLIC = {
    "triangular": (CyclicalLearningRate(0.01, 0.1, 5), 47, [9, 19, 29, 39]),
    "exp_range": (CyclicalLearningRate(0.01, 0.1, 4, "exp_range", gamma=0.99), 40,
                  [8 * k - 1 for k in range(1, 6)]),
    "restarts_t2": (WarmRestarts(0.1, 6, t_mul=2.0, m_mul=0.7), 100, _restart_ends(6, 2.0, 100)),
    "warmup_triangular": (Warmup(CyclicalLearningRate(0.01, 0.1, 5), 7), 47,
                          [7 + 10 * k - 1 for k in range(1, 5)]),
    "warmup_restarts": (Warmup(WarmRestarts(0.1, 4, t_mul=1.5), 3), 60,
                        _restart_ends(4, 1.5, 60, offset=3)),
    "keras_restarts_t1.5": (keras.optimizers.schedules.CosineDecayRestarts(0.1, 4, t_mul=1.5),
                            60, _restart_ends(4, 1.5, 60)),
    "keras_restarts_t3": (keras.optimizers.schedules.CosineDecayRestarts(
        0.1, 5, t_mul=3.0, m_mul=0.5, alpha=0.1), 200, _restart_ends(5, 3.0, 200)),
    "warmup_keras_restarts": (
        Warmup(keras.optimizers.schedules.CosineDecayRestarts(0.1, 5, t_mul=2.0), 4), 80,
        _restart_ends(5, 2.0, 80, offset=4)),
}


@pytest.mark.parametrize("case", sorted(CYCLIC))
def test_cycle_end_steps_of_every_cyclic_schedule(case):
    schedule, total, expected = CYCLIC[case]
    ends = schedules.cycle_end_steps(schedule, total)
    assert ends == expected and len(ends) >= 3
    if hasattr(schedule, "cycle_end_steps"):  # the schedule answers for itself
        assert schedule.cycle_end_steps(total) == expected
    # Each cycle ends where the rate reaches its minimum: the rate falls into
    # the end, and the cycle (with the step after it) has no lower rate.
    rates = _values(schedule, range(total + 1))
    warmup = schedule.warmup_steps if isinstance(schedule, Warmup) else 0
    for start, end in zip([warmup] + [e + 1 for e in ends], ends):
        assert rates[end] < rates[end - 1]
        assert min(rates[end], rates[end + 1]) == rates[start:end + 2].min()


def test_warmup_cycle_ends_within_the_warmup():
    schedule = Warmup(WarmRestarts(0.1, 1, t_mul=1.0), 5)
    assert schedules.cycle_end_steps(schedule, 3) == []
    assert schedules.cycle_end_steps(schedule, 7) == [5, 6]


@pytest.mark.parametrize("schedule, received", [
    (0.1, "received 0.1"),
    (StepDecay(0.1, drop_every_steps=3), "received StepDecay"),
    (OneCycle(0.1, 100), "received OneCycle"),
    (keras.optimizers.schedules.CosineDecay(0.1, 100), "received CosineDecay"),
    (Warmup(0.1, 5), "received a Warmup around 0.1"),
    (Warmup(StepDecay(0.1, drop_every_steps=3), 5), "received a Warmup around StepDecay"),
])
def test_cycle_end_steps_refuses_schedules_without_cycles(schedule, received):
    with pytest.raises(ValueError, match=f"Invalid value for `schedule`.*{received}, "
                                         "which has no cycle ends"):
        schedules.cycle_end_steps(schedule, 100)


def test_scaled_schedule_scales_keeps_cycles_and_serializes():
    inner = schedules.WarmRestarts(0.1, first_cycle_steps=30, t_mul=2.0)
    schedule = schedules.ScaledSchedule(inner, 0.25)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule))
    steps = np.arange(0, 100, 7)
    np.testing.assert_allclose(restored(steps), 0.25 * inner(steps), rtol=1e-6)
    assert schedules.cycle_end_steps(schedule, 100) == [29, 89]
    # Moved from kerastrain.transfer, still importable from there.
    assert kerastrain.transfer.ScaledSchedule is schedules.ScaledSchedule
    with pytest.raises(ValueError, match="factor"):
        schedules.ScaledSchedule(inner, 0)


@pytest.mark.parametrize("base_lr", [0.1, 0.0])
def test_exp_range_matches_tensorflow_addons_reference(base_lr):
    # TensorFlow Addons' testExponentialCyclicalLearningRate: rates 0.1 .. 1,
    # half cycle 2000, gamma 0.996, 8001 steps against the float64 formula
    # at rtol 1e-6. A float32 `gamma ** t` is 1.6e-5 off at t = 2000; with
    # base_lr = 0 nothing hides that error.
    t = np.arange(8001)
    schedule = CyclicalLearningRate(base_lr, 1.0, 2000, "exp_range", gamma=0.996)
    expected = _clr(t.astype(np.float64), base_lr, 1.0, 2000, "exp_range", 0.996)
    np.testing.assert_allclose(_values(schedule, t), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("make, reference", [
    (lambda: CyclicalLearningRate(0.01, 0.1, 5),
     lambda t: 0.01 + 0.09 * min(t % 10, 10 - t % 10) / 5),
    (lambda: CyclicalLearningRate(0.0, 0.1, 5, "exp_range", gamma=1 - 1e-9),
     lambda t: 0.1 * min(t % 10, 10 - t % 10) / 5 * math.exp(t * math.log1p(-1e-9))),
    (lambda: Warmup(CyclicalLearningRate(0.01, 0.1, 5), 3),
     lambda t: 0.01 + 0.09 * min((t - 3) % 10, 10 - (t - 3) % 10) / 5),
])
def test_cyclical_phase_is_exact_past_2_to_the_24_steps(make, reference):
    # A float32 step cannot tell 2**24 from 2**24 + 1, and `t / s` in float32
    # loses the phase well before; `optimizer.iterations` is an int64.
    steps = [2 ** 24 - 3, 2 ** 24 + 1, 2 ** 24 + 7, 3 * 2 ** 24 + 5, 10 ** 9 + 3]
    schedule = make()
    expected = [reference(t) for t in steps]
    np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6)
    assert [float(schedule(t)) for t in steps] == pytest.approx(expected, rel=1e-6)


SERIALIZABLE = ["step_periodic", "step_milestones", "triangular2", "exp_range", "restarts",
                "one_cycle_linear", "warmup_float", "warmup_step"]


@pytest.mark.parametrize("case", SERIALIZABLE)
def test_config_round_trip(case):
    schedule = CASES[case][0]()
    steps = [0, 9, 21, 36]
    expected = [float(schedule(step)) for step in steps]
    clone = type(schedule).from_config(schedule.get_config())
    assert clone.get_config() == schedule.get_config()
    assert [float(clone(step)) for step in steps] == expected
    config = keras.optimizers.schedules.serialize(schedule)
    assert config["registered_name"] == f"kerastrain>{type(schedule).__name__}"
    restored = keras.optimizers.schedules.deserialize(config)
    assert type(restored) is type(schedule)
    assert [float(restored(step)) for step in steps] == expected


def test_keras_model_round_trip(tmp_path):
    steps = [0, 5, 11, 29, 44]
    # One case per class; "warmup_step" nests a StepDecay inside a Warmup.
    for case in ["step_milestones", "exp_range", "restarts", "one_cycle_linear", "warmup_step"]:
        schedule = CASES[case][0]()
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9), loss="mse")
        model.optimizer.build(model.trainable_variables)  # saved with its slots
        path = tmp_path / f"{case}.keras"
        model.save(path)
        optimizer = keras.saving.load_model(path).optimizer
        rates = []
        for step in steps:
            optimizer.iterations.assign(step)
            rates.append(float(optimizer.learning_rate))
        expected = [float(schedule(step)) for step in steps]
        np.testing.assert_allclose(rates, expected, rtol=1e-6, err_msg=case)


def test_warmup_serializes_nested_schedule():
    inner = WarmRestarts(0.1, 8, alpha=0.2)
    config = Warmup(inner, 3).get_config()
    assert config["schedule"]["registered_name"] == "kerastrain>WarmRestarts"
    assert config["schedule"]["config"]["first_cycle_steps"] == 8
    assert isinstance(Warmup.from_config(config).schedule, WarmRestarts)


@pytest.mark.parametrize("make, message", [
    (lambda: StepDecay(0.0, drop_every_steps=5), "initial_learning_rate"),
    (lambda: StepDecay(0.1), "exactly one of"),
    (lambda: StepDecay(0.1, drop_every_steps=5, boundaries=[3]), "exactly one of"),
    (lambda: StepDecay(0.1, drop_every_steps=2.5), "drop_every_steps"),
    (lambda: StepDecay(0.1, boundaries=[5, 5]), "strictly increasing"),
    (lambda: StepDecay(0.1, boundaries=[]), "non-empty"),
    (lambda: StepDecay(0.1, boundaries=[0, 4]), "boundaries"),
    (lambda: StepDecay(0.1, drop_every_steps=5, factor=1.5), "0 < factor <= 1"),
    (lambda: CyclicalLearningRate(-0.1, 0.1, 5), "0 <= base_lr < inf"),
    (lambda: CyclicalLearningRate(0.1, 0.1, 5), "base_lr=0.1 < max_lr < inf"),
    (lambda: CyclicalLearningRate(0.01, 0.1, 0), "step_size"),
    (lambda: CyclicalLearningRate(0.01, 0.1, 5, mode="sine"), "triangular2"),
    (lambda: CyclicalLearningRate(0.01, 0.1, 5, "exp_range", gamma=0.0), "0 < gamma <= 1"),
    (lambda: CyclicalLearningRate(0.01, 0.1, 5, gamma=0.9), "only applies to mode='exp_range'"),
    (lambda: WarmRestarts(-1.0, 10), "0 < initial_learning_rate < inf"),
    (lambda: WarmRestarts(0.1, 0), "first_cycle_steps"),
    (lambda: WarmRestarts(0.1, 10, t_mul=0.5), "1 <= t_mul < inf"),
    (lambda: WarmRestarts(0.1, 10, m_mul=0.0), "0 < m_mul <= 1"),
    (lambda: WarmRestarts(0.1, 10, alpha=1.5), "0 <= alpha <= 1"),
    (lambda: WarmRestarts(0.1, 10).cycle_end_steps(0), "total_steps"),
    (lambda: OneCycle(0.0, 100), "0 < max_lr < inf"),
    (lambda: OneCycle(0.1, 1), "total_steps"),
    (lambda: OneCycle(0.1, 100, pct_start=1.0), "0 < pct_start < 1"),
    (lambda: OneCycle(0.1, 3, pct_start=0.3), r"1 < pct_start \* total_steps"),
    (lambda: OneCycle(0.1, 100, div_factor=0.5), "1 <= div_factor < inf"),
    (lambda: OneCycle(0.1, 100, final_div_factor=0.0), "1 <= final_div_factor < inf"),
    (lambda: OneCycle(0.1, 100, anneal="cosine"), r"one of \['cos', 'linear'\]"),
    (lambda: Warmup(-0.1, 5), "0 < schedule < inf"),
    (lambda: Warmup(0.1, 0), "warmup_steps"),
    (lambda: Warmup(0.1, 5, initial_learning_rate=-1.0), "0 <= initial_learning_rate < inf"),
])
def test_invalid_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_get_converts_epochs_to_steps():
    got = schedules.get("step", initial_learning_rate=0.1, drop_every_epochs=2, factor=0.5,
                        steps_per_epoch=10)
    assert got.drop_every_steps == 20
    got = schedules.get("step", initial_learning_rate=0.1, boundaries_epochs=[1, 2.5],
                        steps_per_epoch=10)
    assert got.boundaries == [10, 25]
    assert schedules.get("cyclical", base_lr=0.01, max_lr=0.1, step_size_epochs=4,
                         steps_per_epoch=25).step_size == 100
    restarts = schedules.get("warm_restarts", initial_learning_rate=0.1,
                             first_cycle_epochs=3, steps_per_epoch=7)
    assert isinstance(restarts, WarmRestarts) and restarts.first_decay_steps == 21
    assert schedules.get("one_cycle", max_lr=0.1, total_epochs=5,
                         steps_per_epoch=12).total_steps == 60
    cosine = schedules.get("cosine", initial_learning_rate=0.1, decay_epochs=2,
                           steps_per_epoch=10)
    assert float(cosine(10)) == pytest.approx(0.05)
    # k per epoch: a0 * exp(-k * epochs) with epochs = step / steps_per_epoch.
    exponential = schedules.get("exponential", initial_learning_rate=0.2, k_per_epoch=0.5,
                                steps_per_epoch=10)
    assert float(exponential(30)) == pytest.approx(0.2 * math.exp(-1.5), rel=1e-6)
    inverse = schedules.get("inverse_time", initial_learning_rate=0.2, k_per_epoch=0.5,
                            steps_per_epoch=10)
    assert float(inverse(30)) == pytest.approx(0.2 / 2.5, rel=1e-6)


def test_get_warmup_constant_configs_and_instances():
    assert schedules.get("constant", learning_rate=0.05) == 0.05
    assert schedules.get(0.05) == 0.05
    warm = schedules.get("constant", learning_rate=0.05, warmup_epochs=1, steps_per_epoch=4)
    assert _values(warm, [0, 2, 4, 9]) == pytest.approx([0.0, 0.025, 0.05, 0.05])
    config = {"name": "one_cycle", "max_lr": 0.1, "total_epochs": 2, "steps_per_epoch": 10,
              "warmup_steps": 5, "warmup_initial_learning_rate": 0.001}
    got = schedules.get(config)
    assert isinstance(got, Warmup) and got.schedule.total_steps == 20
    assert float(got(0)) == pytest.approx(0.001)
    assert float(got(5 + 5)) == pytest.approx(_torch_one_cycle(5, 0.1, 20), rel=1e-5)
    keras_config = keras.optimizers.schedules.serialize(got)
    assert isinstance(schedules.get(keras_config), Warmup)
    instance = CyclicalLearningRate(0.01, 0.1, 5)
    assert schedules.get(instance, steps_per_epoch=10) is instance


@pytest.mark.parametrize("name, kwargs, message", [
    ("linear", {}, r"Unknown schedule 'linear': expected one of \['constant'"),
    ("one_cycle", {"max_lr": 0.1}, r"missing \['total_steps'\]"),
    ("one_cycle", {"max_lr": 0.1, "total_steps": 9, "momentum": 0.9}, r"unknown \['momentum'\]"),
    ("step", {"initial_learning_rate": 0.1, "drop_every_epochs": 2}, "steps_per_epoch"),
    ("cyclical", {"base_lr": 0.01, "max_lr": 0.1, "step_size": 4, "step_size_epochs": 1,
                  "steps_per_epoch": 4}, "either `step_size` or `step_size_epochs`"),
    ("constant", {"learning_rate": 0.1, "warmup_initial_learning_rate": 0.01},
     "needs `warmup_steps`"),
    ("exponential", {"initial_learning_rate": 0.1, "k": -1.0}, "0 <= k < inf"),
    ({"max_lr": 0.1}, {}, "expected a `name` key"),
    (StepDecay(0.1, drop_every_steps=3), {"factor": 0.5}, "one or the other"),
])
def test_get_invalid(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedules.get(name, **kwargs)


def test_plot_schedule_writes_png(tmp_path):
    schedule = Warmup(WarmRestarts(0.1, 60, t_mul=2.0, m_mul=0.7), 20)
    path = plots.plot_schedule(schedule, 440, str(tmp_path / "schedule.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0
    # A Keras schedule that only takes scalar steps (`cond` on the step) plots too.
    scalar_only = keras.optimizers.schedules.CosineDecay(0.0, 30, warmup_target=0.1,
                                                         warmup_steps=10)
    path = plots.plot_schedule(scalar_only, 40, str(tmp_path / "cosine.png"))
    assert matplotlib.image.imread(path).std() > 0


class _BatchRates(keras.callbacks.Callback):
    """Reads the rate the optimizer will apply before every batch."""

    def on_train_begin(self, logs=None):
        self.steps, self.rates = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.steps.append(int(self.model.optimizer.iterations))
        self.rates.append(float(self.model.optimizer.learning_rate))


def test_cyclical_schedule_inside_fit():
    data = kerastrain.data.load("cifar10_mini", classes=["airplane", "automobile"],
                                labels_per_class=64, batch_size=32, validation_fraction=0.0)
    steps_per_epoch = math.ceil(data.num_train / 32)  # 4
    schedule = CyclicalLearningRate(0.001, 0.01, step_size=3, mode="triangular2")
    keras.utils.set_random_seed(0)
    model = kerastrain.models.small_cnn(data.num_classes, width=8, blocks=2)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batches = _BatchRates()
    history = model.fit(data.train, epochs=2, verbose=0,
                        callbacks=[LearningRateLogger(), batches])
    total = 2 * steps_per_epoch
    assert int(model.optimizer.iterations) == total
    assert batches.steps == list(range(total))
    expected = _clr(np.arange(total), 0.001, 0.01, 3, "triangular2")
    np.testing.assert_allclose(batches.rates, expected, rtol=1e-5)
    np.testing.assert_allclose(history.history["learning_rate"],
                               expected[::steps_per_epoch], rtol=1e-5)
    assert np.all(np.isfinite(history.history["loss"]))
