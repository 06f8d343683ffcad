"""Run every sanity check on one model builder and write a report."""

import inspect
import os

import keras

from kerastrain import models
from kerastrain import optimizers
from kerastrain import _io
from kerastrain import plots
from kerastrain._checks import check_int
from kerastrain._checks import check_real
from kerastrain._checks import check_seed
from kerastrain.sanity.activations import activation_stats
from kerastrain.sanity.backprop import gradients
from kerastrain.sanity.core import _fresh_model
from kerastrain.sanity.core import _jsonable
from kerastrain.sanity.core import _num_classes
from kerastrain.sanity.core import _set_learning_rate
from kerastrain.sanity.inputs import data_check
from kerastrain.sanity.losses import initial_loss
from kerastrain.sanity.losses import regularization_raises_loss
from kerastrain.sanity.training import learning_rate as learning_rate_check
from kerastrain.sanity.training import overfit_small_subset

_ADVICE_WIDTH = 100


def run_checks(build_model, data, *, learning_rate=None, num_classes=None,
               output_dir=None, seed=0, overfit_steps=300,
               learning_rate_steps=20, verbose=True):
    """Runs every sanity check, prints a table, and optionally writes a report.

    In order, cheapest first: `data_check`, then on one fresh model
    `initial_loss`, `gradients`, `activation_stats` and
    `regularization_raises_loss` (none of which changes the model), then
    `overfit_small_subset` and `learning_rate`, which each train a fresh
    model for a few steps.

    Args:
        build_model: a zero-argument callable returning a fresh *compiled*
            `keras.Model` (the loss and optimizer you mean to train with);
            `compiled_builder("small_cnn", 10)` makes one.
        data: the result of `kerastrain.data.load()` (its training split is
            used), a batched `tf.data.Dataset` of `(images, labels)`, or
            `(images, labels)` arrays.
        learning_rate: a learning rate set on the optimizer of the models
            that train (`overfit_small_subset`, `learning_rate`). Defaults to
            `None` (the optimizer's own).
        num_classes: the number of classes. Defaults to `data.num_classes`,
            else the model's output width.
        output_dir: where to write `sanity.md`, `sanity.json` and
            `activations.png`. Defaults to `None` (write nothing).
        seed: seeds every model built (`keras.utils.set_random_seed`).
            Defaults to `0`.
        overfit_steps: step budget of `overfit_small_subset`. Defaults to
            `300`.
        learning_rate_steps: steps of the `learning_rate` check. Defaults to
            `20`.
        verbose: whether to print the table. Defaults to `True`.

    Returns:
        The list of `CheckResult`s.

    Example:

    >>> data = kerastrain.data.load("cifar10_mini")
    >>> results = run_checks(compiled_builder("small_cnn", 10), data,
    ...                      output_dir="runs/sanity")
    >>> all(result.passed for result in results)
    True
    """
    if learning_rate is not None:
        check_real("learning_rate", learning_rate, 0)
    check_seed("seed", seed)
    check_int("overfit_steps", overfit_steps, minimum=1)
    check_int("learning_rate_steps", learning_rate_steps, minimum=1)
    model = _fresh_model(build_model, seed)
    num_classes = _num_classes(num_classes, data, model)
    trainer = _with_learning_rate(build_model, learning_rate)
    results = [
        data_check(data, num_classes),
        initial_loss(model, data, num_classes=num_classes),
        gradients(model, data),
        activation_stats(model, data),
        regularization_raises_loss(model, data),
        overfit_small_subset(trainer, data, max_steps=overfit_steps, seed=seed),
        learning_rate_check(trainer, data, steps=learning_rate_steps, seed=seed),
    ]
    if verbose:
        print(format_table(results))
    if output_dir is not None:
        write_report(results, output_dir)
    return results


