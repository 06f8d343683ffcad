"""Elastic-net weight penalty, adding a penalty to an existing model, and
label smoothing for integer labels.

Keras computes a weight's penalty from the regularizer it was *created*
with, so setting `layer.kernel_regularizer` on a built model (a pretrained
`keras.applications` backbone, a model loaded from disk) changes nothing.
`apply()` rebuilds the model from its config with the regularizer in every
matching layer config and copies the trained weights over.
"""

import warnings

import keras

from kerastrain import _checks

# Weight attribute -> layer constructor argument(s) holding its regularizer,
# where the argument is not simply f"{attribute}_regularizer".
# `DepthwiseConv2D` stores its kernel as `kernel` but configures it with
# `depthwise_regularizer`.
_CONFIG_KEYS = {
    "kernel": ("kernel_regularizer", "depthwise_regularizer"),
    "depthwise_kernel": ("depthwise_regularizer",),
    "pointwise_kernel": ("pointwise_regularizer",),
    "recurrent_kernel": ("recurrent_regularizer",),
}
_SHORTHANDS = {"l1": keras.regularizers.L1, "l2": keras.regularizers.L2}


@keras.saving.register_keras_serializable(package="kerastrain")
class ElasticNet(keras.regularizers.L1L2):
    """Elastic-net penalty: one strength, mixed between L2 and L1.

    `penalty = strength * ((1 - l1_ratio) * sum(w**2) + l1_ratio * sum(|w|))`

    i.e. `strength * (b * R_L2 + (1 - b) * R_L1)` with `b = 1 - l1_ratio`
    (Zou & Hastie, 2005). Keras' `L1L2(l1, l2)` takes two independent
    strengths; this is the same penalty, computed by `L1L2` itself, in the
    mixing form, so that the overall strength and the L1/L2 balance can be
    tuned (or searched) separately.

    Args:
        strength: overall penalty factor, `>= 0`.
        l1_ratio: share of the L1 term, `0 <= l1_ratio <= 1`; `0` is pure
            L2 (weight decay), `1` pure L1 (sparsity).

    Example:

    >>> layer = keras.layers.Dense(
    ...     10, kernel_regularizer=ElasticNet(1e-4, l1_ratio=0.2))
    """

    def __init__(self, strength, l1_ratio):
        self.strength = _checks.check_real("strength", strength, low=0)
        self.l1_ratio = _checks.check_real("l1_ratio", l1_ratio, 0, 1)
        super().__init__(
            l1=self.strength * self.l1_ratio,
            l2=self.strength * (1.0 - self.l1_ratio),
        )

    def get_config(self):
        return {"strength": self.strength, "l1_ratio": self.l1_ratio}


@keras.saving.register_keras_serializable(package="kerastrain")
class SparseCategoricalCrossentropy(keras.losses.Loss):
    """Keras' sparse categorical cross-entropy with label smoothing.

    Keras offers `label_smoothing` only on `CategoricalCrossentropy`, which
    needs one-hot labels; datasets of integer labels (every
    `kerastrain.data` split) would have to be re-encoded. This loss takes the
    integer labels, one-hot encodes them inside the loss (the number of
    classes is the prediction's last dimension) and calls Keras'
    `categorical_crossentropy(..., label_smoothing=...)`: the target of the
    true class is `1 - s + s / k`, of every other `s / k` (Szegedy et al.,
    2016). With `label_smoothing=0` it equals
    `keras.losses.SparseCategoricalCrossentropy`.

    Args:
        label_smoothing: `s`, in `[0, 1)`. Defaults to `0.1`.
        from_logits: whether predictions are logits. Defaults to `True`.
        name: loss name. Defaults to `"sparse_categorical_crossentropy"`.

    Example:

    >>> model.compile("adam", SparseCategoricalCrossentropy(label_smoothing=0.1))
    """

    def __init__(self, label_smoothing=0.1, from_logits=True,
                 name="sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = _checks.check_real("label_smoothing", label_smoothing, 0, 1,
                                                  high_open=True)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=self.from_logits,
            label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing,
                "from_logits": self.from_logits}


