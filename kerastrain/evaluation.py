"""Accuracy and cross-entropy of a classifier: one definition for the toolkit.

Every figure kerastrain reports about a classifier comes from here: the
recipes' `metrics.json` (final, SWA, EMA and ensemble models alike),
`kt.transfer.LinearProbe.evaluate` and the check `kt.export` runs on a
SavedModel. Models that emit logits and models that emit probabilities (a
softmax output, an `Ensemble`) are scored the same way, so their figures
compare:

- `accuracy`: the share of examples whose highest-scoring class is the label;
- `loss`: the mean cross-entropy `-log p(label)` in float64, with `p` floored
  at `1e-12`, and without weight penalties (which differ between models and
  do not exist for an ensemble).

    >>> kt.evaluation.evaluate(model, data.test)
    {'accuracy': 0.62, 'loss': 1.07, 'examples': 1000}
"""

import keras
import numpy as np

from kerastrain import _introspect

_FLOOR = 1e-12


def probabilities(outputs, from_logits=True):
    """Class probabilities of a batch of model outputs, in float64.

    Args:
        outputs: array `(N, num_classes)`.
        from_logits: whether `outputs` are logits (softmaxed here) or already
            probabilities (returned as they are). Defaults to `True`.

    Returns:
        A float64 NumPy array `(N, num_classes)`.
    """
    outputs = np.asarray(keras.ops.convert_to_numpy(outputs), dtype=np.float64)
    if not from_logits:
        return outputs
    exp = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def scores(probabilities, labels):
    """Accuracy and mean cross-entropy of class probabilities against labels.

    Args:
        probabilities: array `(N, num_classes)` of class probabilities.
        labels: `N` class ids, or one-hot rows `(N, num_classes)`.

    Returns:
        `{"accuracy": float, "loss": float, "examples": N}`.

    Raises:
        ValueError: for no examples, or labels that do not match.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape == probabilities.shape:
        labels = labels.argmax(axis=-1)
    labels = labels.reshape(-1).astype(np.int64)
    if probabilities.ndim != 2 or len(labels) != len(probabilities):
        raise ValueError(f"Invalid labels: expected {len(probabilities)} class ids for "
                         f"probabilities of shape {probabilities.shape}, received "
                         f"labels of shape {labels.shape}")
    if not len(labels):
        raise ValueError("Nothing to evaluate: the data has no examples")
    num_classes = probabilities.shape[-1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"Invalid labels: expected class ids in [0, {num_classes}), "
                         f"received {labels.min()}..{labels.max()}")
    picked = np.maximum(probabilities[np.arange(len(labels)), labels], _FLOOR)
    return {"accuracy": float(np.mean(probabilities.argmax(axis=-1) == labels)),
            "loss": float(-np.mean(np.log(picked))), "examples": int(len(labels))}


def predict_probabilities(model, dataset):
    """Class probabilities of `model` on the images of `(images, labels)`
    batches, and the labels, in one pass over `dataset`.

    Args:
        model: a Keras classifier emitting logits or probabilities (read from
            its graph: a softmax output, or an `Ensemble`).
        dataset: a `tf.data.Dataset` of `(images, labels)` batches.

    Returns:
        `(probabilities, labels)`: float64 `(N, num_classes)` and int64 `(N,)`.
    """
    outputs, labels = [], []
    for images, batch_labels in dataset:  # one pass: images and labels stay paired
        outputs.append(keras.ops.convert_to_numpy(model.predict_on_batch(images)))
        labels.append(np.asarray(batch_labels))
    if not outputs:
        raise ValueError("Nothing to evaluate: the dataset yielded no batches")
    probs = probabilities(np.concatenate(outputs),
                          from_logits=not _introspect.outputs_probabilities(model))
    labels = np.concatenate(labels)
    if labels.ndim == 2 and labels.shape == probs.shape:
        labels = labels.argmax(axis=-1)
    return probs, labels.reshape(-1).astype(np.int64)


def evaluate(model, dataset):
    """Accuracy and mean cross-entropy of `model` on `dataset`.

    Args:
        model: a Keras classifier emitting logits or probabilities.
        dataset: a `tf.data.Dataset` of `(images, labels)` batches.

    Returns:
        `{"accuracy": float, "loss": float, "examples": N}`.
    """
    return scores(*predict_probabilities(model, dataset))

