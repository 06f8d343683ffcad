"""Which backbone layers train: freezing, unfreezing top blocks, gradually.

Keras gives `layer.trainable`; what it leaves to each user is finding a
backbone's *blocks* (`block_16_*`, `block6a_*`, `conv5_block3_*`, ...),
keeping BatchNorm frozen when unfreezing (the pitfall of the Keras transfer
learning guide: a small target set would wreck its statistics and scales)
and, for gradual unfreezing, changing what trains in the middle of `fit`.
"""

import re

import keras

from kerastrain import _checks
# Moved to kerastrain.callbacks; still importable from here (same class).
from kerastrain.callbacks.unfreezing import GradualUnfreezing  # noqa: F401

# A layer's block is the first match of these prefixes (one per naming style:
# ResNet/DenseNet `conv5_block3_`, InceptionResNetV2 `block35_1_`,
# EfficientNet/VGG/Xception/small_cnn `block6a_`, `block3_`, MobileNetV2
# `block_16_`, MobileNet(V2/V3) `expanded_conv_10_`, ConvNeXt
# `..._stage_3_block_2_`, InceptionV3 `mixed7`).
_BLOCK = re.compile(r"^(conv\d+_block\d+|block\d+_\d+|block\d+[a-z]?|block_\d+|"
                    r"expanded_conv(?:_\d+)?|.*stage_\d+_block_\d+|mixed\d+$)(?=_|/|$)")
_UNITS = ("blocks", "layers")


def freeze_backbone(model):
    """Phase 1: freezes the nested backbone(s) of a classifier; the head trains.

    Recompile afterwards: `trainable` takes effect at `compile()`.

    Args:
        model: a classifier from `kerastrain.transfer.build_classifier`.

    Returns:
        The frozen backbone models (a list).
    """
    nested = _nested_models(model)
    if not nested:
        raise ValueError(f"Model {model.name!r} has no nested backbone model; "
                         "build it with kerastrain.transfer.build_classifier("
                         "backbone, num_classes)")
    for backbone in nested:
        backbone.trainable = False
    return nested


def unfreeze(model, top=1, unit="blocks"):
    """Phase 2: unfreezes the top `top` blocks (or layers) of the backbone.

    The backbone is the classifier's nested model(s), or `model` itself when
    it has none (e.g. a feature extractor). Its weighted layers are grouped
    into blocks (see `block_names`); the top `top` blocks become trainable,
    every other backbone layer and EVERY `BatchNormalization` layer stays
    frozen. Layers outside the backbone (the head) are not touched.
    Recompile afterwards.

    Args:
        model: a classifier from `build_classifier`, or a backbone.
        top: how many blocks/layers, counted from the output, to unfreeze;
            0 freezes the whole backbone. Defaults to 1.
        unit: `"blocks"` or `"layers"` (weighted, non-BatchNorm layers).
            Defaults to `"blocks"`.

    Returns:
        The names of the unfrozen blocks (or layers), bottom to top.

    Example:

    >>> unfreeze(classifier, top=2)
    ['block2', 'block3']
    """
    groups = _groups(model, unit)
    _checks.check("top", top, _checks.is_int(top) and 0 <= top <= len(groups),
                  f"an int in [0, {len(groups)}] (the backbone has {len(groups)} {unit})")
    for scope in _nested_models(model) or [model]:
        scope.trainable = True  # Containers must be trainable for leaves to be.
        for layer in _leaves(scope):
            layer.trainable = False
    chosen = groups[len(groups) - top:]
    for _, layers in chosen:
        for layer in layers:
            layer.trainable = True
    return [name for name, _ in chosen]


def block_names(model):
    """The backbone's blocks, bottom to top: `[(block, [layers])]`.

    Only layers with weights are listed, BatchNorm excluded. Layers whose
    names share a block prefix (`conv5_block3`, `block35_1`, `block6a`,
    `block_16`, `expanded_conv_10`, `stage_3_block_2`, `mixed7`, `block3`)
    form one block; a layer without one (a stem, a transition or an
    Inception branch convolution) joins the next block, and those after the
    last block (e.g. `Conv_1`, `top_conv`) are blocks of their own. Families
    without block names (NASNet) get one block per layer: use
    `unit="layers"` there.

    Args:
        model: a classifier from `build_classifier`, or a backbone.

    Returns:
        A list of `(name, [layers])` pairs.
    """
    groups, pending = [], []

    def add(key, layers):
        if groups and groups[-1][0] == key:
            groups[-1][1].extend(layers)
        else:
            groups.append((key, list(layers)))

    for layer in _leaves_of(model):
        match = _BLOCK.match(layer.name)
        weighted = _is_weighted(layer)
        if match is None:
            pending += [layer] if weighted else []
            continue
        add(match.group(1), pending + ([layer] if weighted else []))
        pending = []
    for layer in pending:
        add(layer.name.split("/")[0], [layer])
    return [(key, layers) for key, layers in groups if layers]


def _groups(model, unit):
    _checks.check_choice("unit", unit, _UNITS)
    if unit == "blocks":
        return block_names(model)
    return [(layer.name, [layer]) for layer in _leaves_of(model) if _is_weighted(layer)]


def _nested_models(model):
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def _leaves(layer):
    """Non-container layers in graph order, nested models expanded."""
    if not isinstance(layer, keras.Model):
        return [layer]
    return [leaf for sub in layer.layers for leaf in _leaves(sub)]


def _leaves_of(model):
    return [leaf for scope in _nested_models(model) or [model] for leaf in _leaves(scope)]


def _is_weighted(layer):
    return bool(layer.weights) and not isinstance(layer, keras.layers.BatchNormalization)
