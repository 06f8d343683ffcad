"""Tests for kerastrain.toy_problems and recipes.compare_optimizers.

The classic claims about optimizers, checked numerically with the real
Keras optimizers from `kerastrain.optimizers.build`.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kerastrain import optimizers
from kerastrain import toy_problems

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 300


def _run(problem, name, learning_rate, start=None, steps=STEPS):
    return toy_problems.optimize_2d(problem.function, problem.start if start is None else start,
                                    optimizers.build(name, learning_rate), steps)


def _steps(problem, path, tolerance=1e-3):
    values = toy_problems.evaluate(problem.function, path)
    reached = toy_problems.steps_to_tolerance(values, problem.minimum_value, tolerance)
    return np.inf if reached is None else reached


def test_optimize_2d_runs_the_keras_update_rule():
    """Momentum SGD's path equals Keras' documented update, computed in numpy."""
    problem = toy_problems.ill_conditioned_quadratic(10.0)
    path = _run(problem, "momentum", 0.05, steps=20)
    point, velocity, expected = np.array(problem.start), np.zeros(2), [problem.start]
    for _ in range(20):
        gradient = point * np.array([1.0, 10.0])
        velocity = 0.9 * velocity - 0.05 * gradient
        point = point + velocity
        expected.append(point)
    np.testing.assert_allclose(path, expected, rtol=1e-5, atol=1e-6)


def test_momentum_and_nesterov_beat_sgd_on_ill_conditioned_quadratic():
    problem = toy_problems.ill_conditioned_quadratic(100.0)
    # Plain SGD is stable only below 2 / 100; give it every rate up to there.
    sgd_best = min(_steps(problem, _run(problem, "sgd", lr)) for lr in (0.005, 0.01, 0.015, 0.019))
    assert 200 < sgd_best < STEPS  # it gets there, slowly
    for lr in (0.005, 0.01):
        sgd = _steps(problem, _run(problem, "sgd", lr))
        for name in ("momentum", "nesterov"):
            steps = _steps(problem, _run(problem, name, lr))
            assert steps < 0.5 * sgd, (name, lr, steps, sgd)  # same rate: 2x faster at least
            assert steps < 0.6 * sgd_best, (name, lr, steps, sgd_best)  # beats SGD's best too


def test_sgd_on_the_stable_manifold_stays_at_the_saddle():
    problem = toy_problems.saddle()
    for lr in (0.01, 0.1):
        path = _run(problem, "sgd", lr, start=(1.5, 0.0))
        assert np.all(path[:, 1] == 0.0)  # the y gradient is exactly zero on y = 0
        assert np.linalg.norm(path[-1]) < 0.01  # converged to the saddle point
        assert toy_problems.evaluate(problem.function, path)[-1] > -1e-4  # not the minimum -1/4
    # Slightly off it, plain SGD at lr 0.01 is still near the saddle after
    # 300 steps: the offset grows only by (1 + lr) per step.
    path = _run(problem, "sgd", 0.01, start=(1.5, 1e-3))
    assert abs(path[-1, 1]) < 0.05
    assert toy_problems.evaluate(problem.function, path)[-1] > -0.01


@pytest.mark.parametrize("name, learning_rate", [
    ("momentum", 0.01), ("nesterov", 0.01), ("adagrad", 0.2), ("rmsprop", 0.01),
    ("adam", 0.05)])
def test_momentum_and_adaptive_methods_escape_the_saddle(name, learning_rate):
    problem = toy_problems.saddle()
    start = (1.5, 1e-3)  # slightly off the stable manifold
    path = _run(problem, name, learning_rate, start=start)
    assert _steps(problem, path) < STEPS
    assert abs(abs(path[-1, 1]) - 1.0) < 0.05  # at one of the minima (0, +-1)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_adam_first_step_is_the_learning_rate_whatever_the_gradient(scale):
    def bowl(x, y):
        return scale * (x**2 + 3.0 * y**2)

    for lr in (0.01, 0.1):
        first = toy_problems.optimize_2d(bowl, (2.0, -1.0), optimizers.build("adam", lr), 1)
        step = first[1] - first[0]
        # Bias correction makes the first step lr * g / |g| per coordinate;
        # uncorrected moments would step (1 - beta_1) / sqrt(1 - beta_2) = 3.2x that.
        np.testing.assert_allclose(step, [-lr, lr], rtol=1e-3)
        sgd = toy_problems.optimize_2d(bowl, (2.0, -1.0), optimizers.build("sgd", lr), 1)
        # SGD's first step is lr * g: six orders of magnitude apart over `scale`.
        np.testing.assert_allclose(sgd[1] - sgd[0], [-4 * scale * lr, 6 * scale * lr],
                                   rtol=1e-5, atol=1e-6)  # float32 spacing near 2


def test_steps_to_tolerance_counts_from_where_the_path_stays_inside():
    values = [5.0, 0.5, 0.05, 2.0, 0.05, 0.01, 0.001]
    assert toy_problems.steps_to_tolerance(values, 0.0, 0.1) == 4
    assert toy_problems.steps_to_tolerance(values, 0.0, 10.0) == 0
    assert toy_problems.steps_to_tolerance(values + [np.nan], 0.0, 0.1) is None
    assert toy_problems.steps_to_tolerance(values, 0.0, 1e-4) is None
    with pytest.raises(ValueError, match="tolerance"):
        toy_problems.steps_to_tolerance(values, 0.0, 0.0)


def test_toy_problems_minima_are_minima():
    for name in ("quadratic", "saddle", "rosenbrock"):
        problem = toy_problems.get(name)
        _, _, z = problem.grid(points=101)
        minima = toy_problems.evaluate(problem.function, problem.minima)
        np.testing.assert_allclose(minima, problem.minimum_value, atol=1e-12)
        assert z.min() >= problem.minimum_value - 1e-12


def test_invalid_arguments():
    problem = toy_problems.get("saddle")
    with pytest.raises(ValueError, match="Unknown toy problem"):
        toy_problems.get("himmelblau")
    with pytest.raises(ValueError, match="condition_number"):
        toy_problems.ill_conditioned_quadratic(0.5)
    with pytest.raises(ValueError, match="start"):
        toy_problems.optimize_2d(problem.function, (1.0, np.nan), optimizers.build("sgd"), 5)
    with pytest.raises(ValueError, match="steps"):
        toy_problems.optimize_2d(problem.function, (1.0, 1.0), optimizers.build("sgd"), 0)
    used = optimizers.build("adam")
    toy_problems.optimize_2d(problem.function, (1.0, 1.0), used, 1)
    with pytest.raises(ValueError, match="fresh optimizer"):
        toy_problems.optimize_2d(problem.function, (1.0, 1.0), used, 1)
    with pytest.raises(ValueError, match="points"):
        toy_problems.evaluate(problem.function, np.zeros((4, 3)))


def test_recipe_imports_beside_the_training_recipes(tmp_path, monkeypatch):
    # absl flags are process-global: --output_dir is the shared flag of
    # recipes.flags, so both recipes import into one process.
    from recipes import compare_optimizers, train  # noqa: F401
    from recipes import flags as recipe_flags
    monkeypatch.chdir(tmp_path)
    results, paths = compare_optimizers.run(
        {"problems": ["saddle"], "optimizers": ["adam"], "steps": 50})
    assert paths["saddle"]["adam"].shape == (51, 2)
    run_dir = tmp_path / "runs" / "compare_optimizers"  # the default output_dir
    assert json.loads((run_dir / "results.json").read_text()) == results
    config = json.loads((run_dir / "config.json").read_text())
    assert config["output_dir"] == os.path.join("runs", "compare_optimizers")
    assert config["tolerance"] == 1e-3  # a flag default
    assert recipe_flags.complete_config({}, "recipes.train")["output_dir"] == \
        os.path.join("runs", "train")


def _recipe(*argv):
    # A subprocess, as a user runs it.
    return subprocess.run(
        [sys.executable, "-m", "recipes.compare_optimizers", *argv],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_recipe_writes_picture_tables_and_reproduces_the_claims(tmp_path):
    result = _recipe(f"--output_dir={tmp_path}", "--steps=300",
                     '--learning_rates={"rosenbrock": {"adam": 0.1}}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| momentum | 0.01 |" in result.stdout

    with Image.open(tmp_path / "trajectories.png") as image:
        assert image.format == "PNG" and image.width > 2 * image.height  # three panels
    results = json.loads((tmp_path / "results.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["steps"] == 300 and config["problems"] == ["quadratic", "saddle", "rosenbrock"]
    assert all(set(rows) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"}
               for rows in results.values())
    assert results["rosenbrock"]["adam"]["learning_rate"] == 0.1  # the override
    assert results["rosenbrock"]["sgd"]["learning_rate"] == 0.001  # a default

    quadratic, saddle = results["quadratic"], results["saddle"]
    for name in ("momentum", "nesterov"):
        assert quadratic[name]["steps_to_tolerance"] < 0.5 * quadratic["sgd"]["steps_to_tolerance"]
    assert saddle["sgd"]["steps_to_tolerance"] is None
    assert saddle["sgd"]["final_gap"] > 0.2  # still at the saddle (f = 0, minimum -1/4)
    for name in ("momentum", "nesterov", "adagrad", "rmsprop", "adam"):
        assert saddle[name]["steps_to_tolerance"] is not None, name
        assert abs(abs(saddle[name]["final_point"][1]) - 1) < 0.05, name

    table = (tmp_path / "results.md").read_text()
    assert "### saddle (300 steps)" in table
    sgd_steps = quadratic["sgd"]["steps_to_tolerance"]
    assert f"| sgd | 0.019 | {sgd_steps} |" in table and "| sgd | 0.01 | not reached |" in table

