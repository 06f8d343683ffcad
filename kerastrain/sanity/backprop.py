"""Check that every trainable weight receives a finite, non-zero gradient."""

import numpy as np
import tensorflow as tf

from kerastrain._checks import check_int
from kerastrain._checks import check_real
from kerastrain.sanity.core import CheckResult
from kerastrain.sanity.core import _check_model
from kerastrain.sanity.core import _preserved_state
from kerastrain.sanity.core import _take
from kerastrain.sanity.losses import _resolve_loss

_NAMES_SHOWN = 3


def gradients(model, data, *, examples=32, min_norm=0.0, from_logits=None):
    """Checks the gradient of the loss on one batch for every trainable weight.

    A weight whose gradient is NaN/inf will poison training at the first
    step; a weight whose gradient is exactly zero (or missing) never learns:
    a dead ReLU layer, a layer multiplied by zero, a branch cut off from the
    output. The gradient of the data loss (the compiled loss, or sparse
    cross-entropy for an uncompiled model, as in `initial_loss`; weight
    penalties are left out, since they would give even a disconnected
    kernel a gradient) is taken in training mode on the first `examples`
    examples; the model's BatchNorm statistics are restored afterwards.

    Args:
        model: a `keras.Model`.
        data: `(images, labels)` arrays, a batched `tf.data.Dataset`, or the
            result of `kerastrain.data.load()` (its training split is used).
        examples: batch size of the one batch. Defaults to `32`.
        min_norm: a gradient norm at or below this counts as zero. Defaults
            to `0.0` (only exact zeros).
        from_logits: for an uncompiled model, whether its outputs are logits.
            Defaults to `None` (detected).

    Returns:
        A `CheckResult` with figures `loss`, `gradient_norms` (weight path ->
        L2 norm), `layer_norms` (layer path -> L2 norm of all its weights'
        gradients), and the weight paths that are `nonfinite`, `zero` and
        `disconnected` (no gradient at all).

    Example:

    >>> result = gradients(model, data)
    >>> result.figures["layer_norms"]["classifier"]
    0.41
    """
    _check_model(model)
    check_int("examples", examples, minimum=1)
    check_real("min_norm", min_norm, 0)
    x, y = _take(data, examples)
    variables = model.trainable_variables
    if not variables:
        raise ValueError(f"Model '{model.name}' has no trainable weights.")
    with _preserved_state(model), tf.GradientTape() as tape:
        outputs = model(x, training=True)
        loss_fn, _ = _resolve_loss(model, np.asarray(outputs), y, from_logits)
        loss = tf.reduce_mean(loss_fn(y, outputs))
    grads = tape.gradient(loss, variables)
    norms, layer_squares = {}, {}
    nonfinite, zero, disconnected = [], [], []
    for variable, grad in zip(variables, grads):
        path, layer = variable.path, variable.path.rsplit("/", 1)[0]
        if grad is None:
            disconnected.append(path)
            norms[path] = 0.0
            continue
        grad = np.asarray(tf.convert_to_tensor(grad), dtype=np.float64)
        norm = float(np.sqrt(np.sum(grad**2)))
        norms[path] = norm
        layer_squares[layer] = layer_squares.get(layer, 0.0) + norm**2
        if not np.all(np.isfinite(grad)):
            nonfinite.append(path)
        elif norm <= min_norm:
            zero.append(path)
    figures = {
        "loss": float(loss),
        "gradient_norms": norms,
        "layer_norms": {k: float(np.sqrt(v)) for k, v in layer_squares.items()},
        "nonfinite": nonfinite,
        "zero": zero,
        "disconnected": disconnected,
    }
    if nonfinite:
        advice = (f"NaN/inf gradients for {_names(nonfinite)}: look for log(0), "
                  "division by zero or overflowing activations.")
    elif zero or disconnected:
        advice = (f"Zero or missing gradients for {_names(zero + disconnected)}: "
                  "these weights never learn. Look for a dead ReLU layer, a "
                  "layer multiplied by zero, or a branch cut off from the output.")
    else:
        smallest = min(norms, key=norms.get)
        return CheckResult("gradients", True, figures,
                           f"All {len(variables)} trainable weights get finite, "
                           f"non-zero gradients (smallest: {smallest}, "
                           f"{norms[smallest]:.2e}).")
    return CheckResult("gradients", False, figures, advice)


def _names(paths):
    shown = ", ".join(paths[:_NAMES_SHOWN])
    more = len(paths) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown
