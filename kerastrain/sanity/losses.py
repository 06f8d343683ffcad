"""Checks on the loss of an untrained model: its value at initialization, and
that a weight penalty actually reaches it."""

import inspect
import math

import keras
import numpy as np

from kerastrain import regularizers
from kerastrain.sanity.core import CheckResult
from kerastrain.sanity.core import _check_model
from kerastrain.sanity.core import _check_positive
from kerastrain.sanity.core import _check_positive_int
from kerastrain.sanity.core import _fresh_model
from kerastrain.sanity.core import _num_classes
from kerastrain.sanity.core import _preserved_state
from kerastrain.sanity.core import _take

_PROBABILITY_ATOL = 1e-3


def initial_loss(model, data, *, num_classes=None, from_logits=None,
                 tolerance=0.5, examples=256, training=False):
    """Compares the untrained model's loss with chance level, `ln(C)`.

    A classifier that knows nothing predicts `1/C` for each of `C` classes,
    so its softmax cross-entropy is `-ln(1/C) = ln(C)` (2.303 for 10
    classes). A loss far above that means an overconfident initialization
    (e.g. a large final layer); far below it, labels leaking into the inputs.
    Independently of the value, the check compares the model's outputs with
    what the loss expects: probabilities (a final softmax) fed to a loss with
    `from_logits=True` mean softmax is applied twice -- a bug that keeps the
    loss at almost exactly `ln(C)` while crippling training -- and logits fed
    to a loss with `from_logits=False` are not probabilities at all.

    The loss is the one the model is compiled with (without its weight
    penalties); it must be a categorical cross-entropy. An uncompiled model
    is measured with sparse categorical cross-entropy (categorical when the
    labels are one-hot), with `from_logits` as given or, when `None`,
    detected from the outputs: rows of non-negative numbers summing to one
    are taken as probabilities.

    Args:
        model: a `keras.Model` outputting one score per class.
        data: `(images, labels)` arrays, a batched `tf.data.Dataset`, or the
            result of `kerastrain.data.load()` (its training split is used).
        num_classes: the number of classes `C`. Defaults to `data.num_classes`
            or the model's output width.
        from_logits: whether the outputs are logits, for an uncompiled model
            only. Defaults to `None` (detected).
        tolerance: the largest accepted `|loss - ln(C)|`, in nats. Defaults
            to `0.5`.
        examples: how many leading examples of `data` to average over.
            Defaults to `256`.
        training: whether to run the model in training mode (dropout on,
            BatchNorm on batch statistics; its state is restored afterwards).
            Defaults to `False`, which is what `model.evaluate` reports.

    Returns:
        A `CheckResult` with figures `loss`, `expected` (`ln(C)`),
        `difference`, `num_classes`, `from_logits` and
        `outputs_are_probabilities`.

    Example:

    >>> result = initial_loss(model, data)
    >>> result.passed, result.figures["loss"], result.figures["expected"]
    (True, 2.41, 2.303)
    """
    _check_model(model)
    _check_positive("tolerance", tolerance)
    _check_positive_int("examples", examples)
    x, y = _take(data, examples)
    num_classes = _num_classes(num_classes, data, model)
    with _preserved_state(model):
        outputs = np.asarray(model(x, training=training), dtype=np.float32)
    loss_fn, expects_logits = _resolve_loss(model, outputs, y, from_logits)
    value = float(np.mean(np.asarray(loss_fn(y, outputs))))
    expected = math.log(num_classes)
    probabilities = _are_probabilities(outputs)
    figures = {
        "loss": value,
        "expected": expected,
        "difference": value - expected,
        "num_classes": num_classes,
        "from_logits": expects_logits,
        "outputs_are_probabilities": probabilities,
    }
    if not math.isfinite(value):
        return CheckResult("initial_loss", False, figures,
                           f"The loss at initialization is {value}: look for "
                           "log(0) or overflowing activations.")
    if expects_logits and probabilities:
        advice = ("The model outputs probabilities but the loss expects logits "
                  "(from_logits=True): softmax is applied twice. Drop the final "
                  "softmax, or compile with from_logits=False.")
    elif expects_logits is False and not probabilities:
        advice = ("The model outputs logits but the loss expects probabilities "
                  "(from_logits=False). Compile with from_logits=True, or end "
                  "the model with a softmax.")
    elif value - expected > tolerance:
        advice = (f"Loss {value:.3f} is far above ln({num_classes}) = "
                  f"{expected:.3f}: the untrained model is overconfident. "
                  "Initialize the final layer with smaller weights.")
    elif expected - value > tolerance:
        advice = (f"Loss {value:.3f} is far below ln({num_classes}) = "
                  f"{expected:.3f} before training: check that the labels do "
                  "not leak into the inputs and that num_classes is right.")
    else:
        return CheckResult("initial_loss", True, figures,
                           f"Loss {value:.3f} at initialization is close to "
                           f"ln({num_classes}) = {expected:.3f}.")
    return CheckResult("initial_loss", False, figures, advice)