def compiled_builder(model="small_cnn", num_classes=10, *, optimizer="adam",
                     learning_rate=None, **model_kwargs):
    """Returns a `build_model` callable for a builder of `kerastrain.models`.

    The model is compiled with `kerastrain.optimizers.build(optimizer,
    learning_rate)`, sparse categorical cross-entropy on logits (the models
    of `kerastrain.models` output logits) and an accuracy metric.

    Args:
        model: the name of a function of `kerastrain.models`, e.g.
            `"small_cnn"`. Defaults to `"small_cnn"`.
        num_classes: number of classes. Defaults to `10`.
        optimizer: an optimizer name for `kerastrain.optimizers.build`.
            Defaults to `"adam"`.
        learning_rate: the optimizer's learning rate. Defaults to `None`
            (the optimizer's default).
        **model_kwargs: further arguments of the model function, e.g.
            `width=16`.

    Returns:
        A zero-argument callable returning a fresh compiled `keras.Model`.

    Example:

    >>> build = compiled_builder("small_cnn", 10, width=16, blocks=2)
    >>> build().output_shape
    (None, 10)
    """
    function = _model_function(model)

    def build_model():
        net = function(num_classes, **model_kwargs)
        net.compile(
            optimizer=optimizers.build(optimizer, learning_rate=learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return net

    return build_model


def _model_function(name):
    functions = {
        key: value for key, value in vars(models).items()
        if inspect.isfunction(value) and not key.startswith("_")
        and value.__module__ == models.__name__
    }
    if name not in functions:
        raise ValueError(
            f"Invalid value for `model`: expected one of {sorted(functions)} "
            f"(functions of kerastrain.models), received model={name!r}"
        )
    return functions[name]


def format_table(results):
    """Returns the results as a fixed-width text table."""
    width = max(len(result.name) for result in results)
    lines = [f"{'check':<{width}}  result  advice",
             f"{'-' * width}  ------  {'-' * 40}"]
    for result in results:
        advice = result.advice
        if len(advice) > _ADVICE_WIDTH:
            advice = advice[:_ADVICE_WIDTH - 3] + "..."
        lines.append(f"{result.name:<{width}}  "
                     f"{'PASS' if result.passed else 'FAIL':<6}  {advice}")
    return "\n".join(lines)


def write_report(results, output_dir):
    """Writes `sanity.md`, `sanity.json` and `activations.png` (when the
    results include `activation_stats`) to `output_dir`; returns the paths."""
    _io.makedirs(output_dir)
    paths = {}
    stats = next((r for r in results if r.name == "activation_stats"), None)
    if stats is not None:
        paths["activation_histograms"] = plots.activation_histograms(
            stats.figures["layers"], os.path.join(output_dir, "activations.png"))
    report = {"passed": all(r.passed for r in results),
              "results": [r.to_dict() for r in results],
              "files": {k: os.path.basename(v) for k, v in paths.items()}}
    paths["json"] = _io.write_json(os.path.join(output_dir, "sanity.json"), report)
    paths["markdown"] = _io.write_text(os.path.join(output_dir, "sanity.md"),
                                       _markdown(results, report["files"]))
    return paths


def _markdown(results, files):
    passed = sum(r.passed for r in results)
    lines = ["# Sanity checks", "",
             f"{passed} of {len(results)} checks passed.", "",
             "| check | result | advice |", "| --- | --- | --- |"]
    lines += [f"| {r.name} | {'pass' if r.passed else '**FAIL**'} | "
              f"{r.advice.replace('|', '/')} |" for r in results]
    for result in results:
        lines += ["", f"## {result.name}", ""]
        figures = _jsonable(result.figures)
        if result.name == "activation_stats":
            lines += ["| layer | class | mean | std | std / first |",
                      "| --- | --- | --- | --- | --- |"]
            lines += [f"| {s['name']} | {s['class_name']} | {s['mean']:.3g} | "
                      f"{s['std']:.3g} | {s['std_ratio']:.3g} |"
                      for s in figures["layers"]]
            if "activation_histograms" in files:
                lines += ["", f"![activations]({files['activation_histograms']})"]
            continue
        for key, value in figures.items():
            if key == "gradient_norms":  # per weight; layer_norms sums them up
                continue
            if isinstance(value, dict):
                lines += [f"- {key}:"] + [f"  - {k}: {_short(v)}"
                                         for k, v in value.items()]
            else:
                lines.append(f"- {key}: {_short(value)}")
    return "\n".join(lines) + "\n"


def _short(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and value and isinstance(value[0], float):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return str(value)


def _with_learning_rate(build_model, learning_rate):
    if learning_rate is None:
        return build_model

    def build():
        model = build_model()
        if isinstance(model, keras.Model) and model.compiled:
            _set_learning_rate(model, learning_rate)
        return model

    return build
