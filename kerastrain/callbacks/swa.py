"""Stochastic weight averaging (SWA) as a Keras callback.

Keras 3 offers an exponential moving average of the weights (`use_ema`) but
no equal-weight average of late-training solutions, and TensorFlow Addons'
`SWA` optimizer wrapper is unmaintained, averaged BatchNorm moving statistics
instead of recomputing them, and lost its state on a checkpoint resume. This
callback follows PyTorch's `torch.optim.swa_utils` (`AveragedModel`,
`update_bn`, `SWALR`) on top of `model.fit`.
"""

import contextlib
import math
import numbers
import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

_LRS = keras.optimizers.schedules.LearningRateSchedule


class StochasticWeightAveraging(keras.callbacks.Callback):
    """Averages the weights of late epochs and swaps the average in at the end.

    Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
    Generalization" (UAI 2018). From the start epoch on, every
    `update_every`-th epoch end adds the weights `w` to a running average kept
    in float64 on the host, `avg <- avg + (w - avg) / (n + 1)`, over every
    float variable of the model (trainable and non-trainable) except BatchNorm
    moving statistics.
    When training ends the average is assigned to the model (also under
    `tf.distribute` strategies) and the moving statistics of every trainable
    `BatchNormalization` layer are recomputed with one compiled forward pass
    over `bn_update_data` in training mode: the moving mean and variance
    become the example-weighted average of the batch means and variances
    (the quantity Keras' moving averages estimate, averaged uniformly instead
    of exponentially, like PyTorch's `update_bn`).

    The weights before averaging stay available as `final_weights` and with
    `swap_in_final_weights()`, to evaluate both.

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
            set. Without it, a model with BatchNorm keeps the moving statistics
            of the last epoch, with a warning. Defaults to `None`.
        state_path: `.npz` file for the resumable state. Defaults to `None`.
        verbose: 1 prints a line per averaged epoch. Defaults to 0.

    Example:

    >>> swa = StochasticWeightAveraging(start_fraction=0.75,
    ...                                 swa_learning_rate=0.01,
    ...                                 bn_update_data=data.train)
    >>> model.fit(data.train, epochs=20, callbacks=[swa])
    >>> swa_accuracy = model.evaluate(data.test)[1]
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
            _check("start_epoch", start_epoch, _is_int(start_epoch, 0), "an integer >= 0")
        if start_fraction is not None:
            _check("start_fraction", start_fraction,
                   _is_real(start_fraction) and 0 <= start_fraction < 1,
                   "0 <= start_fraction < 1")
        _check("update_every", update_every, _is_int(update_every, 1), "an integer >= 1")
        if swa_learning_rate is not None:
            _check("swa_learning_rate", swa_learning_rate,
                   isinstance(swa_learning_rate, _LRS)
                   or (_is_real(swa_learning_rate) and swa_learning_rate > 0),
                   "a float > 0 or a keras LearningRateSchedule")
        if bn_update_data is not None:
            _check("bn_update_data", bn_update_data, hasattr(bn_update_data, "__iter__"),
                   "a dataset or iterable of batches")
            if isinstance(bn_update_data, tf.data.Dataset) and int(
                    bn_update_data.cardinality()) == tf.data.INFINITE_CARDINALITY:
                raise ValueError("Invalid value for `bn_update_data`: the dataset repeats "
                                 "forever; pass a finite one, e.g. `dataset.take(steps)`.")
        if state_path is not None:
            _check("state_path", state_path, str(state_path).endswith(".npz"),
                   "a path ending in '.npz'")
        self.start_epoch, self.start_fraction = start_epoch, start_fraction
        self.update_every = int(update_every)
        self.swa_learning_rate = swa_learning_rate
        self.bn_update_data = bn_update_data
        self.state_path = None if state_path is None else os.fspath(state_path)
        self.verbose = verbose
        self.final_weights = None
        self._reset()

    def _reset(self):
        # `_previous` is the average before the last averaged epoch (with a
        # `state_path`), kept to roll that epoch back on a resume.
        self.averaged_epochs, self._average, self._previous = [], None, None
        self._start_step = None

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
        self._reset()
        self.final_weights = None
        if self.state_path and os.path.exists(self.state_path):
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
        if self._rate_per_batch:
            step = self._epoch_step + batch - self._start_step
            self.model.optimizer.learning_rate = float(self.swa_learning_rate(step))

    def on_epoch_end(self, epoch, logs=None):
        if self._is_averaged(epoch):
            self._update(epoch)

    def on_train_end(self, logs=None):
        _unwrap_learning_rate(self.model)
        self._rate_per_batch = False
        if not self._synced:  # resumed after its last epoch: no epoch ran
            self._sync(self.params.get("epochs") or 0)
        if not self.averaged_epochs:
            warnings.warn("StochasticWeightAveraging: no epoch was averaged (averaging "
                          f"starts at epoch {self._start}, training has "
                          f"{self.params.get('epochs')} epochs); the model is unchanged.",
                          stacklevel=2)
            return
        variables = self.model.weights
        self.final_weights = self.model.get_weights()
        for slot, average in zip(self._slots, self._average):
            variables[slot].assign(average.astype(variables[slot].dtype))
        if self._bn_layers and self.bn_update_data is not None:
            _recompute_batch_norm(self.model, self._bn_layers, self.bn_update_data)
        if self.state_path and os.path.exists(self.state_path):
            os.remove(self.state_path)

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

    def _update(self, epoch):
        variables = self.model.weights
        weights = [np.array(variables[slot].numpy(), np.float64) for slot in self._slots]
        count = len(self.averaged_epochs)
        average = weights if self._average is None else [
            a + (w - a) / (count + 1) for a, w in zip(self._average, weights)]
        if self.state_path:
            self._previous = self._average
        self._average = average
        self.averaged_epochs.append(int(epoch))
        if self.state_path:
            self._save_state()
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: weights averaged ({len(self.averaged_epochs)} epochs).")

    def _sync(self, epoch):
        """Makes the average cover exactly the averaged epochs before `epoch`."""
        self._synced = True
        stale = [e for e in self.averaged_epochs if e >= epoch]
        if len(stale) == len(self.averaged_epochs):
            self._reset()
        elif len(stale) == 1 and self._previous is not None:
            self._average, self._previous = self._previous, None
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
            self._update(epoch - 1)
        elif missing:
            warnings.warn(f"StochasticWeightAveraging: training starts at epoch {epoch} "
                          f"without the weights of averaged epochs {missing}; they are "
                          "missing from the average.", stacklevel=2)

    def _enter_swa_phase(self):
        optimizer = self.model.optimizer
        step = int(optimizer.iterations.numpy())
        if self._start_step is None:
            self._start_step = step
        if isinstance(optimizer._learning_rate, _LRS):
            if not isinstance(optimizer._learning_rate, _SWAPhase):
                optimizer.learning_rate = _SWAPhase(optimizer._learning_rate,
                                                    self.swa_learning_rate, self._start_step)
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
        arrays = {f"average_{i}": a for i, a in enumerate(self._average)}
        arrays["epochs"] = np.asarray(self.averaged_epochs, np.int64)
        arrays["start_step"] = np.asarray(-1 if self._start_step is None else self._start_step)
        if self._previous is not None:
            arrays.update({f"previous_{i}": a for i, a in enumerate(self._previous)})
        directory = os.path.dirname(os.path.abspath(self.state_path))
        os.makedirs(directory, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, self.state_path)
        except BaseException:
            os.remove(tmp)
            raise

    def _load_state(self):
        with np.load(self.state_path) as state:
            count = sum(key.startswith("average_") for key in state.files)
            average = [state[f"average_{i}"] for i in range(count)]
            if [a.shape for a in average] != [tuple(self.model.weights[s].shape)
                                              for s in self._slots]:
                raise ValueError(f"The SWA state in {self.state_path} does not match the "
                                 "model's weights; delete it or pass another `state_path`.")
            self._average = average
            self.averaged_epochs = [int(e) for e in state["epochs"]]
            start_step = int(state["start_step"])
            self._start_step = None if start_step < 0 else start_step
            if "previous_0" in state.files:
                self._previous = [state[f"previous_{i}"] for i in range(count)]


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
    if optimizer is not None and isinstance(optimizer._learning_rate, _SWAPhase):
        optimizer.learning_rate = optimizer._learning_rate.original
        model.make_train_function(force=True)


def _averaged_slots(model):
    """Indices into `model.weights` to average, and the BatchNorm layers."""
    # `_flatten_layers` also finds layers nested in sub-models and layers.
    bn_layers = [layer for layer in model._flatten_layers(include_self=False)
                 if isinstance(layer, keras.layers.BatchNormalization)]
    renorm = [layer.name for layer in bn_layers if layer.renorm]
    if renorm:
        raise ValueError(f"BatchNormalization layers {renorm} use renorm=True, whose "
                         "statistics StochasticWeightAveraging cannot recompute; "
                         "build them with renorm=False.")
    excluded = {id(v) for layer in bn_layers
                for v in (layer.moving_mean, layer.moving_variance)}
    slots = [i for i, v in enumerate(model.weights)
             if id(v) not in excluded and "float" in str(v.dtype)]
    return slots, [layer for layer in bn_layers if layer.trainable]


def _recompute_batch_norm(model, layers, data):
    """Sets BatchNorm moving statistics to the average batch moments on `data`."""
    # With momentum 0 a training-mode call leaves each batch's moments in the
    # moving statistics; they are summed on the host, weighted by batch size.
    @tf.function(reduce_retracing=True)
    def forward(x):
        model(x, training=True)

    momenta = [layer.momentum for layer in layers]
    statistics = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    sums, seen = [np.zeros(v.shape, np.float64) for v in statistics], 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        for batch in data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            size = int(keras.tree.flatten(x)[0].shape[0])
            forward(x)
            seen += size
            for total, v in zip(sums, statistics):
                total += size * np.asarray(v.numpy(), np.float64)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if not seen:
        raise ValueError("`bn_update_data` yielded no batches; pass a non-empty "
                         "dataset to recompute the BatchNorm statistics.")
    for total, v in zip(sums, statistics):
        v.assign((total / seen).astype(v.dtype))


def _check(name, value, ok, expected):
    if not ok:
        raise ValueError(f"Invalid value for `{name}`: expected {expected}, "
                         f"received {name}={value!r}")


def _is_int(value, minimum):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) \
        and value >= minimum


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)
