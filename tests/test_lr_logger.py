"""Tests for kerastrain.callbacks.LearningRateLogger: the rates a real fit applied."""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrain import data as kt_data
from kerastrain.callbacks import LearningRateLogger, StochasticWeightAveraging

STEPS = 3  # 96 images in batches of 32


@pytest.fixture(scope="module")
def train_ds():
    data = kt_data.load("cifar10_mini", classes=["airplane", "frog"], labels_per_class=48,
                        batch_size=32, validation_fraction=0.0, seed=0)
    x, y = (np.concatenate(a) for a in zip(*data.train.as_numpy_iterator()))
    return tf.data.Dataset.from_tensor_slices((x[:96], y[:96])).batch(32)


class _AppliedRates(keras.callbacks.Callback):
    """Reads, last of all callbacks, the rate the next step will apply."""

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))


def _fit(train_ds, learning_rate, swa_lr, epochs=3):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logger, applied = LearningRateLogger(), _AppliedRates()
    # The logger comes first, as in the recipes: before SWA sets its rate.
    history = model.fit(train_ds, epochs=epochs, verbose=0, callbacks=[
        logger, StochasticWeightAveraging(start_epoch=1, swa_learning_rate=swa_lr),
        applied])
    return history.history["learning_rate"], logger, applied.rates


@pytest.mark.parametrize("learning_rate", [
    0.05, keras.optimizers.schedules.CosineDecay(0.05, 3 * STEPS)], ids=["constant", "cosine"])
def test_logs_the_swa_rate_of_the_first_averaged_epoch(train_ds, learning_rate):
    per_epoch, logger, applied = _fit(train_ds, learning_rate, swa_lr=0.01)
    assert per_epoch[1:] == pytest.approx([0.01, 0.01])  # SWA's rate from epoch 1 on
    assert per_epoch[0] == pytest.approx(0.05)
    assert logger.steps == list(range(3 * STEPS))
    np.testing.assert_allclose(logger.rates, applied, rtol=1e-6)
    assert logger.rates[STEPS:] == pytest.approx([0.01] * 2 * STEPS)
    if callable(learning_rate):  # the schedule's own rates before averaging
        np.testing.assert_allclose(logger.rates[:STEPS],
                                   [float(learning_rate(s)) for s in range(STEPS)], rtol=1e-6)
    np.testing.assert_allclose(logger.rate_at(np.arange(3 * STEPS)), logger.rates)


def test_steps_count_on_over_several_fits(train_ds):
    _, logger, _ = _fit(train_ds, 0.05, swa_lr=0.01, epochs=2)
    logger.model.fit(train_ds, epochs=1, verbose=0, callbacks=[logger])
    assert logger.steps == list(range(3 * STEPS))


def test_recipe_logs_swa_lr_in_history(tmp_path):
    from recipes import train
    config = dict(classes=["airplane", "frog"], labels_per_class=20, batch_size=32,
                  epochs=2, width=4, blocks=1, augment="none", validation_fraction=0.0,
                  schedule="cosine", learning_rate=3e-3, swa_start=1, swa_lr=1e-4,
                  verbose=0, output_dir=str(tmp_path / "run"))
    train.run(config)
    with open(os.path.join(config["output_dir"], "history.csv")) as f:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    assert rates[0] == pytest.approx(3e-3)
    assert rates[1] == pytest.approx(1e-4)
    assert os.path.exists(os.path.join(config["output_dir"], "learning_rate.png"))


def test_looks_through_a_loss_scale_optimizer_and_reads_callable_rates(train_ds):
    schedule = keras.optimizers.schedules.CosineDecay(0.05, 3 * STEPS)
    for optimizer, expected in (
            (keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(schedule)),
             [float(schedule(s)) for s in range(2 * STEPS)]),
            (keras.optimizers.SGD(lambda: 0.02), [0.02] * 2 * STEPS)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        logger = LearningRateLogger()
        history = model.fit(train_ds, epochs=2, verbose=0, callbacks=[logger])
        assert logger.steps == list(range(2 * STEPS))
        np.testing.assert_allclose(logger.rates, expected, rtol=1e-6)
        np.testing.assert_allclose(history.history["learning_rate"],
                                   [expected[0], expected[STEPS]], rtol=1e-6)
