"""Every picture kerastrain draws: one function per plot, `(data, path) -> path`.

Each figure is a `matplotlib.figure.Figure` on its own Agg canvas, written
straight to its file: pyplot is never used and the global backend never
changed, so plots render on machines without a display (CI, training
servers) and a notebook's inline or interactive backend keeps working.
Matplotlib itself is imported by the first picture, not by
`import kerastrain`.
"""

import math

import numpy as np

from kerastrain import _io

_CELL_INCHES = 1.0
_DPI = 100


def _subplots(rows=1, columns=1, *, figsize, **kwargs):
    """Returns `(fig, axes)` like `pyplot.subplots`, without pyplot.

    The figure is not registered with pyplot (nothing to close, no backend
    selected); its Agg canvas renders it to PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, **kwargs)


def _save(fig, path, tight=True):
    """Writes `fig` to `path` at `_DPI` (atomically, local or `gs://`) and
    returns `path`."""
    if tight:
        fig.tight_layout()
    return _io.atomic_write(path, lambda temporary: fig.savefig(temporary, dpi=_DPI))


def _panel_grid(count, columns, width, height):
    """Returns `(fig, axes)`: `count` panels of `width x height` inches in rows
    of at most `columns`; the cells left over in the last row are hidden."""
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    fig, axes = _subplots(rows, columns, figsize=(width * columns, height * rows),
                          squeeze=False)
    for ax in axes.ravel()[count:]:
        ax.set_axis_off()
    return fig, axes.ravel()[:count]


def augmentation_grid(originals, augmented, path, columns=8):
    """Draws originals and their augmented versions in alternating rows.

    Each block of `columns` images is one row of originals followed by one
    row of the same images augmented, so every augmented image sits directly
    below its source. Each cell is `_CELL_INCHES * _DPI` pixels square.

    Args:
        originals: uint8 array `[n, height, width, channels]`.
        augmented: uint8 array of the same shape.
        path: where to write the PNG.
        columns: images per row. Defaults to `8`.

    Returns:
        `path`.
    """
    originals, augmented = np.asarray(originals), np.asarray(augmented)
    if originals.shape != augmented.shape or originals.ndim != 4:
        raise ValueError(
            "Invalid images: expected `originals` and `augmented` of the same "
            f"shape [n, height, width, channels], received {originals.shape} "
            f"and {augmented.shape}"
        )
    n = len(originals)
    columns = max(1, min(columns, n))
    blocks = math.ceil(n / columns)
    fig, axes = _subplots(
        2 * blocks, columns,
        figsize=(columns * _CELL_INCHES, 2 * blocks * _CELL_INCHES), squeeze=False,
    )
    for block in range(blocks):
        for column in range(columns):
            index = block * columns + column
            for offset, images in enumerate((originals, augmented)):
                ax = axes[2 * block + offset, column]
                ax.set_xticks([])
                ax.set_yticks([])
                if index < n:
                    ax.imshow(images[index].squeeze(), cmap="gray", vmin=0, vmax=255)
                else:
                    ax.set_axis_off()
        axes[2 * block, 0].set_ylabel("original", fontsize=7)
        axes[2 * block + 1, 0].set_ylabel("augmented", fontsize=7)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=0.99, wspace=0.05, hspace=0.05)
    return _save(fig, path, tight=False)


def plot_lr_finder(result_or_arrays, path):
    """Draws an LR range test: loss against learning rate on a log axis.

    The raw batch losses are drawn faintly, the smoothed curve boldly, and the
    suggested learning rate is marked. The y axis is cut a little above the
    curve's starting level so that the divergence at the end does not squash
    the interesting part.

    Args:
        result_or_arrays: an `LRFinderResult`, a dict with its field names, or
            a tuple `(learning_rates, losses[, smoothed_losses[, suggestion]])`.
        path: where to write the PNG.

    Returns:
        `path`.
    """
    lrs, losses, smoothed, suggestion = _lr_finder_arrays(result_or_arrays)
    fig, ax = _subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="tab:blue", alpha=0.3, linewidth=1, label="batch loss")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    if suggestion is not None:
        y = np.interp(np.log(suggestion), np.log(lrs), smoothed)
        ax.axvline(suggestion, color="tab:red", linestyle="--", linewidth=1)
        ax.plot([suggestion], [y], "o", color="tab:red",
                label=f"suggestion {suggestion:.2e}")
    lowest = int(np.argmin(smoothed))
    bottom, head = float(np.min(smoothed)), float(np.max(smoothed[: lowest + 1]))
    spread = max(head - bottom, 1e-3 * max(abs(head), 1.0))
    ax.set_ylim(bottom - 0.3 * spread, head + 0.8 * spread)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def _lr_finder_arrays(data):
    fields = ("learning_rates", "losses", "smoothed_losses", "suggestion")
    if isinstance(data, dict):
        values = [data.get(name) for name in fields]
    elif isinstance(data, (tuple, list)):
        values = list(data) + [None] * (4 - len(data))
    else:
        values = [getattr(data, name, None) for name in fields]
    lrs, losses, smoothed, suggestion = values
    if lrs is None or losses is None:
        raise ValueError("Invalid LR range test data: expected an LRFinderResult, a "
                         "dict or a tuple with `learning_rates` and `losses`.")
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    smoothed = losses if smoothed is None else np.asarray(smoothed, float)
    if lrs.ndim != 1 or len(lrs) < 2 or not lrs.shape == losses.shape == smoothed.shape:
        raise ValueError("Invalid LR range test data: expected 1-D arrays of equal "
                         f"length >= 2, received shapes {lrs.shape}, {losses.shape} "
                         f"and {smoothed.shape}")
    return lrs, losses, smoothed, suggestion


def plot_schedule(schedule, steps, path, columns=3):
    """Draws a learning-rate schedule: the rate against the optimizer step.

    The schedule is evaluated at up to 1000 steps spread evenly over
    `0 .. steps - 1` (every step for shorter schedules), in one call on the
    array of steps; schedules that only accept a scalar step (Keras'
    `CosineDecay` with warm-up, say) are evaluated step by step instead.
    A dict of schedules is drawn as a grid of panels, one per schedule,
    titled with its key.

    Args:
        schedule: a `keras.optimizers.schedules.LearningRateSchedule` (any
            callable from step to rate), a float, or a dict `{title:
            schedule}` of those.
        steps: number of steps to draw, >= 1.
        path: where to write the PNG.
        columns: panels per row when `schedule` is a dict. Defaults to `3`.

    Returns:
        `path`.

    Example:

    >>> plot_schedule({"step": kerastrain.schedules.StepDecay(0.1, 100),
    ...                "one cycle": kerastrain.schedules.OneCycle(0.1, 300)},
    ...               300, "schedules.png")
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError("Invalid value for `steps`: expected an integer >= 1, "
                         f"received steps={steps!r}")
    if isinstance(schedule, dict):
        if not schedule:
            raise ValueError("Invalid value for `schedule`: received an empty dict; "
                             "pass at least one {title: schedule} entry")
        panels = dict(schedule)
    elif callable(schedule):
        panels = {type(schedule).__name__: schedule}
    else:
        panels = {"constant": schedule}
    points = np.unique(np.linspace(0, steps - 1, min(steps, 1000)).round().astype(int))
    width, height = (6, 3.5) if len(panels) == 1 else (4, 2.8)
    fig, axes = _panel_grid(len(panels), columns, width, height)
    for ax, (title, rule) in zip(axes, panels.items()):
        if callable(rule):
            rates = _schedule_rates(rule, points)
        else:
            rates = np.full(len(points), float(rule))
        ax.plot(points, rates, color="tab:blue", linewidth=1.5)
        ax.set_xlim(0, max(steps - 1, 1))
        ax.set_ylim(bottom=0)
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _schedule_rates(schedule, points):
    try:
        rates = np.asarray(schedule(points), dtype=float)
    except Exception:  # noqa: BLE001 - any failure means "scalar steps only".
        rates = None
    if rates is None or rates.shape != points.shape:
        rates = np.array([float(np.asarray(schedule(int(step)))) for step in points])
    return rates


