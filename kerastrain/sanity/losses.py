"""Checks on the loss of an untrained model: its value at initialization, and
that a weight penalty actually reaches it."""

import inspect
import math

import keras
import numpy as np

from kerastrain import regularizers
from kerastrain._checks import check_int
from kerastrain._checks import check_real
from kerastrain._checks import check_seed
from kerastrain._checks import fail
from kerastrain._checks import is_real
from kerastrain.sanity.core import CheckResult
from kerastrain.sanity.core import _check_compile
from kerastrain.sanity.core import _check_model
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
    Independently of the value, the check looks for softmax applied twice, a
    bug that keeps the initial loss at almost exactly `ln(C)` (softmax of
    near-uniform probabilities is near uniform) while capping every predicted
    probability at `e / (e + C - 1)` (0.23 for 10 classes) for good: a
    `Softmax` layer or `Activation("softmax")` whose input is already
    probabilities (read off the model's graph and one forward pass), or
    probabilities (a final softmax) fed to a loss with `from_logits=True`.
    Logits fed to a loss with `from_logits=False` are caught too.

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
        `difference`, `num_classes`, `from_logits`,
        `outputs_are_probabilities`, `softmax_of_probabilities` (the layer
        applying softmax to probabilities, or `None`) and
        `max_probability_bound` (`e / (e + C - 1)` when softmax is applied
        twice, else `None`).

    Example:

    >>> result = initial_loss(model, data)
    >>> result.passed, result.figures["loss"], result.figures["expected"]
    (True, 2.41, 2.303)
    """
    _check_model(model)
    check_real("tolerance", tolerance, 0, low_open=True)
    check_int("examples", examples, minimum=1)
    x, y = _take(data, examples)
    num_classes = _num_classes(num_classes, data, model)
    with _preserved_state(model):
        outputs = np.asarray(model(x, training=training), dtype=np.float32)
    loss_fn, expects_logits = _resolve_loss(model, outputs, y, from_logits)
    value = float(np.mean(np.asarray(loss_fn(y, outputs))))
    expected = math.log(num_classes)
    probabilities = _are_probabilities(outputs)
    inner = _softmax_of_probabilities(model, x)
    twice = inner is not None or bool(expects_logits and probabilities)
    width = inner[1] if inner is not None else outputs.shape[-1]
    bound = math.e / (math.e + width - 1) if twice else None
    figures = {
        "loss": value,
        "expected": expected,
        "difference": value - expected,
        "num_classes": num_classes,
        "from_logits": expects_logits,
        "outputs_are_probabilities": probabilities,
        "softmax_of_probabilities": inner[0] if inner is not None else None,
        "max_probability_bound": bound,
    }
    if not math.isfinite(value):
        return CheckResult("initial_loss", False, figures,
                           f"The loss at initialization is {value}: look for "
                           "log(0) or overflowing activations.")
    if twice:
        capped = (f"so no predicted probability can ever exceed e/(e+{width - 1}) = "
                  f"{bound:.3f} and the loss never falls below {-math.log(bound):.3f}, "
                  f"although it looks healthy now ({value:.3f} vs ln({num_classes}) = "
                  f"{expected:.3f})")
        if inner is not None:
            advice = (f"Layer '{inner[0]}' applies softmax to outputs that are already "
                      f"probabilities: softmax is applied twice, {capped}. Remove one "
                      "of the two softmaxes.")
        else:
            advice = ("The model outputs probabilities but the loss expects logits "
                      f"(from_logits=True): softmax is applied twice, {capped}. Drop "
                      "the final softmax, or compile with from_logits=False.")
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
    each would minimize (the model's compiled loss plus the copy's
    `losses`, the penalties `fit` adds, evaluated in inference mode) must
    rise strictly with the strength. A flat loss means the penalty never
    reaches the objective (no regularizable weights, or regularizers set on
    an already built model, which Keras ignores). The copies are made from
    an uncompiled view of the model (its own layers), so they never
    recompile: a loss, metric or optimizer Keras could not rebuild from its
    config (a custom class that is not registered, a lambda) works as in
    `fit`.

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
    check_int("examples", examples, minimum=1)
    check_seed("seed", seed)
    if not isinstance(model, keras.Model):
        model = _fresh_model(model, seed)
    x, y = _take(data, examples)
    outputs = model(x, training=False)
    loss_fn, _ = _resolve_loss(model, np.asarray(outputs), y, None)
    view = _uncompiled_view(model)
    losses = []
    for strength in strengths:
        try:
            copy = regularizers.apply(view, keras.regularizers.L2(strength))
        except ValueError as error:
            return CheckResult("regularization_raises_loss", False,
                               {"strengths": list(strengths)},
                               f"No weight penalty can be added: {error}")
        losses.append(_total_loss(copy, loss_fn, x, y))
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


def _uncompiled_view(model):
    """A new functional model on `model`'s own layers, not compiled.

    `keras.models.clone_model` recompiles the clone of a compiled model from
    its serialized compile config, which fails for custom losses and metrics
    that are not registered; a clone of this view is never compiled. A model
    without a graph (subclassed) is returned as it is.
    """
    if not model.compiled:
        return model
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return model
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                       outputs[0] if len(outputs) == 1 else outputs, name=model.name)


def _total_loss(model, loss_fn, x, y):
    """The loss `fit` would minimize: data loss plus `model.losses` (the
    weight and activity penalties, collected by the forward pass)."""
    outputs = model(x, training=False)
    penalty = sum(float(loss) for loss in model.losses)
    return float(np.mean(np.asarray(loss_fn(y, outputs)))) + penalty


def _resolve_loss(model, outputs, labels, from_logits):
    """Returns `(loss_fn, expects_logits)` for the model's data loss.

    `expects_logits` is `None` when it cannot be read off the loss.
    """
    if model.compiled and model.loss is not None:
        _check_compile(model)
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


def _softmax_of_probabilities(model, x):
    """Finds a softmax applied to probabilities: `(layer name, width)` or `None`.

    The candidates are read off the graph: `Softmax` layers and
    `Activation("softmax")` layers, also inside nested models. One forward
    pass gives each candidate's input; rows that are already probabilities
    (non-negative, summing to one) mean softmax is applied twice, whatever
    produced them (a `Dense(activation="softmax")`, a `Softmax`, a nested
    model ending in one, with any reshaping or dropout in between). A model
    without a graph (subclassed) has no candidates.
    """
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    probes = []
    for layer in model.layers:
        if _is_softmax(layer) or isinstance(layer, keras.Model):
            try:
                probes.append((layer, layer.input))
            except (AttributeError, ValueError):  # never called: not in the graph
                continue
    try:
        probe = keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                            [tensor for _, tensor in probes])
    except ValueError:  # no candidates, or one first called in another graph
        return None
    values = probe(x, training=False)
    values = values if isinstance(values, (list, tuple)) else [values]
    for (layer, _), value in zip(probes, values):
        if isinstance(layer, keras.Model):
            found = _softmax_of_probabilities(layer, value)
            if found is not None:
                return found
        elif _are_probabilities(np.asarray(value).reshape(-1, value.shape[-1])):
            return layer.name, int(value.shape[-1])
    return None


def _is_softmax(layer):
    if isinstance(layer, keras.layers.Softmax):
        return True
    return (isinstance(layer, keras.layers.Activation)
            and getattr(layer.activation, "__name__", None) == "softmax")


def _check_strengths(strengths):
    values = tuple(strengths) if isinstance(strengths, (list, tuple)) else ()
    valid = len(values) >= 2 and all(is_real(s) and s >= 0 for s in values)
    if not valid or any(b <= a for a, b in zip(values, values[1:])):
        fail("strengths", strengths, "at least two strictly increasing numbers "
             ">= 0, such as (0.0, 1e-3, 1e-2)")
    return tuple(float(s) for s in values)