def regularization_raises_loss(model, data, *, strengths=(0.0, 1e-3, 1e-2),
                               examples=64, seed=None):
    """Checks that a stronger L2 weight penalty gives a larger loss.

    Copies of the model carrying `keras.regularizers.L2(strength)` on every
    kernel are made with `kerastrain.regularizers.apply`, so all copies have
    the same weights and predictions and only the penalty differs; the loss
    each would minimize (the compiled loss plus `model.losses`, evaluated in
    inference mode) must rise strictly with the strength. A flat loss means
    the penalty never reaches the objective (no regularizable weights, or
    regularizers set on an already built model, which Keras ignores).

    Args:
        model: a `keras.Model`, or a zero-argument callable returning a fresh
            compiled one.
        data: `(images, labels)` arrays, a batched `tf.data.Dataset`, or the
            result of `kerastrain.data.load()`.
        strengths: increasing L2 factors to compare. Defaults to
            `(0.0, 1e-3, 1e-2)`.
        examples: how many leading examples of `data` to use. Defaults to
            `64`.
        seed: seeds `build_model()` when `model` is a callable. Defaults to
            `None`.

    Returns:
        A `CheckResult` with figures `strengths`, `losses` and `penalties`
        (each loss minus the first).

    Example:

    >>> regularization_raises_loss(model, data).figures["losses"]
    [2.46, 2.57, 3.54]
    """
    strengths = _check_strengths(strengths)
    _check_positive_int("examples", examples)
    if not isinstance(model, keras.Model):
        model = _fresh_model(model, seed)
    x, y = _take(data, examples)
    losses = []
    for strength in strengths:
        try:
            copy = regularizers.apply(model, keras.regularizers.L2(strength))
        except ValueError as error:
            return CheckResult("regularization_raises_loss", False,
                               {"strengths": list(strengths)},
                               f"No weight penalty can be added: {error}")
        losses.append(_total_loss(copy, x, y))
    penalties = [loss - losses[0] for loss in losses]
    figures = {"strengths": list(strengths), "losses": losses,
               "penalties": penalties}
    rising = all(b > a for a, b in zip(losses, losses[1:]))
    if rising and all(math.isfinite(loss) for loss in losses):
        return CheckResult("regularization_raises_loss", True, figures,
                           f"L2 {strengths[-1]:g} raises the loss from "
                           f"{losses[0]:.3f} to {losses[-1]:.3f}.")
    return CheckResult("regularization_raises_loss", False, figures,
                       "The loss does not rise with the L2 strength: the "
                       "penalty does not reach the objective. Check that the "
                       "model has trainable kernels and that its regularizers "
                       "are set when the layers are built.")


def _total_loss(model, x, y):
    """The loss `fit` would minimize: compiled loss plus weight penalties."""
    outputs = model(x, training=False)
    if model.compiled and model.loss is not None:
        return float(model.compute_loss(x=x, y=y, y_pred=outputs, training=False))
    loss_fn, _ = _resolve_loss(model, np.asarray(outputs), y, None)
    penalty = sum(float(loss) for loss in model.losses)
    return float(np.mean(np.asarray(loss_fn(y, outputs)))) + penalty


def _resolve_loss(model, outputs, labels, from_logits):
    """Returns `(loss_fn, expects_logits)` for the model's data loss.

    `expects_logits` is `None` when it cannot be read off the loss.
    """
    if model.compiled and model.loss is not None:
        if from_logits is not None:
            raise ValueError(
                "Invalid value for `from_logits`: the model is compiled, so "
                "its own loss is used; pass from_logits only for an "
                f"uncompiled model, received from_logits={from_logits!r}"
            )
        if isinstance(model.loss, (dict, list, tuple)):
            raise ValueError(
                "The sanity checks support models with one output and one "
                f"loss, received loss={model.loss!r}"
            )
        loss = keras.losses.get(model.loss)
        name = getattr(loss, "name", None) or getattr(loss, "__name__", "")
        if "crossentropy" not in name.lower() or "binary" in name.lower():
            raise ValueError(
                "The expected initial loss ln(C) holds for categorical "
                f"cross-entropy; the model is compiled with loss {name!r}. "
                "Compile it with SparseCategoricalCrossentropy or "
                "CategoricalCrossentropy."
            )
        return loss, _expects_logits(loss)
    if from_logits is None:
        from_logits = not _are_probabilities(outputs)
    if np.ndim(labels) == 2 and np.shape(labels)[-1] == outputs.shape[-1] > 1:
        return keras.losses.CategoricalCrossentropy(from_logits=from_logits), from_logits
    return (keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
            from_logits)


def _expects_logits(loss):
    if isinstance(loss, keras.losses.Loss):
        return loss.get_config().get("from_logits")
    try:
        parameter = inspect.signature(loss).parameters.get("from_logits")
    except (TypeError, ValueError):
        return None
    return None if parameter is None else parameter.default


def _are_probabilities(outputs):
    """Whether every row is non-negative, at most one, and sums to one."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return bool(
        outputs.ndim == 2
        and np.all(outputs >= 0)
        and np.all(outputs <= 1 + _PROBABILITY_ATOL)
        and np.allclose(outputs.sum(axis=-1), 1.0, atol=_PROBABILITY_ATOL)
    )


def _check_strengths(strengths):
    values = tuple(strengths) if isinstance(strengths, (list, tuple)) else ()
    valid = len(values) >= 2 and all(
        isinstance(s, (int, float)) and not isinstance(s, bool)
        and math.isfinite(s) and s >= 0 for s in values)
    if not valid or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(
            "Invalid value for `strengths`: expected at least two strictly "
            "increasing numbers >= 0, such as (0.0, 1e-3, 1e-2), received "
            f"strengths={strengths!r}"
        )
    return tuple(float(s) for s in values)
