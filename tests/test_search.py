"""Tests for kerastrain.search: sampling distributions, resume, failures, and a
tiny real search on cifar10_mini."""

import csv
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import kerastrain as kt
from kerastrain import search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _score(config):
    """A closed-form stand-in for training: peaks at learning_rate = 1e-2."""
    return {"validation_accuracy": 1.0 - (math.log10(config["learning_rate"]) + 2) ** 2 / 10,
            "train_seconds": 0.0}


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# --- sampling ---------------------------------------------------------------


@pytest.fixture(scope="module")
def draws():
    space = {"log": search.log_uniform(1e-5, 1e-1), "linear": search.uniform(1e-5, 1e-1),
             "dropout": search.uniform(0.0, 0.5), "width": search.int_range(16, 128),
             "batch": search.int_range(16, 256, log=True),
             "policy": search.choice(["none", "light", "standard"])}
    samples = [search.sample(space, seed) for seed in range(2000)]
    return {name: [s[name] for s in samples] for name in space}


def test_log_uniform_spreads_evenly_over_decades(draws):
    log = np.log10(draws["log"])
    assert log.min() >= -5 and log.max() < -1
    shares = np.histogram(log, bins=4, range=(-5, -1))[0] / len(log)
    np.testing.assert_allclose(shares, 0.25, atol=0.04)
    # A plain uniform over the same range puts ~90% in the top decade.
    linear = np.asarray(draws["linear"])
    assert np.mean(linear >= 1e-2) == pytest.approx(0.9, abs=0.03)
    assert np.mean(linear < 1e-3) < 0.03


def test_uniform_int_range_and_choice_follow_their_distributions(draws):
    dropout = np.asarray(draws["dropout"])
    assert dropout.min() >= 0 and dropout.max() < 0.5
    assert dropout.mean() == pytest.approx(0.25, abs=0.01)
    assert np.histogram(dropout, bins=5)[0].min() > 0.16 * len(dropout)
    width = np.asarray(draws["width"])
    assert all(isinstance(w, int) for w in draws["width"])
    assert width.min() == 16 and width.max() == 128
    assert width.mean() == pytest.approx(72, abs=2.5)
    batch = np.asarray(draws["batch"])
    assert batch.min() >= 16 and batch.max() <= 256
    # Log-uniform: as many draws below the geometric middle as above it.
    assert np.mean(batch < math.sqrt(16 * 257)) == pytest.approx(0.5, abs=0.04)
    _, counts = np.unique(draws["policy"], return_counts=True)
    np.testing.assert_allclose(counts / len(draws["policy"]), 1 / 3, atol=0.04)


def test_sample_is_seeded_and_space_configs_round_trip(tmp_path):
    space = {"learning_rate": search.log_uniform(1e-4, 1e-1),
             "batch_size": search.int_range(16, 256, log=True),
             "optimizer": search.choice(["adam", "sgd"])}
    assert search.sample(space, 3) == search.sample(space, 3)
    assert search.sample(space, 3) != search.sample(space, 4)
    path = tmp_path / "space.json"
    path.write_text(json.dumps({k: v.get_config() for k, v in space.items()}))
    assert search.load_space(str(path)) == space
    assert search.sample(str(path), 3) == search.sample(space, 3)


# --- search mechanics --------------------------------------------------------


def test_search_resumes_skipping_finished_trials(tmp_path):
    space = {"learning_rate": search.log_uniform(1e-4, 1e-1)}
    calls = []

    def interrupted(config):
        calls.append(config)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is stopped mid-trial
        return _score(config)

    with pytest.raises(KeyboardInterrupt):
        search.random_search(interrupted, space, 4, str(tmp_path), seed=5, verbose=0)
    first = [c["learning_rate"] for c in calls]
    calls.clear()
    results = search.random_search(interrupted, space, 4, str(tmp_path), seed=5, verbose=0)
    # The two finished trials are kept; the cut-off one runs again, then one more.
    assert [c["learning_rate"] for c in calls][:1] == first[2:3] and len(calls) == 2
    assert all(r.status == "COMPLETED" for r in results) and len(results) == 4
    by_id = sorted(results, key=lambda r: int(r.trial_id))
    # Trial k of a search seeded s tries sample(space, s + k).
    assert [r.values for r in by_id] == [search.sample(space, 5 + k) for k in range(4)]
    calls.clear()
    search.random_search(interrupted, space, 6, str(tmp_path), seed=5, verbose=0)
    assert len(calls) == 2  # extended by two trials, nothing re-run

    best = results[0]
    assert best.score == max(r.score for r in results)
    trial_dir = tmp_path / "trials" / f"trial_{best.trial_id}"
    assert best.directory == str(trial_dir)
    config = json.loads((trial_dir / "config.json").read_text())
    assert config == {"learning_rate": best.values["learning_rate"],
                      "output_dir": str(trial_dir)}
    assert json.loads((trial_dir / "metrics.json").read_text()) == best.metrics


