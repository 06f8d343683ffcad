"""The source weights shipped in the package: intact, and as good as their manifest says."""

import os

import numpy as np
import pytest

import kerastrain as kt
from kerastrain.transfer import source_weights

NAME = "cifar10-source"


@pytest.fixture(scope="module")
def manifest():
    assert NAME in kt.transfer.available_weights()
    return kt.transfer.read_weights_manifest(NAME)


def test_the_file_is_the_one_the_manifest_describes(manifest):
    path = os.path.join(source_weights.resolve(NAME), manifest["file"])
    assert os.path.getsize(path) == manifest["bytes"] < 8 * 2**20  # a few MB
    assert source_weights.sha256(path) == manifest["sha256"]
    assert manifest["command"].startswith("python -m recipes.train ")
    assert manifest["class_names"] == ["airplane", "automobile", "bird", "cat", "deer"]


def test_reaches_its_source_accuracy_on_images_it_never_saw(manifest):
    # cifar10_mini's test images are disjoint from the data the weights were
    # trained and tested on (other CIFAR-10 images of the same classes).
    data = kt.data.load("cifar10_mini", classes=manifest["class_names"],
                        validation_fraction=0.0, batch_size=100)
    classifier = source_weights.load_classifier(NAME)
    accuracy = kt.evaluation.evaluate(classifier, data.test)["accuracy"]
    # 500 images: a standard error of about 0.02; 3 of them.
    assert accuracy == pytest.approx(manifest["source_test_accuracy"], abs=0.06)
    assert accuracy > 0.6


def test_backbone_by_name_is_the_feature_extractor(manifest):
    features = kt.transfer.backbone(None, tuple(manifest["input_shape"]), weights=NAME)
    same = kt.transfer.backbone(manifest["architecture"].lower(), weights=NAME)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(features.predict_on_batch(images),
                               same.predict_on_batch(images), atol=1e-6)
    assert features.output_shape[-1] > 0
