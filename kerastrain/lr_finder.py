"""Learning-rate range test (Smith, 2017; the fastai "LR finder").

The learning rate grows exponentially from `min_lr` to `max_lr`, one batch per
step, while the training loss is recorded; the loss first stays flat, then
falls, then blows up. A good learning rate lies on the falling part; the
suggestion is where it falls fastest, found on the batch losses with a
centred window (robust to early spikes and noise, and free of the lag of
the moving average that the plot and the early stop use).

Keras has no range test. Writing one naively (a callback that sets the rate)
leaves the model trained at absurd rates, its optimizer moments polluted and a
learning-rate schedule replaced; `find_learning_rate` runs the sweep with the
model's own `train_step`, optimizer and loss, then puts back every model,
optimizer and metric variable, the optimizer's learning rate (float, schedule
or callable) and the compiled train function, so the model continues exactly
as if the test had never run.

Reference: L. N. Smith, "Cyclical Learning Rates for Training Neural
Networks", WACV 2017, section 3.3.
"""

import dataclasses
import math
import warnings

import keras
import numpy as np

from kerastrain import _checks, _introspect, _io

_STOP_REASONS = ("completed", "diverged", "non_finite")


@dataclasses.dataclass
class LRFinderResult:
    """The outcome of `find_learning_rate`.

    Attributes:
        learning_rates: 1-D array, the learning rate used at each recorded step.
        losses: 1-D array, the training loss of each recorded step's batch.
        smoothed_losses: 1-D array, bias-corrected exponential moving average
            of `losses`.
        suggestion: float, the suggested learning rate: where the loss falls
            fastest before its minimum, slopes fitted to the batch losses
            over a wide centred window (see `suggest_learning_rate`); `None`
            when fewer than 5 steps were recorded.
        stop_reason: `"completed"` (all steps ran), `"diverged"` (the smoothed
            loss exceeded `diverge_factor` times its best value; that step is
            recorded) or `"non_finite"` (a loss was NaN/inf; that step is NOT
            recorded).
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    suggestion: float | None
    stop_reason: str

    def plot(self, path):
        """Draws the range test with `kerastrain.plots.plot_lr_finder`.

        Args:
            path: where to write the PNG: batch and smoothed losses against
                the learning rate (log axis), the suggestion marked.

        Returns:
            `path`.
        """
        from kerastrain import plots

        return plots.plot_lr_finder(self, path)


def find_learning_rate(model, dataset, min_lr=1e-7, max_lr=10.0, steps=100,
                       smoothing=0.98, diverge_factor=4.0, verbose=1):
    """Runs the learning-rate range test on a compiled model.

    Step `i` trains one batch at `lr_i = min_lr * (max_lr / min_lr) **
    (i / (steps - 1))` with `model.train_on_batch`, cycling through `dataset`
    when it has fewer than `steps` batches. The sweep ends early when the
    smoothed loss exceeds `diverge_factor` times the best smoothed loss so far,
    or when a loss is NaN/inf. Afterwards the model's variables (weights,
    BatchNorm statistics, random-seed states), the optimizer's variables
    (slots and iteration counter), the metric variables and the optimizer's
    learning-rate setting are restored exactly.

    Args:
        model: a compiled `keras.Model`; its optimizer and loss are used.
        dataset: a batched `tf.data.Dataset` (or another re-iterable) yielding
            `(x, y)` or `(x, y, sample_weight)`.
        min_lr: first learning rate, finite and > 0. Defaults to `1e-7`.
        max_lr: last learning rate, finite and > `min_lr`. Defaults to
            `10.0`.
        steps: number of learning rates (batches) in the sweep, >= 5.
            Defaults to `100`.
        smoothing: momentum `beta` of the loss moving average (the early
            stop and the plotted curve), in `[0, 1)`. Defaults to `0.98`.
        diverge_factor: stop once smoothed loss > `diverge_factor` x best
            smoothed loss (losses are assumed non-negative), > 1. Defaults to
            `4.0`.
        verbose: 0 silent, 1 progress (a bar on a terminal, plain lines in
            a log). Defaults to `1`.

    Returns:
        An `LRFinderResult`.

    Example:

    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    >>> result = find_learning_rate(model, data.train, steps=80)
    >>> result.plot("lr_finder.png")
    >>> model.optimizer.learning_rate.assign(result.suggestion)
    """
    _check_arguments(min_lr, max_lr, steps, smoothing, diverge_factor)
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            "`model` must be compiled before the LR range test: call "
            "`model.compile(optimizer=..., loss=...)` first.")
    batches = _cycle(dataset)
    first_batch = next(batches)
    _build(model, first_batch)
    snapshot = [(v, np.array(v.numpy(), copy=True)) for v in _state_variables(model)]
    learning_rate, release = _take_over_learning_rate(model)
    try:
        result = _sweep(model, _prepend(first_batch, batches), learning_rate,
                        min_lr, max_lr, steps, smoothing, diverge_factor, verbose)
    finally:
        release()
        model.reset_metrics()  # metrics first built by the sweep start empty
        for variable, value in snapshot:
            variable.assign(value)
    return result


def suggest_learning_rate(learning_rates, losses, skip_start=0.1, window=0.3):
    """Suggests the learning rate where the loss falls fastest.

    The rule: fit a least-squares line of loss against log10(lr) over a
    window of `window * len` points centred on each point; ignore the first
    `skip_start` fraction of the points and everything after the lowest
    fitted loss (the divergence); return the learning rate where the fitted
    slope is most negative.

    Why this rule, and why on the raw batch losses:

    - The argmin of the raw gradient of a smoothed curve (fastai's "steep")
      is fooled by a spike or a noisy drop at the start of the sweep, where
      consecutive learning rates are close in log space and the moving
      average has seen only a few batches; it then suggests a uselessly tiny
      rate. Skipping the head and fitting slopes over a wide window make the
      rule follow the main descent.
    - A causal moving average (the `smoothed_losses` of the sweep, beta 0.98)
      lags by about `beta / (1 - beta) = 49` batches, which moves its
      steepest point to a learning rate several times too high (0.8 decades
      on a 100-step sweep over 8 decades). The centred window averages the
      noise without that lag.

    Falls back (with a warning) to a tenth of the learning rate at the
    minimum when the fitted loss never decreases after the skipped head.

    Args:
        learning_rates: increasing, finite, positive learning rates, >= 5
            of them.
        losses: the loss at each learning rate, finite; raw batch losses
            (or a zero-lag smoothing of them).
        skip_start: fraction of leading points to ignore, in `[0, 0.5)`.
            Defaults to `0.1`.
        window: width of the slope window as a fraction of the points, in
            `(0, 1]`. Defaults to `0.3` (at least 5 points).

    Returns:
        The suggested learning rate (a float).

    Example:

    >>> result = find_learning_rate(model, data.train)
    >>> suggest_learning_rate(result.learning_rates, result.losses, window=0.5)
    """
    lrs = np.asarray(learning_rates, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    _check_curve(lrs, losses)
    _checks.check_real("skip_start", skip_start, 0, 0.5, high_open=True)
    _checks.check_real("window", window, 0, 1, low_open=True)
    n = len(losses)
    start = int(skip_start * n)
    half = max(2, int(round(window * n / 2)))
    log_lr = np.log10(lrs)
    slopes, levels = [], []
    for i in range(start, n):
        lo, hi = max(start, i - half), min(n, i + half + 1)
        slope, intercept = np.polyfit(log_lr[lo:hi], losses[lo:hi], 1)
        slopes.append(slope)
        levels.append(intercept + slope * log_lr[i])
    end = int(np.argmin(levels))  # relative to `start`
    best = int(np.argmin(slopes[: end + 1]))
    if end < 2 or slopes[best] >= 0:
        warnings.warn("The loss never decreases in the LR range test; suggesting "
                      "a tenth of the learning rate at its minimum. Try a smaller "
                      "`min_lr` or more `steps`.", stacklevel=2)
        return float(lrs[start + end] / 10.0)
    return float(lrs[start + best])


def _sweep(model, batches, learning_rate, min_lr, max_lr, steps, smoothing,
           diverge_factor, verbose):
    schedule = min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))
    progbar = _io.progress(steps, "LR range test", verbose=verbose,
                           stateful_metrics=["lr", "smoothed_loss"])
    lrs, losses, smoothed = [], [], []
    average, best, stop_reason = 0.0, math.inf, "completed"
    for step, lr in enumerate(schedule):
        learning_rate.assign(lr)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(next(batches))
        logs = model.train_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            stop_reason = "non_finite"
            break
        # fastai's bias-corrected EMA: the zero start would drag early values down.
        average = smoothing * average + (1.0 - smoothing) * loss
        smooth = average / (1.0 - smoothing ** (step + 1))
        lrs.append(float(lr))
        losses.append(loss)
        smoothed.append(smooth)
        best = min(best, smooth)
        progbar.update(step + 1, [("lr", float(lr)), ("smoothed_loss", smooth)])
        if best > 0 and smooth > diverge_factor * best:
            stop_reason = "diverged"
            break
    if stop_reason != "completed":
        progbar.update(len(lrs), finalize=True)
    if len(lrs) >= 5:
        suggestion = suggest_learning_rate(lrs, losses)
    else:
        suggestion = None
        warnings.warn(f"The LR range test stopped after {len(lrs)} steps "
                      f"({stop_reason}); no learning rate is suggested. Lower "
                      "`min_lr`.", stacklevel=3)
    return LRFinderResult(np.array(lrs), np.array(losses), np.array(smoothed),
                          suggestion, stop_reason)


def _take_over_learning_rate(model):
    """Returns a variable that drives the optimizer's rate, and an undo function.

    A float rate lives in an optimizer variable, which the snapshot restores.
    A schedule (or callable) cannot be assigned, and the traced train function
    has it baked in: it is swapped for a callable reading our variable, the
    train function is retraced, and both are put back afterwards.
    """
    optimizer = model.optimizer
    current = optimizer.learning_rate
    if isinstance(current, keras.Variable):
        value = current.numpy()
        return current, lambda: current.assign(value)
    original_rate = _introspect.learning_rate_source(optimizer)
    original_function = model.train_function
    variable = keras.Variable(0.0, dtype=keras.config.floatx(), trainable=False,
                              name="lr_finder_learning_rate")
    optimizer.learning_rate = lambda: variable
    model.make_train_function(force=True)

    def release():
        optimizer.learning_rate = original_rate
        model.train_function = original_function

    return variable, release


def _state_variables(model):
    unique = {}
    for variable in (*model.variables, *model.optimizer.variables,
                     *model.metrics_variables):
        unique.setdefault(id(variable), variable)
    return list(unique.values())


def _build(model, batch):
    """Creates model and optimizer variables so the snapshot covers them all."""
    if not model.built:
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        model(x, training=False)
    if not model.optimizer.built:
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)


def _cycle(dataset):
    passes = 0
    while True:
        count = 0
        for batch in dataset:
            count += 1
            yield batch
        if count == 0:
            if passes == 0:
                raise ValueError("`dataset` yielded no batches.")
            raise ValueError(
                "`dataset` was exhausted after one pass and cannot be iterated "
                "again; pass a `tf.data.Dataset` (or another re-iterable).")
        passes += 1


def _prepend(first, rest):
    yield first
    yield from rest


def _check_curve(lrs, losses):
    if lrs.ndim != 1 or lrs.shape != losses.shape or len(lrs) < 5:
        raise ValueError(
            "Invalid curve: expected 1-D `learning_rates` and `losses` "
            f"of the same length >= 5, received shapes {lrs.shape} and {losses.shape}")
    if not (np.all(np.isfinite(lrs)) and np.all(lrs > 0) and np.all(np.diff(lrs) > 0)):
        raise ValueError("Invalid value for `learning_rates`: expected finite, "
                         "positive, strictly increasing values.")
    if not np.all(np.isfinite(losses)):
        raise ValueError("Invalid value for `losses`: expected finite values.")


def _check_arguments(min_lr, max_lr, steps, smoothing, diverge_factor):
    _checks.check_real("min_lr", min_lr, low=0, low_open=True)
    _checks.check("max_lr", max_lr, _checks.is_real(max_lr) and max_lr > min_lr,
                  f"min_lr={min_lr} < max_lr < inf")
    _checks.check_int("steps", steps, minimum=5)
    _checks.check_real("smoothing", smoothing, 0, 1, high_open=True)
    _checks.check_real("diverge_factor", diverge_factor, low=1, low_open=True)
