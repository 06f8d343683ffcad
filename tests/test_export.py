"""Tests for kerastrain.export on a small CNN trained on real CIFAR-10 images."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrain import data as kt_data
from kerastrain.callbacks import StochasticWeightAveraging
from kerastrain.export import (CLASS_NAMES_FILE, MARKER_FILE, export_saved_model,
                               is_export, load_serving)
from kerastrain.models import small_cnn

CLASSES = ("airplane", "automobile", "frog", "ship", "truck")
TINY_CLASSES = ("a", "b", "c")


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _keras_probabilities(model, images, size=(32, 32)):
    """What the model says of `images` resized as `kt_data.load` resizes."""
    x = tf.cast(kt_data.resize(tf.convert_to_tensor(images), size), tf.float32)
    logits = model(x, training=False)
    return _softmax(np.asarray(logits, np.float64))


def _resized_uint8(images, size):
    return tf.cast(tf.round(tf.image.resize(images, (size, size))), tf.uint8)


class _PythonNoise(keras.layers.Layer):
    """Python-side state in `call`: a shift that exists only when traced, so
    the exported graph disagrees with the eager Keras model."""

    def call(self, x):
        return x if tf.executing_eagerly() else x + 10.0


def _tiny(seed=0, broken=False):
    keras.utils.set_random_seed(seed)
    model = small_cnn(len(TINY_CLASSES), width=4, blocks=1)
    if not broken:
        return model
    features = _PythonNoise()(model.get_layer("features").output)
    logits = keras.layers.Dense(len(TINY_CLASSES), name="noisy_head")(features)
    return keras.Model(model.input, logits)


@pytest.fixture(scope="module")
def splits():
    return kt_data.load("cifar10_mini", classes=CLASSES, labels_per_class=60,
                        batch_size=32, validation_fraction=0, seed=0)


@pytest.fixture(scope="module")
def model(splits):
    # BatchNorm and dropout: serving must use moving statistics and no dropout.
    keras.utils.set_random_seed(0)
    model = small_cnn(len(CLASSES), width=8, blocks=2, dropout=0.5)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(splits.train, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="module")
def test_arrays(splits):
    return tuple(np.concatenate(a) for a in zip(*splits.test.as_numpy_iterator()))


@pytest.fixture(scope="module")
def images(test_arrays):
    x = test_arrays[0]
    return x[np.random.default_rng(0).choice(len(x), 32, replace=False)]


@pytest.fixture(scope="module")
def exported(model, splits, tmp_path_factory):
    parent = tmp_path_factory.mktemp("export")
    path = export_saved_model(model, parent / "cnn", splits.class_names)
    return parent, path


def test_export_writes_only_the_saved_model_and_class_names(exported):
    parent, path = exported
    assert path == str(parent / "cnn")
    assert os.listdir(parent) == ["cnn"]  # no temporary directory left behind
    with open(os.path.join(path, "assets", CLASS_NAMES_FILE)) as f:
        assert f.read().splitlines() == list(CLASSES)
    assert load_serving(path)[1] == list(CLASSES)
    loaded = tf.saved_model.load(path)
    assert [n.decode() for n in loaded.class_names().numpy()] == list(CLASSES)


@pytest.mark.parametrize("size", [48, 24, 32])
def test_serves_uint8_images_of_any_size(exported, model, images, size):
    served_images = _resized_uint8(images, size)
    signature = tf.saved_model.load(exported[1]).signatures["serving_default"]
    served = signature(images=served_images)
    assert served["probabilities"].dtype == tf.float32
    assert served["class_ids"].dtype == tf.int64
    assert served["class_names"].dtype == tf.string
    probabilities = served["probabilities"].numpy()
    np.testing.assert_allclose(probabilities,
                               _keras_probabilities(model, served_images), atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(served["class_ids"], probabilities.argmax(-1))
    names = [n.decode() for n in served["class_names"].numpy()]
    assert names == [CLASSES[i] for i in probabilities.argmax(-1)]


def test_serving_runs_in_inference_mode(exported, model, test_arrays):
    serve, _ = load_serving(exported[1])
    x = test_arrays[0]
    first, second = serve(x)["probabilities"], serve(x)["probabilities"]
    np.testing.assert_array_equal(first, second)  # dropout is off
    np.testing.assert_allclose(first, _keras_probabilities(model, x), atol=1e-5)
    # Batch statistics and dropout (training mode) would give other outputs.
    training = _softmax(np.asarray(model(x, training=True), np.float64))
    assert np.abs(first - training).max() > 1e-3


def test_swa_model_exports_its_averaged_weights(splits, images, tmp_path):
    keras.utils.set_random_seed(1)
    model = small_cnn(len(CLASSES), width=4, blocks=1)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    swa = StochasticWeightAveraging(start_epoch=0, bn_update_data=splits.train)
    model.fit(splits.train, epochs=2, callbacks=[swa], verbose=0)
    served = load_serving(export_saved_model(model, tmp_path / "swa", CLASSES))[0](
        images)["probabilities"]
    np.testing.assert_allclose(served, _keras_probabilities(model, images), atol=1e-5)
    with swa.swap_in_final_weights():  # the weights before averaging differ
        assert np.abs(served - _keras_probabilities(model, images)).max() > 1e-3


def test_softmax_model_is_not_softmaxed_twice(model, images, tmp_path):
    probabilities_model = keras.Model(
        model.input, keras.layers.Softmax()(model.outputs[0]))
    path = export_saved_model(probabilities_model, tmp_path / "probs", CLASSES)
    serve, _ = load_serving(path)
    np.testing.assert_allclose(serve(images)["probabilities"],
                               _keras_probabilities(model, images), atol=1e-5)


def test_probabilities_read_as_logits_warns(images, tmp_path):
    base = _tiny()
    softmax_model = keras.Model(
        base.input, keras.layers.Activation("softmax")(base.outputs[0]))
    with pytest.warns(UserWarning, match="look like probabilities"):
        path = export_saved_model(softmax_model, tmp_path / "m", TINY_CLASSES,
                                  outputs="logits", probe_images=images)
    served = load_serving(path)[0](images)["probabilities"]
    expected = _softmax(np.asarray(softmax_model(images), np.float64))
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_failed_verification_leaves_nothing(images, tmp_path):
    with pytest.raises(RuntimeError, match="verification failed"):
        export_saved_model(_tiny(broken=True), tmp_path / "m", TINY_CLASSES,
                           probe_images=images)
    assert os.listdir(tmp_path) == []


def test_error_while_writing_leaves_nothing(images, tmp_path, monkeypatch):
    archive_class = type(keras.export.ExportArchive())
    write_out = archive_class.write_out

    def write_then_fail(self, filepath, **kwargs):
        write_out(self, filepath, **kwargs)
        assert os.listdir(filepath)  # a partial export exists on disk
        raise OSError("No space left on device")

    monkeypatch.setattr(archive_class, "write_out", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_saved_model(_tiny(), tmp_path / "m", TINY_CLASSES)
    assert os.listdir(tmp_path) == []


def test_existing_path_needs_overwrite(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_saved_model(_tiny(), tmp_path / "m", TINY_CLASSES)
    assert os.listdir(tmp_path / "m") == ["keep.txt"]


def test_overwrite_replaces_only_after_a_verified_export(images, tmp_path):
    path = tmp_path / "m"
    first, second = _tiny(seed=1), _tiny(seed=2)
    export_saved_model(first, path, TINY_CLASSES)
    with pytest.raises(RuntimeError, match="verification failed"):
        export_saved_model(_tiny(broken=True), path, TINY_CLASSES, overwrite=True,
                           probe_images=images)
    np.testing.assert_allclose(load_serving(path)[0](images)["probabilities"],
                               _keras_probabilities(first, images), atol=1e-5)
    export_saved_model(second, path, ("x", "y", "z"), overwrite=True)
    serve, class_names = load_serving(path)
    assert class_names == ["x", "y", "z"]
    np.testing.assert_allclose(serve(images)["probabilities"],
                               _keras_probabilities(second, images), atol=1e-5)
    assert os.listdir(tmp_path) == ["m"]


def _foreign_file(path):
    path.write_text("my notes")
    return lambda: path.read_text() == "my notes"


def _foreign_directory(path):
    path.mkdir()
    (path / "notes.txt").write_text("my notes")
    return lambda: os.listdir(path) == ["notes.txt"]


def _keras_saved_model(path):
    _tiny().export(path, verbose=False)  # a SavedModel, but not a kerastrain export
    listing = sorted(os.listdir(path))
    return lambda: sorted(os.listdir(path)) == listing and not is_export(path)


@pytest.mark.parametrize("make", [_foreign_file, _foreign_directory, _keras_saved_model])
def test_overwrite_replaces_only_a_kerastrain_export(tmp_path, make):
    path = tmp_path / "m"
    intact = make(path)
    assert not is_export(path)
    with pytest.raises(FileExistsError, match="not a kerastrain export.*force=True"):
        export_saved_model(_tiny(), path, TINY_CLASSES, overwrite=True)
    assert intact()
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no staging left behind
    # Only an explicit force replaces what is no export.
    export_saved_model(_tiny(), path, TINY_CLASSES, overwrite=True, force=True)
    assert is_export(path) and load_serving(path)[1] == list(TINY_CLASSES)


def test_export_carries_its_marker(exported):
    path = exported[1]
    assert is_export(path)
    with open(os.path.join(path, "assets", MARKER_FILE)) as f:
        marker = json.load(f)
    assert marker["format"] == "kerastrain.export"
    assert marker["class_names"] == list(CLASSES)
    assert not is_export(os.path.join(path, "saved_model.pb"))


def test_load_serving_rejects_float_images(exported, images):
    serve, _ = load_serving(exported[1])
    with pytest.raises(ValueError, match="expected uint8 images"):
        serve(images.astype("float32"))


def test_load_serving_rejects_other_saved_models(tmp_path):
    _tiny().export(tmp_path / "plain", verbose=False)  # Keras' own export
    with pytest.raises(ValueError, match="not a SavedModel written by"):
        load_serving(tmp_path / "plain")


def _free_size_model():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def _grayscale_model():
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def _unbuilt_model():
    return keras.Sequential([keras.layers.Dense(3)])


@pytest.mark.parametrize("make_model, kwargs, match", [
    (_unbuilt_model, dict(), "expected a built keras.Model"),
    (_tiny, dict(outputs="softmax"), "Invalid value for `outputs`"),
    (_tiny, dict(class_names=("a", "b")), "outputs 3 classes but 2 names"),
    (_tiny, dict(class_names=("a", "b", "a")), "must be unique"),
    (_tiny, dict(class_names=("a", "b\nc", "d")), "single-line strings"),
    (_tiny, dict(class_names=("a", "", "d")), "single-line strings"),
    (_tiny, dict(class_names="abc"), "single-line strings"),
    (_tiny, dict(image_size=(0, 32)), "positive integers"),
    (_tiny, dict(image_size=(64, 64)), "the model takes \\(32, 32\\) images"),
    (_free_size_model, dict(), "pass image_size=\\(height, width\\)"),
    (_grayscale_model, dict(), "takes RGB images"),
])
def test_validation_errors(tmp_path, make_model, kwargs, match):
    kwargs = {"class_names": TINY_CLASSES, **kwargs}
    with pytest.raises(ValueError, match=match):
        export_saved_model(make_model(), tmp_path / "m", **kwargs)
    assert os.listdir(tmp_path) == []


def test_free_size_model_exports_with_image_size(images, tmp_path):
    model = _free_size_model()
    path = export_saved_model(model, tmp_path / "m", TINY_CLASSES, image_size=(16, 16))
    served = load_serving(path)[0](images)["probabilities"]
    np.testing.assert_allclose(served, _keras_probabilities(model, images, (16, 16)),
                               atol=1e-5)


# -- the recipes' --export_dir and --output_dir ---------------------------------

RECIPE = dict(classes=["airplane", "frog", "truck"],
              labels_per_class=20, batch_size=32, epochs=1, width=4, blocks=1,
              augment="none", validation_fraction=0.0, verbose=0)


@pytest.mark.parametrize("make", [_foreign_file, _foreign_directory])
def test_recipe_refuses_an_export_dir_that_is_no_export(tmp_path, make):
    from recipes import train
    export_dir = tmp_path / "export"
    intact = make(export_dir)
    config = dict(RECIPE, output_dir=str(tmp_path / "run"), export_dir=str(export_dir))
    with pytest.raises(ValueError, match="--export_dir=.*not a kerastrain export.*"
                                         "--overwrite_export"):
        train.run(config)
    assert intact()
    assert not os.path.exists(tmp_path / "run")  # refused before any work


def test_recipe_replaces_its_previous_export_and_forces_with_the_flag(tmp_path):
    from recipes import train
    export_dir, run_dir = tmp_path / "export", str(tmp_path / "run")
    config = dict(RECIPE, output_dir=run_dir, export_dir=str(export_dir))
    metrics = train.run(config)
    files, labels = _test_files(RECIPE["classes"])
    served = load_serving(export_dir)[0](files)["class_ids"]
    assert np.mean(served == labels) == metrics["test_accuracy"]  # exactly
    first = os.stat(export_dir / "saved_model.pb").st_mtime_ns
    train.run(dict(config, seed=1))  # a rerun replaces its own export
    assert is_export(export_dir)
    assert os.stat(export_dir / "saved_model.pb").st_mtime_ns != first
    intact = _foreign_file(tmp_path / "file")
    assert intact()
    train.run(dict(config, export_dir=str(tmp_path / "file"), overwrite_export=True))
    assert is_export(tmp_path / "file")


@pytest.mark.parametrize("make", [_foreign_file, _foreign_directory])
def test_recipe_refuses_an_output_dir_that_is_no_run_directory(tmp_path, make):
    from recipes import train
    run_dir = tmp_path / "run"
    intact = make(run_dir)
    with pytest.raises(ValueError, match="--output_dir=.*"):
        train.run(dict(RECIPE, output_dir=str(run_dir)))
    assert intact()


# -- serving encoded files: decoded exactly as training decoded them ------------

def _test_files(classes):
    """The embedded test files' bytes and labels, in `kt_data.load`'s order."""
    root = os.path.join(os.path.dirname(os.path.dirname(kt_data.__file__)), "datasets", "cifar10_mini",
                        "test")
    files, labels = [], []
    for label, name in enumerate(classes):
        for entry in sorted(os.listdir(os.path.join(root, name))):
            with open(os.path.join(root, name, entry), "rb") as f:
                files.append(f.read())
            labels.append(label)
    return files, np.array(labels)


def test_bytes_signature_decodes_jpegs_exactly_like_training(test_arrays):
    files, labels = _test_files(sorted(CLASSES))
    np.testing.assert_array_equal(labels, test_arrays[1])
    from kerastrain.export import decode_image
    decoded = np.stack([decode_image(tf.constant(f)).numpy() for f in files])
    np.testing.assert_array_equal(decoded, test_arrays[0])  # bit-identical to PIL
    fast = np.stack([tf.io.decode_jpeg(f, channels=3).numpy() for f in files[:20]])
    assert np.abs(fast.astype(int) - test_arrays[0][:20]).max() >= 2  # the trap


def test_served_accuracy_on_raw_files_equals_the_models(splits, test_arrays, tmp_path):
    keras.utils.set_random_seed(3)
    model = small_cnn(len(CLASSES), width=8, blocks=1)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(splits.train, epochs=2, verbose=0)
    path = export_saved_model(model, tmp_path / "m", splits.class_names)
    files, labels = _test_files(splits.class_names)
    serve, _ = load_serving(path)
    served = serve(files)
    keras_ids = np.argmax(model.predict(test_arrays[0], verbose=0), -1)
    np.testing.assert_array_equal(served["class_ids"], keras_ids)
    assert np.mean(served["class_ids"] == labels) == np.mean(keras_ids == test_arrays[1])
    signature = tf.saved_model.load(path).signatures["serving_bytes"]
    raw = signature(images=tf.constant(files[:8]))
    np.testing.assert_allclose(raw["probabilities"].numpy(),
                               served["probabilities"][:8], atol=1e-6)
    # A PNG of the same pixels serves the same probabilities.
    png = [tf.io.encode_png(image).numpy() for image in test_arrays[0][:8]]
    np.testing.assert_allclose(serve(png)["probabilities"],
                               served["probabilities"][:8], atol=1e-6)
