"""Checks that train a fresh model for a few steps: overfitting a tiny subset,
and whether the learning rate makes the loss go down."""

import math

import keras
import numpy as np

from kerastrain._checks import check_int
from kerastrain._checks import check_real
from kerastrain.sanity.core import CheckResult
from kerastrain.sanity.core import _fresh_model
from kerastrain.sanity.core import _set_learning_rate
from kerastrain.sanity.core import _take
from kerastrain.sanity.core import _train_step


def overfit_small_subset(build_model, data, *, examples=20, max_steps=300,
                         target_accuracy=1.0, target_loss=0.05, seed=None):
    """Checks that a fresh model can memorize a handful of training examples.

    Any model worth training for days must be able to drive its training
    loss to about zero on, say, 20 examples; when it cannot, the model or the
    input pipeline is broken (labels not matching images, a dead or frozen
    layer, a wrong loss), or the learning rate is far off. The model from
    `build_model()` is trained with its compiled loss and optimizer,
    full-batch on the first `examples` examples, with regularization off:
    weight and activity regularizers are removed and dropout layers (a
    `rate` attribute, class name ending in `Dropout`) get rate 0. Accuracy
    is measured on the training-mode predictions of each step, as `fit`
    reports it, because BatchNorm's moving statistics lag behind such a
    short run.

    Args:
        build_model: a zero-argument callable returning a fresh compiled
            `keras.Model`.
        data: `(images, labels)` arrays, a batched `tf.data.Dataset`, or the
            result of `kerastrain.data.load()` (its training split is used).
        examples: how many leading examples to memorize. Defaults to `20`.
        max_steps: the step budget. Defaults to `300`.
        target_accuracy: training accuracy to reach. Defaults to `1.0`.
        target_loss: training loss to get below. Defaults to `0.05`.
        seed: seeds `build_model()`. Defaults to `None`.

    Returns:
        A `CheckResult` with figures `examples`, `steps`, `initial_loss`,
        `loss`, `accuracy`, `target_accuracy` and `target_loss`.

    Example:

    >>> overfit_small_subset(build, data).figures["steps"]
    12
    """
    check_int("examples", examples, minimum=1)
    check_int("max_steps", max_steps, minimum=1)
    check_real("target_accuracy", target_accuracy, 0, 1, low_open=True)
    check_real("target_loss", target_loss, 0, low_open=True)
    x, y = _take(data, examples)
    if len(y) < examples:
        raise ValueError(
            f"Invalid value for `examples`: the data holds only {len(y)} "
            f"examples, received examples={examples}"
        )
    model = _fresh_model(build_model, seed)
    _disable_regularization(model)
    step = _train_step(model)
    classes = np.argmax(y, axis=-1) if np.ndim(y) == 2 else np.reshape(y, -1)
    first = None
    for steps in range(1, max_steps + 1):
        loss, y_pred = step(x, y)
        loss = float(loss)
        first = loss if first is None else first
        accuracy = float(np.mean(np.argmax(y_pred, axis=-1) == classes))
        reached = accuracy >= target_accuracy and loss <= target_loss
        if reached or not math.isfinite(loss):
            break
    figures = {"examples": len(y), "steps": steps, "initial_loss": first,
               "loss": loss, "accuracy": accuracy,
               "target_accuracy": target_accuracy, "target_loss": target_loss}
    if reached:
        return CheckResult("overfit_small_subset", True, figures,
                           f"Memorized {len(y)} examples in {steps} steps "
                           f"(accuracy {accuracy:.2f}, loss {loss:.3f}).")
    if not math.isfinite(loss):
        cause = "the loss became NaN/inf; lower the learning rate"
    else:
        cause = ("the model or pipeline is broken: check that labels match "
                 "images, that no layer is dead or frozen, and the loss")
    return CheckResult("overfit_small_subset", False, figures,
                       f"Could not memorize {len(y)} examples in {steps} steps "
                       f"(accuracy {accuracy:.2f}, loss {loss:.3g}): {cause}.")


