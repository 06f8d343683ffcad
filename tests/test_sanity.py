"""Tests for kerastrain.sanity: healthy models pass, broken ones fail the
right check, on real cifar10_mini images."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from kerastrain import data as kt_data
from kerastrain import models
from kerastrain import plots
from kerastrain import sanity

LN10 = math.log(10)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data():
    return kt_data.load("cifar10_mini", batch_size=64, seed=0)


@pytest.fixture(scope="module")
def batch(data):
    images, labels = next(iter(data.train.unbatch().batch(256)))
    return images.numpy(), labels.numpy()


@pytest.fixture(scope="module")
def flat(batch):
    """Flattened, standardized images for the deep-MLP activation tests."""
    images = batch[0].reshape(len(batch[0]), -1).astype("float32")
    return (images - images.mean()) / images.std(), batch[1]


def _compile(model, from_logits=True, learning_rate=3e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
    )
    return model


def _builder(width=16, blocks=3, learning_rate=3e-3):
    return lambda: _compile(models.small_cnn(10, width=width, blocks=blocks),
                            learning_rate=learning_rate)


def _tiny_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return models.small_cnn(10, width=4, blocks=1)


def _log_softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


# --- a healthy model passes everything; the report -----------------------


def test_run_checks_healthy_small_cnn_passes_all_and_writes_report(data, tmp_path):
    results = sanity.run_checks(_builder(), data, output_dir=str(tmp_path),
                                learning_rate_steps=10, verbose=False)
    by_name = {r.name: r for r in results}
    assert list(by_name) == [
        "data_check", "initial_loss", "gradients", "activation_stats",
        "regularization_raises_loss", "overfit_small_subset", "learning_rate"]
    assert all(r.passed for r in results), sanity.format_table(results)
    assert by_name["data_check"].figures["class_counts"] == [450] * 10
    assert abs(by_name["initial_loss"].figures["loss"] - LN10) < 0.5
    assert by_name["overfit_small_subset"].figures["accuracy"] == 1.0
    assert by_name["learning_rate"].figures["verdict"] == "ok"

    report = json.loads((tmp_path / "sanity.json").read_text())
    assert report["passed"] is True
    assert [r["name"] for r in report["results"]] == list(by_name)
    assert report["results"][1]["figures"]["loss"] == pytest.approx(
        by_name["initial_loss"].figures["loss"])
    markdown = (tmp_path / "sanity.md").read_text()
    assert "| learning_rate | pass |" in markdown
    assert "7 of 7 checks passed" in markdown
    layers = len(by_name["activation_stats"].figures["layers"])
    with Image.open(tmp_path / "activations.png") as image:
        assert image.width == 10 * 180 and image.height == math.ceil(layers / 10) * 180


def test_recipe_runs_end_to_end(tmp_path):
    output_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "recipes.sanity", f"--output_dir={output_dir}",
         "--width=4", "--blocks=1", "--overfit_steps=5", "--learning_rate_steps=3",
         "--classes=cat,dog,ship", "--learning_rate=0.01"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checks passed" in result.stdout
    report = json.loads((output_dir / "sanity.json").read_text())
    assert len(report["results"]) == 7
    assert report["results"][0]["figures"]["class_counts"] == [450] * 3
    config = json.loads((output_dir / "config.json").read_text())
    assert config["width"] == 4 and config["classes"] == ["cat", "dog", "ship"]
    assert (output_dir / "sanity.md").exists()
    assert (output_dir / "activations.png").exists()


# --- initial loss ---------------------------------------------------------


def test_initial_loss_matches_cross_entropy_of_logits(batch):
    model = _tiny_cnn()
    result = sanity.initial_loss(model, batch)
    logits = np.asarray(model(batch[0], training=False), dtype=np.float64)
    expected = -np.mean(_log_softmax(logits)[np.arange(256), batch[1]])
    assert result.passed, result.advice
    assert result.figures["from_logits"] is True  # detected: not probabilities
    assert result.figures["loss"] == pytest.approx(expected, rel=1e-5)
    assert result.figures["expected"] == pytest.approx(LN10)


def test_initial_loss_flags_softmax_applied_twice(batch):
    trunk = _tiny_cnn()
    probabilities = keras.layers.Softmax()(trunk.output)
    model = _compile(keras.Model(trunk.input, probabilities))  # from_logits=True
    result = sanity.initial_loss(model, batch)
    assert not result.passed
    assert "softmax is applied twice" in result.advice
    assert f"e/(e+9) = {math.e / (math.e + 9):.3f}" in result.advice
    assert result.figures["softmax_of_probabilities"] is None  # one softmax, in the loss
    # The loss value alone looks perfect: softmax of probabilities ~ uniform.
    assert abs(result.figures["difference"]) < 0.05
    # The same outputs with the matching loss pass.
    fixed = _compile(keras.Model(trunk.input, probabilities), from_logits=False)
    assert sanity.initial_loss(fixed, batch).passed


def _double_softmax(kind, classes):
    """A tiny CNN at its default (Glorot) init whose probabilities go through
    a second softmax; returns the model and the name of that softmax."""
    keras.utils.set_random_seed(0)
    trunk = models.small_cnn(classes, width=4, blocks=1)
    features = trunk.get_layer("features").output
    if kind == "dense_then_softmax_layer":
        x = keras.layers.Dense(classes, activation="softmax", name="head")(features)
        outputs = keras.layers.Softmax(name="second")(x)
    elif kind == "activations_around_dropout":
        x = keras.layers.Activation("softmax", name="first")(trunk.output)
        x = keras.layers.Dropout(0.1)(x)
        outputs = keras.layers.Activation("softmax", name="second")(x)
    else:  # "nested": both inside a head model
        head = keras.Sequential([keras.Input(features.shape[1:]),
                                 keras.layers.Dense(classes, activation="softmax"),
                                 keras.layers.Softmax(name="second")], name="head")
        outputs = head(features)
    return keras.Model(trunk.input, outputs), "second"


@pytest.mark.parametrize("classes", [3, 10])
@pytest.mark.parametrize("kind", ["dense_then_softmax_layer",
                                  "activations_around_dropout", "nested"])
def test_initial_loss_flags_double_softmax_at_default_init(batch, kind, classes):
    images, labels = batch[0], batch[1] % classes
    model, second = _double_softmax(kind, classes)
    # Compiled consistently (probabilities in, from_logits=False) or not at all.
    if kind != "activations_around_dropout":
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    result = sanity.initial_loss(model, (images, labels), num_classes=classes)
    # The loss alone looks healthy: softmax of near-uniform probabilities.
    assert abs(result.figures["difference"]) < 0.05
    assert not result.passed
    assert result.figures["softmax_of_probabilities"] == second
    bound = math.e / (math.e + classes - 1)
    assert result.figures["max_probability_bound"] == pytest.approx(bound)
    assert "softmax is applied twice" in result.advice
    assert f"e/(e+{classes - 1}) = {bound:.3f}" in result.advice
    # The cap is real: even a huge final layer cannot push any probability past it.
    head = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    dense = [layer for layer in (head[0].layers if head else model.layers)
             if isinstance(layer, keras.layers.Dense)][-1]
    dense.kernel.assign(dense.kernel * 1000.0)
    assert float(np.max(model(images, training=False))) <= bound + 1e-6


def test_initial_loss_flags_logits_given_to_probability_loss(batch):
    model = _compile(_tiny_cnn(), from_logits=False)
    result = sanity.initial_loss(model, batch)
    assert not result.passed and "expects probabilities" in result.advice


def test_initial_loss_flags_overconfident_init(batch):
    model = _tiny_cnn()
    kernel = model.get_layer("classifier").kernel
    kernel.assign(kernel * 30.0)
    result = sanity.initial_loss(model, batch)
    assert not result.passed
    assert result.figures["difference"] > 1.0
    assert "overconfident" in result.advice


# --- every check, however the model is compiled ---------------------------


class _UnregisteredCrossentropy(keras.losses.Loss):
    """A user's own loss, not registered: Keras cannot rebuild it from a config."""

    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred,
                                                            from_logits=True)