def training_curves(history, path):
    """Draws training curves: one panel per metric, training and validation.

    Every metric `m` of `history` gets a panel with `m` and, if present,
    `val_m` against the epoch, and the averaged model's `swa_val_m` (a point
    at the last epoch, logged by `StochasticWeightAveraging`); the learning
    rate (drawn by `plot_schedule`) is left out.

    Args:
        history: `keras.callbacks.History.history`, a dict of per-epoch lists
            such as `{"loss": [...], "val_loss": [...], "accuracy": [...]}`.
        path: where to write the PNG.

    Returns:
        `path`.

    Example:

    >>> history = model.fit(data.train, validation_data=data.validation, epochs=5)
    >>> training_curves(history.history, "training_curves.png")
    """
    metrics = [k for k in history if not k.startswith(("val_", "swa_val_"))
               and k != "learning_rate"]
    metrics += [k[4:] for k in history if k.startswith("val_") and k[4:] not in history]
    if not metrics or not all(len(history.get(k, history.get(f"val_{k}", []))) for k in metrics):
        raise ValueError("Invalid value for `history`: expected a dict of non-empty "
                         f"per-epoch lists such as History.history, received {history!r}")
    fig, axes = _subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2),
                          squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for key, label in ((metric, "training"), (f"val_{metric}", "validation"),
                           (f"swa_val_{metric}", "SWA average (validation)")):
            if key in history:
                values = np.asarray(history[key], dtype=float)
                ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def activation_histograms(stats, path, columns=10):
    """Draws one histogram of activations per layer, in model order.

    The picture of Glorot & Bengio (2010): with a good initialization the
    histograms keep their width from the first layer to the last; with a
    too small one they shrink to a spike at zero. Each panel is titled with
    the layer name and its activation mean and standard deviation; all
    panels share one x range, so that a collapsing layer shows as a spike.

    Args:
        stats: per-layer dicts with `name`, `mean`, `std` and `histogram`
            (`counts` and bin `edges`), as in the `layers` figure of
            `kerastrain.sanity.activation_stats`, or that check's result.
        path: where to write the PNG.
        columns: panels per row. Defaults to `10`.

    Returns:
        `path`.
    """
    stats = getattr(stats, "figures", {"layers": stats})["layers"]
    if not stats or not all("histogram" in entry for entry in stats):
        raise ValueError(
            "Invalid value for `stats`: expected a non-empty list of per-layer "
            "dicts with `name`, `mean`, `std` and `histogram`, as returned in "
            "kerastrain.sanity.activation_stats(...).figures['layers']"
        )
    low = min(entry["histogram"]["edges"][0] for entry in stats)
    high = max(entry["histogram"]["edges"][-1] for entry in stats)
    fig, axes = _panel_grid(len(stats), columns, 1.8, 1.8)
    for ax, entry in zip(axes, stats):
        counts = np.asarray(entry["histogram"]["counts"], dtype=float)
        edges = np.asarray(entry["histogram"]["edges"], dtype=float)
        # The edge line keeps a histogram of near-zero width visible.
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge",
               color="tab:blue", edgecolor="tab:blue", linewidth=0.8)
        if high > low:
            ax.set_xlim(low - 0.02 * (high - low), high + 0.02 * (high - low))
        ax.set_title(f"{entry['name']}\nmean {entry['mean']:.2g} std "
                     f"{entry['std']:.2g}", fontsize=6)
        ax.set_yticks([])
        ax.tick_params(axis="x", labelsize=5)
    return _save(fig, path)


