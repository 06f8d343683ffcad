"""Builds Keras optimizers by name from one config.

The update rules are Keras' own (`keras.optimizers.SGD`, `Adam`, ...). What
this module adds is the single entry point recipes and searches need: a
name or a config dict (as saved in `config.json`) becomes an optimizer, with
the classic variants (`"momentum"`, `"nesterov"`) named, learning-rate
schedules accepted by name, and every argument checked against the chosen
optimizer before Keras sees it.
"""

import inspect

import keras

from kerastrain import _checks
from kerastrain import schedules

# Our names for the textbook variants -> (Keras class name, default arguments).
_VARIANTS = {
    "sgd": ("SGD", {}),
    "momentum": ("SGD", {"momentum": 0.9}),
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}),
    "adagrad": ("Adagrad", {}),
    "rmsprop": ("RMSprop", {}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
}
# Keras optimizers that wrap other optimizers cannot be built from a name.
_WRAPPERS = ("Optimizer", "LossScaleOptimizer", "MultiOptimizer")
# Hyper-parameter -> its bounds (`kerastrain._checks.check_real`), for those a class has.
_FRACTION = dict(low=0, high=1, high_open=True)
_POSITIVE = dict(low=0, low_open=True)
_RANGES = {
    "momentum": _FRACTION,
    "beta_1": _FRACTION,
    "beta_2": _FRACTION,
    "rho": _FRACTION,
    "ema_momentum": _FRACTION,
    "epsilon": _POSITIVE,
    "weight_decay": dict(low=0),
    "clipnorm": _POSITIVE,
    "clipvalue": _POSITIVE,
    "global_clipnorm": _POSITIVE,
    "initial_accumulator_value": dict(low=0),
}


def build(name, learning_rate=None, **kwargs):
    """Builds a Keras optimizer from a name, or from a config dict.

    Names: `"sgd"` (`SGD`), `"momentum"` (`SGD(momentum=0.9)`), `"nesterov"`
    (`SGD(momentum=0.9, nesterov=True)`), `"adagrad"`, `"rmsprop"`, `"adam"`,
    `"adamw"`, and any other Keras optimizer by its class name, any case
    (`"nadam"`, `"Lion"`, ...). Keyword arguments go to the Keras class and
    override the defaults above, including Keras' common ones: `weight_decay`,
    `clipnorm`, `clipvalue`, `global_clipnorm`, `use_ema`, `ema_momentum`,
    `gradient_accumulation_steps`, ...

    Args:
        name: optimizer name, or a config dict `{"name": ..., "learning_rate":
            ..., **kwargs}` (`build(config)`), or a `keras.optimizers.Optimizer`,
            returned as it is.
        learning_rate: a finite float > 0, a `LearningRateSchedule`, or a
            schedule config dict for `kerastrain.schedules.get` (e.g. `{"name":
            "one_cycle", "max_lr": 0.1, "total_steps": 1000}`). Defaults to
            `None`: the Keras class's default (0.01 for SGD, 0.001 for the rest).
        **kwargs: arguments of the chosen Keras optimizer class.

    Returns:
        A `keras.optimizers.Optimizer`.

    Example:

    >>> optimizer = build("nesterov", learning_rate=0.05, weight_decay=5e-4)
    >>> optimizer = build({"name": "adamw", "learning_rate": 1e-3, "use_ema": True})
    """
    if isinstance(name, keras.optimizers.Optimizer):
        if learning_rate is not None or kwargs:
            raise ValueError("`build` received an optimizer instance and arguments "
                             f"{sorted(kwargs)}; pass one or the other")
        return name
    if isinstance(name, dict):
        config = {**name, **kwargs}
        if "name" not in config:
            raise ValueError("Invalid optimizer config: expected a `name` key, "
                             f"received {name!r}. Valid names: {_names()}")
        name = config.pop("name")
        learning_rate = config.pop("learning_rate", learning_rate)
        return build(name, learning_rate=learning_rate, **config)
    cls, defaults = _resolve(name)
    arguments = _arguments(cls)
    unknown = sorted(set(kwargs) - set(arguments))
    if unknown:
        raise ValueError(f"Invalid arguments {unknown} for optimizer {name!r} "
                         f"(keras.optimizers.{cls.__name__}); valid arguments: "
                         f"{['learning_rate'] + arguments}")
    kwargs = {**defaults, **kwargs}
    for key, value in kwargs.items():
        if key in _RANGES and value is not None:
            kwargs[key] = _checks.check_real(key, value, **_RANGES[key])
    if name.lower() == "nesterov" and not kwargs.get("nesterov"):
        raise ValueError("Invalid value for `nesterov`: optimizer 'nesterov' needs "
                         "nesterov=True; use 'momentum' for classical momentum")
    if kwargs.get("nesterov") and not kwargs.get("momentum"):
        raise ValueError("Invalid value for `momentum`: Nesterov momentum needs "
                         f"0 < momentum < 1, received momentum={kwargs.get('momentum')!r}")
    if learning_rate is not None:
        kwargs["learning_rate"] = _learning_rate(learning_rate)
    return cls(**kwargs)


def _resolve(name):
    keras_classes = _keras_classes()
    if isinstance(name, str) and name.lower() in _VARIANTS:
        class_name, defaults = _VARIANTS[name.lower()]
        return getattr(keras.optimizers, class_name), dict(defaults)
    if isinstance(name, str) and name.lower() in keras_classes:
        return keras_classes[name.lower()], {}
    raise ValueError(f"Unknown optimizer {name!r}: expected one of {_names()}")


def _keras_classes():
    classes = {}
    for attribute in dir(keras.optimizers):
        value = getattr(keras.optimizers, attribute)
        if (isinstance(value, type) and issubclass(value, keras.optimizers.Optimizer)
                and attribute not in _WRAPPERS):
            classes[attribute.lower()] = value
    return classes


def _names():
    return list(_VARIANTS) + sorted(set(_keras_classes()) - set(_VARIANTS))


def _arguments(cls):
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters
            if p.name not in ("self", "learning_rate")
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _learning_rate(value):
    if isinstance(value, dict):
        value = schedules.get(value)
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    _checks.check("learning_rate", value, _checks.is_real(value) and value > 0,
                  "a finite float > 0, a LearningRateSchedule or a schedule config dict")
    return float(value)