def _softmax_cnn():
    trunk = _tiny_cnn()
    return keras.Model(trunk.input, keras.layers.Softmax()(trunk.output))


# name -> (model, compile arguments, one-hot labels)
COMPILES = {
    "strings": (_softmax_cnn, lambda: dict(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]),
        False),
    "one_hot_strings": (_softmax_cnn, lambda: dict(
        optimizer="adam", loss="categorical_crossentropy",
        metrics=["categorical_accuracy"]), True),
    "objects_from_logits": (_tiny_cnn, lambda: dict(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()]), False),
    "function": (_softmax_cnn, lambda: dict(
        optimizer="adam", loss=keras.losses.sparse_categorical_crossentropy,
        metrics=["sparse_categorical_accuracy"]), False),
    "unregistered_custom_loss": (_tiny_cnn, lambda: dict(
        optimizer="adam", loss=_UnregisteredCrossentropy(), metrics=["accuracy"]), False),
}


@pytest.mark.parametrize("name", sorted(COMPILES))
def test_every_check_runs_however_the_model_is_compiled(batch, name):
    make, arguments, one_hot = COMPILES[name]
    images, labels = batch[0][:64], batch[1][:64]
    data = (images, np.eye(10, dtype="float32")[labels] if one_hot else labels)

    def build():
        model = make()
        model.compile(**arguments())
        return model

    # run_checks calls every check: the model ones on build(), the training
    # ones (too few steps to judge here) on fresh builds.
    results = sanity.run_checks(build, data, overfit_steps=3, learning_rate_steps=3,
                                verbose=False)
    by_name = {r.name: r for r in results}
    assert list(by_name) == [
        "data_check", "initial_loss", "gradients", "activation_stats",
        "regularization_raises_loss", "overfit_small_subset", "learning_rate"]
    assert all(r.passed for r in results[:5]), sanity.format_table(results)
    assert abs(by_name["initial_loss"].figures["difference"]) < 0.5
    for figures in (by_name["overfit_small_subset"].figures,
                    by_name["learning_rate"].figures):
        losses = [figures["initial_loss"], figures.get("loss", figures.get("final_loss"))]
        assert all(math.isfinite(loss) for loss in losses), figures
    # The penalty reaches the loss by its closed form, also from a builder.
    keras.utils.set_random_seed(0)
    model = build()
    squares = sum(float(np.sum(np.square(w.numpy())))
                  for w in model.trainable_weights if w.path.endswith("kernel"))
    result = sanity.regularization_raises_loss(build, data, strengths=(0.0, 1e-2), seed=0)
    assert result.passed, result.advice
    assert result.figures["penalties"][1] == pytest.approx(1e-2 * squares, rel=1e-4)


