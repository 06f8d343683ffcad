"""Tests for kerastrain.callbacks.snapshot on tiny CNNs trained on real CIFAR-10 images."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrain import data as kt_data
from kerastrain.callbacks.snapshot import SnapshotEnsemble
from kerastrain.schedules import WarmRestarts

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


def _manifest(directory):
    with open(directory / "manifest.json") as f:
        return json.load(f)["snapshots"]


def _assert_consistent(directory):
    """No temporary files; the manifest lists exactly the snapshot files."""
    names = sorted(os.listdir(directory))
    assert not [n for n in names if n.startswith(".tmp")], names
    listed = [e["file"] for e in _manifest(directory)]
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
    entries = _manifest(tmp_path)
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

    entries = _manifest(tmp_path)
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
    saved = [e["index"] for e in _manifest(directory)]
    assert saved == ([1] if failure == "save_fails" else [1, 2])
    monkeypatch.undo()
    # Strays of a crash between writing a file and listing it are removed.
    (directory / "snapshot_07.keras").write_bytes(b"stray")
    (directory / ".tmp-1-snapshot_05.keras").write_bytes(b"partial")

    run(stop=False)  # BackupAndRestore resumes at epoch 1
    _assert_consistent(directory)
    entries = _manifest(directory)
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
