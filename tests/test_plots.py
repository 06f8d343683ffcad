"""Tests for kerastrain.plots: files written, and the data drawn is the data given."""

import keras
import numpy as np
import pytest
from PIL import Image

from kerastrain import plots
from kerastrain import schedules
from kerastrain import toy_problems


@pytest.fixture
def kept_figures(monkeypatch):
    """Keeps the figures a plot function saves, to inspect what it drew."""
    save, figures = plots._save, []

    def keep(figure, path, **kwargs):
        figures.append(figure)
        return save(figure, path, **kwargs)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _lines(figure):
    """The `(x, y)` data of the first line of every visible panel."""
    return [ax.lines[0].get_xydata() for ax in figure.axes if ax.axison]


# --- plot_schedule --------------------------------------------------------------


def test_plot_schedule_writes_png_of_every_step(tmp_path, kept_figures):
    schedule = schedules.StepDecay(0.1, drop_every_steps=100, factor=0.5)
    path = plots.plot_schedule(schedule, 300, str(tmp_path / "step.png"))
    assert path == str(tmp_path / "step.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 350)
    (figure,) = kept_figures
    (line,) = _lines(figure)
    steps = np.arange(300)
    np.testing.assert_array_equal(line[:, 0], steps)
    np.testing.assert_allclose(line[:, 1], 0.1 * 0.5 ** np.floor(steps / 100), rtol=1e-6)
    assert figure.axes[0].get_title() == "StepDecay"


def test_plot_schedule_samples_1000_steps_of_a_long_schedule(tmp_path, kept_figures):
    schedule = schedules.get("exponential", initial_learning_rate=0.1, k=1e-3)
    plots.plot_schedule(schedule, 5000, str(tmp_path / "exponential.png"))
    (line,) = _lines(kept_figures[0])
    assert len(line) == 1000 and line[0, 0] == 0 and line[-1, 0] == 4999
    assert np.all(np.diff(line[:, 0]) > 0)
    # float32 exp(-k) raised to the 5000th power: relative error up to ~1e-4.
    np.testing.assert_allclose(line[:, 1], 0.1 * np.exp(-1e-3 * line[:, 0]), rtol=1e-3)


def test_plot_schedule_evaluates_scalar_only_schedules_step_by_step(tmp_path, kept_figures):
    # Keras' CosineDecay with warm-up fails on an array of steps.
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=80, warmup_target=0.2, warmup_steps=20)
    with pytest.raises(Exception):
        schedule(np.arange(5))
    plots.plot_schedule(schedule, 100, str(tmp_path / "cosine.png"))
    (line,) = _lines(kept_figures[0])
    steps = np.arange(100)
    expected = np.where(steps < 20, 0.2 * steps / 20,
                        0.1 * (1 + np.cos(np.pi * np.minimum(steps - 20, 80) / 80)))
    np.testing.assert_allclose(line[:, 1], expected, rtol=1e-5, atol=1e-7)


def test_plot_schedule_draws_a_dict_as_titled_panels(tmp_path, kept_figures):
    panels = {
        "step": schedules.StepDecay(0.1, boundaries=[30, 45]),
        "triangular": schedules.CyclicalLearningRate(0.01, 0.1, step_size=10),
        "constant": 0.05,
        "warm-up + step": schedules.Warmup(schedules.StepDecay(0.1, 20), 10),
    }
    path = plots.plot_schedule(panels, 60, str(tmp_path / "all.png"), columns=3)
    with Image.open(path) as image:
        assert image.size == (3 * 400, 2 * 280)
    figure = kept_figures[0]
    visible = [ax for ax in figure.axes if ax.axison]
    assert [ax.get_title() for ax in visible] == list(panels)
    assert len(figure.axes) == 6  # two empty cells, hidden
    steps = np.arange(60)
    step, triangle, constant, warmup = _lines(figure)
    np.testing.assert_allclose(step[:, 1], 0.1 * 0.1 ** ((steps >= 30).astype(int) + (steps >= 45)),
                               rtol=1e-6)
    # Triangular: base + (max - base) * max(0, 1 - |t / step_size - 2 cycle - 1|).
    x = np.abs(steps / 10 - 2 * np.floor(1 + steps / 20) + 1)
    np.testing.assert_allclose(triangle[:, 1], 0.01 + 0.09 * np.maximum(0, 1 - x),
                               rtol=1e-5)
    np.testing.assert_array_equal(constant[:, 1], np.full(60, 0.05))
    np.testing.assert_allclose(warmup[:10, 1], 0.1 * steps[:10] / 10, rtol=1e-5)
    np.testing.assert_allclose(warmup[10:, 1], 0.1 * 0.1 ** np.floor((steps[10:] - 10) / 20),
                               rtol=1e-5)