def test_metrics_passed_as_loss_weights_are_named_with_the_fix(batch):
    def build():
        model = _softmax_cnn()
        # Keras 2's order; Keras 3 reads the third argument as loss_weights.
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        return model

    message = (r"`loss_weights` of model.compile\(\).*received "
               r"loss_weights=\['accuracy'\].*metrics=\['accuracy'\]")
    data = (batch[0][:32], batch[1][:32])
    for check in (lambda: sanity.initial_loss(build(), data),
                  lambda: sanity.gradients(build(), data),
                  lambda: sanity.regularization_raises_loss(build(), data),
                  lambda: sanity.regularization_raises_loss(build, data),
                  lambda: sanity.overfit_small_subset(build, data),
                  lambda: sanity.learning_rate(build, data),
                  lambda: sanity.run_checks(build, data, verbose=False)):
        with pytest.raises(ValueError, match=message):
            check()
    # The checks that need no loss still run.
    assert sanity.activation_stats(build(), data).passed


# --- data -----------------------------------------------------------------


def test_data_check_passes_real_data_and_flags_shifted_labels(data, batch):
    result = sanity.data_check(data)
    assert result.passed, result.advice
    assert sum(result.figures["class_counts"]) == data.num_train
    assert result.figures["pixel_min"] == 0 and result.figures["pixel_max"] == 255

    images, labels = batch
    shifted = sanity.data_check((images, labels + 1), num_classes=10)
    assert not shifted.passed
    assert shifted.figures["labels_out_of_range"] == np.sum(labels == 9)
    assert shifted.figures["class_counts"][0] == 0
    assert "1-based" in shifted.advice


