"""End-to-end tests of recipes/finetune.py: a backbone written by
`recipes.train --save_backbone` transferred to three other classes."""

import csv
import json
import logging
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
from recipes import flags as recipe_flags
from recipes import finetune
from recipes import train

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = ["dog", "ship", "truck"]
# The default fine-tune must reach the linear probe's level: within 5 points.
# On 300 test images one standard error is ~2.6 points, and CPU training is
# not bit-reproducible, so the seed-0 fine-tune varies between runs: 0.69 and
# 0.717 measured against the probe's 0.727. The old defaults (5 epochs of a
# Glorot head on raw codes) landed below chance.
MARGIN = 0.05


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
        assert json.load(f) == recipe_flags.complete_config(config, "recipes.finetune")
    with open(os.path.join(run_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    # Both phases in one history; phase 2 at --finetune_lr_factor (0.3) of the rate.
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates == pytest.approx([1e-2] * 3 + [3e-3] * 2)
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.1
    with open(os.path.join(run_dir, "metrics.json")) as f:
        assert json.load(f) == pytest.approx(metrics)
    assert set(metrics) == {
        "exported_model", "export", "test_accuracy", "test_loss", "validation_accuracy",
        "swa_test_accuracy", "final_test_accuracy", "swa_validation_accuracy",
        "final_validation_accuracy", "head_validation_accuracy",
        "head_learning_rate", "epochs", "head_epochs", "finetune_epochs",
        "train_seconds", "replicas", "global_batch_size", "learning_rate_factor",
        "dtype_policy", "jit_compile", "data_cache"}
    assert (metrics["replicas"], metrics["dtype_policy"], metrics["data_cache"]) == (
        1, "float32", "memory")
    # --export=best: the exported model is the better of the two on validation.
    best = max(("swa", "final"), key=lambda n: metrics[f"{n}_validation_accuracy"])
    assert metrics["exported_model"] == best
    assert metrics["test_accuracy"] == metrics[f"{best}_test_accuracy"]
    assert (metrics["epochs"], metrics["head_epochs"], metrics["finetune_epochs"]) == (5, 3, 2)
    # The SavedModel serves the evaluated (chosen) model, and any image size.
    images, labels = test_split
    assert _served_accuracy(config["export_dir"], images, labels) == pytest.approx(
        metrics["test_accuracy"], abs=1e-6)
    serve, _ = load_serving(config["export_dir"])
    probabilities = serve(np.repeat(np.repeat(images[:4], 2, 1), 2, 2))["probabilities"]
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize("seed", [0])
def test_default_flags_beat_the_linear_probe_on_few_shot_data(tmp_path, backbone_file,
                                                              seed):
    """Issue 9: with its defaults (5 epochs of a Glorot head on raw codes) the
    recipe landed below chance on 50 labels per class. Only the data flags
    are set here; the defaults must reach the linear probe's level."""
    few_shot = dict(weights=backbone_file, classes=TARGET, labels_per_class=30,
                    seed=seed, verbose=0)
    probe = finetune.run(dict(few_shot, mode="features",
                              output_dir=str(tmp_path / "probe")))
    tuned = finetune.run(dict(few_shot, output_dir=str(tmp_path / "finetune")))
    print(f"probe {probe['test_accuracy']:.3f}  fine-tune {tuned['test_accuracy']:.3f}")
    # 90 images, batch 64: 2 steps per epoch, 100 steps per phase.
    assert (tuned["head_epochs"], tuned["finetune_epochs"]) == (50, 50)
    with open(os.path.join(tmp_path, "finetune", "history.csv")) as f:
        first_loss = float(next(csv.DictReader(f))["loss"])
    assert first_loss < np.log(3) + 0.05  # zero logits: the head starts at ln k
    assert tuned["test_accuracy"] >= probe["test_accuracy"] - MARGIN
    assert tuned["test_accuracy"] > 0.6  # chance is 1/3


def test_steps_size_the_phases_and_auto_finds_the_head_rate(tmp_path, backbone_file):
    config = dict(_tiny(tmp_path, backbone_file), epochs_head=None, epochs_finetune=None,
                  head_steps=7, finetune_steps=6, learning_rate="auto")
    metrics = finetune.run(config)  # 6 steps per epoch
    assert (metrics["head_epochs"], metrics["finetune_epochs"], metrics["epochs"]) == (2, 1, 3)
    rate = metrics["head_learning_rate"]
    assert 1e-5 < rate < 1.0
    with open(os.path.join(config["output_dir"], "history.csv")) as f:
        rates = [float(r["learning_rate"]) for r in csv.DictReader(f)]
    assert rates == pytest.approx([rate, rate, rate * 0.3])
    assert os.path.getsize(os.path.join(config["output_dir"], "lr_finder.png")) > 0
    with open(os.path.join(config["output_dir"], "config.json")) as f:
        assert json.load(f)["learning_rate"] == "auto"


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
    assert metrics["exported_model"] == "final"
    assert metrics["final_test_accuracy"] == metrics["test_accuracy"]
    images, labels = test_split
    assert _served_accuracy(config["export_dir"], images, labels) == pytest.approx(
        metrics["test_accuracy"], abs=1e-6)


def test_larger_images_stream_through_a_backbone_trained_at_32(tmp_path, backbone_file):
    # Photos at another size than the backbone learnt: streamed (decoded and
    # resized by tf.data each epoch), resized back to 32x32 inside the model.
    config = _tiny(tmp_path, backbone_file, image_size=64, cache="none",
                   export_dir=str(tmp_path / "export"))
    metrics = finetune.run(config)
    assert metrics["data_cache"] == "none" and metrics["test_accuracy"] > 1 / 3
    serve, _ = load_serving(config["export_dir"])
    data = kt_data.load("cifar10_mini", classes=TARGET, image_size=(64, 64))
    images, labels = (np.concatenate(a) for a in zip(*data.test.as_numpy_iterator()))
    assert float(np.mean(serve(images)["class_ids"] == labels)) == pytest.approx(
        metrics["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize("regularizer", ["none", "l2", "elastic_net"])
def test_regularizer_penalizes_the_trained_kernels(tmp_path, backbone_file, monkeypatch,
                                                   regularizer):
    import kerastrain as kt

    trained, fine_tune = [], kt.transfer.fine_tune

    def keep_model(model, *args, **kwargs):
        trained.append(model)
        return fine_tune(model, *args, **kwargs)

    monkeypatch.setattr(kt.transfer, "fine_tune", keep_model)
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
    data = common.load_data(recipe_flags.complete_config(config, "recipes.finetune"))
    keras_loss = model.evaluate(data.test, verbose=0, return_dict=True)["loss"]
    assert keras_loss == pytest.approx(metrics["test_loss"] + penalty, rel=1e-4)


def test_interrupted_run_is_not_resumed_and_says_so(tmp_path, backbone_file,
                                                   crash_at_step, caplog):
    """recipes.finetune has no BackupAndRestore (recipes.train has): a rerun
    after a crash starts from the first epoch, and says so."""
    config = _tiny(tmp_path, backbone_file, swa_start=0)
    crash_at_step(finetune.run, config, 3 * 6 + 2)  # 180 images / 32: 6 steps per epoch
    run_dir = config["output_dir"]
    assert not {"backup", "swa_state.npz", "metrics.json"} & set(os.listdir(run_dir))
    with caplog.at_level(logging.WARNING):
        metrics = finetune.run(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("holds an interrupted run" in w and "does not resume" in w
               for w in warnings), warnings
    with open(os.path.join(run_dir, "history.csv")) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2, 3, 4]
    assert metrics["epochs"] == 5
    # A completed run directory is simply replaced, without the warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        finetune.run(dict(config, mode="features", swa_start=None, probe_epochs=2))
    assert not [r for r in caplog.records if "interrupted" in r.getMessage()]


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
    (dict(export="swa"), "--export=swa exports a model this run does not make"),
    (dict(mode="features", export="ensemble"), "pass --snapshots=N"),
    # Random-init features are dead (their spread across images ~1e-13).
    (dict(weights="none", backbone="MobileNetV2", mode="features"), "CNN codes"),
])
def test_bad_settings_exit_with_the_reason(tmp_path, backbone_file, overrides, match):
    config = {**_tiny(tmp_path, backbone_file), **overrides}
    with pytest.raises(SystemExit, match=match):
        recipe_flags.run_or_explain(finetune.run, config)
    # The run failed before training: it leaves nothing behind.
    assert not os.path.exists(config["output_dir"])


@flagsaver.flagsaver
def test_flagfile_becomes_the_config(tmp_path):
    flagfile = tmp_path / "finetune.flags"
    flagfile.write_text("--mode=features\n--backbone=EfficientNetB0\n--unfreeze=3\n"
                        "--classes=dog,ship\n")
    FLAGS(["finetune", f"--flagfile={flagfile}", "--weights=none"])
    config = recipe_flags.flag_config("recipes.finetune")
    assert set(config) == set(recipe_flags.default_config("recipes.finetune"))
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
    assert "does not resume an interrupted run" in " ".join(help_text.split())
    flagfile = tmp_path / "run.flags"
    flagfile.write_text(f"--weights={tmp_path / 'nowhere.keras'}\n"
                        f"--output_dir={tmp_path / 'run'}\n")
    result = subprocess.run([sys.executable, "-m", "recipes.finetune",
                             f"--flagfile={flagfile}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "nowhere.keras' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
