"""Sanity checks to run before training for days.

The checks of Karpathy's "A Recipe for Training Neural Networks" and the
CS231n notes on babysitting the learning process, as functions that return a
`CheckResult` (`name`, `passed`, measured `figures`, one line of `advice`):

- `data_check`: labels in range, finite pixels in the expected range,
  every class present and roughly balanced;
- `initial_loss`: the untrained model's loss is about `ln(C)`, softmax is
  not applied twice (a softmax layer fed probabilities, or a final softmax
  under a `from_logits=True` loss), and logits do not meet a probability loss;
- `gradients`: every trainable weight gets a finite, non-zero gradient;
- `activation_stats`: per-layer activation mean and std neither vanish nor
  explode with depth (`kerastrain.plots.activation_histograms` draws them);
- `regularization_raises_loss`: a stronger L2 penalty raises the loss;
- `overfit_small_subset`: a fresh model memorizes 20 examples;
- `learning_rate`: a few steps at the learning rate lower the loss (not
  moving: too low; rising or NaN: too high).

`run_checks(build_model, data)` runs them all, where `build_model` is a
zero-argument callable returning a fresh *compiled* model, and writes
`sanity.md` / `sanity.json` / `activations.png` when given an `output_dir`.
Keras has none of these checks; they are built from Keras' own pieces
(`model.compute_loss`, the compiled optimizer, `kerastrain.regularizers`).

Example:

>>> data = kerastrain.data.load("cifar10_mini")
>>> build = kerastrain.sanity.compiled_builder("small_cnn", data.num_classes)
>>> results = kerastrain.sanity.run_checks(build, data, output_dir="runs/sanity")
"""

from kerastrain.sanity.activations import activation_stats
from kerastrain.sanity.backprop import gradients
from kerastrain.sanity.core import CheckResult
from kerastrain.sanity.inputs import data_check
from kerastrain.sanity.losses import initial_loss
from kerastrain.sanity.losses import regularization_raises_loss
from kerastrain.sanity.report import compiled_builder
from kerastrain.sanity.report import format_table
from kerastrain.sanity.report import run_checks
from kerastrain.sanity.report import write_report
from kerastrain.sanity.training import learning_rate
from kerastrain.sanity.training import overfit_small_subset

__all__ = [
    "CheckResult",
    "activation_stats",
    "compiled_builder",
    "data_check",
    "format_table",
    "gradients",
    "initial_loss",
    "learning_rate",
    "overfit_small_subset",
    "regularization_raises_loss",
    "run_checks",
    "write_report",
]