def test_data_check_flags_pixels_and_imbalance(batch):
    images, labels = batch
    scaled = sanity.data_check((images / 255.0, labels), num_classes=10)
    assert not scaled.passed and "scaled twice" in scaled.advice
    assert sanity.data_check((images / 255.0, labels), num_classes=10,
                             value_range=(0, 1)).passed
    broken = images.astype("float32")
    broken[0, 0, 0, 0] = np.nan
    nan = sanity.data_check((broken, labels), num_classes=10)
    assert not nan.passed and nan.figures["nonfinite_pixels"] == 1
    keep = (labels != 3) | (np.cumsum(labels == 3) <= 2)  # 2 cats left
    rare = sanity.data_check((images[keep], labels[keep]), num_classes=10)
    counts = np.bincount(labels[keep], minlength=10)
    assert not rare.passed and "imbalanced" in rare.advice
    assert rare.figures["imbalance"] == pytest.approx(counts.max() / 2)


# --- gradients -------------------------------------------------------------


@pytest.mark.parametrize("dead", ["zero_relu", "times_zero"])
def test_gradients_flag_dead_layer(batch, dead):
    trunk = _tiny_cnn()
    features = trunk.get_layer("features").output
    if dead == "zero_relu":
        hidden = keras.layers.Dense(8, activation="relu", kernel_initializer="zeros",
                                    name="dead")(features)
    else:
        hidden = keras.layers.Rescaling(0.0, name="dead")(features)
    outputs = keras.layers.Dense(10, name="head")(hidden)
    model = keras.Model(trunk.input, outputs)  # uncompiled: logits detected
    result = sanity.gradients(model, batch, examples=32)
    assert not result.passed and "Zero or missing gradients" in result.advice
    assert "head/kernel" in result.figures["zero"]
    assert "block1_conv1/kernel" in result.figures["zero"]
    # The dead layer outputs 0, so logits = bias = 0 and the bias gradient
    # of the mean cross-entropy is 1/C - (class frequency).
    frequency = np.bincount(batch[1][:32], minlength=10) / 32
    assert result.figures["gradient_norms"]["head/bias"] == pytest.approx(
        np.linalg.norm(0.1 - frequency), rel=1e-4)


def test_gradients_pass_for_healthy_model(batch):
    result = sanity.gradients(_tiny_cnn(), batch, examples=32)
    assert result.passed, result.advice
    assert not result.figures["zero"] and not result.figures["nonfinite"]
    assert set(result.figures["layer_norms"]) >= {"block1_conv1", "classifier"}


# --- regularization ------------------------------------------------------


def test_regularization_raises_loss_by_the_closed_form_penalty(batch):
    model = _compile(_tiny_cnn())
    result = sanity.regularization_raises_loss(model, batch,
                                               strengths=(0.0, 1e-3, 1e-1))
    assert result.passed, result.advice
    squares = sum(float(np.sum(np.square(w.numpy())))
                  for w in model.trainable_weights if w.path.endswith("kernel"))
    np.testing.assert_allclose(result.figures["penalties"],
                               [0.0, 1e-3 * squares, 1e-1 * squares], rtol=1e-4)


