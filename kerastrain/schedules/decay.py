"""Step decay and linear warm-up."""

import keras
from keras import ops

from kerastrain import _checks
from kerastrain.schedules._base import FLOAT, Schedule
from kerastrain.schedules.cyclic import cycle_end_steps


@keras.saving.register_keras_serializable(package="kerastrain")
class StepDecay(Schedule):
    """Multiplies the learning rate by `factor` every few steps or at milestones.

    Periodic form: `lr = initial_learning_rate * factor ** floor(step / drop_every_steps)`.
    Milestone form: `lr = initial_learning_rate * factor ** n`, where `n` counts
    the `boundaries` with `boundary <= step`. Give exactly one of the two.
    Keras' `PiecewiseConstantDecay` needs every value spelled out; this takes
    the two numbers a step schedule is described by.

    Args:
        initial_learning_rate: learning rate before the first drop, > 0.
        drop_every_steps: drop every this many steps (int >= 1). Defaults to `None`.
        factor: multiplier applied at each drop, `0 < factor <= 1`. Defaults to `0.1`.
        boundaries: increasing steps (ints >= 1) at which the rate drops.
            Defaults to `None`.
        name: name of the schedule. Defaults to `"StepDecay"`.

    Example:

    >>> schedule = StepDecay(0.1, boundaries=[3000, 6000], factor=0.1)
    >>> float(schedule(4000))  # 0.1 * 0.1
    0.01
    """

    def __init__(self, initial_learning_rate, drop_every_steps=None, factor=0.1,
                 boundaries=None, name="StepDecay"):
        super().__init__(name)
        self.initial_learning_rate = _checks.check_real(
            "initial_learning_rate", initial_learning_rate, low=0, low_open=True)
        if (drop_every_steps is None) == (boundaries is None):
            raise ValueError(
                "Invalid arguments for `StepDecay`: expected exactly one of "
                "`drop_every_steps` (periodic drops) or `boundaries` (milestones), "
                f"received drop_every_steps={drop_every_steps!r}, boundaries={boundaries!r}")
        if drop_every_steps is not None:
            drop_every_steps = _checks.check_int("drop_every_steps", drop_every_steps, minimum=1)
        else:
            if isinstance(boundaries, (str, bytes)) or not hasattr(boundaries, "__iter__"):
                boundaries = [boundaries]
            boundaries = [_checks.check_int("boundaries", b, minimum=1) for b in boundaries]
            if not boundaries or any(a >= b for a, b in zip(boundaries, boundaries[1:])):
                raise ValueError(
                    "Invalid value for `boundaries`: expected a non-empty, strictly "
                    f"increasing list of steps, received boundaries={boundaries!r}")
        self.factor = _checks.check_real("factor", factor, 0, 1, low_open=True)
        self.drop_every_steps = drop_every_steps
        self.boundaries = boundaries

    def __call__(self, step):
        with keras.name_scope(self.name):
            t = ops.cast(step, FLOAT)
            if self.boundaries is None:
                drops = ops.floor(t / self.drop_every_steps)
            else:
                # The trailing axis keeps this elementwise for a tensor of steps.
                passed = ops.greater_equal(ops.expand_dims(t, -1),
                                           ops.array(self.boundaries, FLOAT))
                drops = ops.sum(ops.cast(passed, FLOAT), axis=-1)
            return self.initial_learning_rate * ops.power(self.factor, drops)

    def get_config(self):
        return {**super().get_config(),
                "initial_learning_rate": self.initial_learning_rate,
                "drop_every_steps": self.drop_every_steps,
                "factor": self.factor,
                "boundaries": self.boundaries}



