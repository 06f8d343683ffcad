"""`make demo` end to end, with every epoch count cut to a twentieth (at least 1)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kerastrain import data as kt_data
from kerastrain.export import load_serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = ["dog", "frog", "horse", "ship", "truck"]
# The scratch run (MobileNetV3Small from random weights, the slowest by far)
# is left out of the end-to-end run; test_scratch_run_is_the_source_architecture
# checks its settings and tests/test_train_recipe.py that path.
RUN_DIRS = {"linear probe": "linear_probe", "fine-tune": "fine_tune"}


def _files(directory):
    """Every file under `directory` by relative path, with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_demo_writes_report_and_exports_the_best_model(tmp_path):
    export_dir = tmp_path / "export"
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "recipes.demo", f"--demo_dir={runs}",
         f"--demo_export_dir={export_dir}", "--demo_epochs_scale=0.05",
         "--demo_methods=linear_probe,fine_tune"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((runs / "results.json").read_text())
    assert set(results) == set(RUN_DIRS)
    report = (runs / "report.md").read_text()
    assert "cifar10-source" in report and "python -m recipes.train" in report
    for method, run_dir in RUN_DIRS.items():
        assert f"| {method} |" in report and f"| {method} |" in result.stdout
        # results.json holds each run's own metrics.json.
        assert json.loads((runs / run_dir / "metrics.json").read_text()) == \
            pytest.approx(results[method])
    best = max(RUN_DIRS, key=lambda name: results[name]["test_accuracy"])
    assert f"best: {best}" in result.stdout

    # The export is the best run's model: it reproduces that run's test
    # accuracy on the test images and serves what that run exported, not
    # what another run did.
    test = kt_data.load("cifar10_mini", classes=TARGET).test
    images, labels = (np.concatenate(a) for a in zip(*test.as_numpy_iterator()))
    serve, class_names = load_serving(str(export_dir))
    assert class_names == TARGET
    served = serve(images)
    assert np.mean(served["class_ids"] == labels) == pytest.approx(
        results[best]["test_accuracy"], abs=1e-6)
    exported = _files(export_dir)
    for method, run_dir in RUN_DIRS.items():
        assert (_files(runs / run_dir / "saved_model") == exported) == (method == best), method
    # It serves raw uint8 images of another size too.
    other_size = serve(np.repeat(np.repeat(images[:3], 2, 1), 2, 2))["probabilities"]
    np.testing.assert_allclose(other_size.sum(-1), 1.0, atol=1e-5)


def test_scratch_run_is_the_source_architecture_from_random_weights(tmp_path):
    import kerastrain as kt
    from recipes import demo

    manifest = kt.transfer.read_weights_manifest(demo.WEIGHTS)
    name, recipe, settings = demo.RUNS[0]
    config = demo.run_settings(name, recipe, settings, 3, str(tmp_path), 0.05, manifest)
    assert recipe is demo.train and name == "scratch"
    assert config["architecture"] == manifest["architecture"] == "MobileNetV3Small"
    assert json.loads(config["architecture_args"]) == manifest["arguments"]
    assert config["epochs"] == 2 and config["seed"] == 3  # 40 epochs x 0.05
    assert "weights" not in config  # random weights
    with pytest.raises(ValueError, match="--demo_methods"):
        demo.run(dict(demo_methods=["transfer"], demo_dir=str(tmp_path / "d"),
                      demo_export_dir=str(tmp_path / "e")))