def test_regularization_check_fails_without_weights(batch):
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Rescaling(0.01)(pooled)[:, :3])
    result = sanity.regularization_raises_loss(model, batch)
    assert not result.passed and "No weight penalty" in result.advice


# --- training checks -------------------------------------------------------


@pytest.mark.parametrize("rate, verdict", [(0.0, "too_low"), (10.0, "too_high")])
def test_learning_rate_check_says_too_low_or_too_high(batch, rate, verdict):
    result = sanity.learning_rate(_builder(width=4, blocks=1), batch, rate,
                                  steps=5, examples=32, seed=0)
    assert not result.passed
    assert result.figures["verdict"] == verdict
    assert verdict.replace("_", " ") in result.advice
    if rate == 0.0:
        assert result.figures["relative_decrease"] == pytest.approx(0.0, abs=1e-6)


def test_overfit_fails_for_a_dead_network(batch):
    def build():
        trunk = models.small_cnn(10, width=4, blocks=1)
        hidden = keras.layers.Rescaling(0.0)(trunk.get_layer("features").output)
        return _compile(keras.Model(trunk.input, keras.layers.Dense(10)(hidden)))

    result = sanity.overfit_small_subset(build, batch, max_steps=20, seed=0)
    assert not result.passed and "broken" in result.advice
    assert result.figures["steps"] == 20
    # Logits are the bias alone: at best the most frequent class is right.
    frequency = np.bincount(batch[1][:20], minlength=10).max() / 20
    assert result.figures["accuracy"] <= frequency


# --- activation statistics ----------------------------------------------


def _mlp(activation, initializer, depth=10, width=256):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3072,))
    x = inputs
    for i in range(depth):
        x = keras.layers.Dense(width, activation=activation,
                               kernel_initializer=initializer, name=f"dense{i}")(x)
    return keras.Model(inputs, x)


TINY = keras.initializers.RandomNormal(stddev=0.01)


@pytest.mark.parametrize("activation, good_init", [("tanh", "glorot_uniform"),
                                                  ("relu", "he_normal")])
def test_activations_collapse_with_tiny_init_not_with_scaled_init(
        flat, tmp_path, activation, good_init):
    tiny = sanity.activation_stats(_mlp(activation, TINY), flat, examples=128)
    good = sanity.activation_stats(_mlp(activation, good_init), flat, examples=128)
    tiny_stds = [layer["std"] for layer in tiny.figures["layers"]]
    good_stds = [layer["std"] for layer in good.figures["layers"]]
    assert not tiny.passed and "vanish" in tiny.advice
    assert tiny_stds[-1] < 1e-3 and tiny_stds[0] > 0.1
    assert all(b < a for a, b in zip(tiny_stds, tiny_stds[1:]))
    assert good.passed, good.advice
    # tanh with Glorot init still shrinks slowly with depth (~0.33 here).
    low = 0.25 if activation == "tanh" else 0.5
    assert low < good.figures["std_ratio_last_first"] < 2
    assert min(good_stds) > 0.1  # no layer collapses
    path = plots.activation_histograms(good.figures["layers"],
                                       str(tmp_path / "activations.png"))
    with Image.open(path) as image:
        assert image.size == (1800, 180)


def test_activations_explode_with_large_init(flat):
    result = sanity.activation_stats(
        _mlp("relu", keras.initializers.RandomNormal(stddev=0.2)), flat, examples=64)
    assert not result.passed and "explode" in result.advice
    assert result.figures["std_ratio_last_first"] > 100


def test_activation_stats_match_numpy(batch):
    model = _tiny_cnn()
    result = sanity.activation_stats(model, batch, examples=64,
                                     layers=["block1_conv1", "classifier"])
    assert [s["name"] for s in result.figures["layers"]] == ["block1_conv1",
                                                             "classifier"]
    logits = np.asarray(model(batch[0][:64], training=False), dtype=np.float64)
    entry = result.figures["layers"][1]
    assert entry["mean"] == pytest.approx(logits.mean(), rel=1e-5)
    assert entry["std"] == pytest.approx(logits.std(), rel=1e-5)
    assert sum(entry["histogram"]["counts"]) == logits.size


