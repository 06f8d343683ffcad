"""Shared pieces of the schedules: the base class and argument checks."""

import math
import numbers

import keras

FLOAT = "float32"


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base of the schedules here: holds the `name` every config carries."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def get_config(self):
        return {"name": self.name}


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check(name, value, ok, expected):
    if not ok:
        raise ValueError(f"Invalid value for `{name}`: expected {expected}, "
                         f"received {name}={value!r}")


def positive(name, value):
    check(name, value, is_real(value) and value > 0, f"{name} > 0")
    return float(value)


def step_count(name, value):
    check(name, value, isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= 1, "an integer >= 1")
    return int(value)
