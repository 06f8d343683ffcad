"""Stochastic weight averaging (SWA) as a Keras callback.

Keras 3 offers an exponential moving average of the weights (`use_ema`) but
no equal-weight average of late-training solutions, and TensorFlow Addons'
`SWA` optimizer wrapper is unmaintained, averaged BatchNorm moving statistics
instead of recomputing them, and lost its state on a checkpoint resume. This
callback composes `kerastrain.averaging` (`WeightAverage`,
`update_batch_norm`, the parts of PyTorch's `torch.optim.swa_utils`) with a
learning-rate override like PyTorch's `SWALR`, on top of `model.fit`.
"""

import contextlib
import io
import itertools
import math
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from kerastrain import _introspect, _io
from kerastrain import averaging
from kerastrain._checks import check, check_int, check_real, is_real

_LRS = keras.optimizers.schedules.LearningRateSchedule


class StochasticWeightAveraging(keras.callbacks.Callback):
    """Averages the weights of late epochs and swaps the average in at the end.

    Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
    Generalization" (UAI 2018). From the start epoch on, every
    `update_every`-th epoch end adds the weights to an equal-weight running
    average (`kerastrain.averaging.WeightAverage`, float64 on the host) over
    every float variable of the model (trainable and non-trainable) except
    BatchNorm moving statistics.
    When training ends the average is assigned to the model (also under
    `tf.distribute` strategies) and the moving statistics of every trainable
    `BatchNormalization` layer are recomputed over `bn_update_data` with
    `kerastrain.averaging.update_batch_norm`: the exact mean and population
    variance of each layer's inputs over the data. The swap is all or
    nothing: if the BatchNorm pass fails, the model keeps the weights it had.

    With an optimizer built with `use_ema=True`, the averaged weights are the
    EMA weights (read from the optimizer, whatever the place of a
    `keras.callbacks.SwapEMAWeights` in the callbacks): SWA averages the
    model each averaged epoch would leave, and `final_weights` is the EMA
    model Keras leaves at the end of `fit`.

    The weights before averaging stay available as `final_weights` and with
    `swap_in_final_weights()`, to evaluate both. When `fit` was given
    validation data, the averaged model is evaluated on it after the swap and
    its metrics are logged as `swa_val_loss`, `swa_val_accuracy`, ... (every
    compiled metric with the `swa_val_` prefix): in the `logs` of
    `on_train_end` and in `history.history`, as a list over the epochs that
    is NaN except at the last one. `val_*` are about the weights before
    averaging.

    With `swa_learning_rate`, the averaging epochs train at that rate. An
    optimizer built with a schedule gets its schedule back when training ends;
    one built with a constant rate keeps the last rate set (as with PyTorch's
    `SWALR`).

    With `state_path`, the average is written atomically to a `.npz` file
    after each averaged epoch and read back when training starts, so a run
    resumed by `keras.callbacks.BackupAndRestore` ends with the average of an
    uninterrupted run, whatever the order of the two callbacks: an epoch that
    the resumed run trains again is rolled back, and an epoch the backup holds
    but the state missed is added from the restored weights. Put this callback
    before `BackupAndRestore` so that the backup outlives the final BatchNorm
    pass. The file is deleted when training ends.

    Args:
        start_epoch: first averaged epoch, 0-based as in `model.fit`.
        start_fraction: alternatively, the fraction of `epochs` in `[0, 1)`
            after which averaging starts (`floor(start_fraction * epochs)`).
            Give exactly one of the two.
        update_every: average every this many epochs. Defaults to 1.
        swa_learning_rate: learning rate from the start epoch on: a float, or
            a `LearningRateSchedule` (e.g. a cyclical one) called with the
            number of steps since averaging started. `None` keeps the
            optimizer's own rate. Defaults to `None`.
        bn_update_data: finite dataset (or iterable) of `x` or `(x, y[, w])`
            batches for the BatchNorm recomputation, typically the training
            set. A generator can be read once: it serves one `fit`, and an
            exhausted one is refused when training starts. Without it, a
            model with BatchNorm keeps the moving statistics of the last
            epoch, with a warning. Defaults to `None`.
        state_path: `.npz` file for the resumable state (local or `gs://`).
            Defaults to `None`.
        verbose: 1 prints a line per averaged epoch. Defaults to 0.

    Example:

    >>> swa = StochasticWeightAveraging(start_fraction=0.75,
    ...                                 swa_learning_rate=0.01,
    ...                                 bn_update_data=data.train)
    >>> history = model.fit(data.train, validation_data=data.validation,
    ...                     epochs=20, callbacks=[swa])
    >>> history.history["swa_val_accuracy"][-1]  # the averaged model's
    >>> with swa.swap_in_final_weights():
    ...     final_accuracy = model.evaluate(data.test)[1]
    """

    def __init__(self, start_epoch=None, start_fraction=None, update_every=1,
                 swa_learning_rate=None, bn_update_data=None, state_path=None,
                 verbose=0):
        super().__init__()
        if (start_epoch is None) == (start_fraction is None):
            raise ValueError("Pass exactly one of `start_epoch` and `start_fraction`, "
                             f"received start_epoch={start_epoch!r}, "
                             f"start_fraction={start_fraction!r}")
        if start_epoch is not None:
            start_epoch = check_int("start_epoch", start_epoch, minimum=0)
        if start_fraction is not None:
            start_fraction = check_real("start_fraction", start_fraction, 0, 1,
                                        high_open=True)
        if swa_learning_rate is not None:
            check("swa_learning_rate", swa_learning_rate,
                  isinstance(swa_learning_rate, _LRS)
                  or (is_real(swa_learning_rate) and swa_learning_rate > 0),
                  "a float > 0 or a keras LearningRateSchedule")
        if bn_update_data is not None:
            averaging._check_batches("bn_update_data", bn_update_data)
        if state_path is not None:
            check("state_path", state_path, str(state_path).endswith(".npz"),
                  "a path ending in '.npz'")
        self.start_epoch, self.start_fraction = start_epoch, start_fraction
        self.update_every = check_int("update_every", update_every, minimum=1)
        self.swa_learning_rate = swa_learning_rate
        self.bn_update_data = bn_update_data
        self.state_path = None if state_path is None else os.fspath(state_path)
        self.verbose = verbose
        self.final_weights = None
        self._reset()

    def _reset(self):
        # `_previous` is the state before the last averaged epoch (with a
        # `state_path`), kept to roll that epoch back on a resume.
        self._average, self._previous = averaging.WeightAverage(), None
        self.averaged_epochs, self._start_step, self._pending = [], None, None

    # -- training hooks -------------------------------------------------------

    def on_train_begin(self, logs=None):
        epochs = self.params.get("epochs") or 0
        self._start = (self.start_epoch if self.start_epoch is not None
                       else int(math.floor(self.start_fraction * epochs)))
        self._slots, self._bn_layers = _averaged_slots(self.model)
        if self._bn_layers and self.bn_update_data is None:
            warnings.warn("StochasticWeightAveraging: the model has BatchNormalization "
                          "layers but no `bn_update_data` was given; the averaged model "
                          "keeps the moving statistics of the last epoch, which do not "
                          "match the averaged weights. Pass `bn_update_data=` (e.g. the "
                          "training set) to recompute them.", stacklevel=2)
        if self._bn_layers and self.bn_update_data is not None:
            self.bn_update_data = _readable_batches(self.bn_update_data)
        self._reset()
        self.final_weights = None
        self._ema = None  # built at the first update: the optimizer is built then
        self._validation, self._validated = None, False
        if self.state_path and _io.exists(self.state_path):
            self._load_state()
        # BackupAndRestore may restore the weights and the epoch after this
        # hook, so the state is reconciled with them at the first epoch.
        self._synced = False
        self._rate_per_batch = False
        _unwrap_learning_rate(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        if not self._synced:
            self._sync(epoch)
        if self.swa_learning_rate is not None and epoch >= self._start:
            self._enter_swa_phase()

    def on_train_batch_begin(self, batch, logs=None):
        if self._pending is not None:
            self._update(self._pending)
        if self._rate_per_batch:
            step = self._epoch_step + batch - self._start_step
            self.model.optimizer.learning_rate = float(self.swa_learning_rate(step))

    def on_epoch_end(self, epoch, logs=None):
        # Keras deletes its cached validation iterator before `on_train_end`.
        self._validation = getattr(self.model, "_eval_epoch_iterator", self._validation)
        self._validated |= any(key.startswith("val_") for key in logs or {})
        if self._is_averaged(epoch):
            self._record(epoch)

    def on_train_end(self, logs=None):
        _unwrap_learning_rate(self.model)
        self._rate_per_batch = False
        if not self._synced:  # resumed after its last epoch: no epoch ran
            self._sync(self.params.get("epochs") or 0)
        if self._pending is not None:
            self._update(self._pending)
        if not self.averaged_epochs:
            warnings.warn("StochasticWeightAveraging: no epoch was averaged (averaging "
                          f"starts at epoch {self._start}, training has "
                          f"{self.params.get('epochs')} epochs); the model is unchanged.",
                          stacklevel=2)
            return
        self._swap()
        if self.state_path:
            _io.remove(self.state_path)
        self._evaluate(logs)

    @contextlib.contextmanager
    def swap_in_final_weights(self):
        """Context manager that puts the weights before averaging in the model.

        Yields:
            The model, holding `final_weights`; the averaged weights are put
            back on exit.

        Example:

        >>> with swa.swap_in_final_weights() as model:
        ...     final_accuracy = model.evaluate(data.test)[1]
        """
        if self.final_weights is None:
            raise RuntimeError("No final weights to swap in: they exist once `fit` "
                               "has ended with at least one averaged epoch.")
        current = self.model.get_weights()
        self.model.set_weights(self.final_weights)
        try:
            yield self.model
        finally:
            self.model.set_weights(current)

    # -- averaging --------------------------------------------------------------

    def _is_averaged(self, epoch):
        return epoch >= self._start and (epoch - self._start) % self.update_every == 0

    def _record(self, epoch):
        if _ema_optimizer(self.model) is not None:
            # `SwapEMAWeights(swap_on_epoch=True)` may have swapped the EMA into
            # the model at this epoch end, or will after us; before the next
            # batch (and after `fit` finalizes the EMA) the optimizer holds it.
            self._pending = epoch
        else:
            self._update(epoch)

    def _update(self, epoch):
        self._pending = None
        if self._ema is None:
            self._ema = _ema_variables(self.model)
        variables = self.model.weights
        weights = [self._ema.get(id(variables[slot]), variables[slot]).numpy()
                   for slot in self._slots]
        if self.state_path:
            self._previous = self._average.get_state()
        self._average.update(weights)
        self.averaged_epochs.append(int(epoch))
        if self.state_path:
            self._save_state()
        if self.verbose:
            _io.say(f"\nEpoch {epoch + 1}: weights averaged "
                    f"({len(self.averaged_epochs)} epochs).")

    def _swap(self):
        """Puts the average and its BatchNorm statistics in the model, or nothing."""
        variables, final = self.model.weights, self.model.get_weights()
        try:
            for slot, average in zip(self._slots, self._average.average):
                variables[slot].assign(average.astype(variables[slot].dtype))
            if self._bn_layers and self.bn_update_data is not None:
                averaging._update_batch_norm(self.model, self.bn_update_data,
                                             "bn_update_data")
        except BaseException:
            self.model.set_weights(final)
            raise
        self.final_weights = final

    def _evaluate(self, logs):
        """Logs the averaged model's metrics on the fit's validation data."""
        if self._validation is None:
            if self._validated:
                warnings.warn("StochasticWeightAveraging: could not find the validation "
                              "data of `fit`; the averaged model is not evaluated and "
                              "`val_*` describe the weights before averaging.",
                              stacklevel=2)
            return
        results = {f"swa_val_{name}": value for name, value in
                   _evaluate_cached(self.model, self._validation).items()}
        self._validation = None
        if logs is not None:
            logs.update(results)
        history = getattr(self.model, "history", None)
        if isinstance(history, keras.callbacks.History):
            padding = [math.nan] * max(len(history.epoch) - 1, 0)
            for name, value in results.items():
                history.history[name] = padding + [value]
        if self.verbose:
            _io.say("SWA: " + ", ".join(f"{k}={v:.4f}" for k, v in results.items()))

    def _sync(self, epoch):
        """Makes the average cover exactly the averaged epochs before `epoch`."""
        self._synced = True
        stale = [e for e in self.averaged_epochs if e >= epoch]
        if len(stale) == len(self.averaged_epochs):
            self._reset()
        elif len(stale) == 1 and self._previous is not None:
            self._average.set_state(self._previous)
            self._previous = None
            self.averaged_epochs = self.averaged_epochs[:-1]
        elif stale:
            raise RuntimeError(
                f"The SWA state in {self.state_path} averages epochs {stale} but training "
                f"resumes at epoch {epoch}; only one epoch can be rolled back. Delete the "
                "file to restart averaging, or resume from a later checkpoint.")
        missing = [e for e in range(self._start, epoch)
                   if self._is_averaged(e) and e not in self.averaged_epochs]
        if missing == [epoch - 1]:
            # The model holds the weights at the end of epoch - 1 (restored by
            # BackupAndRestore after a stop before our state was written).
            self._record(epoch - 1)
        elif missing:
            warnings.warn(f"StochasticWeightAveraging: training starts at epoch {epoch} "
                          f"without the weights of averaged epochs {missing}; they are "
                          "missing from the average.", stacklevel=2)

    def _enter_swa_phase(self):
        optimizer = self.model.optimizer
        step = int(optimizer.iterations.numpy())
        if self._start_step is None:
            self._start_step = step
        rate = _introspect.learning_rate_source(optimizer)
        if isinstance(rate, _LRS):
            if not isinstance(rate, _SWAPhase):
                optimizer.learning_rate = _SWAPhase(rate, self.swa_learning_rate,
                                                    self._start_step)
                # The compiled train step captured the old schedule.
                self.model.make_train_function(force=True)
        elif isinstance(self.swa_learning_rate, _LRS):
            # A constant rate is a variable (saved with the optimizer); set it
            # per batch, counting steps on the host to avoid a device sync.
            self._rate_per_batch, self._epoch_step = True, step
        else:
            optimizer.learning_rate = float(self.swa_learning_rate)

    # -- resumable state --------------------------------------------------------

    def _save_state(self):
        _write_state(self.state_path, self._average.get_state(), self._previous,
                     self.averaged_epochs, self._start_step)

    def _load_state(self):
        shapes = [tuple(self.model.weights[s].shape) for s in self._slots]
        state, self._previous, self.averaged_epochs, self._start_step = _read_state(
            self.state_path, shapes)
        self._average.set_state(state)


@keras.saving.register_keras_serializable(package="kerastrain", name="SWAPhase")
class _SWAPhase(_LRS):
    """Replaces an optimizer's schedule during the averaging phase."""

    def __init__(self, original, swa_learning_rate, start_step):
        self.original, self.swa_learning_rate = original, swa_learning_rate
        self.start_step = start_step

    def __call__(self, step):
        if isinstance(self.swa_learning_rate, _LRS):
            return self.swa_learning_rate(step - self.start_step)
        return keras.ops.convert_to_tensor(self.swa_learning_rate, "float32")

    def get_config(self):
        # A model saved mid-phase (e.g. by ModelCheckpoint) keeps the phase.
        serialize = keras.saving.serialize_keras_object
        return {"original": serialize(self.original), "start_step": self.start_step,
                "swa_learning_rate": serialize(self.swa_learning_rate)}

    @classmethod
    def from_config(cls, config):
        deserialize = keras.saving.deserialize_keras_object
        return cls(deserialize(config["original"]),
                   deserialize(config["swa_learning_rate"]), config["start_step"])


def _unwrap_learning_rate(model):
    optimizer = getattr(model, "optimizer", None)
    rate = None if optimizer is None else _introspect.learning_rate_source(optimizer)
    if isinstance(rate, _SWAPhase):
        optimizer.learning_rate = rate.original
        model.make_train_function(force=True)


def _averaged_slots(model):
    """Indices into `model.weights` to average, and the BatchNorm layers to
    recompute."""
    every, trainable = averaging._batch_norm_layers(model)
    excluded = {id(v) for layer in every for v in (layer.moving_mean, layer.moving_variance)}
    slots = [i for i, v in enumerate(model.weights)
             if id(v) not in excluded and "float" in str(v.dtype)]
    return slots, trainable


def _ema_optimizer(model):
    """The model's optimizer if it keeps an EMA of the weights, else `None`."""
    optimizer = _introspect.base_optimizer(getattr(model, "optimizer", None))
    return optimizer if getattr(optimizer, "use_ema", False) else None


def _ema_variables(model):
    """`{id(model variable): its EMA variable}` for a `use_ema` optimizer, else `{}`."""
    optimizer = _ema_optimizer(model)
    if optimizer is None:
        return {}
    return {id(v): average for v, average in zip(optimizer._trainable_variables,
                                                 optimizer._model_variables_moving_average)}


def _readable_batches(data):
    """`data`, checked to give batches at the end of `fit` (an iterator is
    read once: one exhausted by an earlier fit is refused now)."""
    if isinstance(data, tf.data.Dataset):
        if int(data.cardinality()) == 0:
            raise ValueError("Invalid value for `bn_update_data`: the dataset yields no "
                             "batches; pass a non-empty dataset to recompute the "
                             "BatchNorm statistics.")
        return data
    if iter(data) is not data:  # a list or another iterable that can be read again
        return data
    try:
        first = next(data)
    except StopIteration:
        raise ValueError(
            "Invalid value for `bn_update_data`: the iterator is exhausted (a generator "
            "can be read only once, e.g. by the BatchNorm pass of an earlier fit); pass "
            "a tf.data.Dataset or a list of batches, which can be read again, or a new "
            "generator for each fit.") from None
    return itertools.chain([first], data)


def _evaluate_cached(model, iterator):
    """`model.evaluate` on the iterator `fit` validated with (same steps, batch
    size and sample weights), through Keras' cached-dataset evaluation."""
    model._eval_epoch_iterator = iterator
    try:
        results = model.evaluate(verbose=0, return_dict=True, _use_cached_eval_dataset=True)
    finally:
        del model._eval_epoch_iterator
    return {name: float(value) for name, value in results.items()}


def _write_state(path, state, previous, epochs, start_step):
    """Writes the resumable state atomically, in the `.npz` layout of 0.1."""
    arrays = {f"average_{i}": a for i, a in enumerate(state["average"])}
    arrays["epochs"] = np.asarray(epochs, np.int64)
    arrays["start_step"] = np.asarray(-1 if start_step is None else start_step)
    if previous is not None and previous["average"] is not None:
        arrays.update({f"previous_{i}": a for i, a in enumerate(previous["average"])})

    def write(temporary):
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)

    _io.atomic_write(path, write)


def _read_state(path, shapes):
    """`(state, previous, epochs, start_step)` from `_write_state`'s file."""
    with tf.io.gfile.GFile(path, "rb") as f:
        arrays = np.load(io.BytesIO(f.read()))
    count = sum(key.startswith("average_") for key in arrays.files)
    average = [arrays[f"average_{i}"] for i in range(count)]
    if [a.shape for a in average] != shapes:
        raise ValueError(f"The SWA state in {path} does not match the model's weights; "
                         "delete it or pass another `state_path`.")
    epochs = [int(e) for e in arrays["epochs"]]
    previous = None
    if "previous_0" in arrays.files:
        previous = {"count": len(epochs) - 1,
                    "average": [arrays[f"previous_{i}"] for i in range(count)]}
    start_step = int(arrays["start_step"])
    return ({"count": len(epochs), "average": average}, previous, epochs,
            None if start_step < 0 else start_step)
