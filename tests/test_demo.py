"""`make demo` end to end, with every epoch count cut to a tenth."""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_writes_report_and_exports_the_best_model(tmp_path):
    export_dir = tmp_path / "export"
    result = subprocess.run(
        [sys.executable, "-m", "recipes.demo", f"--demo_dir={tmp_path / 'runs'}",
         f"--demo_export_dir={export_dir}", "--demo_epochs_scale=0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert set(results) == {"source (pretraining)", "scratch", "linear probe", "fine-tune"}
    for metrics in results.values():
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
    report = (tmp_path / "runs" / "report.md").read_text()
    for method in ("scratch", "linear probe", "fine-tune"):
        assert f"| {method} |" in report and f"| {method} |" in result.stdout
    best = max(("scratch", "linear probe", "fine-tune"),
               key=lambda name: results[name]["test_accuracy"])
    assert f"best: {best}" in result.stdout
    # The exported SavedModel serves raw uint8 images of the target classes.
    serving = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    out = serving(images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
    names = {name.decode() for name in out["class_names"].numpy()}
    assert names <= {"dog", "frog", "horse", "ship", "truck"}
