"""End-to-end tests of recipes/finetune.py: a backbone written by
`recipes.train --save_backbone` transferred to three other classes."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from kerastrain import data as kt_data
from kerastrain.export import load_serving
from recipes import common
from recipes import finetune
from recipes import train

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = ["dog", "ship", "truck"]


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    path = str(root / "backbone.keras")
    # Enough steps for the BatchNorm moving statistics to settle: the
    # fine-tuned backbone runs in inference mode.
    train.run(dict(classes=["airplane", "automobile", "cat"], epochs=3, width=8,
                   blocks=2, batch_size=32, learning_rate=3e-3,
                   augment="none", output_dir=str(root / "run"), save_backbone=path,
                   verbose=0))
    return path


def _tiny(tmp_path, backbone_file, **overrides):
    return dict(weights=backbone_file, classes=TARGET, labels_per_class=60,
                batch_size=32, epochs_head=3, epochs_finetune=2, learning_rate=1e-2,
                augment="none", output_dir=str(tmp_path / "run"), verbose=0, **overrides)


@pytest.fixture(scope="module")
def test_split():
    data = kt_data.load("cifar10_mini", classes=TARGET)
    return tuple(np.concatenate(a) for a in zip(*data.test.as_numpy_iterator()))


def _served_accuracy(export_dir, images, labels):
    serve, class_names = load_serving(export_dir)
    assert class_names == TARGET
    return float(np.mean(serve(images)["class_ids"] == labels))


def test_finetune_run_follows_output_contract_and_exports(tmp_path, backbone_file,
                                                          test_split):
    config = _tiny(tmp_path, backbone_file, swa_start=1,
                   export_dir=str(tmp_path / "export"))
    metrics = finetune.run(config)
    run_dir = config["output_dir"]
    assert {"config.json", "history.csv", "metrics.json", "training_curves.png",
            "learning_rate.png", "confusion_matrix.png"} <= set(os.listdir(run_dir))
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f) == common.complete_config(config, "recipes.finetune")
    with open(os.path.join(run_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    # Both phases in one history; phase 2 at a tenth of the rate.
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates == pytest.approx([1e-2] * 3 + [1e-3] * 2)
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.1
    with open(os.path.join(run_dir, "metrics.json")) as f:
        assert json.load(f) == pytest.approx(metrics)
    assert {"test_accuracy", "test_loss", "epochs", "train_seconds", "validation_accuracy",
            "swa_test_accuracy", "final_test_accuracy",
            "head_validation_accuracy"} <= set(metrics)
    assert metrics["epochs"] == 5
    # The SavedModel serves the evaluated (averaged) model, and any image size.
    images, labels = test_split
    assert _served_accuracy(config["export_dir"], images, labels) == pytest.approx(
        metrics["test_accuracy"], abs=1e-6)
    serve, _ = load_serving(config["export_dir"])
    probabilities = serve(np.repeat(np.repeat(images[:4], 2, 1), 2, 2))["probabilities"]
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize("overrides", [dict(gradual=True, unfreeze=2, ema=True, ema_momentum=0.5),
                                       dict(block_lr_decay=0.5, unfreeze=2)])
def test_gradual_and_discriminative_phase_two_train(tmp_path, backbone_file, overrides):
    config = _tiny(tmp_path, backbone_file, **overrides)
    metrics = finetune.run(config)
    with open(os.path.join(config["output_dir"], "history.csv")) as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.1
    assert np.isfinite(metrics["test_loss"])


def test_features_mode_fits_a_linear_probe(tmp_path, backbone_file, test_split):
    config = _tiny(tmp_path, backbone_file, mode="features", probe_epochs=30,
                   export_dir=str(tmp_path / "export"))
    metrics = finetune.run(config)
    with open(os.path.join(config["output_dir"], "history.csv")) as f:
        assert len(list(csv.DictReader(f))) == 30
    assert metrics["epochs"] == 30 and metrics["test_accuracy"] > 1 / 3
    images, labels = test_split
    assert _served_accuracy(config["export_dir"], images, labels) == pytest.approx(
        metrics["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize("regularizer", ["none", "l2", "elastic_net"])
def test_regularizer_penalizes_the_trained_kernels(tmp_path, backbone_file, monkeypatch,
                                                   regularizer):
    trained, fine_tune = [], finetune.kt.transfer.fine_tune

    def keep_model(model, *args, **kwargs):
        trained.append(model)
        return fine_tune(model, *args, **kwargs)

    monkeypatch.setattr(finetune.kt.transfer, "fine_tune", keep_model)
    strength, l1_ratio = 1e-2, 0.3
    config = {**_tiny(tmp_path, backbone_file), "epochs_head": 1, "epochs_finetune": 1,
              "regularizer": regularizer, "regularization": strength, "l1_ratio": l1_ratio}
    metrics = finetune.run(config)
    (model,) = trained
    kernels = [w.numpy() for w in model.trainable_weights if w.name == "kernel"]
    assert len(kernels) >= 3  # the head and the unfrozen top block's convolutions
    expected = {"none": 0.0,
                "l2": sum(strength * np.sum(k**2) for k in kernels),
                "elastic_net": sum(strength * ((1 - l1_ratio) * np.sum(k**2)
                                               + l1_ratio * np.sum(np.abs(k)))
                                   for k in kernels)}[regularizer]
    assert len(model.losses) == (0 if regularizer == "none" else len(kernels))
    penalty = float(sum(float(loss) for loss in model.losses))
    assert penalty == pytest.approx(expected, rel=1e-4)
    if regularizer != "none":
        assert penalty > 0.05
    # Keras adds the penalty to the loss it trains on; test_loss leaves it out.
    data = common.load_data(common.complete_config(config, "recipes.finetune"))
    keras_loss = model.evaluate(data.test, verbose=0, return_dict=True)["loss"]
    assert keras_loss == pytest.approx(metrics["test_loss"] + penalty, rel=1e-4)


@pytest.mark.parametrize("overrides, match", [
    (dict(weights="missing/backbone.keras"),
     "Weights file 'missing/backbone.keras' does not exist"),
    (dict(weights="backbone.txt"), r"expected a `\.keras`"),
    (dict(weights="none", backbone="ResNet5O"), "Unknown backbone name 'ResNet5O'"),
    (dict(mode="features", swa_start=1), "--swa_start apply to --mode=finetune"),
    (dict(mode="features", regularizer="l2"), "--probe_l2"),
    (dict(epochs_head=0, epochs_finetune=0), "Nothing to train"),
    (dict(epochs_finetune=0, ema=True), "--ema apply to phase 2"),
    (dict(unfreeze=5), r"expected an int in \[0, 2\] \(the backbone has 2 blocks\)"),
    (dict(gradual=True, block_lr_decay=0.5), "--gradual cannot be combined"),
    (dict(block_lr_decay=0.5, swa_start=1, swa_lr=0.01), "--swa_lr cannot be combined"),
    (dict(block_lr_decay=0.5, snapshots=2, schedule="warm_restarts"),
     "--snapshots cannot be combined"),
    (dict(snapshots=2), "needs a schedule with cycles"),
    (dict(bogus=1), r"Unknown settings \['bogus'\]"),
])
def test_bad_settings_exit_with_the_reason(tmp_path, backbone_file, overrides, match):
    config = {**_tiny(tmp_path, backbone_file), **overrides}
    with pytest.raises(SystemExit, match=match):
        common.run_or_explain(finetune.run, config)


@flagsaver.flagsaver
def test_flagfile_becomes_the_config(tmp_path):
    flagfile = tmp_path / "finetune.flags"
    flagfile.write_text("--mode=features\n--backbone=EfficientNetB0\n--unfreeze=3\n"
                        "--classes=dog,ship\n")
    FLAGS(["finetune", f"--flagfile={flagfile}", "--weights=none"])
    config = common.flag_config("recipes.finetune")
    assert set(config) == set(common.default_config("recipes.finetune"))
    assert (config["mode"], config["backbone"], config["unfreeze"], config["weights"],
            config["classes"]) == ("features", "EfficientNetB0", 3, "none", ["dog", "ship"])


def test_command_line_help_and_missing_weights(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    help_text = subprocess.run([sys.executable, "-m", "recipes.finetune", "--help"],
                               cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=120).stdout
    for name in ("data", "classes", "labels_per_class", "image_size", "backbone",
                 "weights", "mode", "epochs_head", "epochs_finetune", "unfreeze",
                 "optimizer", "schedule", "augment", "swa_start", "snapshots", "ema",
                 "strategy", "output_dir", "export_dir"):
        assert f"--{name}" in help_text or f"--[no]{name}" in help_text, name
    flagfile = tmp_path / "run.flags"
    flagfile.write_text(f"--weights={tmp_path / 'nowhere.keras'}\n"
                        f"--output_dir={tmp_path / 'run'}\n")
    result = subprocess.run([sys.executable, "-m", "recipes.finetune",
                             f"--flagfile={flagfile}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "nowhere.keras' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
