"""Schedules that cycle: cyclical, warm restarts (SGDR) and one-cycle."""

import math

import keras
from keras import ops

from kerastrain import _checks
from kerastrain.schedules._base import FLOAT, Schedule


@keras.saving.register_keras_serializable(package="kerastrain")
class CyclicalLearningRate(Schedule):
    """Cyclical learning rate (Smith, 2017, arXiv:1506.01186).

    With `t` the step and `s = step_size` (half a cycle):
    `cycle = floor(1 + t / (2 s))`, `x = |t / s - 2 cycle + 1|`,
    `lr = base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale`, where
    `scale` is 1 (`"triangular"`), `1 / 2 ** (cycle - 1)` (`"triangular2"`)
    or `gamma ** t` (`"exp_range"`). The rate is `base_lr` at steps
    `0, 2 s, 4 s, ...` and peaks at `s, 3 s, ...`; `cycle_end_steps()` gives
    the last step of each cycle, `2 s k - 1`. Keras has no cyclical schedule.

    The rate agrees with the float64 formula to a few float32 roundings
    (at most 3.2e-7 relative over TensorFlow Addons' 8001 test steps) at
    any step: the position in the cycle comes from the integer step, so it
    stays exact past `2 ** 24` steps, and `gamma ** t` avoids the float32
    product `t * log(gamma)` (1.6e-5 off at `t = 2000` for `gamma = 0.996`).

    Args:
        base_lr: lower bound of the cycle, >= 0.
        max_lr: upper bound of the cycle, > base_lr.
        step_size: steps in half a cycle (int >= 1); Smith suggests 2-10 epochs.
        mode: `"triangular"`, `"triangular2"` or `"exp_range"`.
            Defaults to `"triangular"`.
        gamma: per-step decay of the amplitude in `"exp_range"` mode,
            `0 < gamma <= 1`; must stay 1 in the other modes. Defaults to `1.0`.
        name: name of the schedule. Defaults to `"CyclicalLearningRate"`.

    Example:

    >>> schedule = CyclicalLearningRate(1e-4, 1e-2, step_size=2000)
    >>> optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    """

    MODES = ("triangular", "triangular2", "exp_range")

    def __init__(self, base_lr, max_lr, step_size, mode="triangular", gamma=1.0,
                 name="CyclicalLearningRate"):
        super().__init__(name)
        self.base_lr = _checks.check_real("base_lr", base_lr, low=0)
        _checks.check("max_lr", max_lr, _checks.is_real(max_lr) and max_lr > base_lr,
                      f"base_lr={base_lr!r} < max_lr < inf")
        self.max_lr = float(max_lr)
        self.mode = _checks.check_choice("mode", mode, self.MODES)
        self.gamma = _checks.check_real("gamma", gamma, 0, 1, low_open=True)
        if mode != "exp_range" and gamma != 1:
            raise ValueError(
                f"Invalid value for `gamma`: it only applies to mode='exp_range', "
                f"received gamma={gamma!r} with mode={mode!r}; use mode='exp_range' "
                "or leave gamma=1.0")
        self.step_size = _checks.check_int("step_size", step_size, minimum=1)

    def __call__(self, step):
        with keras.name_scope(self.name):
            # `optimizer.iterations` is an int64: the cycle and the position
            # in it are exact, where a float32 step loses steps past 2**24.
            step = ops.cast(step, "int64")
            period = 2 * self.step_size
            cycles_done = ops.floor_divide(step, period)  # `cycle - 1` above
            position = step - cycles_done * period
            # `max(0, 1 - x)`, the distance to the nearest cycle end over `s`,
            # without the cancellation of `1 - x` near the ends.
            rise = ops.cast(ops.minimum(position, period - position), FLOAT) / self.step_size
            if self.mode == "triangular":
                scale = 1.0
            elif self.mode == "triangular2":
                scale = ops.power(0.5, ops.cast(cycles_done, FLOAT))
            else:
                scale = _power(self.gamma, step)
            return self.base_lr + (self.max_lr - self.base_lr) * rise * scale

    def cycle_end_steps(self, total_steps):
        """Returns the last step of every cycle that ends within `total_steps` steps.

        Cycle `k` (1-based) covers steps `2 s (k - 1) .. 2 s k - 1` and ends
        going down towards `base_lr`, which the next step takes.

        Args:
            total_steps: number of steps trained (steps `0 .. total_steps - 1`).

        Returns:
            Increasing list of step indices `2 s k - 1` below `total_steps`.
        """
        total_steps = _checks.check_int("total_steps", total_steps, minimum=1)
        period = 2 * self.step_size
        return list(range(period - 1, total_steps, period))

    def get_config(self):
        return {**super().get_config(), "base_lr": self.base_lr, "max_lr": self.max_lr,
                "step_size": self.step_size, "mode": self.mode, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="kerastrain")
