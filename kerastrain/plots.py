"""Every picture kerastrain draws: one function per plot, `(data, path) -> path`.

Matplotlib runs on the Agg backend so that plots render on machines without
a display (CI, training servers).
"""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_CELL_INCHES = 1.0
_DPI = 100


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
    fig, axes = plt.subplots(
        2 * blocks, columns,
        figsize=(columns * _CELL_INCHES, 2 * blocks * _CELL_INCHES),
        dpi=_DPI, squeeze=False,
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
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


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
    fig, ax = plt.subplots(figsize=(6, 4), dpi=_DPI)
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
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


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


def plot_schedule(schedule, steps, path):
    """Draws a learning-rate schedule: the rate against the optimizer step.

    The schedule is evaluated at up to 1000 steps spread evenly over
    `0 .. steps - 1` (every step for shorter schedules), in one call on the
    array of steps; schedules that only accept a scalar step (Keras'
    `CosineDecay` with warm-up, say) are evaluated step by step instead.

    Args:
        schedule: a `keras.optimizers.schedules.LearningRateSchedule` (any
            callable from step to rate) or a float.
        steps: number of steps to draw, >= 1.
        path: where to write the PNG.

    Returns:
        `path`.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError("Invalid value for `steps`: expected an integer >= 1, "
                         f"received steps={steps!r}")
    points = np.unique(np.linspace(0, steps - 1, min(steps, 1000)).round().astype(int))
    if callable(schedule):
        rates, title = _schedule_rates(schedule, points), type(schedule).__name__
    else:
        rates, title = np.full(len(points), float(schedule)), "constant"
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=_DPI)
    ax.plot(points, rates, color="tab:blue", linewidth=1.5)
    ax.set_xlim(0, max(steps - 1, 1))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _schedule_rates(schedule, points):
    try:
        rates = np.asarray(schedule(points), dtype=float)
    except Exception:  # noqa: BLE001 - any failure means "scalar steps only".
        rates = None
    if rates is None or rates.shape != points.shape:
        rates = np.array([float(np.asarray(schedule(int(step)))) for step in points])
    return rates


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
    columns = max(1, min(columns, len(stats)))
    rows = math.ceil(len(stats) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.8 * rows),
                             dpi=_DPI, squeeze=False)
    for ax in axes.ravel()[len(stats):]:
        ax.set_axis_off()
    for ax, entry in zip(axes.ravel(), stats):
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
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path
