"""Records the learning rate the optimizer applied, step by step and per epoch."""

import keras
import numpy as np
from keras import ops

from kerastrain import _introspect

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
    they replaced. Each step only keeps the step counter and the rate's
    source as tensors; they become numbers at the epoch's end (or when
    `steps`/`rates` are read), so logging adds no device-to-host copy per
    step. `logs["learning_rate"]` gets the rate of the epoch's first
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
        self._steps, self._rates = [], []
        # Steps of the running epoch, read as tensors and converted at the
        # epoch's end: no per-step device-to-host copy stalls the step loop.
        self._pending = []
        self._epoch_rate = None

    @property
    def steps(self):
        self._resolve()
        return self._steps

    @property
    def rates(self):
        self._resolve()
        return self._rates

    def on_train_begin(self, logs=None):
        self._resolve()
        self._optimizer = _introspect.base_optimizer(self.model.optimizer)
        self._first_iteration = int(self._optimizer.iterations.numpy())
        self._offset = self._steps[-1] + 1 if self._steps else 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_rate = None

    def on_train_batch_end(self, batch, logs=None):
        # The step just taken is `iterations - 1`; its rate is the schedule
        # there, or the constant rate's variable (read now, since another
        # callback may change it before the epoch ends).
        step = ops.convert_to_tensor(self._optimizer.iterations) - 1
        source = _introspect.learning_rate_source(self._optimizer)
        if not isinstance(source, _LRS):
            source = ops.convert_to_tensor(source() if callable(source) else source)
        self._pending.append((step, source))

    def on_epoch_end(self, epoch, logs=None):
        self._resolve()
        if logs is not None and self._epoch_rate is not None:
            logs["learning_rate"] = self._epoch_rate

    def on_train_end(self, logs=None):
        self._resolve()

    def rate_at(self, step):
        """The recorded rate at `step` (a number or an array of steps),
        interpolated between recorded steps: a function of the step like a
        schedule, for `kerastrain.plots.plot_schedule`."""
        return np.interp(step, self.steps, self.rates)

    def _resolve(self):
        """Converts the steps recorded since the last call to numbers."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        steps = [int(ops.convert_to_numpy(step)) for step, _ in pending]
        rates = [None] * len(pending)
        # One call per schedule on the array of its steps where the schedule
        # takes arrays (every Keras and kerastrain schedule does).
        by_source = {}
        for i, (_, source) in enumerate(pending):
            by_source.setdefault(id(source), (source, []))[1].append(i)
        for source, indices in by_source.values():
            if isinstance(source, _LRS):
                values = _schedule_values(source, [steps[i] for i in indices])
            else:
                values = [float(ops.convert_to_numpy(source))] * len(indices)
            for i, value in zip(indices, values):
                rates[i] = value
        for step, rate in zip(steps, rates):
            self._steps.append(self._offset + step - self._first_iteration)
            self._rates.append(rate)
            if self._epoch_rate is None:
                self._epoch_rate = rate


def _schedule_values(schedule, steps):
    try:
        values = np.asarray(ops.convert_to_numpy(
            schedule(ops.convert_to_tensor(np.asarray(steps, np.int64)))), np.float64)
        if values.shape == (len(steps),):
            return values.tolist()
    except Exception:  # noqa: BLE001 - a schedule that takes only scalars
        pass
    return [float(ops.convert_to_numpy(schedule(step))) for step in steps]
