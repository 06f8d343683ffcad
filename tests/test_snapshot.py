"""Tests for kerastrain.callbacks.snapshot on tiny CNNs trained on real CIFAR-10 images."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrain import _manifest
from kerastrain import data as kt_data
from kerastrain.callbacks.snapshot import SnapshotEnsemble
from kerastrain.ensemble import Ensemble
from kerastrain.schedules import CyclicalLearningRate, WarmRestarts, Warmup

CLASSES = ("airplane", "automobile", "ship", "truck")
STEPS = 5  # 160 training images in batches of 32


@pytest.fixture(scope="module")
def splits():
    data = kt_data.load("cifar10_mini", classes=CLASSES, labels_per_class=40,
                        batch_size=32, validation_fraction=0.1, seed=0)
    x, y = (np.concatenate(a) for a in zip(*data.train.as_numpy_iterator()))
    train = tf.data.Dataset.from_tensor_slices((x[:160], y[:160])).batch(32)
    return train, data.validation.take(1), x[:16]


def _cnn(learning_rate, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(6, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(8, 3), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(len(CLASSES))])
    model.compile(keras.optimizers.SGD(learning_rate, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _prediction_recorder(model, x, store):
    """Predictions after every optimizer step, keyed by the step's index."""
    def record(*args, **kwargs):
        store[int(model.optimizer.iterations.numpy()) - 1] = np.asarray(
            model(x, training=False))
    return keras.callbacks.LambdaCallback(on_train_batch_begin=record, on_train_end=record)


