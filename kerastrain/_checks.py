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
    """Raises the standard `ValueError` for argument `name` (a recipe's flag
    as `--name`, shown as it is typed)."""
    shown = name if name.startswith("--") else f"`{name}`"
    raise ValueError(f"Invalid value for {shown}: expected {expected}, "
                     f"received {name}={value!r}")


def check(name, value, ok, expected):
    """Raises the standard `ValueError` unless `ok`."""
    if not ok:
        fail(name, value, expected)
    return value


def is_int(value):
    """True for Python and NumPy integers, False for booleans."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """True for real numbers, NaN and +-inf included (what a metric may be),
    False for booleans. Arguments want `is_real`."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_real(value, finite=True):
    """True for real numbers (ints included) other than NaN, False for
    booleans; with `finite`, also False for +-inf."""
    if not is_number(value):
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
        fail(name, value, _real_range(name, low, high, low_open, high_open, finite))
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


def _real_range(name, low, high, low_open, high_open, finite):
    if low is None and high is None:
        return "a finite number" if finite else "a number"
    # A finite check shows its open end, so that `inf` is seen to be out.
    unbounded = ("-inf < ", " < inf") if finite else ("", "")
    lower = unbounded[0] if low is None else f"{low} {'<' if low_open else '<='} "
    upper = unbounded[1] if high is None else f" {'<' if high_open else '<='} {high}"
    return f"{lower}{name}{upper}"