def test_failing_trial_is_recorded_and_search_goes_on(tmp_path):
    space = {"optimizer": search.choice(["adam", "sgd", "adamm"]),
             "learning_rate": search.log_uniform(1e-4, 1e-1)}

    def build_then_score(config):
        kt.optimizers.build(config["optimizer"], learning_rate=config["learning_rate"])
        return _score(config)

    base = {"optimizer": "adam", "learning_rate": 1e-3, "epochs": 1}
    results = search.random_search(build_then_score, space, 6, str(tmp_path),
                                   base_config=base, verbose=0)
    failed = [r for r in results if r.status == "FAILED"]
    completed = [r for r in results if r.status == "COMPLETED"]
    assert len(results) == 6 and failed and completed
    assert {r.values["optimizer"] for r in failed} == {"adamm"}
    assert all("adamm" in r.error and r.score is None and not r.metrics for r in failed)
    assert results[-len(failed):] == failed  # failures rank last
    rows = _read_csv(tmp_path / "results.csv")
    assert [row["trial"] for row in rows] == [r.trial_id for r in results]
    assert all(row["status"] == "FAILED" and "adamm" in row["error"]
               for row in rows[-len(failed):])
    assert float(rows[0]["validation_accuracy"]) == pytest.approx(completed[0].score)
    trial_config = json.loads((tmp_path / "trials" / f"trial_{failed[0].trial_id}"
                               / "config.json").read_text())
    assert trial_config["optimizer"] == "adamm" and trial_config["epochs"] == 1
    markdown = (tmp_path / "results.md").read_text().splitlines()
    assert markdown[0].startswith("| rank | trial | status | validation_accuracy |")
    assert len(markdown) == 2 + 6 and "FAILED" in markdown[-1]


def test_consecutive_failure_limit_stops_the_search(tmp_path):
    def broken(config):
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="consecutive failures"):
        search.random_search(broken, {"learning_rate": search.log_uniform(1e-4, 1e-1)},
                             5, str(tmp_path), max_consecutive_failures=2, verbose=0)


# --- a real search -----------------------------------------------------------


@pytest.fixture(scope="module")
def two_classes():
    return kt.data.load("cifar10_mini", classes=["airplane", "frog"],
                        labels_per_class=200, validation_fraction=0.25,
                        batch_size=32, seed=0)