class WarmRestarts(keras.optimizers.schedules.CosineDecayRestarts):
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter, 2017).

    Cycle `i` lasts `T_i = first_cycle_steps * t_mul ** i` steps; at step `t`
    of it, `lr = initial_learning_rate * (alpha + (1 - alpha) * m_mul ** i *
    (1 + cos(pi * t / T_i)) / 2)`: a half cosine from
    `initial_learning_rate * (alpha + (1 - alpha) * m_mul ** i)` down towards
    `alpha * initial_learning_rate`, then a restart. The values are Keras'
    `CosineDecayRestarts`; this subclass validates its arguments and adds
    `cycle_end_steps()` / `cycle_end_epochs()`, the steps where each cycle
    reaches its minimum, which is where snapshot ensembles save a model.

    Args:
        initial_learning_rate: rate at the start of the first cycle, > 0.
        first_cycle_steps: length of the first cycle in steps (int >= 1).
        t_mul: growth factor of the cycle length, >= 1. Defaults to `2.0`.
        m_mul: factor on the peak rate of each new cycle, `0 < m_mul <= 1`.
            Defaults to `1.0`.
        alpha: minimum rate as a fraction of `initial_learning_rate`, in `[0, 1]`.
            Defaults to `0.0`.
        name: name of the schedule. Defaults to `"WarmRestarts"`.

    Example:

    >>> schedule = WarmRestarts(0.05, first_cycle_steps=1000, t_mul=1.0)
    >>> schedule.cycle_end_steps(3000)
    [999, 1999, 2999]
    """

    def __init__(self, initial_learning_rate, first_cycle_steps, t_mul=2.0, m_mul=1.0,
                 alpha=0.0, name="WarmRestarts"):
        super().__init__(
            _checks.check_real("initial_learning_rate", initial_learning_rate, low=0,
                               low_open=True),
            _checks.check_int("first_cycle_steps", first_cycle_steps, minimum=1),
            t_mul=_checks.check_real("t_mul", t_mul, low=1),
            m_mul=_checks.check_real("m_mul", m_mul, 0, 1, low_open=True),
            alpha=_checks.check_real("alpha", alpha, 0, 1), name=name)

    def cycle_end_steps(self, total_steps):
        """Returns the last step of every cycle that ends within `total_steps` steps.

        Args:
            total_steps: number of steps trained (steps `0 .. total_steps - 1`).

        Returns:
            Increasing list of step indices; at each the rate is at its cycle's
            minimum and the next step restarts.
        """
        return _restart_ends(self.first_decay_steps, self._t_mul, total_steps)

    def cycle_end_epochs(self, epochs, steps_per_epoch):
        """Returns the 0-based epochs within `epochs` during which a cycle ends.

        A cycle ends on an epoch's last batch when `first_cycle_steps` is a
        multiple of `steps_per_epoch` and `t_mul` is an integer.

        Args:
            epochs: number of epochs trained.
            steps_per_epoch: optimizer steps per epoch.

        Returns:
            Increasing list of epoch indices.
        """
        steps_per_epoch = _checks.check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        total = _checks.check_int("epochs", epochs, minimum=1) * steps_per_epoch
        return sorted({step // steps_per_epoch for step in self.cycle_end_steps(total)})

    def get_config(self):
        config = super().get_config()
        config["first_cycle_steps"] = config.pop("first_decay_steps")
        return config


@keras.saving.register_keras_serializable(package="kerastrain")
class OneCycle(Schedule):
    """One-cycle learning rate (Smith & Topin, 2017), as PyTorch's `OneCycleLR`.

    The rate anneals from `max_lr / div_factor` up to `max_lr` over the first
    `pct_start * total_steps - 1` steps, then down to
    `max_lr / (div_factor * final_div_factor)` at step `total_steps - 1`, along
    a half cosine (`anneal="cos"`) or a line (`anneal="linear"`). The values
    are PyTorch's two-phase `OneCycleLR`; later steps keep the final rate
    (where PyTorch raises). Keras has no one-cycle schedule.

    Args:
        max_lr: peak learning rate, > 0.
        total_steps: steps in the whole cycle (int >= 2).
        pct_start: fraction of the steps spent increasing, in `(0, 1)`.
            Defaults to `0.3`.
        div_factor: initial rate is `max_lr / div_factor`, >= 1. Defaults to `25.0`.
        final_div_factor: final rate is the initial rate / this, >= 1.
            Defaults to `1e4`.
        anneal: `"cos"` or `"linear"`. Defaults to `"cos"`.
        name: name of the schedule. Defaults to `"OneCycle"`.

    Example:

    >>> schedule = OneCycle(max_lr=0.1, total_steps=10 * steps_per_epoch)
    >>> model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9), ...)
    """

    def __init__(self, max_lr, total_steps, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4, anneal="cos", name="OneCycle"):
        super().__init__(name)
        self.max_lr = _checks.check_real("max_lr", max_lr, low=0, low_open=True)
        self.total_steps = _checks.check_int("total_steps", total_steps, minimum=1)
        self.pct_start = _checks.check_real("pct_start", pct_start, 0, 1, low_open=True,
                                            high_open=True)
        # Each phase needs a positive length or its progress would divide by zero.
        _checks.check("pct_start", pct_start, 1 < pct_start * total_steps < total_steps,
                      f"1 < pct_start * total_steps < total_steps (total_steps={total_steps})")
        self.div_factor = _checks.check_real("div_factor", div_factor, low=1)
        self.final_div_factor = _checks.check_real("final_div_factor", final_div_factor, low=1)
        self.anneal = _checks.check_choice("anneal", anneal, ("cos", "linear"))

    def __call__(self, step):
        with keras.name_scope(self.name):
            t = ops.minimum(ops.cast(step, FLOAT), self.total_steps - 1.0)
            initial = self.max_lr / self.div_factor
            final = initial / self.final_div_factor
            peak_step = self.pct_start * self.total_steps - 1.0
            up = self._anneal(initial, self.max_lr, t / peak_step)
            down = self._anneal(self.max_lr, final,
                                (t - peak_step) / (self.total_steps - 1.0 - peak_step))
            return ops.where(t <= peak_step, up, down)

    def _anneal(self, start, end, pct):
        # Weighted sums rather than PyTorch's `start + (end - start) * pct`:
        # same values, without float32 cancellation near the tiny final rate.
        if self.anneal == "linear":
            weight = 1.0 - pct
        else:
            weight = (ops.cos(math.pi * pct) + 1.0) / 2.0
        return start * weight + end * (1.0 - weight)

    def get_config(self):
        return {**super().get_config(), "max_lr": self.max_lr,
                "total_steps": self.total_steps, "pct_start": self.pct_start,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor,
                "anneal": self.anneal}


def cycle_end_steps(schedule, total_steps):
    """Returns the last step of every learning-rate cycle within `total_steps` steps.

    The steps where a cyclic schedule reaches the end of a cycle, its
    minimum, which is where snapshot ensembles save a model. Any schedule
    with a `cycle_end_steps(total_steps)` method answers for itself
    (`CyclicalLearningRate`, `WarmRestarts`, and `Warmup` around one of
    them, offset by the warm-up); Keras' own `CosineDecayRestarts` is
    answered here.

    Args:
        schedule: a cyclic `LearningRateSchedule`.
        total_steps: number of steps trained (steps `0 .. total_steps - 1`).

    Returns:
        Increasing list of the 0-based steps that end a cycle.

    Raises:
        ValueError: for a schedule without cycles (a float, `StepDecay`,
            `OneCycle`, `CosineDecay`, ...).

    Example:

    >>> cycle_end_steps(CyclicalLearningRate(1e-4, 1e-2, step_size=500), 3000)
    [999, 1999, 2999]
    """
    find = getattr(schedule, "cycle_end_steps", None)
    if callable(find):
        return list(find(total_steps))
    if isinstance(schedule, keras.optimizers.schedules.CosineDecayRestarts):
        # Keras keeps the cycle growth in a private field.
        return _restart_ends(schedule.first_decay_steps, schedule._t_mul, total_steps)
    raise ValueError(
        "Invalid value for `schedule`: expected a schedule with cycles "
        "(CyclicalLearningRate, WarmRestarts, Keras' CosineDecayRestarts, or a "
        f"Warmup around one), received {_name(schedule)}, which has no cycle ends")


def _name(schedule):
    return repr(schedule) if isinstance(schedule, (int, float)) else type(schedule).__name__


def _restart_ends(first_cycle_steps, t_mul, total_steps):
    """Cycle ends of warm restarts: Keras puts step `t` in the cycle with
    `start <= t < start + length`, lengths growing by `t_mul`."""
    total_steps = _checks.check_int("total_steps", total_steps, minimum=1)
    ends, start, length = [], 0.0, float(first_cycle_steps)
    while True:
        last = math.ceil(start + length) - 1
        if last >= total_steps:
            return ends
        ends.append(last)
        start, length = start + length, length * float(t_mul)


def _power(base, step):
    """`base ** step` for `0 < base <= 1` and an int64 `step`, to ~1e-7 relative.

    `exp(step * log(base))` in float32 puts an absolute error of
    `|step * log(base)| * 6e-8` into the exponent. Here `log(base)` is split
    (in float64) into a head of 11 significant bits and a tail, and the step
    into 12-bit digits, so every product with the head is exact in float32;
    the exponentials of the exact parts are multiplied, not their exponents
    added. Exact for steps below 2**36.
    """
    log_base = math.log(base)
    mantissa, exponent = math.frexp(log_base)
    head = math.ldexp(round(mantissa * 2 ** 11), exponent - 11)
    tail = log_base - head
    digit = 2 ** 12
    low = ops.cast(ops.mod(step, digit), FLOAT)
    middle = ops.cast(ops.mod(ops.floor_divide(step, digit), digit), FLOAT)
    high = ops.cast(ops.floor_divide(step, digit * digit), FLOAT)
    # The tail's exponent is capped where the head's factors are already 0,
    # so that their product never meets an infinity.
    rest = ops.minimum(ops.cast(step, FLOAT) * tail, 80.0)
    return (ops.exp(low * head) * ops.exp(middle * (head * digit))
            * ops.exp(high * (head * digit * digit)) * ops.exp(rest))
