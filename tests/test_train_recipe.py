"""End-to-end tests of recipes/train.py on the embedded CIFAR-10 images."""

import csv
import json
import os

import keras
import numpy as np
import pytest
from absl import app
from absl import flags
from absl.testing import flagsaver

from kerastrain import _io
from kerastrain import data as kt_data
from kerastrain import plots
from kerastrain.ensemble import Ensemble
from kerastrain.export import load_serving
from recipes import common
from recipes import flags as recipe_flags
from recipes import train

FLAGS = flags.FLAGS
CLASSES = ["airplane", "frog", "truck"]
TINY = dict(classes=CLASSES, labels_per_class=40, batch_size=32, epochs=4, width=8,
            blocks=2, learning_rate=3e-3, verbose=0)
STEPS_PER_EPOCH = 4  # ceil(3 classes * 40 images / 32)
# How the run ran (kerastrain.distribute, --mixed_precision, --jit_compile).
RUN = {"replicas", "global_batch_size", "learning_rate_factor", "dtype_policy", "jit_compile",
       "data_cache"}
# With --ema the trained weights are the moving average: `ema_`, not `final_`.
CONTRACT_KEYS = {"exported_model", "export", "test_accuracy", "test_loss", "epochs",
                 "train_seconds", "validation_accuracy", "swa_test_accuracy",
                 "ema_test_accuracy", "ensemble_test_accuracy",
                 "last_snapshot_test_accuracy", "snapshot_test_accuracies",
                 "swa_validation_accuracy", "ema_validation_accuracy",
                 "ensemble_validation_accuracy"} | RUN


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory):
    """One run with every averaging flag: SWA, a 2-snapshot ensemble, EMA."""
    root = tmp_path_factory.mktemp("train")
    config = dict(TINY, schedule="warm_restarts", snapshots=2, swa_start=2, ema=True,
                  ema_momentum=0.9, export="ensemble", output_dir=str(root / "run"),
                  export_dir=str(root / "export"),
                  save_backbone=str(root / "backbone.keras"))
    return config, train.run(config)


