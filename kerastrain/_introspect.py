"""What a Keras model takes and emits, and what its optimizer runs (private).

Shared by `ensemble`, `evaluation`, `export` and the callbacks. A model that wraps others (`Ensemble`)
answers through two class attributes instead of being imported here, so
that this module depends on Keras alone: `_introspect_probabilities = True`
(it emits probabilities) and `_introspect_input_model` (the model whose
input it takes).
"""

import keras


def outputs_probabilities(model):
    """Whether `model` ends in a softmax: its output layer is a `Softmax` or
    has a softmax `activation` (nested models are followed), or it says so
    (`Ensemble`). Anything else, subclassed models included, emits logits."""
    if getattr(model, "_introspect_probabilities", False) is True:
        return True
    layer = _output_layer(model)
    if isinstance(layer, keras.Model) and layer is not model:
        return outputs_probabilities(layer)
    activation = getattr(layer, "activation", None)
    return (isinstance(layer, keras.layers.Softmax)
            or getattr(activation, "__name__", None) == "softmax")


def symbolic(model, attribute):
    """`model.inputs`/`model.outputs` as a list; `[]` for subclassed models."""
    try:
        return list(getattr(model, attribute) or [])
    except (AttributeError, ValueError):
        return []


def input_shape(model):
    """The `(batch, height, width, channels)` input shape, if known."""
    inner = getattr(model, "_introspect_input_model", None)
    if inner is not None:
        return input_shape(inner)
    inputs = symbolic(model, "inputs")
    return tuple(inputs[0].shape) if len(inputs) == 1 else None


def _output_layer(model):
    outputs = symbolic(model, "outputs")
    if len(outputs) == 1 and hasattr(outputs[0], "_keras_history"):
        return outputs[0]._keras_history.operation
    return (getattr(model, "layers", None) or [None])[-1]


def base_optimizer(optimizer):
    """The optimizer that holds the rate and the step count: wrappers such as
    `LossScaleOptimizer` are looked through."""
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def learning_rate_source(optimizer):
    """What sets the optimizer's rate: its `LearningRateSchedule` (not the
    schedule's value now), a callable without arguments, or the variable
    holding a constant rate.

    Keras keeps a schedule or callable only in the private `_learning_rate`;
    `optimizer.learning_rate` is its value at the current step.
    """
    optimizer = base_optimizer(optimizer)
    rate = optimizer._learning_rate
    if callable(rate):  # schedules are callable too
        return rate
    return optimizer.learning_rate


def learning_rate_at(optimizer, step):
    """The rate the optimizer applies at `step` (its schedule asked for that
    step, or its constant rate), as a float."""
    rate = learning_rate_source(optimizer)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(step)
    elif callable(rate):
        rate = rate()
    return float(keras.ops.convert_to_numpy(rate))