@keras.saving.register_keras_serializable(package="kerastrain")
class Warmup(Schedule):
    """Linear warm-up in front of any schedule or constant rate.

    For `step < warmup_steps`:
    `lr = initial_learning_rate + (schedule(0) - initial_learning_rate) * step / warmup_steps`;
    afterwards `lr = schedule(step - warmup_steps)`: the wrapped schedule
    starts when the warm-up ends, so its own step counts (cycle lengths,
    drop steps) are measured from there and the rate is continuous. Keras
    builds warm-up into `CosineDecay` only; this wraps any schedule.

    Args:
        schedule: a `LearningRateSchedule` or a float learning rate.
        warmup_steps: length of the warm-up in steps (int >= 1).
        initial_learning_rate: rate at step 0, >= 0. Defaults to `0.0`.
        name: name of the schedule. Defaults to `"Warmup"`.

    Example:

    >>> schedule = Warmup(StepDecay(0.1, drop_every_steps=3000), warmup_steps=500)
    >>> float(schedule(250))
    0.05
    """

    def __init__(self, schedule, warmup_steps, initial_learning_rate=0.0, name="Warmup"):
        super().__init__(name)
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = _checks.check_real("schedule", schedule, low=0, low_open=True)
        self.schedule = schedule
        self.warmup_steps = _checks.check_int("warmup_steps", warmup_steps, minimum=1)
        self.initial_learning_rate = _checks.check_real(
            "initial_learning_rate", initial_learning_rate, low=0)

    def __call__(self, step):
        with keras.name_scope(self.name):
            # The wrapped schedule gets the integer step, exact at any count.
            step = ops.cast(step, "int64")
            inner = self._inner(ops.maximum(step - self.warmup_steps, 0))
            target = self._inner(ops.convert_to_tensor(0, "int64"))
            warm = self.initial_learning_rate + (
                target - self.initial_learning_rate) * ops.cast(step, FLOAT) / self.warmup_steps
            return ops.where(step < self.warmup_steps, warm, inner)

    def _inner(self, step):
        if isinstance(self.schedule, float):
            return ops.convert_to_tensor(self.schedule, FLOAT)
        return ops.cast(self.schedule(step), FLOAT)

    def cycle_end_steps(self, total_steps):
        """Returns the last step of every cycle of the wrapped schedule within `total_steps`.

        The wrapped schedule's cycles start when the warm-up ends, so its
        cycle ends are offset by `warmup_steps`.

        Args:
            total_steps: number of steps trained, warm-up included.

        Returns:
            Increasing list of step indices.

        Raises:
            ValueError: when the wrapped schedule has no cycles.
        """
        total_steps = _checks.check_int("total_steps", total_steps, minimum=1)
        remaining = total_steps - self.warmup_steps
        try:
            ends = cycle_end_steps(self.schedule, max(remaining, 1))
        except ValueError:
            inner = (repr(self.schedule) if isinstance(self.schedule, float)
                     else type(self.schedule).__name__)
            raise ValueError(
                "Invalid value for `schedule`: expected a schedule with cycles "
                "(CyclicalLearningRate, WarmRestarts, Keras' CosineDecayRestarts, or a "
                f"Warmup around one), received a Warmup around {inner}, which has no "
                "cycle ends") from None
        return [self.warmup_steps + end for end in ends if end < remaining]

    def get_config(self):
        schedule = self.schedule
        if not isinstance(schedule, float):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {**super().get_config(), "schedule": schedule,
                "warmup_steps": self.warmup_steps,
                "initial_learning_rate": self.initial_learning_rate}


@keras.saving.register_keras_serializable(package="kerastrain")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`factor * schedule(step)`: one schedule at a fraction of its rate.

    What discriminative fine-tuning gives each lower block of a backbone
    (`kerastrain.transfer.discriminative_optimizer`): the same schedule,
    scaled down. The cycles are the wrapped schedule's.

    Args:
        schedule: a `LearningRateSchedule`.
        factor: the scale, a float > 0.

    Example:

    >>> schedule = ScaledSchedule(WarmRestarts(1e-3, first_cycle_steps=100), 0.5)
    >>> float(schedule(0))
    0.0005
    """

    def __init__(self, schedule, factor):
        super().__init__()
        self.schedule = schedule
        self.factor = _checks.check_real("factor", factor, low=0, low_open=True)

    def __call__(self, step):
        return self.factor * self.schedule(step)

    def cycle_end_steps(self, total_steps):
        """Returns the wrapped schedule's cycle ends (see `cycle_end_steps`)."""
        return cycle_end_steps(self.schedule, total_steps)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "factor": self.factor}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]),
                   config["factor"])
