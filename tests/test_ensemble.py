"""Tests for kerastrain.ensemble on small CNNs trained on real CIFAR-10 images."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrain import data as kt_data
from kerastrain.ensemble import Ensemble
from kerastrain.export import export_saved_model, load_serving
from kerastrain.models import small_cnn

CLASSES = ("airplane", "automobile", "frog", "ship", "truck")
WEIGHTS = (1.0, 2.0, 3.0)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _logits(model, x):
    return np.asarray(model(x, training=False), dtype=np.float64)


@pytest.fixture(scope="module")
def splits():
    return kt_data.load("cifar10_mini", classes=CLASSES, labels_per_class=60,
                        batch_size=32, validation_fraction=0, seed=0)


@pytest.fixture(scope="module")
def members(splits):
    models = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        models.append(small_cnn(len(CLASSES), width=8, blocks=2, batch_norm=False,
                                name=f"member_{seed}"))
    # One fit trains all three side by side (traced once): they share no
    # weights, so the summed loss gives each member its own gradient, as if
    # it were trained alone on the same batches.
    images = keras.Input((32, 32, 3))
    trainer = keras.Model(images, [m(images) for m in models])
    trainer.compile(keras.optimizers.Adam(3e-3),
                    [keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * 3)
    trainer.fit(splits.train.map(lambda x, y: (x, (y, y, y))), epochs=1, verbose=0)
    return models


@pytest.fixture(scope="module")
def test_arrays(splits):
    x, y = (np.concatenate(a) for a in zip(*splits.test.as_numpy_iterator()))
    keep = np.random.default_rng(0).choice(len(y), 160, replace=False)
    return x[keep], y[keep]


@pytest.fixture(scope="module")
def test_ds(test_arrays):
    return tf.data.Dataset.from_tensor_slices(test_arrays).batch(32)


@pytest.fixture(scope="module")
def images(test_arrays):
    return test_arrays[0][:64]


def _predict(ensemble, x):
    return np.asarray(ensemble(x, training=False))


@pytest.fixture(scope="module")
def snapshot_dir(members, tmp_path_factory):
    directory = tmp_path_factory.mktemp("snapshots")
    # Saved out of order so that name order and manifest order differ.
    for index, model in zip((2, 0, 1), members):
        model.save(directory / f"snapshot_{index:02d}.keras")
    return directory


def test_members_differ(members, images):
    # Otherwise the averaging tests below could not tell members apart.
    probs = [_softmax(_logits(m, images)) for m in members]
    assert np.abs(probs[0] - probs[1]).max() > 1e-2
    assert np.abs(probs[1] - probs[2]).max() > 1e-2


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_mean_probs_is_weighted_mean_of_member_probabilities(members, images, weights):
    w = np.ones(3) / 3 if weights is None else np.asarray(weights) / sum(weights)
    expected = sum(wi * _softmax(_logits(m, images)) for wi, m in zip(w, members))
    got = _predict(Ensemble(members, weights=weights), images)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-5)


def test_mean_logits_is_softmax_of_weighted_mean_logits(members, images):
    w = np.asarray(WEIGHTS) / sum(WEIGHTS)
    expected = _softmax(sum(wi * _logits(m, images) for wi, m in zip(w, members)))
    got = _predict(Ensemble(members, weights=WEIGHTS, combine="mean_logits"), images)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    mean_probs = _predict(Ensemble(members, weights=WEIGHTS), images)
    assert np.abs(got - mean_probs).max() > 1e-4


@pytest.mark.parametrize("combine", ["mean_probs", "mean_logits"])
def test_member_ending_in_softmax_is_not_softmaxed_twice(members, images, combine):
    base = members[0]
    with_softmax = keras.Model(base.input, keras.layers.Softmax()(base.outputs[0]))
    with_activation = keras.Model(
        base.input, keras.layers.Activation("softmax")(base.outputs[0]))
    ensemble = Ensemble([base, with_softmax, with_activation], combine=combine)
    np.testing.assert_allclose(_predict(ensemble, images),
                               _softmax(_logits(base, images)), atol=1e-6)


class _CountingDataset:
    """Counts how many times evaluate_members iterates the dataset."""

    def __init__(self, dataset):
        self.dataset, self.passes = dataset, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.dataset)


def test_evaluate_members_matches_keras_evaluate_in_one_pass(members, test_ds,
                                                            test_arrays):
    ensemble = Ensemble(members, weights=WEIGHTS)
    counting = _CountingDataset(test_ds)
    result = ensemble.evaluate_members(counting)
    assert counting.passes == 1
    for accuracy, member in zip(result["members"], members):
        # A clone, so that the shared members stay uncompiled.
        clone = keras.models.clone_model(member)
        clone.set_weights(member.get_weights())
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        clone.compile(loss=loss, metrics=["accuracy"])
        expected = clone.evaluate(test_ds, verbose=0, return_dict=True)
        assert accuracy == pytest.approx(expected["accuracy"], abs=1e-6)
    assert result["mean_member"] == pytest.approx(np.mean(result["members"]))

    ensemble.compile(loss=keras.losses.SparseCategoricalCrossentropy(),
                     metrics=["accuracy"])
    metrics = ensemble.evaluate(test_ds, verbose=0, return_dict=True)
    assert result["ensemble"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    x, y = test_arrays
    probs = _predict(ensemble, x)
    assert result["ensemble"] == pytest.approx(np.mean(probs.argmax(-1) == y))
    # The ensemble outputs probabilities: the loss is the plain log loss.
    log_loss = -np.mean(np.log(probs[np.arange(len(y)), y]))
    assert metrics["loss"] == pytest.approx(log_loss, rel=1e-4)


def test_evaluate_members_one_hot_labels_and_steps(members, test_ds):
    ensemble = Ensemble(members)
    one_hot = test_ds.map(lambda x, y: (x, tf.one_hot(y, len(CLASSES))))
    assert ensemble.evaluate_members(one_hot) == ensemble.evaluate_members(test_ds)
    first = ensemble.evaluate_members(test_ds, steps=1)
    x, y = next(iter(test_ds))
    expected = np.mean(_logits(members[1], x).argmax(-1) == y.numpy())
    assert first["members"][1] == pytest.approx(expected)


def test_evaluate_members_rejects_empty_dataset(members, test_ds):
    with pytest.raises(ValueError, match="yielded no examples"):
        Ensemble(members).evaluate_members(test_ds.take(0))


def test_from_directory_without_manifest_sorts_by_name(members, snapshot_dir, images):
    ensemble = Ensemble.from_directory(snapshot_dir, combine="mean_logits")
    assert ensemble.combine == "mean_logits"
    # snapshot_00 is members[1], snapshot_01 members[2], snapshot_02 members[0].
    for loaded, original in zip(ensemble.members, [members[1], members[2], members[0]]):
        np.testing.assert_allclose(_logits(loaded, images), _logits(original, images),
                                   atol=1e-5)


def test_from_directory_follows_manifest_order(members, snapshot_dir, images, tmp_path):
    for f in os.listdir(snapshot_dir):
        os.symlink(snapshot_dir / f, tmp_path / f)
    manifest = {"version": 1, "snapshots": [
        {"index": 1, "file": "snapshot_02.keras", "epoch": 9, "step": 90},
        {"index": 2, "file": "snapshot_00.keras", "epoch": 3, "step": 30},
    ]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    ensemble = Ensemble.from_directory(tmp_path, weights=[3, 1])
    assert len(ensemble.members) == 2
    expected = 0.75 * _softmax(_logits(members[0], images)) + 0.25 * _softmax(
        _logits(members[1], images))
    np.testing.assert_allclose(_predict(ensemble, images), expected, atol=1e-5)


@pytest.mark.parametrize("layout, error, match", [
    ("missing", FileNotFoundError, "is not a directory"),
    ("empty", ValueError, "holds no `.keras` models"),
    ("manifest_missing_file", FileNotFoundError, "lists files that do not exist"),
    ("manifest_malformed", ValueError, "Invalid manifest"),
    ("manifest_not_json", ValueError, "Invalid manifest"),
])
def test_from_directory_errors(tmp_path, layout, error, match):
    if layout == "manifest_missing_file":
        (tmp_path / "manifest.json").write_text(
            json.dumps({"snapshots": [{"index": 1, "file": "snapshot_00.keras",
                                       "epoch": 0, "step": 9}]}))
    elif layout == "manifest_malformed":
        (tmp_path / "manifest.json").write_text(json.dumps({"files": ["a.keras"]}))
    elif layout == "manifest_not_json":
        (tmp_path / "manifest.json").write_text("snapshot_00.keras")
    path = tmp_path / "nowhere" if layout == "missing" else tmp_path
    with pytest.raises(error, match=match):
        Ensemble.from_directory(path)


def test_keras_save_round_trip(members, images, tmp_path):
    ensemble = Ensemble(members, weights=WEIGHTS, combine="mean_logits")
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras")
    assert isinstance(loaded, Ensemble)
    assert loaded.combine == "mean_logits"
    np.testing.assert_allclose(loaded.member_weights, np.asarray(WEIGHTS) / 6)
    np.testing.assert_allclose(_predict(loaded, images),
                               _predict(ensemble, images), atol=1e-6)


def test_export_whole_ensemble_as_one_saved_model(members, images, tmp_path):
    ensemble = Ensemble(members, weights=WEIGHTS)
    path = export_saved_model(ensemble, tmp_path / "ensemble", CLASSES)
    assert os.listdir(tmp_path) == ["ensemble"]
    loaded = tf.saved_model.load(path)
    assert len(loaded.variables) == sum(len(m.weights) for m in members)
    serve, class_names = load_serving(path)
    assert class_names == list(CLASSES)
    big = tf.cast(tf.round(tf.image.resize(images, (48, 48))), tf.uint8)
    # Served images are resized as kt.data.load(image_size=...) resizes training ones.
    expected = _predict(ensemble, tf.cast(kt_data.resize(big, (32, 32)), tf.float32))
    served = serve(big)
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(served["class_ids"], expected.argmax(-1))


def _tiny(seed=0, num_classes=5):
    keras.utils.set_random_seed(seed)
    return small_cnn(num_classes, width=4, blocks=1)


@pytest.mark.parametrize("make_kwargs, match", [
    (lambda: dict(models=[]), "non-empty list"),
    (lambda: dict(models="model"), "non-empty list"),
    (lambda: dict(models=[_tiny(), "not a model"]), "received str at index 1"),
    (lambda: dict(models=[_tiny(0, 5), _tiny(0, 3)]), "member 1 has output shape"),
    (lambda: dict(models=[_tiny(), small_cnn(5, input_shape=(24, 24, 3))]),
     "member 1 has input shape"),
    (lambda: dict(models=[_tiny(), _tiny(1)], weights=[1.0]), "expected 2 weights"),
    (lambda: dict(models=[_tiny(), _tiny(1)], weights=[1.0, "x"]), "list of numbers"),
    (lambda: dict(models=[_tiny(), _tiny(1)], weights=[1.0, 0.0]),
     "finite positive"),
    (lambda: dict(models=[_tiny(), _tiny(1)], weights=[1.0, float("nan")]),
     "finite positive"),
    (lambda: dict(models=[_tiny()], combine="median"), "Invalid value for `combine`"),
])
def test_validation_errors(make_kwargs, match):
    kwargs = make_kwargs()
    with pytest.raises(ValueError, match=match):
        Ensemble(**kwargs)
