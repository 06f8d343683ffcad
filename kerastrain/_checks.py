"""Argument checks shared by every module (private).

One wording for every rejected argument, as Keras writes it:
``Invalid value for `rate`: expected 0 <= rate < 1, received rate=1.5``.
Booleans are never numbers here (`True` is an `int` to Python, but a user
who passes it meant something else), and reals must be finite unless a check
says otherwise: `inf` learning rates, steps or strengths are always mistakes.
"""

import math
import numbers


def fail(name, value, expected):
    """Raises the standard `ValueError` for argument `name`."""
    raise ValueError(f"Invalid value for `{name}`: expected {expected}, "
                     f"received {name}={value!r}")


def check(name, value, ok, expected):
    """Raises the standard `ValueError` unless `ok`."""
    if not ok:
        fail(name, value, expected)
    return value


def is_int(value):
    """True for Python and NumPy integers, False for booleans."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value, finite=True):
    """True for real numbers (ints included), False for booleans; with
    `finite`, also False for NaN and +-inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) if finite else not math.isnan(value)


def check_int(name, value, minimum=None, maximum=None):
    """Checks `minimum <= value <= maximum` for an integer; returns `int(value)`."""
    ok = is_int(value) and (minimum is None or value >= minimum) and \
        (maximum is None or value <= maximum)
    if not ok:
        fail(name, value, _int_range(minimum, maximum))
    return int(value)


def check_real(name, value, low=None, high=None, *, low_open=False,
               high_open=False, finite=True):
    """Checks a real number against the bounds; returns `float(value)`.

    Args:
        name: the argument's name, for the message.
        value: what was received.
        low, high: bounds, `None` for none.
        low_open, high_open: exclude the bound itself.
        finite: reject NaN and +-inf. Defaults to `True`.
    """
    ok = is_real(value, finite=finite)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        fail(name, value, _real_range(name, low, high, low_open, high_open))
    return float(value)


def check_choice(name, value, choices):
    """Checks that `value` is one of `choices`; returns it."""
    if value not in choices:
        fail(name, value, f"one of {list(choices)}")
    return value


def check_seed(name, value):
    """Checks a seed: `None` or an int >= 0; returns it."""
    if value is not None:
        check_int(name, value, minimum=0)
    return value


def _int_range(minimum, maximum):
    if minimum is not None and maximum is not None:
        return f"an int in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an int >= {minimum}"
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def _real_range(name, low, high, low_open, high_open):
    kind = "a finite number" if low is None and high is None else None
    parts = []
    if low is not None:
        parts.append(f"{low} {'<' if low_open else '<='} ")
    parts.append(name)
    if high is not None:
        parts.append(f" {'<' if high_open else '<='} {high}")
    return kind or "".join(parts)
