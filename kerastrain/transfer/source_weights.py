"""Source weights: a classifier trained on a source domain, with its manifest.

Offline there are no ImageNet weights, and a small target set is exactly
where a pretrained backbone matters. A *source-weights directory* holds a
whole trained classifier (`classifier.keras`: its nested `backbone` and the
source head) and `manifest.json`: the architecture and its arguments, the
input shape, the source classes and data, the command that made it, its
test accuracy there, and the file's sha256. `recipes.train
--save_source_weights=DIR` writes one; `backbone(weights=DIR)` and
`recipes.finetune --weights=DIR` load its feature extractor after checking
the hash. The package ships one, addressed by name: `"cifar10-source"`
(see `available_weights()`).
"""

import hashlib
import json
import os

import keras

from kerastrain import _io

CLASSIFIER_FILE = "classifier.keras"
MANIFEST_FILE = "manifest.json"
_FORMAT = "kerastrain.source_weights"
_PACKAGED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "weights")


def available_weights():
    """The names of the source weights shipped inside the package."""
    if not os.path.isdir(_PACKAGED):
        return []
    return sorted(n for n in os.listdir(_PACKAGED)
                  if os.path.isfile(os.path.join(_PACKAGED, n, MANIFEST_FILE)))


def resolve(weights):
    """The source-weights directory that `weights` names (a shipped name or a
    directory with a manifest), or `None` when `weights` is no such thing."""
    if not isinstance(weights, (str, os.PathLike)):
        return None
    weights = os.fspath(weights)
    if weights in available_weights():
        return os.path.join(_PACKAGED, weights)
    if os.path.isfile(os.path.join(weights, MANIFEST_FILE)):
        return weights
    return None


def read_manifest(weights):
    """The manifest of source weights (a shipped name or a directory).

    Raises:
        ValueError: `weights` is no source-weights directory.
    """
    directory = resolve(weights)
    if directory is None:
        raise ValueError(f"Invalid value for `weights`: {weights!r} is neither shipped "
                         f"source weights ({available_weights()}) nor a directory "
                         f"with a {MANIFEST_FILE}")
    manifest = _io.read_json(os.path.join(directory, MANIFEST_FILE))
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise ValueError(f"{os.path.join(directory, MANIFEST_FILE)!r} is not a "
                         "kerastrain source-weights manifest")
    return manifest


def load_classifier(weights):
    """The source classifier of `weights`, after checking its sha256.

    Raises:
        ValueError: the file's hash differs from the manifest's (the file is
            damaged or was replaced; remake it with the manifest's command).
    """
    manifest = read_manifest(weights)
    path = os.path.join(resolve(weights), CLASSIFIER_FILE)
    digest = sha256(path)
    if digest != manifest["sha256"]:
        raise ValueError(f"{path!r} has sha256 {digest}, its manifest says "
                         f"{manifest['sha256']}: the file is damaged or was replaced. "
                         f"Reinstall kerastrain, or remake it with: {manifest['command']}")
    return keras.saving.load_model(path, compile=False)


def feature_extractor(classifier, feature_layer=None):
    """The classifier's nested `backbone` model (a keras.applications
    network), or its layers up to the pooled `features` (small_cnn).

    Args:
        classifier: a source classifier.
        feature_layer: a layer of the network inside the backbone where the
            features are taken (average-pooled) instead of its top: the top
            layers of a network trained on a few source classes are specific
            to them, lower ones transfer better (see the manifest's
            `feature_layer`). Defaults to `None` (the top).
    """
    nested = {layer.name: layer for layer in classifier.layers}.get("backbone")
    if not isinstance(nested, keras.Model):
        from kerastrain.transfer.backbones import cut_backbone
        return cut_backbone(classifier)
    if feature_layer is None:
        return nested
    network = next(layer for layer in nested.layers if isinstance(layer, keras.Model))
    trunk = keras.Model(network.input, network.get_layer(feature_layer).output,
                        name=network.name)
    inputs = keras.Input(nested.input_shape[1:], name="images")
    x = inputs
    for layer in nested.layers[1:]:  # resizing/preprocessing, then the network
        if layer is network:
            x = trunk(x)
            break
        x = layer(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name="backbone")


def save(classifier, directory, *, architecture, arguments, class_names, data, command,
         test_accuracy, test_images):
    """Writes `classifier` and its manifest to `directory` (each file atomically).

    Args:
        classifier: the trained source classifier (logits out).
        directory: where to write `classifier.keras` and `manifest.json`.
        architecture: the `keras.applications` name (or `"small_cnn"`).
        arguments: the application's arguments (`{"alpha": 0.35}`).
        class_names: the source classes, in the classifier's output order.
        data: the data spec trained on.
        command: the command that made the weights.
        test_accuracy: the classifier's accuracy on the source test split.
        test_images: how many images that accuracy was measured on.

    Returns:
        The manifest.
    """
    path = os.path.join(directory, CLASSIFIER_FILE)
    # The weights only: a copy without the optimizer (Adam's two slots per
    # weight would triple the file).
    copy = keras.models.clone_model(classifier)
    copy.set_weights(classifier.get_weights())
    _io.atomic_write(path, copy.save)
    import tensorflow as tf

    manifest = {
        "format": _FORMAT, "version": 1, "architecture": architecture,
        "arguments": dict(arguments), "input_shape": list(classifier.input_shape[1:]),
        "class_names": list(class_names), "data": data, "command": command,
        "source_test_accuracy": round(float(test_accuracy), 4),
        "source_test_images": int(test_images), "file": CLASSIFIER_FILE,
        "bytes": os.path.getsize(path), "sha256": sha256(path),
        "feature_layer": None, "keras": keras.__version__, "tensorflow": tf.__version__}
    _io.write_text(os.path.join(directory, MANIFEST_FILE),
                   json.dumps(manifest, indent=2) + "\n")
    return manifest


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
