"""kerastrain.transfer on real images: a backbone trained on five CIFAR-10
classes (airplane, automobile, bird, cat, deer) transferred to the other five
(dog, frog, horse, ship, truck) with 50 labels per class: a small CNN
trained briefly in the fixture for the mechanics, the shipped
`cifar10-source` weights for the claim that transfer beats scratch."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastrain as kt
from kerastrain import transfer

SOURCE = ["airplane", "automobile", "bird", "cat", "deer"]
TARGET = ["dog", "frog", "horse", "ship", "truck"]
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
# Measured over seeds 0-2 with the settings of
# test_transfer_beats_scratch_on_few_labels: scratch 0.492 / 0.486 / 0.554,
# linear probe on the shipped weights 0.668 / 0.600 / 0.630, fine-tuning
# 0.722 / 0.696 / 0.706; the weakest margins: probe - scratch 0.076,
# fine-tune - probe 0.054.
MARGIN = 0.05
FINETUNE_OVER_PROBE = 0.03


@pytest.fixture(scope="module")
def source_file(tmp_path_factory):
    """A small CNN trained on the source classes, cut to its feature extractor
    (two epochs: these tests check what fine-tuning changes, not how well)."""
    keras.utils.set_random_seed(0)
    data = kt.data.load("cifar10_mini", classes=SOURCE, validation_fraction=0,
                        batch_size=64, seed=0)
    model = kt.models.small_cnn(5, width=16, blocks=2)
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    model.fit(data.train, epochs=2, shuffle=False, verbose=0)
    path = str(tmp_path_factory.mktemp("source") / "backbone.keras")
    transfer.cut_backbone(model).save(path)
    return path


@pytest.fixture(scope="module")
def target():
    return kt.data.load("cifar10_mini", classes=TARGET, labels_per_class=50,
                        validation_fraction=0, batch_size=32, seed=0)


def _classifier(source_file, dropout=0.0):
    return transfer.build_classifier(transfer.backbone(None, (32, 32, 3), source_file),
                                     5, dropout=dropout, seed=0)


def _values(model, names):
    return {v.path: v.numpy().copy() for v in model.weights
            if any(v.path.startswith(name) for name in names)}


def _accuracy(model, dataset):
    model.compile(loss=LOSS, metrics=["accuracy"])
    return model.evaluate(dataset, verbose=0)[1]


# -- backbones -------------------------------------------------------------------


def test_backbone_builds_in_preprocessing():
    model = transfer.backbone("vgg16", (32, 32, 3), weights=None)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    base = model.get_layer("vgg16")
    expected = base(keras.applications.vgg16.preprocess_input(images.copy()))
    np.testing.assert_allclose(model(images), expected, rtol=1e-5, atol=1e-4)
    # MobileNetV3 rescales inside itself: no second preprocessing layer.
    names = [layer.name for layer in transfer.backbone("MobileNetV3Small").layers]
    assert "preprocess" not in names


def test_small_images_are_resized_up_to_the_family_minimum():
    model = transfer.backbone("InceptionV3", (32, 32, 3), weights=None)
    assert model.get_layer("resize").output.shape[1:3] == (75, 75)
    assert model.output_shape == (None, 2048)
    assert [name for name, _ in transfer.block_names(model)][-2:] == ["mixed9", "mixed10"]


def test_weights_file_round_trip(tmp_path):
    original = transfer.backbone("MobileNetV3Small", (32, 32, 3), weights=None)
    path = str(tmp_path / "mobilenet.weights.h5")
    original.save_weights(path)
    loaded = transfer.backbone("MobileNetV3Small", (32, 32, 3), weights=path)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded(images), original(images), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
def test_imagenet_without_network_says_what_to_pass(tmp_path, monkeypatch):
    # A proxy that refuses connections: Keras' real download fails as offline.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    # No cached weights (Keras reads $KERAS_HOME once, at import).
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path))
    with pytest.raises(transfer.WeightsNotAvailableError,
                       match=r"pass weights= the shipped source weights "
                             r"\('cifar10-source'\), a file path.*'none'"):
        transfer.backbone("MobileNetV3Small", (32, 32, 3), weights="imagenet")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"name": "ResNet5O"}, ValueError, "Unknown backbone name 'ResNet5O'"),
    ({"weights": "missing/backbone.keras"}, FileNotFoundError, "does not exist"),
    ({"weights": "weights.npz"}, ValueError, r"expected a `\.keras`"),
    ({"weights": 3}, ValueError, "Invalid value for `weights`"),
    ({"pooling": "sum"}, ValueError, "Invalid value for `pooling`"),
])
def test_bad_backbone_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        transfer.backbone(**{"name": "MobileNetV3Small", **kwargs})


def test_scratch_classifier_sets_every_batch_norm_momentum():
    model = transfer.scratch_classifier("MobileNetV3Small", 3, (32, 32, 3),
                                        minimalistic=True, dropout=0.1, seed=0)
    layers = [layer for layer in model._flatten_layers()
              if isinstance(layer, keras.layers.BatchNormalization)]
    assert layers and {layer.momentum for layer in layers} == {0.9}
    assert isinstance(model.get_layer("backbone"), keras.Model)
    assert model.output_shape == (None, 3)
    assert transfer.set_batch_norm_momentum(model, 0.5) == len(layers)
    assert {layer.momentum for layer in layers} == {0.5}
    # Keras' own momentum (0.999 for MobileNetV3) when asked to keep it.
    kept = transfer.scratch_classifier("MobileNetV3Small", 3, bn_momentum=None,
                                       minimalistic=True)
    assert {layer.momentum for layer in kept._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.999}


def test_keras_file_of_other_size_resizes_and_of_other_channels_is_refused(source_file):
    # Larger images reach the file's network at the 32x32 it was trained at.
    saved = keras.saving.load_model(source_file, compile=False)
    larger = transfer.backbone(None, (64, 64, 3), source_file)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(larger.predict_on_batch(images), saved.predict_on_batch(
        keras.layers.Resizing(32, 32)(images)), atol=1e-5)
    with pytest.raises(ValueError, match=r"takes images of shape \(32, 32, 3\)"):
        transfer.backbone(None, (32, 32, 1), source_file)


# -- fine-tuning -----------------------------------------------------------------


class _TrainableLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.phases = []

    def on_train_begin(self, logs=None):
        self.phases.append(sorted(v.path for v in self.model.trainable_weights))


def test_two_phases_train_what_they_should_and_keep_batch_norm(source_file, target):
    model = _classifier(source_file)
    before = _values(model, ["block1", "block2"])
    log = _TrainableLog()
    transfer.fine_tune(model, target.train, head_epochs=1, finetune_epochs=1,
                       unfreeze_top=1, callbacks=[log], verbose=0)
    head = ["logits/bias", "logits/kernel"]
    assert log.phases == [head, sorted(head + ["block2_conv1/kernel",
                                               "block2_conv2/kernel"])]
    after = _values(model, ["block1", "block2"])
    changed = sorted(path for path in before if not np.array_equal(before[path], after[path]))
    # Only the unfrozen convolutions moved; BatchNorm moving statistics and
    # scales, and the lower block, are exactly as the source left them.
    assert changed == ["block2_conv1/kernel", "block2_conv2/kernel"]


def _statistics(model):
    return {v.path: v.numpy().copy() for v in model.weights if "/moving_" in v.path}


def test_batch_norm_statistics_move_in_plain_keras_but_not_through_kerastrain(
        source_file, target):
    # Control, plain Keras: a backbone called in training mode with trainable
    # BatchNorm moves its statistics at the first step.
    backbone = transfer.backbone(None, (32, 32, 3), source_file)
    inputs = keras.Input((32, 32, 3))
    plain = keras.Model(inputs, keras.layers.Dense(5)(backbone(inputs)))
    before = _statistics(plain)
    plain.compile(keras.optimizers.Adam(1e-4), LOSS)
    plain.fit(target.train.take(1), shuffle=False, verbose=0)
    after = _statistics(plain)
    assert len(before) == 8 and all(not np.allclose(before[k], after[k]) for k in before)
    # kerastrain, same backbone and batch: build_classifier + unfreeze (every
    # block, BatchNorm kept frozen) keeps every statistic bit-identical while
    # the convolutions train.
    model = _classifier(source_file)
    transfer.unfreeze(model, top=2)
    before, weights = _statistics(model), _values(model, ["block"])
    model.compile(keras.optimizers.Adam(1e-4), LOSS)
    # Three steps: the logits start at zero, so the first step's gradient
    # reaches only the head.
    model.fit(target.train.take(3), shuffle=False, verbose=0)
    after, trained = _statistics(model), _values(model, ["block"])
    assert len(before) == 8 and all(np.array_equal(before[k], after[k]) for k in before)
    moved = sorted(k for k in weights if not np.array_equal(weights[k], trained[k]))
    assert moved == [f"block{b}_conv{c}/kernel" for b in (1, 2) for c in (1, 2)]


def test_head_starts_uniform_on_standardized_codes(source_file, target):
    # Issue 9: a Glorot head on raw codes started at loss 3.5 for 5 classes
    # (ln 5 = 1.6), and a few-shot phase 1 never recovered.
    backbone = transfer.backbone(None, (32, 32, 3), source_file)
    raw_codes, _ = transfer.extract_features(backbone, target.train, verbose=0)
    model = transfer.build_classifier(backbone, 5, standardize_on=target.train)
    standardized = keras.Model(model.input, model.get_layer("standardize").output)
    codes, _ = transfer.extract_features(standardized, target.train, verbose=0)
    alive = raw_codes.var(0) > 0.01 * raw_codes.var(0).mean()
    assert alive.sum() >= 0.5 * len(alive)
    np.testing.assert_allclose(codes.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(codes[:, alive].std(0), 1, atol=1e-3)
    assert np.all(codes.std(0) <= 1 + 1e-3)  # the floor keeps dead codes small
    # Zero logits: uniform predictions, initial loss ln(5) with or without it.
    for classifier in (model, transfer.build_classifier(backbone, 5)):
        classifier.compile(loss=LOSS)
        assert classifier.evaluate(target.train, verbose=0) == pytest.approx(np.log(5), abs=1e-5)


def test_head_lr_range_test_leaves_the_weights_as_they_were(source_file, target):
    model = _classifier(source_file)
    before = [w.numpy().copy() for w in model.weights]
    result = transfer.find_head_learning_rate(model, target, min_lr=1e-4, max_lr=1.0,
                                              steps=20)
    assert 1e-4 <= result.suggestion <= 1.0 and len(result.losses) >= 5
    assert sorted(v.path for v in model.trainable_weights) == ["logits/bias",
                                                                "logits/kernel"]
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_unfreeze_counts_blocks_or_layers(source_file):
    model = _classifier(source_file)
    assert [name for name, _ in transfer.block_names(model)] == ["block1", "block2"]
    transfer.freeze_backbone(model)
    assert len(model.trainable_weights) == 2
    assert transfer.unfreeze(model, top=2) == ["block1", "block2"]
    assert len(model.trainable_weights) == 2 + 4
    assert transfer.unfreeze(model, top=1, unit="layers") == ["block2_conv2"]
    assert len(model.trainable_weights) == 2 + 1
    with pytest.raises(ValueError, match=r"expected an int in \[0, 2\]"):
        transfer.unfreeze(model, top=3)
    with pytest.raises(ValueError, match="Invalid value for `unit`"):
        transfer.unfreeze(model, top=1, unit="stages")


def test_gradual_unfreezing_adds_one_block_per_epoch(source_file, target):
    model = _classifier(source_file)
    snapshots = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(
        _values(model, ["block1_conv1/kernel", "block2_conv1/kernel"])))
    start = _values(model, ["block1_conv1/kernel", "block2_conv1/kernel"])
    transfer.fine_tune(model, target.train, head_epochs=0, finetune_epochs=2,
                       unfreeze_top=2, gradual=True, callbacks=[record], verbose=0)
    block1, block2 = "block1_conv1/kernel", "block2_conv1/kernel"
    assert np.array_equal(snapshots[0][block1], start[block1])  # epoch 0: top block only
    assert not np.array_equal(snapshots[0][block2], start[block2])
    assert not np.array_equal(snapshots[1][block1], start[block1])  # epoch 1: both


def test_discriminative_rates_scale_per_block(source_file, target):
    model = _classifier(source_file)
    transfer.unfreeze(model, top=2)
    optimizer = transfer.discriminative_optimizer(model, "sgd", 0.1, decay=0.5)
    model.compile(optimizer, LOSS)
    images, labels = next(iter(target.train))
    with tf.GradientTape() as tape:
        loss = LOSS(labels, model(images, training=True))
    gradients = dict(zip([v.path for v in model.trainable_weights],
                         tape.gradient(loss, model.trainable_weights)))
    before = _values(model, [""])
    model.train_on_batch(images, labels)
    after = _values(model, [""])
    for path, rate in (("logits/kernel", 0.1), ("block2_conv2/kernel", 0.05),
                       ("block1_conv1/kernel", 0.025)):
        np.testing.assert_allclose(before[path] - after[path],
                                   rate * gradients[path].numpy(), rtol=1e-3, atol=1e-6)


def test_fine_tune_rejects_bad_arguments(source_file, target):
    model = _classifier(source_file)
    with pytest.raises(ValueError, match="Nothing to train"):
        transfer.fine_tune(model, target.train, head_epochs=0, finetune_epochs=0)
    with pytest.raises(ValueError, match="not both"):
        transfer.fine_tune(model, target.train, gradual=True, block_lr_decay=0.5)
    with pytest.raises(ValueError, match=r"expected an int in \[0, 2\]"):
        transfer.fine_tune(model, target.train, unfreeze_top=5)
    with pytest.raises(ValueError, match="no nested backbone"):
        transfer.freeze_backbone(kt.models.small_cnn(5, width=8, blocks=1))


# -- CNN codes -------------------------------------------------------------------


def test_extract_features_keeps_labels_paired_and_shows_progress(source_file, target, capsys):
    backbone = transfer.backbone(None, (32, 32, 3), source_file)
    codes, labels = transfer.extract_features(backbone, target.train, verbose=1)
    out = capsys.readouterr().out
    assert "CNN codes: 8/8 batches" in out and "\r" not in out  # plain lines in a log
    assert codes.shape == (250, 32) and np.bincount(labels).tolist() == [50] * 5
    # A reshuffling dataset: each code still belongs to its own image.
    images = np.concatenate([x for x, _ in target.train.as_numpy_iterator()])
    assert images.shape[0] == 250
    first = backbone(images[:1].astype("float32"), training=False).numpy()
    assert np.min(np.abs(codes - first).sum(1)) < 1e-3 * np.abs(first).sum()


def test_linear_probe_validates_its_inputs():
    with pytest.raises(ValueError, match="Invalid value for `num_classes`"):
        transfer.LinearProbe(1)
    probe = transfer.LinearProbe(3, epochs=1)
    with pytest.raises(ValueError, match="not fitted"):
        probe.predict_proba(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"integer labels in \[0, 3\)"):
        probe.fit(np.zeros((2, 4)), [0, 3])


# -- the effect: transfer beats training from scratch on 50 labels per class ------


def test_transfer_beats_scratch_on_few_labels(target):
    keras.utils.set_random_seed(0)
    scratch = kt.models.small_cnn(5, width=16, blocks=2)
    scratch.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    scratch.fit(target.train, epochs=30, shuffle=False, verbose=0)
    scratch_accuracy = scratch.evaluate(target.test, verbose=0)[1]

    backbone = transfer.backbone(None, (32, 32, 3), "cifar10-source")
    train_codes = transfer.extract_features(backbone, target.train, verbose=0)
    test_codes = transfer.extract_features(backbone, target.test, verbose=0)
    probe = transfer.LinearProbe(5, seed=0).fit(*train_codes)
    probe_accuracy = probe.evaluate(*test_codes)["accuracy"]
    # The exportable model (backbone + probe) predicts what the probe does.
    assert _accuracy(probe.to_model(backbone), target.test) == pytest.approx(
        probe_accuracy, abs=1e-6)

    keras.utils.set_random_seed(0)
    model = transfer.build_classifier(
        transfer.backbone(None, (32, 32, 3), "cifar10-source"), 5, dropout=0.2, seed=0,
        standardize_on=target.train)
    transfer.fine_tune(model, target.train, head_epochs=5, finetune_epochs=5,
                       unfreeze_top=2, head_lr=1e-2, finetune_lr=1e-3, verbose=0)
    finetune_accuracy = model.evaluate(target.test, verbose=0)[1]
    print(f"scratch {scratch_accuracy:.3f}  probe {probe_accuracy:.3f}  "
          f"fine-tune {finetune_accuracy:.3f}")
    assert probe_accuracy > scratch_accuracy + MARGIN
    assert finetune_accuracy > probe_accuracy + FINETUNE_OVER_PROBE


# -- dead CNN codes ----------------------------------------------------------------

def test_check_codes_stops_a_random_init_backbone(target):
    keras.utils.set_random_seed(0)
    dead = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3),
                                          include_top=False, weights=None, pooling="avg")
    result = transfer.check_codes(dead, target, examples=64, raise_error=False)
    assert not result.passed and result.figures["spread"] < 1e-9
    with pytest.raises(ValueError, match="do not vary across images.*pretrained weights"):
        transfer.check_codes(dead, target, examples=64)


def test_check_codes_passes_a_trained_backbone(target):
    keras.utils.set_random_seed(0)
    model = kt.models.small_cnn(5, width=4, blocks=1)
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(target.train, epochs=1, verbose=0)
    result = transfer.check_codes(transfer.cut_backbone(model), target, examples=64)
    assert result.passed and result.figures["spread"] > 1e-3
    assert result.figures["examples"] == 64


@pytest.mark.parametrize("mode", ["features", "finetune"])
def test_finetune_recipe_refuses_dead_codes_before_training(tmp_path, mode):
    from recipes import finetune
    config = dict(backbone="MobileNetV2", weights="none", mode=mode, classes=TARGET[:3],
                  labels_per_class=10, epochs_head=1, epochs_finetune=1, verbose=0,
                  output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="do not vary across images"):
        finetune.run(config)
    assert not os.path.exists(tmp_path / "run" / "history.csv")
