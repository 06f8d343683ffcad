"""CNN codes: frozen backbone features and a linear softmax classifier on them.

The cheapest transfer: run the backbone once over the data (`extract_features`)
and fit a linear classifier on the stored codes (`LinearProbe`), seconds
instead of a fine-tuning run. The probe is Keras' own `Dense` layer with an
L2 penalty, trained on standardised codes; `to_model()` folds the
standardisation and the layer onto the backbone so that the result is one
model from raw images to logits, ready for `kerastrain.export`.
"""

import keras
import numpy as np
import tensorflow as tf

from kerastrain import _checks, _io, evaluation


def extract_features(backbone, dataset, verbose=1):
    """Runs `backbone` in inference mode over a dataset of `(images, labels)`.

    One pass, so shuffled datasets keep features and labels paired.

    Args:
        backbone: a model mapping images to feature vectors (e.g. from
            `kerastrain.transfer.backbone`).
        dataset: a batched `tf.data.Dataset` (or iterable) of `(images,
            labels)` or `(images, labels, sample_weights)` elements.
        verbose: 1 shows progress over batches (a bar on a terminal, plain
            lines in a log), 0 is silent.
            Defaults to 1.

    Returns:
        `(features, labels)`: `float32` array `(N, D)` and `int64` array `(N,)`.

    Example:

    >>> codes, labels = extract_features(backbone("MobileNetV2"), data.train)
    """
    total = None
    if isinstance(dataset, tf.data.Dataset):
        cardinality = int(dataset.cardinality())
        total = cardinality if cardinality >= 0 else None
    progbar = _io.progress(total, "CNN codes", verbose=verbose, unit_name="batch")
    features, labels = [], []
    for step, element in enumerate(dataset, start=1):
        if not isinstance(element, (tuple, list)) or len(element) < 2:
            raise ValueError("extract_features() needs a dataset of (images, "
                             "labels) batches; received elements of type "
                             f"{type(element).__name__}")
        # Keras' cached predict function: inference mode, traced once.
        codes = np.asarray(backbone.predict_on_batch(element[0]), dtype=np.float32)
        features.append(codes.reshape(len(codes), -1))
        labels.append(np.asarray(element[1]).astype(np.int64).reshape(-1))
        progbar.update(step)
    if not features:
        raise ValueError("extract_features() received an empty dataset")
    if total is None:
        progbar.update(len(features), finalize=True)
    return np.concatenate(features), np.concatenate(labels)


class LinearProbe:
    """Multinomial logistic regression on CNN codes, trained with Keras.

    Minimises `mean cross-entropy(softmax(W z + b), y) + l2 * ||W||^2` over
    standardised codes `z = (x - mean) / std` (statistics of the training
    codes) with Adam, full-batch friendly and seeded.

    Args:
        num_classes: number of classes.
        l2: L2 penalty on `W`. Defaults to `1e-4`.
        learning_rate: Adam learning rate. Defaults to `1e-2`.
        epochs: passes over the codes. Defaults to 100.
        batch_size: codes per step. Defaults to 256.
        seed: seed of the initial weights and the shuffling. Defaults to 0.

    Example:

    >>> probe = LinearProbe(5).fit(train_codes, train_labels)
    >>> probe.evaluate(test_codes, test_labels)["accuracy"]
    """

    def __init__(self, num_classes, l2=1e-4, learning_rate=1e-2, epochs=100,
                 batch_size=256, seed=0):
        self.num_classes = _checks.check_int("num_classes", num_classes, minimum=2)
        self.l2 = _checks.check_real("l2", l2, low=0)
        self.learning_rate = _checks.check_real("learning_rate", learning_rate, low=0,
                                                low_open=True)
        self.epochs = _checks.check_int("epochs", epochs, minimum=1)
        self.batch_size = _checks.check_int("batch_size", batch_size, minimum=1)
        self.seed = _checks.check_int("seed", seed)
        self.model = None

    def fit(self, features, labels, validation=None, verbose=0):
        """Trains on codes; `validation` is an optional `(features, labels)`.

        Returns:
            `self` (the Keras `History` is `self.history`).
        """
        features, labels = self._check_data(features, labels, fitting=True)
        if validation is not None:
            validation = self._check_data(*validation, fitting=True)
            if validation[0].shape[1] != features.shape[1]:
                raise ValueError(f"Validation codes have {validation[0].shape[1]} "
                                 f"dimensions, training codes {features.shape[1]}")
        norm = keras.layers.Normalization(name="standardize")
        norm.adapt(features)
        inputs = keras.Input((features.shape[1],), name="codes")
        outputs = keras.layers.Dense(
            self.num_classes, kernel_regularizer=keras.regularizers.L2(self.l2),
            kernel_initializer=keras.initializers.GlorotUniform(self.seed),
            name="probe")(norm(inputs))
        self.model = keras.Model(inputs, outputs, name="linear_probe")
        self.model.compile(
            keras.optimizers.Adam(self.learning_rate),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"])
        train = tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(
            len(labels), seed=self.seed).batch(self.batch_size)
        self.history = self.model.fit(train, epochs=self.epochs, shuffle=False,
                                      validation_data=validation, verbose=verbose)
        return self

    def predict_proba(self, features):
        """Class probabilities `(N, num_classes)` of codes."""
        features, _ = self._check_data(features, None)
        logits = self.model.predict(features, batch_size=1024, verbose=0)
        return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))

    def evaluate(self, features, labels):
        """`{"accuracy": ..., "loss": ...}` of `kt.evaluation.scores` (the loss is
        the mean cross-entropy, without the L2 penalty)."""
        features, labels = self._check_data(features, labels)
        result = evaluation.scores(self.predict_proba(features), labels)
        return {"accuracy": result["accuracy"], "loss": result["loss"]}

    def to_model(self, backbone, name="probe_classifier"):
        """One model: raw images -> backbone (inference mode) -> logits."""
        self._check_fitted()
        inputs = keras.Input(backbone.input_shape[1:], name="images")
        codes = keras.layers.Flatten(name="codes")(backbone(inputs, training=False))
        norm, dense = self.model.get_layer("standardize"), self.model.get_layer("probe")
        return keras.Model(inputs, dense(norm(codes)), name=name)

    def _check_data(self, features, labels, fitting=False):
        if not fitting:
            self._check_fitted()
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or not len(features):
            raise ValueError("Expected features of shape (N, D) with N >= 1, "
                             f"received shape {features.shape}")
        if not fitting and features.shape[1] != self.model.input_shape[-1]:
            raise ValueError(f"The probe was fitted on {self.model.input_shape[-1]}"
                             f"-dimensional codes, received {features.shape[1]}")
        if labels is None:
            return features, None
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(features) or not np.issubdtype(labels.dtype, np.integer) \
                or labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"Expected {len(features)} integer labels in [0, "
                             f"{self.num_classes}), received {labels.dtype} "
                             f"labels of shape {labels.shape}")
        return features, labels.astype(np.int64)

    def _check_fitted(self):
        if self.model is None:
            raise ValueError("The LinearProbe is not fitted yet; call fit() first")