@pytest.fixture(scope="module")
def test_split():
    data = kt_data.load("cifar10_mini", classes=CLASSES, validation_fraction=0.1)
    return tuple(np.concatenate(a) for a in zip(*data.test.as_numpy_iterator()))


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_run_directory_follows_output_contract(averaged_run):
    config, _ = averaged_run
    run_dir = config["output_dir"]
    names = set(os.listdir(run_dir))
    assert {"config.json", "history.csv", "metrics.json", "training_curves.png",
            "learning_rate.png", "snapshots"} <= names
    # Resume state is gone once the run completes.
    assert not {"backup", "swa_state.npz"} & names
    assert not [n for n in names if n.startswith(".tmp")]
    for png in ("training_curves.png", "learning_rate.png"):
        with open(os.path.join(run_dir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # config.json holds every flag, defaults included.
    saved = _read(os.path.join(run_dir, "config.json"))
    assert saved == recipe_flags.complete_config(config, "recipes.train")
    assert saved["optimizer"] == "adam" and saved["data"] == "cifar10_mini"


def test_history_logs_every_epoch_and_the_restarts(averaged_run):
    config, _ = averaged_run
    with open(os.path.join(config["output_dir"], "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(rows[0])
    rates = [float(r["learning_rate"]) for r in rows]
    # Two cosine cycles of two epochs: the rate restarts at epoch 2.
    assert rates[0] == pytest.approx(3e-3) and rates[2] == pytest.approx(3e-3)
    assert rates[1] < rates[0] and rates[3] < rates[2]


def test_metrics_hold_every_averaging_variant(averaged_run):
    config, metrics = averaged_run
    assert _read(os.path.join(config["output_dir"], "metrics.json")) == metrics
    assert set(metrics) == CONTRACT_KEYS
    assert metrics["epochs"] == 4 and metrics["train_seconds"] > 0
    assert len(metrics["snapshot_test_accuracies"]) == 2
    assert metrics["last_snapshot_test_accuracy"] == metrics["snapshot_test_accuracies"][-1]
    # The exported model is the ensemble, and says so; the trained model
    # holds the SWA average of the raw weights.
    assert metrics["exported_model"] == "ensemble"
    assert metrics["test_accuracy"] == metrics["ensemble_test_accuracy"]
    # 16 steps leave the BatchNorm moving statistics (momentum 0.99) near
    # their start, so the models evaluated with them are near chance (1/3)
    # for most seeds and data orders (measured: seeds 0-2 gave 0.33-0.54);
    # SWA recomputes the statistics and is clearly above it (0.39-0.62).
    assert metrics["swa_test_accuracy"] > 0.38, metrics
    for key in ("ensemble_test_accuracy", "ema_test_accuracy", "last_snapshot_test_accuracy"):
        assert 0 <= metrics[key] <= 1, (key, metrics)
    assert 0 < metrics["test_loss"] < np.log(3) + 0.2


@pytest.mark.parametrize("overrides, exported, models", [
    (dict(jit_compile="true"), "final", {"final"}),  # XLA-compiled steps, on CPU too
    (dict(ema=True, ema_momentum=0.9), "ema", {"ema"}),
    (dict(swa_start=2), "best", {"swa", "final"}),
])
def test_metrics_name_the_exported_model_and_every_other(tmp_path, test_split, capsys,
                                                         overrides, exported, models):
    config = dict(TINY, epochs=3, output_dir=str(tmp_path / "run"),
                  export_dir=str(tmp_path / "export"), **overrides)
    metrics = train.run(config)
    figures = {f"{name}_{split}_accuracy" for name in models
               for split in ("test", "validation")}
    assert set(metrics) == {"exported_model", "export", "test_accuracy", "test_loss",
                            "validation_accuracy", "epochs", "train_seconds"} | figures | RUN
    if exported == "best":  # --export=best: the best on validation data
        exported = max(models, key=lambda name: metrics[f"{name}_validation_accuracy"])
        assert "best on validation data" in capsys.readouterr().out
    assert metrics["exported_model"] == exported and metrics["export"] == "best"
    assert metrics["jit_compile"] == (overrides.get("jit_compile") == "true")
    # test_accuracy is the exported model's figure, which the SavedModel reproduces.
    assert metrics["test_accuracy"] == metrics[f"{exported}_test_accuracy"]
    assert metrics["validation_accuracy"] == metrics[f"{exported}_validation_accuracy"]
    serve, _ = load_serving(config["export_dir"])
    x, y = test_split
    assert np.mean(serve(x)["class_ids"] == y) == pytest.approx(metrics["test_accuracy"])


def test_snapshots_are_taken_at_the_cycle_ends(averaged_run):
    config, _ = averaged_run
    manifest = _read(os.path.join(config["output_dir"], "snapshots", "manifest.json"))
    entries = manifest["snapshots"]
    assert [e["epoch"] for e in entries] == [1, 3]
    assert [e["step"] for e in entries] == [2 * STEPS_PER_EPOCH - 1, 4 * STEPS_PER_EPOCH - 1]


def test_export_serves_the_snapshot_ensemble(averaged_run, test_split):
    config, metrics = averaged_run
    serve, class_names = load_serving(config["export_dir"])
    assert class_names == CLASSES
    x, y = test_split
    served = serve(x)["probabilities"]
    # The SavedModel reproduces the recipe's test accuracy ...
    assert np.mean(served.argmax(-1) == y) == pytest.approx(metrics["test_accuracy"])
    # ... and is the mean of the snapshots' probabilities.
    members = Ensemble.from_directory(os.path.join(config["output_dir"], "snapshots"))
    member_probs = [keras.ops.softmax(m(x[:64], training=False)) for m in members.members]
    np.testing.assert_allclose(served[:64], np.mean(member_probs, axis=0), atol=1e-5)
    larger = serve(np.repeat(np.repeat(x[:8], 2, axis=1), 2, axis=2))  # 64x64 images
    assert larger["probabilities"].shape == (8, 3)


def test_saved_backbone_is_the_feature_extractor(averaged_run, test_split):
    config, _ = averaged_run
    backbone = keras.saving.load_model(config["save_backbone"])
    assert backbone.output_shape == (None, 16)  # width 8, doubled by the 2nd block
    assert "classifier" not in [layer.name for layer in backbone.layers]


def test_keras_applications_backbone_trains_from_scratch_and_saves_its_features(
        tmp_path, test_split):
    import kerastrain as kt

    backbone_file, source = str(tmp_path / "backbone.keras"), tmp_path / "source"
    config = dict(TINY, epochs=1, architecture="MobileNetV3Small",
                  architecture_args='{"minimalistic": true}',
                  label_smoothing=0.1, augment="none", output_dir=str(tmp_path / "run"),
                  save_backbone=backbone_file, save_source_weights=str(source))
    metrics = train.run(config)
    assert 0 <= metrics["test_accuracy"] <= 1
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["architecture"] == "MobileNetV3Small" and saved["bn_momentum"] == 0.9
    features = kt.transfer.backbone(None, weights=backbone_file)
    assert features.output_shape == (None, 576)  # MobileNetV3Small's last 1x1 conv
    momenta = {layer.momentum for layer in features._flatten_layers()
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
    x, _ = test_split
    assert np.isfinite(features.predict_on_batch(x[:4])).all()

    # Source weights: the classifier and a manifest that says how it was made.
    manifest = kt.transfer.read_weights_manifest(str(source))
    assert manifest["architecture"] == "MobileNetV3Small"
    assert manifest["arguments"] == {"minimalistic": True}
    assert manifest["class_names"] == CLASSES and manifest["input_shape"] == [32, 32, 3]
    assert manifest["source_test_accuracy"] == round(metrics["final_test_accuracy"], 4)
    assert manifest["command"].startswith("python -m recipes.train ")
    assert "--architecture=MobileNetV3Small" in manifest["command"]
    assert "--label_smoothing=0.1" in manifest["command"]
    from_source = kt.transfer.backbone(None, (32, 32, 3), weights=str(source))
    np.testing.assert_allclose(from_source.predict_on_batch(x[:4]),
                               features.predict_on_batch(x[:4]), atol=1e-5)
    with pytest.raises(ValueError, match="are a MobileNetV3Small, received name='ResNet50'"):
        kt.transfer.backbone("ResNet50", (32, 32, 3), weights=str(source))
    # Larger images reach the weights resized to the size they were trained at.
    larger = kt.transfer.backbone(None, (64, 64, 3), weights=str(source))
    big = np.asarray(kt.data.resize(x[:4], (64, 64)))
    np.testing.assert_allclose(
        larger.predict_on_batch(big),
        features.predict_on_batch(keras.layers.Resizing(32, 32)(big)), atol=1e-5)
    with pytest.raises(ValueError, match=r"take images of shape \(32, 32, 3\)"):
        kt.transfer.backbone(None, (32, 32, 1), weights=str(source))
    with open(source / "classifier.keras", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="damaged or was replaced.*python -m recipes.train"):
        kt.transfer.backbone(None, (32, 32, 3), weights=str(source))


def test_ema_is_keras_use_ema_swapped_in_after_the_backup(tmp_path):
    config = recipe_flags.complete_config(dict(TINY, ema=True, ema_momentum=0.95),
                                    "recipes.train")
    optimizer = common.optimizer(config, 1e-3)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.95
    made = common.training_callbacks(config, None, 1e-3, STEPS_PER_EPOCH, 4, str(tmp_path))
    assert made.swa is None and made.snapshot_dir is None
    kinds = [type(c).__name__ for c in made.for_fit()]
    # The backup must hold the raw weights, not the EMA swapped in at epoch end.
    assert kinds.index("BackupAndRestore") < kinds.index("SwapEMAWeights")


@pytest.mark.parametrize("overrides, match", [
    (dict(snapshots=2), "needs a schedule with cycles: pass --schedule=warm_restarts"),
    (dict(snapshots=1, schedule="warm_restarts"), "at least 2 snapshots"),
    (dict(swa_start=4), "0 <= swa_start < epochs=4"),
    (dict(swa_lr=0.01), "pass --swa_start too"),
    (dict(tpu="local"), "--tpu names the TPU of --strategy=tpu"),
    (dict(strategy="tpu"), "No TPU found"),
    (dict(bogus=1), r"Unknown settings \['bogus'\]"),
    (dict(regularizer="l3"), "Invalid value for --regularizer"),
    (dict(epochs=0), "Invalid value for --epochs: expected an int >= 1"),
    (dict(augment="huge"), "Invalid value for --augment"),
    (dict(export="swa"), "--export=swa exports a model this run does not make: pass "
                         "--swa_start"),
    (dict(export="ensemble"), "pass --snapshots=N"),
    (dict(export="final", ema=True), "pass --export=ema"),
    (dict(export="last"), "Invalid value for --export"),
    (dict(architecture="MobileNetV9"), "Invalid value for --architecture: expected small_cnn or"),
    (dict(architecture="MobileNetV2", architecture_args="[1]"), "--architecture_args: expected a JSON"),
    (dict(bn_momentum=1.0), r"--bn_momentum: expected a number in \[0, 1\)"),
    (dict(label_smoothing=-0.1), "--label_smoothing"),
    (dict(resize=16), "--resize: expected a side of at least 32"),
])
def test_bad_settings_exit_before_any_work(tmp_path, overrides, match):
    config = dict(TINY, output_dir=str(tmp_path / "run"), **overrides)
    with pytest.raises(SystemExit, match=match):
        recipe_flags.run_or_explain(train.run, config)
    assert not os.path.exists(tmp_path / "run")


def test_resuming_with_other_flags_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)  # left by an interrupted run
    _io.write_json(str(run_dir / "config.json"), recipe_flags.complete_config(
        dict(TINY, output_dir=str(run_dir)), "recipes.train"))
    with pytest.raises(SystemExit, match=r"interrupted run with other flags \(\['epochs'\]\)"):
        recipe_flags.run_or_explain(train.run, dict(TINY, epochs=6, output_dir=str(run_dir)))


@pytest.mark.parametrize("overrides, match", [
    (dict(optimizer="adamx"), "adamx"),
    (dict(snapshots=4, schedule="warm_restarts", schedule_args='{"t_mul": 2.0}'),
     "completes only 2 cycles"),
    (dict(schedule_args="{oops"), "Invalid value for --schedule_args"),
])
def test_bad_settings_found_while_building_exit_clearly(tmp_path, overrides, match):
    config = dict(TINY, output_dir=str(tmp_path / "run"), **overrides)
    with pytest.raises(SystemExit, match=match):
        recipe_flags.run_or_explain(train.run, config)
    # The run failed before training: it leaves no config.json, no backup.
    assert not os.path.exists(tmp_path / "run")


@flagsaver.flagsaver
def test_command_line_flags_become_the_config(tmp_path):
    FLAGS(["train", "--snapshots=3", "--schedule=cyclical", "--classes=frog,truck",
           f"--output_dir={tmp_path}"])
    config = recipe_flags.flag_config("recipes.train")
    assert set(config) == set(recipe_flags.default_config("recipes.train"))
    assert config["snapshots"] == 3 and config["classes"] == ["frog", "truck"]
    assert {"data", "seed", "epochs", "width", "ema", "export_dir"} <= set(config)


@flagsaver.flagsaver
def test_bad_command_lines_fail_with_the_reason(tmp_path):
    with pytest.raises(flags.IllegalFlagValueError, match="schedule"):
        FLAGS(["train", "--schedule=cosine_annealing"])
    FLAGS(["train", "--snapshots=3", f"--output_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit, match="--snapshots=3 needs a schedule with cycles"):
        train.main(["train"])
    with pytest.raises(app.UsageError, match="Unexpected arguments"):
        train.main(["train", "epochs=3"])


def test_training_curves_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="per-epoch lists"):
        plots.training_curves({}, str(tmp_path / "curves.png"))
    path = plots.training_curves({"loss": [2.0, 1.0], "val_loss": [2.1, 1.5]},
                                 str(tmp_path / "curves.png"))
    assert os.path.getsize(path) > 0


def test_interrupted_swa_run_resumes_from_its_backup(tmp_path, monkeypatch, crash_at_step,
                                                    capsys):
    """A run that crashes in epoch 3 resumes there, and says so: the epochs
    before the crash are kept, and the SWA average holds the epoch averaged
    before the crash."""
    config = dict(TINY, swa_start=2, augment="none", export="swa")
    uninterrupted = train.run(dict(config, output_dir=str(tmp_path / "full")))
    run_dir = tmp_path / "resumed"
    config["output_dir"] = str(run_dir)

    crash_at_step(train.run, config, 3 * STEPS_PER_EPOCH + 2)  # in epoch 3
    assert {"backup", "swa_state.npz"} <= set(os.listdir(run_dir))
    assert not os.path.exists(run_dir / "metrics.json")
    with np.load(run_dir / "swa_state.npz") as state:  # epoch 2, averaged pre-crash
        assert list(state["epochs"]) == [2]
        count = sum(name.startswith("average_") for name in state.files)
        epoch_2 = [state[f"average_{i}"] for i in range(count)]

    made, training_callbacks = [], common.training_callbacks

    def keep_swa(*args, **kwargs):
        made.append(training_callbacks(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(common, "training_callbacks", keep_swa)
    capsys.readouterr()
    metrics = train.run(config)
    assert (f"Resuming the interrupted run in {str(run_dir)!r} from its backup: 3 epochs "
            "were complete, training goes on with epoch 4.") in capsys.readouterr().out
    swa, = [callbacks.swa for callbacks in made]
    # Resumed at epoch 3: the history gains one row, not four.
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "full" / "history.csv") as f:
        full_rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert rows[:3] == full_rows[:3]  # training is deterministic up to the crash
    # The average is that of epoch 2 (from the state file) and epoch 3.
    assert swa.averaged_epochs == [2, 3]
    variables = swa.model.weights
    assert len(epoch_2) == len(swa._slots)
    for slot, before in zip(swa._slots, epoch_2):
        last = swa.final_weights[slot]  # epoch 3, before averaging
        np.testing.assert_allclose(variables[slot].numpy(), (before + last) / 2,
                                   rtol=1e-5, atol=1e-6)
    assert not {"backup", "swa_state.npz"} & set(os.listdir(run_dir))
    assert _read(run_dir / "metrics.json") == metrics
    assert set(metrics) == set(uninterrupted)
    # Close to, not equal to, the uninterrupted run: the resumed fit restarts
    # the tf.data iterator, so its epoch 3 sees the shuffle order of epoch 0.
    assert abs(metrics["swa_test_accuracy"] - uninterrupted["swa_test_accuracy"]) < 0.1
    assert metrics["swa_test_accuracy"] > 0.45  # chance is 1/3


def _scores(**validation):
    return {name: {"test": {"accuracy": 0.5, "loss": 1.0},
                   "validation": {"accuracy": accuracy, "loss": loss}}
            for name, (accuracy, loss) in validation.items()}


def test_export_best_is_the_best_on_validation_then_the_lower_loss():
    choose = common._choose
    assert choose("best", _scores(final=(0.6, 0.9), swa=(0.7, 1.2)))[0] == "swa"
    name, reason = choose("best", _scores(final=(0.7, 0.8), swa=(0.7, 0.9),
                                          ensemble=(0.65, 0.5)))
    assert name == "final"
    assert reason == ("Exporting the final model, the best on validation data "
                      "(validation accuracy: final 0.7000, swa 0.7000, ensemble 0.6500).")
    assert choose("swa", _scores(final=(0.9, 0.1), swa=(0.1, 2.0)))[0] == "swa"
    assert choose("best", _scores(ema=(0.1, 2.0)))[0] == "ema"
    without_validation = {"final": {"test": {}}, "swa": {"test": {}},
                          "ensemble": {"test": {}}}
    name, reason = choose("best", without_validation)
    assert name == "ensemble" and "--validation_fraction=0" in reason
