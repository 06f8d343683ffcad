"""Every keras.applications family goes through the whole transfer path.

For each family (weights=None, 32x32 images, resized up inside the model
where the family needs more): `backbone` -> `build_classifier` -> one step of
each fine-tuning phase (`fine_tune`, BatchNorm frozen) -> the backbone's
BatchNorm statistics unchanged -> `export_saved_model` -> the SavedModel,
served uint8 images of another size, matches the Keras model.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras

import kerastrain as kt

# Each family takes 25-50 s on 2 cores, more than CI's 15 minutes leave, so
# they are marked `slow`: `pytest -m slow tests/test_families.py` runs them.
FAMILIES = [
    pytest.param(name, marks=pytest.mark.slow)
    for name in ("MobileNetV3Small", "MobileNetV2", "EfficientNetB0", "EfficientNetV2B0", "ResNet50V2",
                 "DenseNet121", "ConvNeXtTiny", "NASNetMobile", "Xception", "InceptionV3")]


@pytest.fixture(scope="module")
def batch():
    data = kt.data.load("cifar10_mini", classes=["cat", "dog", "ship"], labels_per_class=3,
                        batch_size=9, validation_fraction=0.0, seed=0)
    return data


def _batch_norm_statistics(model):
    return [v.numpy().copy() for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_fine_tunes_and_exports(name, batch, tmp_path):
    keras.utils.set_random_seed(0)
    features = kt.transfer.backbone(name, (32, 32, 3), weights=None)
    model = kt.transfer.build_classifier(features, 3, seed=0)
    before = _batch_norm_statistics(features)
    kt.transfer.fine_tune(model, batch.train, head_epochs=1, finetune_epochs=1,
                          unfreeze_top=1, verbose=0)
    after = _batch_norm_statistics(features)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)

    path = kt.export.export_saved_model(model, tmp_path / "export", batch.class_names)
    serve, names = kt.export.load_serving(path)
    assert names == list(batch.class_names)
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    served = serve(images)["probabilities"]
    x = tf.cast(kt.data.resize(tf.constant(images), (32, 32)), tf.float32)  # as training resizes
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model(x, training=False)))
    np.testing.assert_allclose(served, expected, atol=1e-4)