def check_codes(backbone, data, *, examples=256, min_spread=1e-6, raise_error=True):
    """Checks that the backbone's CNN codes differ between images.

    A linear head learns only from how the codes vary across images. A
    randomly initialised deep backbone in inference mode (BatchNorm with
    its initial moving statistics) can shrink every code to about zero:
    `keras.applications.MobileNetV2(weights=None)` gives codes whose spread
    across images is ~1e-13, and a head trained on them stays at chance
    (loss ln C) without any error. This measures the spread before any
    training: the standard deviation of each code across `examples` images
    (in inference mode, as `extract_features` and the frozen-backbone phase
    run it), averaged over the code's features, like
    `kerastrain.sanity.activation_stats` does per layer.

    Args:
        backbone: a model mapping images to feature vectors.
        data: `(images, labels)` arrays, a batched `tf.data.Dataset`, or the
            result of `kerastrain.data.load()` (its training split is used).
        examples: how many leading images to encode. Defaults to `256`.
        min_spread: smallest accepted mean standard deviation across images.
            Defaults to `1e-6`.
        raise_error: raise a `ValueError` with the advice when the codes are
            dead; `False` returns the failed result instead. Defaults to
            `True`.

    Returns:
        A `kerastrain.sanity.CheckResult` named `"cnn_codes"` whose figures
        hold `spread`, `max_spread` (the most varying feature),
        `dead_fraction` (features constant across the images), `features`
        and `examples`.

    Example:

    >>> check_codes(kerastrain.transfer.backbone("MobileNetV2", (96, 96, 3),
    ...                                          "imagenet"), data).passed
    True
    """
    from kerastrain.sanity.core import CheckResult, _take
    _checks.check_int("examples", examples, minimum=2)
    _checks.check_real("min_spread", min_spread, 0, low_open=True)
    x, _ = _take(data, examples)
    codes = np.asarray(backbone.predict_on_batch(x), dtype=np.float64)
    codes = codes.reshape(len(codes), -1)
    std = codes.std(axis=0)
    figures = {"spread": float(std.mean()), "max_spread": float(std.max()),
               "dead_fraction": float(np.mean(std == 0)), "features": int(codes.shape[1]),
               "examples": int(len(codes))}
    passed = bool(np.isfinite(figures["spread"]) and figures["spread"] >= min_spread)
    if passed:
        advice = (f"CNN codes vary across images (mean std {figures['spread']:.3g} "
                  f">= {min_spread:g}).")
    else:
        advice = (
            f"The backbone's CNN codes do not vary across images (mean std "
            f"{figures['spread']:.3g} < {min_spread:g} over {figures['features']} "
            "features): a head trained on them stays at chance (loss ln C). Use "
            "pretrained weights (--weights=imagenet, or a .keras backbone trained "
            "on images, e.g. by recipes.train --save_backbone), or train every "
            "layer with BatchNorm in training mode (--mode=finetune with all "
            "layers trainable), or train from scratch (recipes.train).")
    result = CheckResult("cnn_codes", passed, figures, advice)
    if not passed and raise_error:
        raise ValueError(advice)
    return result
