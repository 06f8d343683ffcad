"""Weight averaging in parts: a running average of weights, and BatchNorm
statistics recomputed for any model.

The two parts of PyTorch's `torch.optim.swa_utils` that Keras lacks, for use
on their own or through `kerastrain.callbacks.StochasticWeightAveraging`:

- `WeightAverage`: a running average of a list of weights (equal weight per
  update by default, or any `avg_fn`, e.g. `ema_avg_fn(decay)`), kept in
  float64 on the host, with `get_state`/`set_state` to resume it.
- `update_batch_norm(model, data)`: sets the moving mean and variance of every
  BatchNormalization layer to the exact statistics of its inputs over `data`,
  for an averaged model, an ensemble member, an EMA model or a model loaded
  from disk.
"""

import keras
import numpy as np
import tensorflow as tf

from kerastrain._checks import check, check_real, is_int


class WeightAverage:
    """Running average of a list of weights, in float64 on the host.

    The first `update` copies the weights; update `n + 1` (with `n` updates
    averaged) sets `average <- avg_fn(average, weights, n)` array by array.
    The default `avg_fn` is the equal-weight mean of every update,
    `average + (weights - average) / (n + 1)` (Izmailov et al., 2018), as in
    PyTorch's `AveragedModel`.

    Args:
        avg_fn: `None` for the equal-weight mean, or a function
            `(average, weights, count) -> new_average` of NumPy float64
            arrays, e.g. `ema_avg_fn(0.99)`. Defaults to `None`.

    Example:

    >>> average = kt.averaging.WeightAverage()
    >>> for epoch in range(10):
    ...     model.fit(data.train, initial_epoch=epoch, epochs=epoch + 1)
    ...     if epoch >= 7:
    ...         average.update(model.get_weights())
    >>> model.set_weights(average.average)
    >>> kt.averaging.update_batch_norm(model, data.train)  # averaged statistics mean nothing
    """

    def __init__(self, avg_fn=None):
        check("avg_fn", avg_fn, avg_fn is None or callable(avg_fn),
              "None or a function (average, weights, count) -> average")
        self.avg_fn = avg_fn
        self._average, self._count = None, 0

    @property
    def count(self):
        """The number of updates averaged."""
        return self._count

    @property
    def average(self):
        """The average, a list of float64 arrays (`None` before any update)."""
        return None if self._average is None else [a.copy() for a in self._average]

    def update(self, weights):
        """Adds `weights` (arrays or variables, in the order of the first update)."""
        weights = [np.array(w, np.float64) for w in weights]
        if self._average is None:
            self._average = weights
        else:
            shapes = [a.shape for a in self._average]
            if [w.shape for w in weights] != shapes:
                raise ValueError(f"Invalid value for `weights`: expected {len(shapes)} "
                                 f"arrays of shapes {shapes} as in the first update, "
                                 f"received shapes {[w.shape for w in weights]}")
            average_fn = self.avg_fn or _equal_average
            self._average = [np.asarray(average_fn(a, w, self._count), np.float64)
                             for a, w in zip(self._average, weights)]
        self._count += 1

    def get_state(self):
        """The state to save: `{"count": int, "average": list of arrays or None}`."""
        return {"count": self._count, "average": self.average}

    def set_state(self, state):
        """Restores a state from `get_state` (a copy is kept)."""
        ok = isinstance(state, dict) and is_int(state.get("count")) and state["count"] >= 0 \
            and (state.get("average") is None) == (state["count"] == 0)
        check("state", state, ok, 'a dict {"count": int >= 0, "average": arrays, '
              'None when count is 0} as get_state() returns')
        average = state["average"]
        self._average = None if average is None else [np.array(a, np.float64)
                                                      for a in average]
        self._count = int(state["count"])


def ema_avg_fn(decay):
    """An `avg_fn` for an exponential moving average with `decay`.

    `average <- decay * average + (1 - decay) * weights`, PyTorch's
    `get_ema_avg_fn`.

    Args:
        decay: the weight of the old average, in `[0, 1]`.

    Returns:
        A function for `WeightAverage(avg_fn=...)`.
    """
    decay = check_real("decay", decay, 0, 1)

    def average_fn(average, weights, count):
        return decay * average + (1.0 - decay) * weights

    return average_fn


def _equal_average(average, weights, count):
    return average + (weights - average) / (count + 1)


