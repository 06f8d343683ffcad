"""Per-layer activation statistics: do activations vanish or explode with depth?"""

import keras
import numpy as np

from kerastrain._checks import check_int
from kerastrain._checks import check_real
from kerastrain.sanity.core import CheckResult
from kerastrain.sanity.core import _check_model
from kerastrain.sanity.core import _preserved_state
from kerastrain.sanity.core import _take


def activation_stats(model, data, *, examples=256, layers=None, training=False,
                     vanishing_ratio=1e-2, exploding_ratio=1e2, bins=50):
    """Measures the mean and spread of every layer's output on one batch.

    The picture of Glorot & Bengio (2010) and He et al. (2015): with a badly
    scaled initialization the standard deviation of the activations shrinks
    (or grows) by a constant factor per layer, so that deep layers output
    almost constants (or overflow) and their gradients vanish (or explode).
    A tanh network initialized with `RandomNormal(stddev=0.01)` collapses to
    zero within a few layers; Glorot init for tanh and He init for ReLU keep
    the spread about constant. `kerastrain.plots.activation_histograms` draws
    the histograms measured here, one per layer.

    Every layer's output is measured (the output of a `Dense` or `Conv2D`
    with an `activation` is after the activation), except the `Input` layers;
    the check fails when a layer outputs a constant, or when its standard
    deviation divided by that of the first measured layer leaves
    `[vanishing_ratio, exploding_ratio]`.

    Args:
        model: a Sequential or functional `keras.Model`.
        data: `(images, labels)` arrays, a batched `tf.data.Dataset`, or the
            result of `kerastrain.data.load()` (its training split is used).
        examples: how many leading examples to feed. Defaults to `256`.
        layers: names of the layers to measure, in model order. Defaults to
            `None` (all but the inputs).
        training: whether to run in training mode (its state is restored
            afterwards). Defaults to `False`.
        vanishing_ratio: smallest accepted std relative to the first layer's.
            Defaults to `1e-2`.
        exploding_ratio: largest accepted std relative to the first layer's.
            Defaults to `1e2`.
        bins: number of histogram bins per layer. Defaults to `50`.

    Returns:
        A `CheckResult` whose figures hold `layers`, one dict per layer with
        `name`, `class_name`, `mean`, `std`, `min`, `max`, `zero_fraction`,
        `std_ratio` (to the first layer) and `histogram` (`counts` and bin
        `edges`), and `std_ratio_last_first`.

    Example:

    >>> result = activation_stats(model, data)
    >>> [round(layer["std"], 2) for layer in result.figures["layers"]]
    [0.25, 0.31, 0.97, 0.57, ...]
    >>> kerastrain.plots.activation_histograms(result.figures["layers"], "a.png")
    """
    _check_model(model)
    check_int("examples", examples, minimum=1)
    check_int("bins", bins, minimum=1)
    check_real("vanishing_ratio", vanishing_ratio, 0, low_open=True)
    check_real("exploding_ratio", exploding_ratio, vanishing_ratio, low_open=True)
    chosen = _chosen_layers(model, layers)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [layer.output for layer in chosen])
    x, _ = _take(data, examples)
    with _preserved_state(model):
        outputs = probe(x, training=training)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    stats = [_layer_stats(layer, np.asarray(out, dtype=np.float64), bins)
             for layer, out in zip(chosen, outputs)]
    first = stats[0]["std"]
    for entry in stats:
        entry["std_ratio"] = entry["std"] / first if first > 0 else float("nan")
    figures = {"layers": stats, "std_ratio_last_first": stats[-1]["std_ratio"]}
    return CheckResult("activation_stats", *_verdict(stats, vanishing_ratio,
                                                     exploding_ratio, figures))


def _verdict(stats, vanishing_ratio, exploding_ratio, figures):
    nonfinite = [s["name"] for s in stats if not np.isfinite(s["std"])]
    constant = [s["name"] for s in stats if s["std"] == 0]
    if nonfinite:
        return False, figures, (f"Layer {nonfinite[0]} outputs NaN/inf: the "
                                "activations overflow; scale the init down.")
    if constant:
        return False, figures, (f"Layer {constant[0]} outputs a constant (dead "
                                "layer): check its weights and activation.")
    low = [s for s in stats if s["std_ratio"] < vanishing_ratio]
    high = [s for s in stats if s["std_ratio"] > exploding_ratio]
    if low:
        return False, figures, (
            f"Activations vanish: std falls from {stats[0]['std']:.3g} "
            f"({stats[0]['name']}) to {low[0]['std']:.3g} ({low[0]['name']}). "
            "The init is too small: use Glorot for tanh, He for ReLU.")
    if high:
        return False, figures, (
            f"Activations explode: std grows from {stats[0]['std']:.3g} "
            f"({stats[0]['name']}) to {high[0]['std']:.3g} ({high[0]['name']}). "
            "The init is too large: use Glorot for tanh, He for ReLU.")
    ratios = [s["std_ratio"] for s in stats]
    return True, figures, (f"Activation std stays within {min(ratios):.2g}x.."
                           f"{max(ratios):.2g}x of the first layer's across "
                           f"{len(stats)} layers.")


def _chosen_layers(model, names):
    try:
        model.inputs
    except (AttributeError, ValueError):
        raise ValueError(
            f"activation_stats needs a Sequential or functional model with "
            f"known inputs; model '{model.name}' is {type(model).__name__}."
        ) from None
    candidates = [layer for layer in model.layers
                  if not isinstance(layer, keras.layers.InputLayer)]
    if names is None:
        chosen = candidates
    else:
        names = [names] if isinstance(names, str) else list(names)
        available = [layer.name for layer in candidates]
        unknown = [name for name in names if name not in available]
        if unknown or not names:
            raise ValueError(
                f"Invalid value for `layers`: unknown layer names {unknown}; "
                f"available layers: {available}"
            )
        chosen = [layer for layer in candidates if layer.name in names]
    if not chosen:
        raise ValueError(f"Model '{model.name}' has no layers to measure.")
    return chosen


def _layer_stats(layer, values, bins):
    values = values.ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        finite = np.zeros(1)
    low, high = float(finite.min()), float(finite.max())
    counts, edges = np.histogram(finite, bins=bins,
                                 range=(low, high) if high > low else None)
    return {
        "name": layer.name,
        "class_name": type(layer).__name__,
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": low,
        "max": high,
        "zero_fraction": float(np.mean(values == 0)),
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
    }
