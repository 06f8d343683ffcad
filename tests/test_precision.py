"""Mixed precision and XLA in the recipes and the library, on CPU.

`--mixed_precision` builds the model under Keras' `mixed_float16` policy
(`mixed_bfloat16` on TPU) with float32 logits; the export serves float32
probabilities. `--jit_compile` is Keras compile's `jit_compile` (tested in
test_train_recipe.py).
"""

import csv

import numpy as np
import pytest
import tensorflow as tf

import keras

import kerastrain as kt
from kerastrain.export import load_serving
from recipes import train

CLASSES = ["airplane", "frog"]
# Measured: test accuracy 0.780 in float32, 0.785 in mixed_float16 (chance 0.5).
TINY = dict(classes=CLASSES, labels_per_class=100, batch_size=32, epochs=3, width=8,
            blocks=2, learning_rate=3e-3, verbose=0)


def _test_images():
    data = kt.data.load("cifar10_mini", classes=CLASSES, validation_fraction=0.1)
    images, labels = (np.concatenate(a) for a in zip(*data.test.as_numpy_iterator()))
    return images.astype(np.uint8), labels


def test_dtype_policy_builds_mixed_layers_with_float32_logits_and_restores():
    with kt.distribute.dtype_policy(kt.distribute.mixed_precision_policy()):
        model = kt.models.small_cnn(3, width=8, blocks=1)
        assert keras.config.dtype_policy().name == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"
    conv = model.get_layer("block1_conv1")
    assert (conv.compute_dtype, conv.variable_dtype) == ("float16", "float32")
    assert model.get_layer("classifier").compute_dtype == "float32"
    assert model(np.zeros((1, 32, 32, 3), np.float32)).dtype == "float32"
    with pytest.raises(RuntimeError):
        with kt.distribute.dtype_policy("mixed_bfloat16"):
            raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == "float32"  # restored on errors too


def test_mixed_precision_train_recipe_fits_and_exports_float32(tmp_path):
    metrics = train.run(dict(TINY, mixed_precision=True, output_dir=str(tmp_path / "run"),
                             export_dir=str(tmp_path / "export")))
    assert metrics["dtype_policy"] == "mixed_float16"
    assert np.isfinite(metrics["test_loss"]) and metrics["test_accuracy"] > 0.7
    # Keras wraps the optimizer in a LossScaleOptimizer; the logged rate is
    # still the inner optimizer's.
    with open(tmp_path / "run" / "history.csv") as f:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    assert rates == pytest.approx([TINY["learning_rate"]] * TINY["epochs"])
    serve, names = load_serving(str(tmp_path / "export"))
    assert names == CLASSES
    images, labels = _test_images()
    probabilities = serve(images)["probabilities"]
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    served_accuracy = np.mean(np.argmax(probabilities, axis=1) == labels)
    assert served_accuracy == pytest.approx(metrics["test_accuracy"], abs=1.5 / len(labels))


def test_mixed_precision_applies_to_shipped_source_weights():
    plain = kt.transfer.backbone(None, (32, 32, 3), weights="cifar10-source")
    with kt.distribute.dtype_policy("mixed_float16"):
        mixed = kt.transfer.backbone(None, (32, 32, 3), weights="cifar10-source")
    dtypes = {layer.compute_dtype for layer in mixed._flatten_layers()
              if layer.weights and not isinstance(layer, keras.Model)}
    assert dtypes == {"float16"}
    images, _ = _test_images()
    x = tf.constant(images[:16], tf.float32)
    expected, got = plain(x, training=False), mixed(x, training=False)
    # The same weights in float16: the codes agree to float16's precision.
    scale = float(tf.reduce_max(tf.abs(expected)))
    np.testing.assert_allclose(tf.cast(got, tf.float32), expected, atol=0.02 * scale)
    with kt.distribute.dtype_policy("mixed_float16"):
        model = kt.transfer.build_classifier(mixed, 3, seed=0)
    assert model(x[:2], training=False).dtype == "float32"  # float32 logits
