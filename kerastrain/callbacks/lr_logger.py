"""Records the learning rate the optimizer applied, step by step and per epoch."""

import keras
import numpy as np
from keras import ops

_LRS = keras.optimizers.schedules.LearningRateSchedule


class LearningRateLogger(keras.callbacks.Callback):
    """Records the learning rate of every step and writes the epoch's to the logs.

    Keras 3 puts the learning rate in the logs only from callbacks that
    change it (`LearningRateScheduler`, `ReduceLROnPlateau`), so a model
    trained with a `LearningRateSchedule` has no learning rate in its
    `History`. This callback records the rate each optimizer step actually
    applied, read from the optimizer after the step (its schedule at the
    step's index, or its rate variable), so rates that other callbacks set
    (SWA's `swa_learning_rate`, `ReduceLROnPlateau`, ...) are recorded
    wherever the callback sits in the list, and not the schedule's value
    they replaced. `logs["learning_rate"]` gets the rate of the epoch's first
    step, which is the rate of the whole epoch for per-epoch schedules and
    the rate `keras.callbacks.LearningRateScheduler` would log for them.
    Place it after callbacks that also write `"learning_rate"` to the logs
    to keep its value.

    Attributes:
        steps: 0-based index of every recorded step, counted over every
            `fit` the callback took part in (with `steps_per_execution > 1`,
            the last step of each execution).
        rates: the learning rate each of those steps applied.

    Example:

    >>> logger = LearningRateLogger()
    >>> history = model.fit(ds, epochs=10, callbacks=[logger])
    >>> history.history["learning_rate"]   # one rate per epoch
    >>> logger.steps, logger.rates          # one rate per step
    """

    def __init__(self):
        super().__init__()
        self.steps, self.rates = [], []
        self._epoch_rate = None

    def on_train_begin(self, logs=None):
        self._first_iteration = int(_inner(self.model.optimizer).iterations.numpy())
        self._offset = self.steps[-1] + 1 if self.steps else 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_rate = None

    def on_train_batch_end(self, batch, logs=None):
        optimizer = _inner(self.model.optimizer)
        done = int(optimizer.iterations.numpy()) - self._first_iteration
        rate = _applied_rate(optimizer)
        self.steps.append(self._offset + done - 1)
        self.rates.append(rate)
        if self._epoch_rate is None:
            self._epoch_rate = rate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._epoch_rate is not None:
            logs["learning_rate"] = self._epoch_rate

    def rate_at(self, step):
        """The recorded rate at `step` (a number or an array of steps),
        interpolated between recorded steps: a function of the step like a
        schedule, for `kerastrain.plots.plot_schedule`."""
        return np.interp(step, self.steps, self.rates)


def _inner(optimizer):
    """Looks through wrappers such as `LossScaleOptimizer`."""
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def _applied_rate(optimizer):
    """The rate of the step just taken: after it `optimizer.learning_rate`
    is the schedule at the next step, so the schedule is asked for the last
    step; a constant rate is the variable the step read."""
    rate = optimizer._learning_rate  # Keras keeps the schedule only here
    if isinstance(rate, _LRS):
        return float(ops.convert_to_numpy(rate(optimizer.iterations - 1)))
    return float(ops.convert_to_numpy(optimizer.learning_rate))
