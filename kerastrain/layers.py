"""Inverted dropout with a Monte-Carlo mode, and Monte-Carlo prediction.

`InvertedDropout` is Keras' dropout (same `keras.random.dropout` kernel and
seeding) plus an `mc` flag that keeps it active at inference, so a saved model
can carry its own uncertainty estimate. `mc_predict()` averages predictions
over dropout masks for any Sequential or functional model, forcing only the
dropout layers on while every other layer (BatchNorm in particular) stays in
inference mode.
"""

import keras
import numpy as np

from kerastrain import _checks

# The layers `mc_predict` switches on: their `training=True` behaviour is to
# sample a random mask. `Dropout` covers SpatialDropout1D/2D/3D too.
_DROPOUT_TYPES = (
    keras.layers.Dropout,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


@keras.saving.register_keras_serializable(package="kerastrain")
class InvertedDropout(keras.layers.Layer):
    """Inverted dropout: drop units at random, rescale the survivors.

    During training every unit is kept with probability `1 - rate` and
    scaled so that its expectation is unchanged:

    `y = x * m / (1 - rate)`, with `m ~ Bernoulli(1 - rate)`,

    hence `E[y] = x` and, at inference, `y = x` with no rescaling needed.
    The mask comes from `keras.random.dropout`, exactly as in
    `keras.layers.Dropout`; what this layer adds is `mc=True`, which keeps
    the dropout active at inference (Monte-Carlo dropout, Gal & Ghahramani,
    2016) so that repeated predictions sample from the model's predictive
    distribution, and a stricter `rate` check (`rate=1` would divide by
    zero).

    Args:
        rate: fraction of the units to drop, `0 <= rate < 1`.
        noise_shape: shape of the binary mask, broadcast against the inputs;
            `None` entries take the input's size. For NHWC feature maps,
            `(None, 1, 1, channels)` drops whole channels. Defaults to `None`
            (one independent draw per unit).
        seed: seed of the mask stream, an int >= 0. Defaults to `None`.
        mc: if `True`, drop units at inference too. Defaults to `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`...).

    Example:

    >>> layer = InvertedDropout(0.5, seed=0)
    >>> y = layer(np.ones((2, 4)), training=True)  # entries 0.0 or 2.0
    """

    def __init__(self, rate, noise_shape=None, seed=None, mc=False, **kwargs):
        super().__init__(**kwargs)
        self.rate = _checks.check_real("rate", rate, 0, 1, high_open=True)
        _checks.check_seed("seed", seed)
        _checks.check("mc", mc, isinstance(mc, bool), "True or False")
        self.noise_shape = _check_noise_shape(noise_shape)
        self.seed = None if seed is None else int(seed)
        self.mc = mc
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.supports_masking = True

    def build(self, input_shape):
        if self.noise_shape is not None:
            _check_broadcastable(self.noise_shape, input_shape)
        self.built = True

    def call(self, inputs, training=False):
        if (training or self.mc) and self.rate > 0:
            return keras.random.dropout(
                inputs, self.rate, self.noise_shape, seed=self.seed_generator
            )
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rate": self.rate,
            "noise_shape": self.noise_shape,
            "seed": self.seed,
            "mc": self.mc,
        }