# --- validation ----------------------------------------------------------


def _uncompiled():
    return models.small_cnn(10, width=4, blocks=1)


@pytest.mark.parametrize("call, message", [
    (lambda m, b: sanity.initial_loss(m, b, tolerance=0), "`tolerance`"),
    (lambda m, b: sanity.initial_loss(m, b, examples=0), "`examples`"),
    (lambda m, b: sanity.initial_loss(_compile(m), b, from_logits=True),
     "`from_logits`"),
    (lambda m, b: sanity.initial_loss(m, "images"), "`data`"),
    (lambda m, b: sanity.regularization_raises_loss(m, b, strengths=(1e-2, 1e-3)),
     "`strengths`"),
    (lambda m, b: sanity.overfit_small_subset(_uncompiled, b), "not compiled"),
    (lambda m, b: sanity.overfit_small_subset(m, b), "`build_model`"),
    (lambda m, b: sanity.overfit_small_subset(_builder(4, 1), b, examples=1000),
     "only 256 examples"),
    (lambda m, b: sanity.overfit_small_subset(_builder(4, 1), b, target_accuracy=1.5),
     "`target_accuracy`"),
    (lambda m, b: sanity.learning_rate(_builder(4, 1), b, -1.0), "`learning_rate`"),
    (lambda m, b: sanity.data_check(b), "`num_classes`"),
    (lambda m, b: sanity.data_check(b, 10, value_range=(1, 0)), "`value_range`"),
    (lambda m, b: sanity.data_check(b, 10, max_imbalance=0.5), "`max_imbalance`"),
    (lambda m, b: sanity.activation_stats(m, b, layers=["nope"]), "`layers`"),
    (lambda m, b: sanity.gradients("model", b), "`model`"),
    (lambda m, b: sanity.compiled_builder("resnet9000", 10), "`model`"),
    (lambda m, b: sanity.initial_loss(m, b, tolerance=float("inf")), "`tolerance`"),
    (lambda m, b: sanity.initial_loss(m, b, examples=True), "`examples`"),
    (lambda m, b: sanity.regularization_raises_loss(m, b, strengths=(0, float("inf"))),
     "`strengths`"),
    (lambda m, b: sanity.regularization_raises_loss(m, b, seed=-1), "`seed`"),
    (lambda m, b: sanity.activation_stats(m, b, vanishing_ratio=0.5, exploding_ratio=0.1),
     "`exploding_ratio`"),
    (lambda m, b: sanity.gradients(m, b, min_norm=-1.0), "`min_norm`"),
    (lambda m, b: sanity.data_check(b, 10, value_range=("0", 255)), "`value_range`"),
    (lambda m, b: sanity.learning_rate(_builder(4, 1), b, float("inf")), "`learning_rate`"),
    (lambda m, b: sanity.run_checks(_builder(4, 1), b, overfit_steps=0), "`overfit_steps`"),
    (lambda m, b: sanity.run_checks(_builder(4, 1), b, seed=1.5), "`seed`"),
])
def test_bad_arguments_raise_clear_errors(batch, call, message):
    with pytest.raises(ValueError, match=message.replace("`", ".")):
        call(_uncompiled(), batch)


def test_initial_loss_rejects_non_cross_entropy_loss(batch):
    model = _uncompiled()
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="cross-entropy"):
        sanity.initial_loss(model, batch)


def test_compiled_builder_builds_a_fresh_compiled_model():
    build = sanity.compiled_builder("small_cnn", 3, width=4, blocks=1,
                                    learning_rate=0.05)
    first, second = build(), build()
    assert first is not second and first.compiled
    assert first.output_shape == (None, 3)
    assert float(first.optimizer.learning_rate) == pytest.approx(0.05)