def learning_rate(build_model, data, learning_rate=None, *, steps=20,
                  examples=64, min_decrease=0.02, seed=None):
    """Checks that a few steps at the learning rate lower the loss.

    The classic reading of the first steps of training: a loss that does
    not move means the learning rate is too low; a loss that rises, spikes or
    becomes NaN means it is too high. A fresh model from `build_model()` is
    trained full-batch on a fixed set of `examples` examples (so that the
    loss is not blurred by batch-to-batch noise) for `steps` steps, and the
    training-mode loss on that set is compared before and after. Keras
    offers no such check; `kerastrain.lr_finder` sweeps a range to *find* a
    learning rate, this one judges a chosen one in a few seconds.

    Args:
        build_model: a zero-argument callable returning a fresh compiled
            `keras.Model`.
        data: `(images, labels)` arrays, a batched `tf.data.Dataset`, or the
            result of `kerastrain.data.load()` (its training split is used).
        learning_rate: the learning rate to judge, set on the compiled
            optimizer. Defaults to `None` (the optimizer's own).
        steps: training steps. Defaults to `20`.
        examples: how many leading examples to train on. Defaults to `64`.
        min_decrease: the smallest relative decrease of the loss,
            `(initial - final) / initial`, that counts as moving. Defaults to
            `0.02`.
        seed: seeds `build_model()`. Defaults to `None`.

    Returns:
        A `CheckResult` with figures `learning_rate`, `initial_loss`,
        `final_loss`, `max_loss`, `relative_decrease`, `verdict` (`"ok"`,
        `"too_low"` or `"too_high"`) and `losses` (one per step).

    Example:

    >>> learning_rate(build, data, 0.0).figures["verdict"]
    'too_low'
    """
    check_int("steps", steps, minimum=1)
    check_int("examples", examples, minimum=1)
    check_real("min_decrease", min_decrease, 0, low_open=True)
    if learning_rate is not None:
        check_real("learning_rate", learning_rate, 0)
    model = _fresh_model(build_model, seed)
    if learning_rate is not None:
        _set_learning_rate(model, learning_rate)
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    x, y = _take(data, examples)
    step = _train_step(model)
    losses = [float(step(x, y)[0]) for _ in range(steps)]
    final = float(model.compute_loss(x=x, y=y, y_pred=model(x, training=True)))
    initial, history = losses[0], losses + [final]
    decrease = (initial - final) / abs(initial) if initial else 0.0
    figures = {"learning_rate": rate, "initial_loss": initial,
               "final_loss": final, "max_loss": max(history),
               "relative_decrease": decrease, "losses": history}
    if not all(math.isfinite(loss) for loss in history):
        verdict, advice = "too_high", (
            f"The loss became NaN/inf within {steps} steps: learning rate "
            f"{rate:g} is too high; lower it (e.g. by 10x).")
    elif final > initial or max(history) > 1.5 * initial:
        verdict, advice = "too_high", (
            f"The loss rose (from {initial:.3f} to at most {max(history):.3g}) "
            f"in {steps} steps: learning rate {rate:g} is too high; lower it "
            "(e.g. by 10x).")
    elif decrease < min_decrease:
        verdict, advice = "too_low", (
            f"The loss barely moved ({initial:.3f} -> {final:.3f}) in {steps} "
            f"steps: learning rate {rate:g} is too low; raise it (e.g. by 10x).")
    else:
        verdict, advice = "ok", (
            f"Learning rate {rate:g} lowers the loss from {initial:.3f} to "
            f"{final:.3f} in {steps} steps.")
    figures["verdict"] = verdict
    return CheckResult("learning_rate", verdict == "ok", figures, advice)


def _disable_regularization(model):
    for variable in model.variables:
        variable.regularizer = None
    for layer in _all_layers(model):
        layer.activity_regularizer = None
        if type(layer).__name__.endswith("Dropout") and hasattr(layer, "rate"):
            layer.rate = 0.0


def _all_layers(model):
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _all_layers(layer)
