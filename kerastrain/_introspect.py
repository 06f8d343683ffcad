"""What a Keras model takes and emits, read from its graph (private).

Shared by `ensemble`, `evaluation` and `export`. A model that wraps others (`Ensemble`)
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
