"""Records the learning rate of every epoch in the training logs."""

import keras
from keras import ops


class LearningRateLogger(keras.callbacks.Callback):
    """Writes the epoch's learning rate to `logs["learning_rate"]`.

    Keras 3 puts the learning rate in the logs only from callbacks that
    change it (`LearningRateScheduler`, `ReduceLROnPlateau`), so a model
    trained with a `LearningRateSchedule` has no learning rate in its
    `History`. This callback adds it: the rate at the epoch's first step,
    `schedule(epoch * steps_per_epoch)` for an uninterrupted `fit`, which is
    the rate of the whole epoch for per-epoch schedules and the rate
    `keras.callbacks.LearningRateScheduler` would log for them. Place it
    after callbacks that also write `"learning_rate"` to keep its value.

    Example:

    >>> history = model.fit(ds, epochs=10, callbacks=[LearningRateLogger()])
    >>> history.history["learning_rate"]
    """

    def __init__(self):
        super().__init__()
        self._rate = None

    def on_epoch_begin(self, epoch, logs=None):
        # Read before the first step: `optimizer.learning_rate` is the rate of
        # the next step, `schedule(optimizer.iterations)`.
        self._rate = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._rate is not None:
            logs["learning_rate"] = self._rate
