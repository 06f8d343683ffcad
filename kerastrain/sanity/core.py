"""The result type every sanity check returns, and the code the checks share."""

import contextlib
import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class CheckResult:
    """The outcome of one sanity check.

    Attributes:
        name: the check's name, e.g. `"initial_loss"`.
        passed: whether the check passed.
        figures: the measured numbers (JSON-serializable), e.g. the loss and
            its expected value.
        advice: one line saying what was found and, on failure, what to fix.
    """

    name: str
    passed: bool
    figures: dict
    advice: str

    def to_dict(self):
        """Returns the result as a JSON-serializable dict."""
        return {
            "name": self.name,
            "passed": bool(self.passed),
            "figures": _jsonable(self.figures),
            "advice": self.advice,
        }


def _take(data, examples=None):
    """Returns up to `examples` leading `(images, labels)` of `data` as numpy.

    `data` is an `(images, labels)` pair of arrays, a batched `tf.data` of
    `(images, labels)`, or anything with a `.train` dataset (what
    `kerastrain.data.load` returns), whose training split is used.
    """
    data = getattr(data, "train", data)
    if isinstance(data, tf.data.Dataset):
        xs, ys, count = [], [], 0
        for x, y in _batches(data):
            xs.append(np.asarray(x))
            ys.append(np.asarray(y))
            count += len(ys[-1])
            if examples is not None and count >= examples:
                break
        if not xs:
            raise ValueError("Invalid value for `data`: the dataset is empty.")
        x, y = np.concatenate(xs), np.concatenate(ys)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise ValueError(
                "Invalid value for `data`: images and labels differ in length, "
                f"received {len(x)} images and {len(y)} labels."
            )
    else:
        raise ValueError(
            "Invalid value for `data`: expected an (images, labels) pair of "
            "arrays, a batched tf.data.Dataset of (images, labels), or the "
            "result of kerastrain.data.load(), received "
            f"{type(data).__name__}."
        )
    if examples is not None:
        x, y = x[:examples], y[:examples]
    return x, y


def _batches(dataset):
    """Iterates over a batched `tf.data` of `(images, labels)` pairs."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) >= 2):
        raise ValueError(
            "Invalid value for `data`: expected a dataset of (images, labels) "
            f"pairs, received elements {spec}."
        )
    for element in dataset:
        yield element[0], element[1]


def _num_classes(num_classes, data=None, model=None):
    if num_classes is None:
        num_classes = getattr(data, "num_classes", None)
    if num_classes is None and model is not None:
        num_classes = model.output_shape[-1]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
        num_classes < 2
    ):
        raise ValueError(
            "Invalid value for `num_classes`: expected an int >= 2, received "
            f"num_classes={num_classes!r}"
        )
    return num_classes


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value for `model`: expected a keras.Model, received "
            f"{type(model).__name__}."
        )
    return model


def _fresh_model(build_model, seed=None):
    """Calls `build_model()` (seeded) and checks that it is compiled."""
    if isinstance(build_model, keras.Model) or not callable(build_model):
        raise ValueError(
            "Invalid value for `build_model`: expected a zero-argument "
            "callable returning a fresh compiled keras.Model, received "
            f"{type(build_model).__name__}."
        )
    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = build_model()
    if not isinstance(model, keras.Model) or not model.compiled:
        raise ValueError(
            "Invalid value for `build_model`: it must return a compiled "
            "keras.Model (call `model.compile(optimizer, loss)` inside it), "
            f"received {type(model).__name__}"
            + ("" if not isinstance(model, keras.Model) else " (not compiled)")
            + "."
        )
    return model


def _set_learning_rate(model, learning_rate):
    try:
        model.optimizer.learning_rate = learning_rate
    except TypeError as error:
        raise ValueError(
            "Invalid value for `learning_rate`: the model's optimizer uses a "
            "LearningRateSchedule, whose rate cannot be set; pass "
            f"learning_rate=None to use it as compiled ({error})"
        ) from error


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Invalid value for `{name}`: expected an int >= 1, received "
            f"{name}={value!r}"
        )


def _check_positive(name, value, allow_zero=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"Invalid value for `{name}`: expected a finite number {bound}, "
            f"received {name}={value!r}"
        )


@contextlib.contextmanager
def _preserved_state(model):
    """Restores the model's non-trainable state (BatchNorm moving statistics,
    seed generators) afterwards: a forward pass in training mode updates it,
    and a check must leave the model as it found it."""
    saved = [np.array(v.numpy()) for v in model.non_trainable_variables]
    try:
        yield
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)


def _train_step(model):
    """A compiled full-batch training step returning (loss, predictions).

    Written out (rather than `train_on_batch`) so that the step also returns
    the training-mode predictions, from which training accuracy is measured
    without a second pass through the model.
    """
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, y_pred

    return step


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    return value