def test_tiny_search_on_cifar10_mini_finds_a_better_config(two_classes, tmp_path):
    data = two_classes

    def train_small_cnn(config):
        keras.utils.set_random_seed(0)
        model = kt.models.small_cnn(data.num_classes, width=8, blocks=2)
        model.compile(optimizer=kt.optimizers.build("adam", config["learning_rate"]),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(data.train, epochs=config["epochs"], verbose=0)
        return {"validation_accuracy": model.evaluate(data.validation, verbose=0)[1]}

    space = {"learning_rate": search.log_uniform(1e-5, 1e-2)}
    results = search.random_search(train_small_cnn, space, 3, str(tmp_path),
                                   base_config={"learning_rate": 1e-3, "epochs": 3},
                                   verbose=0)
    by_id = sorted(results, key=lambda r: int(r.trial_id))
    assert [r.values for r in by_id] == [search.sample(space, k) for k in range(3)]
    rates = sorted(r.values["learning_rate"] for r in results)
    assert rates[0] < 1e-4 and rates[-1] > 1e-3  # the draws span the decades
    best, worst = results[0], results[-1]
    assert best.score >= worst.score + 0.1, [(r.values, r.score) for r in results]
    assert best.values["learning_rate"] > 1e-3
    rows = _read_csv(tmp_path / "results.csv")
    assert float(rows[0]["validation_accuracy"]) == pytest.approx(best.score)
    assert float(rows[0]["learning_rate"]) == pytest.approx(best.values["learning_rate"])
    with Image.open(tmp_path / "parameters.png") as image:
        assert image.width >= 250 and image.height >= 250


def test_recipe_searches_train_recipe_settings(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({
        "learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1e-2},
        "augment": {"distribution": "choice", "values": ["none", "light"]}}))
    output_dir = tmp_path / "search"
    result = subprocess.run(
        [sys.executable, "-m", "recipes.random_search", "--trials=2", f"--space={space}",
         f"--output_dir={output_dir}", "--epochs=1", "--width=4", "--blocks=1",
         "--classes=cat,ship", "--labels_per_class=20", "--image_size=16", "--verbose=0"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 of 2 trials completed" in result.stdout
    rows = _read_csv(output_dir / "results.csv")
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    for row in rows:
        trial_dir = output_dir / "trials" / f"trial_{row['trial']}"
        config = json.loads((trial_dir / "config.json").read_text())
        assert config["learning_rate"] == pytest.approx(float(row["learning_rate"]))
        assert config["augment"] == row["augment"] and config["width"] == 4
        metrics = json.loads((trial_dir / "metrics.json").read_text())
        assert metrics["validation_accuracy"] == pytest.approx(
            float(row["validation_accuracy"]))
        assert (trial_dir / "history.csv").exists()
    assert (output_dir / "parameters.png").exists()


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda: search.uniform(1.0, 0.0), "low < high"),
    (lambda: search.uniform(0.0, float("inf")), "finite"),
    (lambda: search.log_uniform(0.0, 1.0), "0 < low"),
    (lambda: search.int_range(1.5, 4), "integers"),
    (lambda: search.int_range(0, 8, log=True), "low >= 1"),
    (lambda: search.choice(["adam"]), "at least two distinct"),
    (lambda: search.choice(["adam", 1]), "of one type"),
    (lambda: search.parameter_from_config({"distribution": "normal"}), "'distribution'"),
    (lambda: search.parameter_from_config({"distribution": "uniform", "lo": 0}), "uniform"),
    (lambda: search.load_space({}), "`space`"),
    (lambda: search.sample({"a": search.uniform(0, 1)}, seed=1.5), "`seed`"),
    (lambda: search.sample({"a": search.uniform(0, 1)}, seed=-1), "`seed`"),
])
def test_bad_parameters_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_search_arguments_raise_clear_errors(tmp_path):
    space = {"learning_rate": search.log_uniform(1e-4, 1e-1)}
    with pytest.raises(ValueError, match=r"\['lr'\] are not settings"):
        search.random_search(_score, {"lr": search.uniform(0, 1)}, 2, str(tmp_path),
                             base_config={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="`trials`"):
        search.random_search(_score, space, 0, str(tmp_path))
    with pytest.raises(ValueError, match="`max_consecutive_failures`"):
        search.random_search(_score, space, 2, str(tmp_path), max_consecutive_failures=0)
    with pytest.raises(ValueError, match="`seed`"):
        search.random_search(_score, space, 2, str(tmp_path), seed=-1)
    assert not (tmp_path / "search.json").exists()  # rejected before anything is written
    with pytest.raises(ValueError, match="`direction`"):
        search.random_search(_score, space, 2, str(tmp_path), direction="up")
    with pytest.raises(ValueError, match="must return a dict holding the objective"):
        search.random_search(lambda c: {"test_accuracy": 0.5}, space, 2,
                             str(tmp_path / "a"), verbose=0)
    search.random_search(_score, space, 2, str(tmp_path / "b"), verbose=0)
    with pytest.raises(ValueError, match="space.learning_rate: .*'log_uniform'"):
        search.random_search(_score, {"learning_rate": search.uniform(0.1, 1)}, 2,
                             str(tmp_path / "b"), verbose=0)
