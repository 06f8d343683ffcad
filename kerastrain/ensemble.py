"""Averaging the predictions of several trained models.

An ensemble of independently trained networks, or of the snapshots of one
cyclic run (Huang et al., 2017, "Snapshot Ensembles: Train 1, get M for
free"), usually beats each member. Keras has no ensemble model:
`keras.layers.Average` averages raw outputs (logits, for our classifiers) and
knows nothing of member weights, snapshot directories or per-member
evaluation. `Ensemble` is a `keras.Model`: `compile`, `evaluate`, `predict`,
`.keras` saving and `export_saved_model` (one graph) all work on it.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from kerastrain import _checks, _introspect, _manifest

_COMBINE_MODES = ("mean_probs", "mean_logits")


@keras.saving.register_keras_serializable(package="kerastrain")
class Ensemble(keras.Model):
    """A model whose prediction is the weighted average of its members'.

    Every member sees the same input. Member outputs are read as logits,
    except for members whose last layer already applies softmax (a `Softmax`
    layer, or `activation="softmax"`), which are read as probabilities and
    never softmaxed twice. With member log-probabilities `log p_m` and
    weights `w_m` (normalised to sum to 1):

    - `combine="mean_probs"`: `p = sum_m w_m * p_m`, the usual ensemble
      average of predicted distributions.
    - `combine="mean_logits"`: `p = softmax(sum_m w_m * z_m)`, a weighted
      geometric mean of the distributions. `log p_m` differs from the logits
      `z_m` by a per-example constant, which softmax cancels, so this equals
      softmax of the mean logits.

    Either way the ensemble outputs **probabilities**: compile it with
    `SparseCategoricalCrossentropy(from_logits=False)` (the default).

    Args:
        models: non-empty list of built `keras.Model`s with the same input
            shape and the same output shape `(batch, num_classes)`.
        weights: optional list of positive member weights, one per model;
            normalised to sum to 1. Defaults to `None` (equal weights).
        combine: `"mean_probs"` or `"mean_logits"`. Defaults to
            `"mean_probs"`.
        name: model name. Defaults to `"ensemble"`.
        **kwargs: passed to `keras.Model`.

    Example:

    >>> ensemble = Ensemble([model_a, model_b], weights=[2, 1])
    >>> ensemble.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> ensemble.evaluate(test_ds)
    >>> ensemble.evaluate_members(test_ds)["members"]
    """

    # For kerastrain._introspect: an ensemble emits probabilities and takes
    # its members' input.
    _introspect_probabilities = True

    @property
    def _introspect_input_model(self):
        return self.members[0]

    def __init__(self, models, weights=None, combine="mean_probs", name="ensemble",
                 **kwargs):
        models = _check_models(models)
        weights = _check_weights(weights, len(models))
        _checks.check_choice("combine", combine, _COMBINE_MODES)
        super().__init__(name=name, **kwargs)
        self.members = models
        self.member_weights = weights
        self.combine = combine
        self._member_outputs_probabilities = [_introspect.outputs_probabilities(m)
                                             for m in models]
        if _introspect.input_shape(models[0]) is not None:
            self.build(_introspect.input_shape(models[0]))

    @classmethod
    def from_directory(cls, path, **kwargs):
        """Loads every `.keras` member saved in `path` into one ensemble.

        If `path/manifest.json` exists (as `SnapshotEnsemble` writes it:
        `{"version": 1, "snapshots": [{"index": ..., "file": ..., "epoch": ...,
        "step": ...}, ...]}`) its files are loaded in the listed order;
        otherwise every `*.keras` file, sorted by name.

        Args:
            path: directory holding the `.keras` files.
            **kwargs: passed to `Ensemble` (`weights`, `combine`, `name`).

        Returns:
            An `Ensemble` of the loaded (uncompiled) models.
        """
        return cls([keras.saving.load_model(f, compile=False)
                    for f in _member_files(path)], **kwargs)

    def build(self, input_shape):
        for member in (m for m in self.members if not m.built):
            member.build(input_shape)
        self.built = True

    def call(self, inputs, training=False):
        return self._combine(self._member_log_probs(inputs, training))

    def compute_output_shape(self, input_shape):
        return self.members[0].compute_output_shape(input_shape)

    def evaluate_members(self, dataset, steps=None):
        """Top-1 accuracy of every member and of the ensemble, in one pass.

        Each batch runs every member once and combines those outputs, so the
        dataset is read once, not once per member plus once for the ensemble.

        Args:
            dataset: iterable of `(images, labels)` or
                `(images, labels, sample_weights)` batches; labels are class
                ids or one-hot rows.
            steps: optional number of batches to use. Defaults to `None`
                (the whole dataset).

        Returns:
            `{"members": [acc_0, ...], "ensemble": acc, "mean_member": mean
            of the member accuracies}`, Python floats.
        """
        batch_counts = tf.function(self._batch_counts, reduce_retracing=True)
        counts = np.zeros(len(self.members) + 2)  # members, ensemble, examples
        for i, batch in enumerate(dataset):
            if steps is not None and i >= steps:
                break
            counts += batch_counts(*keras.utils.unpack_x_y_sample_weight(batch)).numpy()
        if counts[-1] == 0:
            raise ValueError("Invalid value for `dataset`: it yielded no examples; "
                             "pass a dataset of `(images, labels)` batches.")
        members = [float(c) for c in counts[:-2] / counts[-1]]
        return {"members": members, "ensemble": float(counts[-2] / counts[-1]),
                "mean_member": float(np.mean(members))}

    def _batch_counts(self, x, y, sample_weight):
        """Weighted hits of each member and of the ensemble, and the weight."""
        log_probs = self._member_log_probs(x, False)
        scores = tf.concat([log_probs, self._combine(log_probs)[None]], axis=0)
        y = tf.convert_to_tensor(y)
        if y.shape.rank == 2 and y.shape[-1] == log_probs.shape[-1]:
            y = tf.argmax(y, axis=-1)  # one-hot labels
        y = tf.cast(tf.reshape(y, [-1]), tf.int64)
        weight = tf.ones_like(y, tf.float64) if sample_weight is None else tf.cast(
            tf.reshape(sample_weight, [-1]), tf.float64)
        hits = tf.cast(tf.equal(tf.argmax(scores, axis=-1), y), tf.float64)
        return tf.concat([tf.reduce_sum(hits * weight, axis=-1),
                          tf.reduce_sum(weight)[None]], axis=0)

    def _member_log_probs(self, inputs, training):
        """Stacked `[members, batch, classes]` float32 log-probabilities."""
        log_probs = []
        for member, is_probs in zip(self.members, self._member_outputs_probabilities):
            out = keras.ops.cast(member(inputs, training=training), "float32")
            log_probs.append(keras.ops.log(keras.ops.maximum(out, 1e-12)) if is_probs
                             else keras.ops.log_softmax(out, axis=-1))
        return keras.ops.stack(log_probs, axis=0)

    def _combine(self, log_probs):
        weights = keras.ops.reshape(
            keras.ops.convert_to_tensor(self.member_weights, "float32"), (-1, 1, 1))
        if self.combine == "mean_probs":
            return keras.ops.sum(weights * keras.ops.exp(log_probs), axis=0)
        return keras.ops.softmax(keras.ops.sum(weights * log_probs, axis=0), axis=-1)

    def get_config(self):
        models = [keras.saving.serialize_keras_object(m) for m in self.members]
        return {**super().get_config(), "models": models,
                "weights": list(self.member_weights), "combine": self.combine}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["models"] = [
            keras.saving.deserialize_keras_object(m, custom_objects=custom_objects)
            for m in config["models"]]
        return cls(**config)


def _check_models(models):
    models = list(models) if isinstance(models, tuple) else models
    if not isinstance(models, list) or not models:
        raise ValueError("Invalid value for `models`: expected a non-empty list of "
                         f"keras.Model, received models={models!r}")
    for i, model in enumerate(models):
        if not isinstance(model, keras.Model):
            raise ValueError("Invalid value for `models`: every member must be a "
                             f"keras.Model, received {type(model).__name__} at "
                             f"index {i}")
    for kind in ("input", "output"):
        shapes = [(i, _shape(m, kind)) for i, m in enumerate(models)]
        shapes = [(i, shape) for i, shape in shapes if shape is not None]
        for i, shape in shapes:
            if shape != shapes[0][1] or (kind == "output" and len(shape) != 2):
                raise ValueError(
                    f"Invalid value for `models`: every member must take the same "
                    f"input shape and output the same `(batch, num_classes)` "
                    f"shape; member {shapes[0][0]} has {kind} shape "
                    f"{shapes[0][1]} but member {i} has {kind} shape {shape}")
    return models


def _shape(model, kind):
    """The model's single input or output shape; `None` if unknown."""
    if kind == "input":
        return _introspect.input_shape(model)
    shapes = [tuple(t.shape) for t in _introspect.symbolic(model, "outputs")]
    return (shapes[0] if len(shapes) == 1 else tuple(shapes)) if shapes else None


def _check_weights(weights, count):
    if weights is None:
        return tuple([1.0 / count] * count)
    values = list(weights) if hasattr(weights, "__iter__") else [weights]
    _checks.check("weights", weights, all(_checks.is_number(w) for w in values),
                  "a list of numbers")
    _checks.check("weights", weights, len(values) == count,
                  f"{count} weights (one per model)")
    _checks.check("weights", weights, all(_checks.is_real(w) and w > 0 for w in values),
                  "finite positive numbers")
    total = sum(values)
    return tuple(float(w) / total for w in values)


def _member_files(path):
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"Invalid value for `path`: {path!r} is not a directory; pass the "
            "directory holding the `.keras` members (e.g. the SnapshotEnsemble "
            "directory).")
    entries = _manifest.read(path)
    if entries is not None:
        files = [os.path.join(path, entry["file"]) for entry in entries]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"The manifest {_manifest.path(path)!r} lists files "
                                    f"that do not exist: {missing}")
    else:
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.endswith(".keras"))
    if not files:
        raise ValueError(
            f"Invalid value for `path`: {path!r} holds no `.keras` models; save "
            "members there first (e.g. with kerastrain.callbacks.SnapshotEnsemble).")
    return files