def apply(model, regularizer, *, include=("kernel",)):
    """Returns a copy of `model` whose weights carry `regularizer`.

    The model is cloned with `keras.models.clone_model` (nested Sequential
    and functional models, such as a `keras.applications` backbone inside a
    classifier, are cloned too); in every layer that owns a weight named in
    `include`, the matching constructor argument (`kernel_regularizer`,
    `depthwise_regularizer` for `DepthwiseConv2D` kernels, `bias_regularizer`,
    `gamma_regularizer`...) is set to `regularizer`, replacing any previous
    one. The trained weights and `trainable` flags are then copied, so the
    copy predicts exactly as `model` does, and `copy.losses` holds one
    penalty per regularized weight, which `fit`/`evaluate` add to the loss.
    A compiled model's copy is compiled from the same compile config (fresh
    optimizer state). `model` itself is not modified.

    As everywhere in Keras, weights of frozen layers (`trainable=False`)
    carry the regularizer but add no penalty until they are unfrozen.

    Args:
        model: a Sequential or functional `keras.Model`.
        regularizer: a `keras.regularizers.Regularizer` (e.g. `ElasticNet`,
            `keras.regularizers.L2(1e-4)`), a Keras identifier string
            (`"l2"`, default factor 0.01) or config dict, or a shorthand dict
            such as `{"l2": 1e-4}` or `{"l1": 1e-5, "l2": 1e-4}`.
        include: names of the weight attributes to regularize, among
            `"kernel"`, `"bias"`, `"depthwise_kernel"`, `"pointwise_kernel"`,
            `"recurrent_kernel"`, `"gamma"`, `"beta"`, `"embeddings"`...
            Defaults to `("kernel",)`.

    Returns:
        A new `keras.Model`.

    Raises:
        ValueError: if the regularizer cannot be interpreted, no weight
            matches `include`, or `model` is a subclassed model.

    Example:

    >>> backbone = keras.applications.MobileNetV3Small(
    ...     input_shape=(32, 32, 3), include_top=False, weights=None)
    >>> regularized = apply(backbone, ElasticNet(1e-4, l1_ratio=0.5))
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Invalid value for `model`: expected a keras.Model, received "
            f"{type(model).__name__}"
        )
    regularizer = _get_regularizer(regularizer)
    include = _check_include(include)
    pairs = []
    clone = _clone(model, regularizer, include, pairs)
    if not any(keys for _, _, keys in pairs if keys is not None):
        raise ValueError(
            f"No weight of model '{model.name}' matches include={include}; "
            "name weight attributes such as 'kernel', 'bias' or 'gamma'."
        )
    for layer, new, keys in pairs:
        if keys is not None and layer.weights:  # leaf layers only
            new.set_weights(layer.get_weights())
    return clone


def _clone(model, regularizer, include, pairs):
    def clone_layer(layer):
        if isinstance(layer, keras.Model):
            return _clone(layer, regularizer, include, pairs)
        config = layer.get_config()
        keys = _config_keys(layer, config, include)
        config.update({key: regularizer for key in keys})
        new = layer.__class__.from_config(config)
        pairs.append((layer, new, keys))
        return new

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer)
    except ValueError as error:
        if isinstance(model, keras.Sequential) or _is_functional(model):
            raise
        raise ValueError(
            f"Cannot apply a regularizer to model '{model.name}' of class "
            f"{type(model).__name__}: only Sequential and functional models "
            f"can be rebuilt from their config ({error}). Pass the "
            "regularizer to the layers in the model's constructor instead."
        ) from error
    if clone.trainable != model.trainable:  # functional clones lose it
        clone.trainable = model.trainable
    pairs.append((model, clone, None))
    return clone


def _config_keys(layer, config, include):
    """The constructor arguments that regularize `layer`'s included weights."""
    keys = []
    for name in include:
        try:
            weight = getattr(layer, name, None)
        except Exception:  # e.g. a property of a layer that is not built
            weight = None
        if not isinstance(weight, keras.Variable):
            continue
        candidates = _CONFIG_KEYS.get(name, (f"{name}_regularizer",))
        key = next((k for k in candidates if k in config), None)
        if key is None:
            warnings.warn(
                f"Layer '{layer.name}' ({type(layer).__name__}) has a `{name}` "
                "weight but no regularizer argument for it in its config; "
                "that weight is left unregularized.",
                stacklevel=2,
            )
        else:
            keys.append(key)
    return keys


def _get_regularizer(regularizer):
    if isinstance(regularizer, keras.regularizers.Regularizer):
        return regularizer
    if (
        isinstance(regularizer, dict)
        and "class_name" not in regularizer
        and regularizer
        and set(regularizer) <= set(_SHORTHANDS)
    ):
        if len(regularizer) == 2:
            return keras.regularizers.L1L2(**regularizer)
        ((name, factor),) = regularizer.items()
        return _SHORTHANDS[name](factor)
    if isinstance(regularizer, (str, dict)):
        try:
            result = keras.regularizers.get(regularizer)
        except (ValueError, TypeError) as error:
            result = error
        if isinstance(result, keras.regularizers.Regularizer):
            return result
    raise ValueError(
        "Invalid value for `regularizer`: expected a "
        "keras.regularizers.Regularizer (e.g. ElasticNet(1e-4, 0.5)), an "
        "identifier such as 'l2', or a dict such as {'l2': 1e-4}, received "
        f"regularizer={regularizer!r}"
    )


def _check_include(include):
    if isinstance(include, str):
        include = (include,)
    include = tuple(include)
    if not include or not all(isinstance(n, str) and n for n in include):
        raise ValueError(
            "Invalid value for `include`: expected a non-empty tuple of "
            f"weight attribute names such as ('kernel', 'bias'), received "
            f"include={include!r}"
        )
    return include


def _is_functional(model):
    return type(model).__name__ == "Functional"