def update_batch_norm(model, data):
    """Sets BatchNorm moving statistics to the exact statistics over `data`.

    After weights change without training (an average of weights, an EMA, an
    ensemble member), the moving mean and variance of BatchNormalization
    layers no longer describe the layers' inputs. This makes one compiled
    forward pass per batch of `data` in training mode (all layers at once,
    including layers in nested models) and sets, for every trainable
    BatchNormalization layer, `moving_mean` to the mean and `moving_variance`
    to the population (biased, divided by N) variance of the layer's inputs
    over all of `data`, per channel: the statistics training-mode BatchNorm
    would compute with all of `data` as one batch, and what it uses at
    inference. The per-batch moments are pooled exactly in float64 (Chan et
    al.'s parallel update), so the result does not depend on the batch size;
    batches are weighted by their number of examples (exact for inputs of one
    shape; masks are not counted).

    PyTorch's `update_bn` instead averages per-batch statistics uniformly
    (momentum `None`), with the unbiased variance of each batch: its running
    variance misses the spread between batch means and changes with the batch
    size (about 0.78x the data's variance at batch 5 for a dense layer).

    Layers with `trainable=False` run in inference mode and keep their
    statistics, as in Keras. Other layers run in training mode during the
    pass (Dropout included), as in PyTorch's `update_bn`. If the pass fails,
    every statistic keeps its value from before the call.

    Args:
        model: a Keras model (it need not be compiled).
        data: a finite `tf.data.Dataset` or iterable of `x` or `(x, y[, w])`
            batches, typically the training set.

    Returns:
        The number of examples the statistics were computed over; 0 for a
        model without trainable BatchNormalization layers (`data` is not read).

    Example:

    >>> model = keras.saving.load_model("swa.keras")
    >>> kt.averaging.update_batch_norm(model, data.train)
    """
    return _update_batch_norm(model, data, "data")


def _update_batch_norm(model, data, name):
    """`update_batch_norm`, naming the data argument `name` in errors."""
    check("model", model, isinstance(model, keras.Model), "a keras.Model")
    _check_batches(name, data)
    layers = _batch_norm_layers(model)[1]
    if not layers:
        return 0
    statistics = [(layer.moving_mean, layer.moving_variance) for layer in layers]
    saved = [(layer.momentum, mean.numpy(), variance.numpy())
             for layer, (mean, variance) in zip(layers, statistics)]
    try:
        # With momentum 0 a training-mode call leaves each batch's moments in
        # the moving statistics; reset first so that no NaN survives 0 * NaN.
        for layer, (mean, variance) in zip(layers, statistics):
            layer.momentum = 0.0
            mean.assign(np.zeros(mean.shape, mean.dtype))
            variance.assign(np.ones(variance.shape, variance.dtype))
        count, means, m2s = _pooled_moments(model, statistics, data, name)
        for (mean, variance), m, m2 in zip(statistics, means, m2s):
            mean.assign(m.astype(mean.dtype))
            variance.assign((m2 / count).astype(variance.dtype))
    except BaseException:
        for (mean, variance), (_, old_mean, old_variance) in zip(statistics, saved):
            mean.assign(old_mean)
            variance.assign(old_variance)
        raise
    finally:
        for layer, (momentum, _, _) in zip(layers, saved):
            layer.momentum = momentum
    return count


def _pooled_moments(model, statistics, data, name):
    """Example count, per-layer means and sums of squared deviations over `data`."""
    @tf.function(reduce_retracing=True)
    def forward(x):
        model(x, training=True)
        return [(tf.identity(mean.value), tf.identity(variance.value))
                for mean, variance in statistics]

    count, means, m2s, shape = 0, None, None, None
    for batch in data:
        x = keras.utils.unpack_x_y_sample_weight(batch)[0]
        first = keras.tree.flatten(x)[0]
        size = int(first.shape[0])
        if shape is not None and tuple(first.shape[1:]) != shape:
            raise ValueError(f"Invalid value for `{name}`: batches must hold examples of "
                             f"one shape, received {shape} and then "
                             f"{tuple(first.shape[1:])}")
        shape = tuple(first.shape[1:])
        moments = [(np.asarray(m, np.float64), np.asarray(v, np.float64))
                   for m, v in forward(x)]
        if means is None:
            means = [m for m, _ in moments]
            m2s = [v * size for _, v in moments]
        else:  # Chan, Golub & LeVeque's pairwise update of mean and M2
            total = count + size
            for i, (m, v) in enumerate(moments):
                delta = m - means[i]
                means[i] = means[i] + delta * (size / total)
                m2s[i] = m2s[i] + v * size + delta ** 2 * (count * size / total)
        count += size
    if not count:
        raise ValueError(f"Invalid value for `{name}`: it yielded no batches; pass a "
                         "non-empty dataset to recompute the BatchNorm statistics.")
    return count, means, m2s


def _batch_norm_layers(model):
    """All BatchNormalization layers of `model` (nested ones included), and the
    trainable ones, whose statistics `update_batch_norm` recomputes."""
    # `_flatten_layers` also finds layers nested in sub-models and layers.
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization)]
    renorm = [layer.name for layer in layers if layer.renorm]
    if renorm:
        raise ValueError(f"BatchNormalization layers {renorm} use renorm=True, whose "
                         "statistics cannot be recomputed from batch moments; build "
                         "them with renorm=False.")
    return layers, [layer for layer in layers if layer.trainable]


def _check_batches(name, data):
    """Rejects what cannot be a finite sequence of batches."""
    check(name, data, hasattr(data, "__iter__"), "a dataset or iterable of batches")
    if isinstance(data, tf.data.Dataset) and int(
            data.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"Invalid value for `{name}`: the dataset repeats forever; "
                         "pass a finite one, e.g. `dataset.take(steps)`.")