@pytest.mark.parametrize("steps", [0, 2.5, True])
def test_plot_schedule_rejects_invalid_steps(tmp_path, steps):
    with pytest.raises(ValueError, match="Invalid value for `steps`"):
        plots.plot_schedule(0.1, steps, str(tmp_path / "bad.png"))


def test_plot_schedule_rejects_an_empty_dict(tmp_path):
    with pytest.raises(ValueError, match="empty dict"):
        plots.plot_schedule({}, 10, str(tmp_path / "bad.png"))


# --- plot_optimizer_paths -------------------------------------------------------


def test_plot_optimizer_paths_draws_every_path_and_skips_diverged_points(tmp_path,
                                                                        kept_figures):
    saddle = toy_problems.get("saddle")
    good = np.array([[1.5, 1e-3], [1.0, 0.2], [0.1, 0.9]])
    diverged = np.array([[1.5, 1e-3], [-30.0, 50.0], [np.nan, np.inf]])
    path = plots.plot_optimizer_paths([saddle], {"saddle": {"a": good, "b": diverged}},
                                      str(tmp_path / "paths.png"))
    with Image.open(path) as image:
        assert image.format == "PNG"
    (ax,) = kept_figures[0].axes
    drawn = {line.get_label(): line.get_xydata() for line in ax.lines
             if not line.get_label().startswith("_")}
    np.testing.assert_array_equal(drawn["a"], good)
    assert np.array_equal(drawn["b"][0], diverged[0]) and np.all(np.isnan(drawn["b"][1:]))
    assert ax.get_xlim() == saddle.x_range and ax.get_ylim() == saddle.y_range


def test_plot_optimizer_paths_needs_a_path_per_problem(tmp_path):
    with pytest.raises(ValueError, match="missing \\['saddle'\\]"):
        plots.plot_optimizer_paths([toy_problems.get("saddle")], {"quadratic": {}},
                                   str(tmp_path / "paths.png"))


# --- plot_lr_finder -------------------------------------------------------------


def test_plot_lr_finder_draws_curves_suggestion_and_cuts_the_blow_up(tmp_path, kept_figures):
    lrs = np.logspace(-6, 1, 50)
    smoothed = 2.3 - 1.5 / (1 + np.exp(-(np.log10(lrs) + 3) / 0.4)) + np.exp(3 * np.log10(lrs))
    losses = smoothed + np.random.default_rng(0).normal(0, 0.05, 50)
    result = {"learning_rates": lrs, "losses": losses, "smoothed_losses": smoothed,
              "suggestion": 1e-3}
    path = plots.plot_lr_finder(result, str(tmp_path / "lr_finder.png"))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 400)
    (ax,) = kept_figures[0].axes
    raw, smooth, marker_line, point = ax.lines
    np.testing.assert_array_equal(raw.get_xydata(), np.stack([lrs, losses], 1))
    np.testing.assert_array_equal(smooth.get_xydata(), np.stack([lrs, smoothed], 1))
    assert list(marker_line.get_xdata()) == [1e-3, 1e-3]
    assert point.get_xdata()[0] == 1e-3 and abs(point.get_ydata()[0] - 1.55) < 0.05
    assert ax.get_xscale() == "log"
    # The blow-up to 12 at lr=10 is cut: the top sits just above the start level.
    assert 2.3 < ax.get_ylim()[1] < 4.0 and smoothed.max() > 10


def test_plot_lr_finder_rejects_mismatched_arrays(tmp_path):
    with pytest.raises(ValueError, match="equal length"):
        plots.plot_lr_finder((np.logspace(-5, 0, 10), np.ones(9)), str(tmp_path / "x.png"))


# --- training_curves ------------------------------------------------------------


def test_training_curves_draw_the_swa_validation_point_on_its_metric_panel(
        tmp_path, kept_figures):
    nan = float("nan")
    history = {"loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.7, 1.4],
               "accuracy": [0.3, 0.4, 0.5], "val_accuracy": [0.3, 0.35, 0.45],
               "swa_val_loss": [nan, nan, 1.3], "swa_val_accuracy": [nan, nan, 0.5]}
    plots.training_curves(history, str(tmp_path / "curves.png"))
    (figure,) = kept_figures
    panels = [ax for ax in figure.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == ["loss", "accuracy"]
    swa = panels[0].lines[2].get_xydata()
    assert panels[0].lines[2].get_label() == "SWA average (validation)"
    np.testing.assert_array_equal(swa[-1], [3, 1.3])