def mc_predict(model, x, samples=30, batch_size=None, seed=None):
    """Monte-Carlo dropout prediction: mean and spread over dropout masks.

    Runs `samples` forward passes with every dropout layer active and every
    other layer in inference mode, and returns the per-output mean and
    standard deviation (`ddof=0`).

    `model(x, training=True)` is *not* a correct way to do this: it also
    puts BatchNorm in training mode (batch statistics instead of the learned
    moving ones, and moving statistics updated by the prediction calls) and
    turns on any augmentation layer inside the model. Instead the model is
    cloned (`keras.models.clone_model`, nested models included) with each
    `InvertedDropout`, `Dropout`, `SpatialDropout*`, `GaussianDropout` and
    `AlphaDropout` layer wrapped so that it is always called with
    `training=True`, the weights are copied, and the clone is run with
    `training=False`. The input model is left untouched. Subclassed models
    cannot be cloned: they are accepted only when all their dropout layers
    are `InvertedDropout(mc=True)`, which are active at inference anyway.
    Dropout hidden inside custom layers (not listed in `model.layers`, at
    any nesting depth) is not reached.

    Args:
        model: a built `keras.Model` with at least one dropout layer.
        x: inputs: a NumPy array or tensor (or the list/dict of them that a
            multi-input model takes), batched along the first axis.
        samples: number of dropout masks, `>= 2`. Defaults to `30`.
        batch_size: number of inputs per forward pass. Defaults to `None`
            (32).
        seed: seed for the masks, an int >= 0: dropout layer `i` of the
            clone gets seed `seed + i`. Defaults to `None` (the layers' own
            seeds).

    Returns:
        `(mean, std)`, NumPy arrays shaped like `model.predict(x)` (nested
        the same way for multi-output models).

    Raises:
        ValueError: if `model` has no dropout layer, or is a subclassed model
            whose dropout cannot be forced on.

    Example:

    >>> mean, std = mc_predict(model, images, samples=50)
    >>> uncertain = std.max(axis=-1) > 0.2
    """
    _checks.check_int("samples", samples, minimum=2)  # one sample has no spread
    if batch_size is not None:
        _checks.check_int("batch_size", batch_size, minimum=1)
    _checks.check_seed("seed", seed)
    dropout = [layer for layer in _walk(model) if _is_dropout(layer)]
    if not dropout:
        raise ValueError(
            f"Model '{model.name}' has no dropout layer, so every Monte-Carlo "
            "sample would be identical. Add `InvertedDropout` (or "
            "`keras.layers.Dropout`) layers, or use `model.predict`."
        )
    try:
        runner = _clone_with_forced_dropout(model, seed)
    except ValueError as error:  # subclassed models cannot be cloned
        if not all(isinstance(l, InvertedDropout) and l.mc for l in dropout):
            raise ValueError(
                f"Cannot force dropout on in model '{model.name}' of class "
                f"{type(model).__name__}: only Sequential and functional "
                f"models can be cloned ({error}). Build the model with "
                "`InvertedDropout(..., mc=True)` layers instead."
            ) from error
        if seed is not None:
            raise ValueError(
                "`seed` needs a Sequential or functional model; seed the "
                "`InvertedDropout` layers of this subclassed model instead."
            ) from error
        runner = model
    runs = [_predict(runner, x, batch_size or 32) for _ in range(samples)]
    stacked = keras.tree.map_structure(lambda *p: np.stack(p), *runs)
    mean = keras.tree.map_structure(lambda p: p.mean(axis=0), stacked)
    std = keras.tree.map_structure(lambda p: p.std(axis=0), stacked)
    return mean, std


def _predict(model, x, batch_size):
    # `predict_on_batch` reuses one compiled function; `model.predict` would
    # rebuild its data pipeline on every one of the `samples` passes.
    size = len(keras.tree.flatten(x)[0])
    batches = [
        model.predict_on_batch(
            keras.tree.map_structure(lambda a: a[i : i + batch_size], x)
        )
        for i in range(0, size, batch_size)
    ]
    return keras.tree.map_structure(lambda *b: np.concatenate(b), *batches)


class _ForcedDropout(keras.layers.Layer):
    """Calls the wrapped dropout layer with `training=True`, always."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, inputs, training=None):
        return self.layer(inputs, training=True)

    def compute_output_shape(self, input_shape):
        return input_shape


def _clone_with_forced_dropout(model, seed):
    pairs = []
    dropout_count = [0]

    def clone_layer(layer):
        config = layer.get_config()
        if _is_dropout(layer):
            if seed is not None:
                config["seed"] = int(seed) + dropout_count[0]
            dropout_count[0] += 1
            new = _ForcedDropout(
                layer.__class__.from_config(config), name=f"{layer.name}_mc"
            )
        else:
            new = layer.__class__.from_config(config)
        pairs.append((layer, new))
        return new

    clone = keras.models.clone_model(
        model, clone_function=clone_layer, recursive=True
    )
    for layer, new in pairs:
        if layer.weights:
            new.set_weights(layer.get_weights())
    return clone


def _is_dropout(layer):
    return isinstance(layer, (InvertedDropout,) + _DROPOUT_TYPES)


def _walk(layer):
    yield layer
    for sublayer in getattr(layer, "layers", None) or []:
        yield from _walk(sublayer)


def _check_noise_shape(noise_shape):
    if noise_shape is None:
        return None
    if isinstance(noise_shape, (str, bytes)) or not hasattr(
        noise_shape, "__iter__"
    ):
        raise ValueError(
            "Invalid value for `noise_shape`: expected a tuple of positive "
            f"integers or None, received noise_shape={noise_shape!r}"
        )
    noise_shape = tuple(noise_shape)
    for dim in noise_shape:
        if dim is not None and not (_checks.is_int(dim) and dim > 0):
            raise ValueError(
                "Invalid value for `noise_shape`: every entry must be a "
                f"positive integer or None, received noise_shape={noise_shape}"
            )
    return tuple(None if d is None else int(d) for d in noise_shape)


def _check_broadcastable(noise_shape, input_shape):
    input_shape = tuple(input_shape)
    if len(noise_shape) != len(input_shape):
        raise ValueError(
            f"Invalid value for `noise_shape`: noise_shape={noise_shape} has "
            f"rank {len(noise_shape)} but the inputs have shape {input_shape} "
            f"(rank {len(input_shape)}); give one entry per input axis."
        )
    for noise, size in zip(noise_shape, input_shape):
        if noise not in (None, 1) and size is not None and noise != size:
            raise ValueError(
                f"Invalid value for `noise_shape`: noise_shape={noise_shape} "
                f"does not broadcast to the input shape {input_shape}; each "
                "entry must be None, 1 or the input's size on that axis."
            )
