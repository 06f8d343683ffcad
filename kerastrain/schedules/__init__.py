"""Learning-rate schedules and `get()`, which builds any of them from a config.

Keras already ships exponential, 1/t, cosine and SGDR schedules; `get()`
offers the first two in the textbook parametrisation `a0 * exp(-k t)` and
`a0 / (1 + k t)` by configuring Keras' own classes, and `WarmRestarts`
extends Keras' `CosineDecayRestarts` with the cycle ends that snapshot
ensembles need. The classes here cover what Keras lacks (`StepDecay`,
`CyclicalLearningRate`, `OneCycle`, `Warmup`, `ScaledSchedule`). Every cyclic schedule (and a
`Warmup` around one) knows its cycles: `cycle_end_steps(schedule, n)` asks
it, and also answers for Keras' `CosineDecayRestarts`. All of them are stateless
functions of the optimizer step written in `keras.ops`, so they run inside
a compiled train step and survive a `.keras` save and load.
"""

import math

import keras

from kerastrain import _checks
from kerastrain.schedules.cyclic import (
    CyclicalLearningRate, OneCycle, WarmRestarts, cycle_end_steps,
)
from kerastrain.schedules.decay import ScaledSchedule, StepDecay, Warmup

__all__ = ["StepDecay", "CyclicalLearningRate", "WarmRestarts", "OneCycle", "Warmup",
           "ScaledSchedule", "get", "cycle_end_steps"]


def _exponential(initial_learning_rate, k):
    return keras.optimizers.schedules.ExponentialDecay(
        _checks.check_real("initial_learning_rate", initial_learning_rate, low=0, low_open=True),
        decay_steps=1, decay_rate=math.exp(-_checks.check_real("k", k, low=0)))


def _inverse_time(initial_learning_rate, k):
    return keras.optimizers.schedules.InverseTimeDecay(
        _checks.check_real("initial_learning_rate", initial_learning_rate, low=0, low_open=True),
        decay_steps=1, decay_rate=_checks.check_real("k", k, low=0))


def _cosine(initial_learning_rate, decay_steps, alpha=0.0):
    return keras.optimizers.schedules.CosineDecay(
        _checks.check_real("initial_learning_rate", initial_learning_rate, low=0, low_open=True),
        decay_steps, alpha=_checks.check_real("alpha", alpha, 0, 1))


# name -> (builder, required arguments, optional arguments), in steps.
_SCHEDULES = {
    "constant": (lambda learning_rate: _checks.check_real("learning_rate", learning_rate,
                                                          low=0, low_open=True),
                 ("learning_rate",), ()),
    "step": (StepDecay, ("initial_learning_rate",),
             ("drop_every_steps", "factor", "boundaries")),
    "exponential": (_exponential, ("initial_learning_rate", "k"), ()),
    "inverse_time": (_inverse_time, ("initial_learning_rate", "k"), ()),
    "cosine": (_cosine, ("initial_learning_rate", "decay_steps"), ("alpha",)),
    "cyclical": (CyclicalLearningRate, ("base_lr", "max_lr", "step_size"), ("mode", "gamma")),
    "warm_restarts": (WarmRestarts, ("initial_learning_rate", "first_cycle_steps"),
                      ("t_mul", "m_mul", "alpha")),
    "one_cycle": (OneCycle, ("max_lr", "total_steps"),
                  ("pct_start", "div_factor", "final_div_factor", "anneal")),
}
# Epoch-counted argument -> the step-counted argument it becomes.
_EPOCH_FORMS = {
    "drop_every_epochs": "drop_every_steps", "boundaries_epochs": "boundaries",
    "step_size_epochs": "step_size", "first_cycle_epochs": "first_cycle_steps",
    "total_epochs": "total_steps", "decay_epochs": "decay_steps",
    "warmup_epochs": "warmup_steps", "k_per_epoch": "k",
}
_WARMUP_ARGUMENTS = ("warmup_steps", "warmup_initial_learning_rate")


