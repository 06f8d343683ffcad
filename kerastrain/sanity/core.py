"""The result type every sanity check returns, and the code the checks share."""

import contextlib
import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from kerastrain._checks import check
from kerastrain._checks import check_int
from kerastrain._checks import check_seed
from kerastrain._checks import fail
from kerastrain._checks import is_real


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
    return check_int("num_classes", num_classes, minimum=2)


def _check_model(model):
    return check("model", model, isinstance(model, keras.Model), "a keras.Model")


def _check_compile(model):
    """Refuses a compiled model whose loss Keras cannot compute, saying why.

    Keras 3 reads `compile(optimizer, loss, loss_weights, metrics)`: the
    Keras 2 habit `compile("adam", loss, ["accuracy"])` passes the metrics
    as loss weights, and every loss computation (`fit` included) then fails
    deep inside Keras with "dtype='string' is not a valid dtype".
    """
    try:
        weights = model.get_compile_config().get("loss_weights")
    except (OSError, TypeError, ValueError):
        # A loss Keras cannot serialize (a lambda without source): its
        # weights cannot be read; nothing else depends on them here.
        return model
    if weights is not None and not all(is_real(w) for w in keras.tree.flatten(weights)):
        raise ValueError(
            "Invalid value for `loss_weights` of model.compile(): expected numbers, "
            f"received loss_weights={weights!r}. Keras 3's compile takes (optimizer, "
            "loss, loss_weights, metrics), so a third positional argument is read as "
            "loss weights, not as metrics as in Keras 2, and no loss can be computed "
            "(fit fails too). Pass the metrics by keyword: model.compile(optimizer, "
            f"loss, metrics={weights!r})."
        )
    return model


def _fresh_model(build_model, seed=None):
    """Calls `build_model()` (seeded) and checks that it is compiled."""
    expected = "a zero-argument callable returning a fresh compiled keras.Model"
    check("build_model", build_model,
          callable(build_model) and not isinstance(build_model, keras.Model), expected)
    check_seed("seed", seed)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = build_model()
    if not isinstance(model, keras.Model) or not model.compiled:
        returned = ("a keras.Model that is not compiled" if isinstance(model, keras.Model)
                    else f"a {type(model).__name__}")
        fail("build_model", build_model,
             f"{expected} (call `model.compile(optimizer, loss)` inside it); it "
             f"returned {returned}")
    return _check_compile(model)


def _set_learning_rate(model, learning_rate):
    try:
        model.optimizer.learning_rate = learning_rate
    except TypeError as error:
        raise ValueError(
            "Invalid value for `learning_rate`: the model's optimizer uses a "
            "LearningRateSchedule, whose rate cannot be set; pass "
            f"learning_rate=None to use it as compiled ({error})"
        ) from error


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