def plot_optimizer_paths(problems, paths, path):
    """Draws optimizer trajectories over contour plots of 2-D functions.

    One panel per problem: filled contours of the function (levels at
    quantiles of its values over the window, so that a flat valley and a
    steep wall both show), its minima as stars, and one line per optimizer
    from its start (circle) to its last point (cross). Points outside the
    window or not finite (a diverged run) are not drawn.

    Args:
        problems: `kerastrain.toy_problems.ToyProblem`s (anything with
            `name`, `grid()`, `minima`, `x_range` and `y_range`).
        paths: dict `{problem name: {optimizer name: points}}`, `points` of
            shape `(steps + 1, 2)` as `toy_problems.optimize_2d` returns.
        path: where to write the PNG.

    Returns:
        `path`.

    Example:

    >>> problem = kerastrain.toy_problems.get("saddle")
    >>> run = kerastrain.toy_problems.optimize_2d(
    ...     problem.function, problem.start, kerastrain.optimizers.build("adam", 0.05), 200)
    >>> plot_optimizer_paths([problem], {"saddle": {"adam": run}}, "paths.png")
    """
    problems = list(problems)
    missing = [p.name for p in problems if p.name not in paths]
    if not problems or missing:
        raise ValueError("Invalid value for `paths`: expected a dict with an entry "
                         f"per problem, missing {missing or 'all problems'}")
    names = list(dict.fromkeys(name for p in problems for name in paths[p.name]))
    from matplotlib import colormaps

    colors = dict(zip(names, colormaps["tab10"].colors))
    fig, axes = _subplots(1, len(problems), figsize=(5 * len(problems), 4.4),
                          squeeze=False)
    for ax, problem in zip(axes[0], problems):
        x, y, z = problem.grid()
        levels = np.unique(np.quantile(z[np.isfinite(z)], np.linspace(0, 1, 25)))
        ax.contourf(x, y, z, levels=levels, cmap="Greys_r", alpha=0.5)
        ax.contour(x, y, z, levels=levels, colors="grey", linewidths=0.4)
        for name, points in paths[problem.name].items():
            points = np.array(points, dtype=float)
            inside = (np.all(np.isfinite(points), axis=1)
                      & (points[:, 0] >= problem.x_range[0]) & (points[:, 0] <= problem.x_range[1])
                      & (points[:, 1] >= problem.y_range[0]) & (points[:, 1] <= problem.y_range[1]))
            points[~inside] = np.nan
            ax.plot(points[:, 0], points[:, 1], color=colors[name], linewidth=1.4,
                    alpha=0.85, label=name)
            ax.plot(*points[0], "o", color=colors[name], markersize=4)
            if inside.any():
                ax.plot(*points[inside][-1], "x", color=colors[name], markersize=6)
        ax.plot(*np.transpose(problem.minima), "*", color="gold", markersize=12,
                markeredgecolor="black", linestyle="none")
        ax.set_xlim(problem.x_range)
        ax.set_ylim(problem.y_range)
        ax.set_title(problem.name)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    axes[0, -1].legend(loc="upper right", fontsize=7, framealpha=0.9)
    return _save(fig, path)