def _entries(directory):
    with open(directory / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["version"] == 1
    return manifest["snapshots"]


def _assert_consistent(directory):
    """No temporary files; the manifest lists exactly the snapshot files."""
    names = sorted(os.listdir(directory))
    assert not [n for n in names if n.startswith(".tmp")], names
    listed = [e["file"] for e in _entries(directory)]
    assert sorted(listed) == [n for n in names if n.endswith(".keras")]


@pytest.mark.parametrize("schedule", [
    WarmRestarts(0.05, first_cycle_steps=4, t_mul=1.5),
    keras.optimizers.schedules.CosineDecayRestarts(0.05, 4, t_mul=1.5),
])
def test_snapshots_at_the_schedule_cycle_ends(splits, tmp_path, schedule):
    train, validation, x = splits
    model, predictions = _cnn(schedule), {}
    snapshots = SnapshotEnsemble(tmp_path, schedule=schedule, verbose=0)
    model.fit(train, validation_data=validation, epochs=4, verbose=0,
              callbacks=[snapshots, _prediction_recorder(model, x, predictions)])

    # Cycles of 4, 6 and 9 steps end at steps 3, 9 and 18 of the 20 trained;
    # step 9 is the last of epoch 1, the others fall inside epochs 0 and 3.
    expected = WarmRestarts(0.05, 4, t_mul=1.5).cycle_end_steps(4 * STEPS)
    assert expected == [3, 9, 18]
    entries = _entries(tmp_path)
    assert [e["step"] for e in entries] == expected
    assert [e["epoch"] for e in entries] == [s // STEPS for s in expected]
    assert [e["index"] for e in entries] == [1, 2, 3]
    assert [e["file"] for e in entries] == [f"snapshot_0{i}.keras" for i in (1, 2, 3)]
    _assert_consistent(tmp_path)
    for entry in entries:
        step = entry["step"]
        assert entry["learning_rate"] == pytest.approx(float(schedule(step)))
        # The cycle's minimum: lower than the step before and the restart after.
        assert entry["learning_rate"] < min(float(schedule(step - 1)),
                                            0.2 * float(schedule(step + 1)))
        loaded = keras.saving.load_model(tmp_path / entry["file"])
        np.testing.assert_allclose(loaded(x, training=False), predictions[step],
                                   rtol=1e-5, atol=1e-5)
    assert "val_loss" in entries[1]["metrics"]  # saved at the end of epoch 1
    assert "loss" in entries[0]["metrics"] and "val_loss" not in entries[0]["metrics"]
    assert not np.allclose(predictions[3], predictions[18], atol=1e-3)


def test_epoch_cycle_ends_with_keep(splits, tmp_path):
    train, _, x = splits
    model, predictions = _cnn(0.02), {}
    snapshots = SnapshotEnsemble(tmp_path, cycle_end_epochs=[0, 1, 3], keep=2, verbose=0)
    model.fit(train, epochs=4, verbose=0,
              callbacks=[snapshots, _prediction_recorder(model, x, predictions)])

    entries = _entries(tmp_path)
    assert [(e["index"], e["epoch"], e["step"]) for e in entries] == [(2, 1, 9), (3, 3, 19)]
    assert all(e["learning_rate"] == pytest.approx(0.02) for e in entries)
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "snapshot_02.keras",
                                            "snapshot_03.keras"]
    for entry in entries:
        loaded = keras.saving.load_model(tmp_path / entry["file"])
        np.testing.assert_allclose(loaded(x, training=False), predictions[entry["step"]],
                                   rtol=1e-5, atol=1e-5)


class _Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("failure", ["save_fails", "stop_after_save"])
def test_interrupted_run_leaves_no_partial_files_and_resumes(splits, tmp_path,
                                                             monkeypatch, failure):
    train, _, _ = splits
    directory, backup = tmp_path / "snapshots", str(tmp_path / "backup")
    model = _cnn(0.02)
    save = model.save

    def failing_save(filepath, *args, **kwargs):
        if "snapshot_02" in str(filepath):
            with open(filepath, "wb") as f:
                f.write(b"PK\x03\x04 partial zip")
            raise OSError("disk full")
        return save(filepath, *args, **kwargs)

    def run(stop):
        callbacks = [SnapshotEnsemble(directory, cycle_end_epochs=[0, 1, 2], verbose=0)]
        if stop and failure == "stop_after_save":
            callbacks.append(_Stop())
        callbacks.append(keras.callbacks.BackupAndRestore(backup))
        model.fit(train, epochs=3, verbose=0, callbacks=callbacks)

    if failure == "save_fails":
        monkeypatch.setattr(model, "save", failing_save)
    with pytest.raises((OSError, RuntimeError), match="disk full|interrupted"):
        run(stop=True)
    _assert_consistent(directory)
    saved = [e["index"] for e in _entries(directory)]
    assert saved == ([1] if failure == "save_fails" else [1, 2])
    monkeypatch.undo()
    # Strays of a crash between writing a file and listing it are removed.
    (directory / "snapshot_07.keras").write_bytes(b"stray")
    (directory / ".tmp-1-snapshot_05.keras").write_bytes(b"partial")

    run(stop=False)  # BackupAndRestore resumes at epoch 1
    _assert_consistent(directory)
    entries = _entries(directory)
    assert [(e["index"], e["epoch"], e["step"]) for e in entries] == [
        (1, 0, 4), (2, 1, 9), (3, 2, 14)]


def test_schedule_needs_known_steps(splits, tmp_path):
    train, _, _ = splits
    unknown = train.filter(lambda x, y: True)
    schedule = WarmRestarts(0.05, 4)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        _cnn(schedule).fit(unknown, verbose=0,
                           callbacks=[SnapshotEnsemble(tmp_path, schedule=schedule)])


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of `schedule`, `cycle_end_steps` and `cycle_end_epochs`"),
    ({"cycle_end_steps": [3], "cycle_end_epochs": [1]}, "exactly one"),
    ({"schedule": keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)},
     "Invalid value for `schedule`"),
    ({"cycle_end_steps": [5, 3]}, "Invalid value for `cycle_end_steps`"),
    ({"cycle_end_steps": []}, "Invalid value for `cycle_end_steps`"),
    ({"cycle_end_steps": 7}, "Invalid value for `cycle_end_steps`"),
    ({"cycle_end_epochs": [-1, 2]}, "Invalid value for `cycle_end_epochs`"),
    ({"cycle_end_epochs": [1.5]}, "Invalid value for `cycle_end_epochs`"),
    ({"cycle_end_epochs": [1], "keep": 0}, "Invalid value for `keep`"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SnapshotEnsemble(tmp_path, **kwargs)


def _compile(model, optimizer):
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("optimizer_rate", [
    0.05, WarmRestarts(0.05, first_cycle_steps=3, t_mul=1.0),
    CyclicalLearningRate(0.01, 0.05, step_size=2),
])
def test_refuses_a_schedule_the_optimizer_does_not_run(splits, tmp_path, optimizer_rate):
    train, _, _ = splits
    model = _cnn(optimizer_rate)
    snapshots = SnapshotEnsemble(tmp_path, schedule=WarmRestarts(0.05, 2, t_mul=1.0))
    with pytest.raises(ValueError, match="but the optimizer runs .*cycle_end_steps"):
        model.fit(train, epochs=1, verbose=0, callbacks=[snapshots])
    assert int(model.optimizer.iterations) == 0  # refused before any step
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("wrap", ["equal_config", "loss_scale", "warmup"])
def test_accepts_the_optimizers_schedule_by_config_or_through_a_wrapper(splits, tmp_path,
                                                                         wrap):
    train, _, _ = splits
    make = {"equal_config": lambda: WarmRestarts(0.05, 2, t_mul=1.0),
            "loss_scale": lambda: WarmRestarts(0.05, 2, t_mul=1.0),
            "warmup": lambda: Warmup(CyclicalLearningRate(0.01, 0.05, 1), 2)}[wrap]
    schedule = make()
    optimizer = keras.optimizers.SGD(make() if wrap != "loss_scale" else schedule)
    if wrap == "loss_scale":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model = _compile(_cnn(0.0), optimizer)
    model.fit(train, epochs=1, verbose=0,
              callbacks=[SnapshotEnsemble(tmp_path, schedule=schedule)])
    entries = _entries(tmp_path)
    # Cycles of 2 steps end at steps 1 and 3 of the 5 (after a 2-step warm-up: 3).
    assert [e["step"] for e in entries] == ([3] if wrap == "warmup" else [1, 3])
    for entry in entries:
        assert entry["learning_rate"] == pytest.approx(float(schedule(entry["step"])))


def test_manifest_round_trip_and_versions(tmp_path):
    entries = [{"index": 1, "file": "snapshot_01.keras", "epoch": 0, "step": 3,
                "learning_rate": 0.001, "metrics": {"loss": 1.5}},
               {"index": 3, "file": "snapshot_03.keras", "epoch": 2, "step": 14,
                "learning_rate": 0.002, "metrics": {}}]
    assert _manifest.read(tmp_path) is None
    _manifest.write(tmp_path, entries)
    assert _manifest.read(tmp_path) == entries
    assert json.loads((tmp_path / "manifest.json").read_text())["version"] == 1
    assert sorted(os.listdir(tmp_path)) == ["manifest.json"]  # no temporary left
    # Written before the version field existed: version 1.
    (tmp_path / "manifest.json").write_text(json.dumps({"snapshots": entries}))
    assert _manifest.read(tmp_path) == entries
    for bad, match in [({"version": 2, "snapshots": entries}, "version 2 is not one"),
                       ({"snapshots": [{"file": "a.keras", "step": 3}]}, "integer `index`"),
                       ({"snapshots": [dict(entries[0], file="../a.keras")]}, "`file` name"),
                       ({"files": ["a.keras"]}, "expected JSON of the form")]:
        (tmp_path / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"Invalid manifest .*{match}"):
            _manifest.read(tmp_path)


def test_snapshot_ensemble_and_ensemble_share_the_manifest(splits, tmp_path):
    train, _, x = splits
    model = _cnn(0.02)
    model.fit(train, epochs=2, verbose=0,
              callbacks=[SnapshotEnsemble(tmp_path, cycle_end_epochs=[0, 1])])
    entries = _manifest.read(tmp_path)
    assert [e["index"] for e in entries] == [1, 2]
    ensemble = Ensemble.from_directory(tmp_path)
    assert len(ensemble.members) == 2
    np.testing.assert_allclose(ensemble.members[1](x, training=False),
                               model(x, training=False), rtol=1e-5, atol=1e-5)
    # A manifest of a later version is refused by both readers.
    payload = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**payload, "version": 2}))
    with pytest.raises(ValueError, match="version 2 is not one"):
        Ensemble.from_directory(tmp_path)
    with pytest.raises(ValueError, match="version 2 is not one"):
        model.fit(train, epochs=1, verbose=0,
                  callbacks=[SnapshotEnsemble(tmp_path, cycle_end_epochs=[0])])


def test_deletes_only_its_own_files(splits, tmp_path):
    train, _, _ = splits
    directory = tmp_path / "snapshots"
    directory.mkdir()
    foreign = {"notes.txt": "mine", ".tmp-keep": "mine", "model.keras": "mine"}
    for name, text in foreign.items():
        (directory / name).write_text(text)
    _cnn(0.02).fit(train, epochs=2, verbose=0,
                   callbacks=[SnapshotEnsemble(directory, cycle_end_epochs=[0, 1], keep=1)])
    assert sorted(os.listdir(directory)) == sorted(
        [*foreign, "manifest.json", "snapshot_02.keras"])
    assert all((directory / n).read_text() == t for n, t in foreign.items())
    # Snapshot-named files no manifest lists are someone else's: refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "snapshot_01.keras").write_text("mine")
    with pytest.raises(ValueError, match="no manifest.json"):
        _cnn(0.02).fit(train, epochs=1, verbose=0,
                       callbacks=[SnapshotEnsemble(other, cycle_end_epochs=[0])])
    assert os.listdir(other) == ["snapshot_01.keras"]
    assert (other / "snapshot_01.keras").read_text() == "mine"
