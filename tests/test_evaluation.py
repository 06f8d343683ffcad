"""Tests for kerastrain.evaluation: one accuracy and cross-entropy for every model."""

import math

import keras
import numpy as np
import pytest

import kerastrain as kt
from kerastrain import evaluation


@pytest.fixture(scope="module")
def splits():
    return kt.data.load("cifar10_mini", classes=["cat", "ship", "truck"],
                        labels_per_class=40, batch_size=16, validation_fraction=0,
                        seed=0)


@pytest.fixture(scope="module")
def trained(splits):
    keras.utils.set_random_seed(0)
    model = kt.models.small_cnn(3, width=8, blocks=2)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(splits.train, epochs=2, verbose=0, shuffle=False)
    return model


def test_scores_by_hand():
    result = evaluation.scores([[0.9, 0.1], [0.2, 0.8]], [0, 0])
    assert result["accuracy"] == 0.5 and result["examples"] == 2
    assert result["loss"] == pytest.approx(-(math.log(0.9) + math.log(0.2)) / 2)
    one_hot = evaluation.scores([[0.9, 0.1], [0.2, 0.8]], [[1, 0], [1, 0]])
    assert one_hot == result


def test_logits_model_matches_keras_evaluate(trained, splits):
    loss, accuracy = trained.evaluate(splits.test, verbose=0)
    result = evaluation.evaluate(trained, splits.test)
    assert result["examples"] == 300
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert result["loss"] == pytest.approx(loss, rel=1e-4)


def test_softmax_model_and_ensemble_score_like_the_logits_model(trained, splits):
    probabilities = keras.Sequential([trained, keras.layers.Softmax()])
    expected = evaluation.evaluate(trained, splits.test)
    assert evaluation.evaluate(probabilities, splits.test) == pytest.approx(expected)
    ensemble = kt.ensemble.Ensemble([trained, trained])
    assert evaluation.evaluate(ensemble, splits.test) == pytest.approx(expected, rel=1e-5)


def test_linear_probe_reports_the_same_scores():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(60, 4)).astype("float32")
    labels = (codes[:, 0] > 0).astype("int64")
    probe = kt.transfer.LinearProbe(2, epochs=100, seed=0).fit(codes, labels)
    result = probe.evaluate(codes, labels)
    expected = evaluation.scores(probe.predict_proba(codes), labels)
    assert result == {"accuracy": expected["accuracy"], "loss": expected["loss"]}
    assert result["accuracy"] > 0.9


@pytest.mark.parametrize("labels, message", [([0, 3], "class ids in"),
                                             ([0], "expected 2 class ids"),
                                             ([], "expected 0 class ids|no examples")])
def test_bad_labels_are_named(labels, message):
    probs = np.full((2, 3), 1 / 3) if labels != [] else np.zeros((0, 3))
    with pytest.raises(ValueError, match=message):
        evaluation.scores(probs, labels)