def search_parameters(values, scores, path, objective="validation_accuracy",
                      direction="max", log_parameters=()):
    """Draws each searched setting against the objective, one panel per setting.

    The picture of Bergstra & Bengio (2012): a setting that matters shows a
    trend or a band of good values; one that does not shows a flat cloud.
    Numbers are scattered (on a log axis for `log_parameters`), categories
    are placed side by side; the best trial is ringed.

    Args:
        values: `{setting: [value per trial]}`.
        scores: the objective of each trial.
        path: where to write the PNG.
        objective: the y-axis label. Defaults to `"validation_accuracy"`.
        direction: `"max"` or `"min"`, which score is best. Defaults to `"max"`.
        log_parameters: settings drawn on a log x axis. Defaults to `()`.

    Returns:
        `path`.
    """
    scores = np.asarray(scores, dtype=float)
    if not values or any(len(v) != len(scores) for v in values.values()) or not len(scores):
        raise ValueError(
            "Invalid values: expected {setting: [value per trial]} with one value per "
            f"score, received {len(scores)} scores and lengths "
            f"{ {k: len(v) for k, v in values.items()} }")
    from matplotlib.ticker import NullFormatter

    best = int(np.argmax(scores) if direction == "max" else np.argmin(scores))
    fig, axes = _subplots(1, len(values), figsize=(3 * len(values), 2.8),
                          squeeze=False, sharey=True)
    for ax, (name, column) in zip(axes[0], values.items()):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column):
            x = np.asarray(column, dtype=float)
            if name in log_parameters:
                ax.set_xscale("log")
                # Within one decade matplotlib labels minor ticks; they overlap.
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            labels = sorted({str(v) for v in column})
            x = np.array([labels.index(str(v)) for v in column], dtype=float)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.scatter(x, scores, s=18, color="tab:blue")
        ax.scatter(x[best], scores[best], s=90, facecolors="none",
                   edgecolors="tab:red", label="best")
        ax.set_xlabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(objective, fontsize=8)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def confusion_matrix(labels, predictions, class_names, path):
    """Draws the confusion matrix: rows true classes, columns predicted ones.

    Cells show counts, shaded by the share of the row (the recall of each
    true class lies on the diagonal).

    Args:
        labels: true class ids, ints in `[0, len(class_names))`.
        predictions: predicted class ids, same length.
        class_names: the name of each class.
        path: where to write the PNG.

    Returns:
        `path`.

    Example:

    >>> confusion_matrix(y_test, probabilities.argmax(-1), data.class_names, "cm.png")
    """
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    count = len(class_names)
    if labels.shape != predictions.shape or not len(labels) or not all(
            np.issubdtype(a.dtype, np.integer) and a.min() >= 0 and a.max() < count
            for a in (labels, predictions)):
        raise ValueError(f"Invalid labels/predictions: expected equally long, "
                         f"non-empty integer class ids in [0, {count}), received "
                         f"shapes {labels.shape} and {predictions.shape}")
    matrix = np.zeros((count, count), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.6 * count
    fig, ax = _subplots(figsize=(size + 1, size))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(count):
        for j in range(count):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(count), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(count), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {np.trace(matrix) / len(labels):.3f}", fontsize=9)
    return _save(fig, path)


def comparison_bars(scores, path, ylabel="test accuracy"):
    """Draws one labelled bar per method: `{method: score}`.

    Args:
        scores: dict `{name: number}`, drawn in its order.
        path: where to write the PNG.
        ylabel: label of the value axis. Defaults to `"test accuracy"`.

    Returns:
        `path`.

    Example:

    >>> comparison_bars({"scratch": 0.45, "fine-tune": 0.62}, "comparison.png")
    """
    if not scores or not all(isinstance(v, (int, float, np.floating))
                             and math.isfinite(v) for v in scores.values()):
        raise ValueError("Invalid value for `scores`: expected a non-empty dict "
                         f"{{name: finite number}}, received {scores!r}")
    fig, ax = _subplots(figsize=(1.6 + 1.4 * len(scores), 3.2))
    bars = ax.bar(range(len(scores)), list(scores.values()), color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(scores)), list(scores), fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_ylim(0, max(1.0, max(scores.values()) * 1.1))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