def get(name, *, steps_per_epoch=None, **kwargs):
    """Builds a learning-rate schedule from its name and arguments, or a config.

    Names, what they build, and their arguments:

    - `"constant"`: a float; `learning_rate`.
    - `"step"`: `StepDecay`; `initial_learning_rate`, `drop_every_steps` or
      `boundaries`, `factor`.
    - `"exponential"`: `a0 * exp(-k t)` as Keras' `ExponentialDecay`;
      `initial_learning_rate` (`a0`), `k`.
    - `"inverse_time"`: `a0 / (1 + k t)` as Keras' `InverseTimeDecay`;
      `initial_learning_rate` (`a0`), `k`.
    - `"cosine"`: Keras' `CosineDecay`; `initial_learning_rate`,
      `decay_steps`, `alpha`.
    - `"cyclical"`: `CyclicalLearningRate`; `base_lr`, `max_lr`, `step_size`,
      `mode`, `gamma`.
    - `"warm_restarts"`: `WarmRestarts`; `initial_learning_rate`,
      `first_cycle_steps`, `t_mul`, `m_mul`, `alpha`.
    - `"one_cycle"`: `OneCycle`; `max_lr`, `total_steps`, `pct_start`,
      `div_factor`, `final_div_factor`, `anneal`.

    `t` is the optimizer step. Every step-counted argument also has an
    epoch-counted form, converted with `steps_per_epoch` (rounded to whole
    steps): `drop_every_epochs`, `boundaries_epochs`, `decay_epochs`,
    `step_size_epochs`, `first_cycle_epochs`, `total_epochs`, and
    `k_per_epoch` (`k = k_per_epoch / steps_per_epoch`). Any schedule can be
    wrapped in a `Warmup` with `warmup_steps` (or `warmup_epochs`) and
    `warmup_initial_learning_rate` (default 0); the wrapped schedule's step
    counts start when the warm-up ends.

    Args:
        name: one of the names above; or a config dict with a `"name"` key and
            the arguments (and optionally `"steps_per_epoch"`); or a Keras
            serialized schedule (`{"class_name": ..., "config": ...}`); or a
            `LearningRateSchedule`, returned as it is; or a float, read as
            `"constant"`.
        steps_per_epoch: optimizer steps per epoch; required by the
            epoch-counted arguments. Defaults to `None`.
        **kwargs: the schedule's arguments.

    Returns:
        A `keras.optimizers.schedules.LearningRateSchedule`, or a float for
        `"constant"` without warm-up.

    Example:

    >>> schedule = get("step", initial_learning_rate=0.1, drop_every_epochs=10,
    ...                factor=0.5, warmup_epochs=1, steps_per_epoch=100)
    >>> optimizer = kerastrain.optimizers.build("momentum", learning_rate=schedule)
    """
    if isinstance(name, keras.optimizers.schedules.LearningRateSchedule):
        if kwargs:
            raise ValueError("`get` received a LearningRateSchedule instance and "
                             f"arguments {sorted(kwargs)}; pass one or the other")
        return name
    if _checks.is_real(name):
        return get("constant", steps_per_epoch=steps_per_epoch, learning_rate=name, **kwargs)
    if isinstance(name, dict):
        if "class_name" in name:
            return keras.optimizers.schedules.deserialize(name)
        config = dict(name)
        if "name" not in config:
            raise ValueError("Invalid schedule config: expected a `name` key "
                             f"(one of {sorted(_SCHEDULES)}), received {name!r}")
        steps_per_epoch = config.pop("steps_per_epoch", steps_per_epoch)
        return get(config.pop("name"), steps_per_epoch=steps_per_epoch, **{**config, **kwargs})
    if not isinstance(name, str) or name.lower() not in _SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}: expected one of "
                         f"{sorted(_SCHEDULES)}, a config dict or a LearningRateSchedule")
    name = name.lower()
    build, required, optional = _SCHEDULES[name]
    kwargs = _epochs_to_steps(name, kwargs, steps_per_epoch)
    warmup = {key: kwargs.pop(key) for key in _WARMUP_ARGUMENTS if key in kwargs}
    accepted = required + optional
    unknown = sorted(set(kwargs) - set(accepted))
    missing = [key for key in required if key not in kwargs]
    if unknown or missing:
        forms = [key for key, step_form in _EPOCH_FORMS.items() if step_form in accepted]
        raise ValueError(
            f"Invalid arguments for schedule {name!r}: unknown {unknown}, missing "
            f"{missing}. It takes {list(accepted)} (required: {list(required)}), "
            f"epoch forms {forms} with `steps_per_epoch`, and {list(_WARMUP_ARGUMENTS)}"
            " or `warmup_epochs`")
    schedule = build(**kwargs)
    if "warmup_steps" in warmup:
        return Warmup(schedule, warmup["warmup_steps"],
                      warmup.get("warmup_initial_learning_rate", 0.0))
    if warmup:
        raise ValueError(f"Invalid arguments for schedule {name!r}: "
                         "`warmup_initial_learning_rate` needs `warmup_steps` or `warmup_epochs`")
    return schedule


def _epochs_to_steps(name, kwargs, steps_per_epoch):
    kwargs = dict(kwargs)
    for epoch_form, step_form in _EPOCH_FORMS.items():
        if epoch_form not in kwargs:
            continue
        if step_form in kwargs:
            raise ValueError(f"Invalid arguments for schedule {name!r}: pass either "
                             f"`{step_form}` or `{epoch_form}`, not both")
        if steps_per_epoch is None:
            raise ValueError(f"`{epoch_form}` is counted in epochs: pass "
                             "`steps_per_epoch` to convert it to optimizer steps")
        _checks.check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        value = kwargs.pop(epoch_form)
        if epoch_form == "k_per_epoch":
            _checks.check_real("k_per_epoch", value)
            kwargs[step_form] = value / steps_per_epoch
        elif epoch_form == "boundaries_epochs":
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                _checks.check(epoch_form, value, _checks.is_real(v), "a list of epoch counts")
            kwargs[step_form] = [round(v * steps_per_epoch) for v in values]
        else:
            _checks.check(epoch_form, value, _checks.is_real(value), "a number of epochs")
            kwargs[step_form] = round(value * steps_per_epoch)
    return kwargs
