"""Feature extractors that take raw 0..255 images: `keras.applications` or saved.

`keras.applications` builds the networks but leaves each family's input
scaling (`preprocess_input`) and its minimum image size to the caller, and
downloads ImageNet weights with an opaque error when offline. `backbone()`
wraps any of them into one model that takes raw images, resizes images below
the family's minimum, applies the family's own preprocessing exactly once, and
pools to a feature vector; or loads a feature extractor saved by this toolkit.
"""

import os
import urllib.error
import warnings

import keras

from kerastrain import _checks
from kerastrain.layers import InvertedDropout
from kerastrain.transfer import source_weights

# Families whose models already rescale and normalise raw 0..255 inputs
# (their `preprocess_input` is a documented no-op); adding it would be harmless
# but the model must keep its own preprocessing, so `include_preprocessing=False`
# is refused for them.
_PREPROCESSING_INSIDE = ("mobilenet_v3", "efficientnet", "efficientnet_v2", "convnext")
# `min_size` that keras.applications enforces per family; 32 for all others.
_MIN_SIZE = {"inception_v3": 75, "inception_resnet_v2": 75, "xception": 71}
_POOLINGS = ("avg", "max", None)


class WeightsNotAvailableError(RuntimeError):
    """Pretrained weights could not be downloaded (usually: no network)."""


@keras.saving.register_keras_serializable(package="kerastrain")
class PreprocessInput(keras.layers.Layer):
    """Applies `keras.applications.<family>.preprocess_input` inside a model.

    Keras ships the preprocessing of each application family as a plain
    function; as a layer it travels with the model through `.keras` saves
    and SavedModel export, so the model takes raw 0..255 images.

    Args:
        family: name of a `keras.applications` module with a
            `preprocess_input` function, e.g. `"resnet"` (caffe: RGB->BGR and
            ImageNet mean subtracted), `"mobilenet_v2"` (`x / 127.5 - 1`) or
            `"densenet"` (torch: `/ 255`, ImageNet mean/std).
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(self, family, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(getattr(keras.applications, str(family), None),
                       "preprocess_input"):
            raise ValueError(f"Invalid value for `family`: expected a "
                             "keras.applications module with `preprocess_input`, "
                             f"received family={family!r}")
        self.family = family

    def call(self, inputs):
        module = getattr(keras.applications, self.family)
        return module.preprocess_input(keras.ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "family": self.family}


def backbone(name, input_shape=(32, 32, 3), weights=None, *, pooling="avg",
             trainable=True, resize=None, **kwargs):
    """A pretrained or fresh feature extractor that takes raw 0..255 images.

    For a `keras.applications` model (any name, any case: `"MobileNetV3Small"`,
    `"efficientnetb0"`, `"ResNet50"`, ...) the returned model is

    `raw images -> [Resizing] -> [PreprocessInput] -> base (no top) -> pooling`

    with the application (`include_top=False`) as ONE nested layer, so
    `unfreeze()` can find its blocks. `PreprocessInput` applies the family's
    own `preprocess_input` (caffe, tf or torch scaling); it is left out for
    MobileNetV3, EfficientNet(V2) and ConvNeXt, whose models already contain
    their `Rescaling`/`Normalization` layers (their `preprocess_input` is a
    no-op), so no image is ever preprocessed twice. Images smaller than the
    family's minimum (75 for InceptionV3/InceptionResNetV2, 71 for Xception,
    32 otherwise) are resized up (bilinear) to `max(minimum, size)` per side.

    Args:
        name: a `keras.applications` model name; ignored (with a warning if
            given) when `weights` is a `.keras` file, which holds its own
            architecture.
        input_shape: `(height, width, 3)` of the raw images. Defaults to
            `(32, 32, 3)`.
        weights: `None` or `"none"` (random init), `"imagenet"` (Keras'
            download; cached in `~/.keras/models`, so it works offline once
            fetched), or a path: a `.keras` feature extractor (e.g. written by
            `cut_backbone(model).save(path)`), returned as it is; a
            `.weights.h5` file written by `backbone(...).save_weights(path)`;
            or a `.h5` weights file of the application itself (such as the
            `*_notop.h5` file Keras downloads, copied from another machine);
            or source weights: the name of weights shipped in the package
            (`"cifar10-source"`, see `available_weights()`) or a directory
            written by `recipes.train --save_source_weights`, whose
            feature extractor is returned after its sha256 is checked. A
            `.keras` extractor or source weights made for another image size
            than `input_shape` get a `Resizing` layer in front that resizes
            the images to the size they were trained at (224x224 photos reach
            the 32x32 `"cifar10-source"` weights as 32x32 images).
            Defaults to `None`.
        pooling: `"avg"`, `"max"` or `None` (feature maps). Defaults to `"avg"`.
        trainable: initial `trainable` flag of the model. Defaults to `True`.
        resize: `(height, width)` the base sees instead of the default rule
            above (e.g. 96 for ImageNet weights on 32x32 images). Defaults
            to `None`.
        **kwargs: extra arguments of the application (`alpha`,
            `minimalistic`, ...).

    Returns:
        A functional `keras.Model` named `"backbone"` mapping raw images to
        features (or the model of the `.keras` file).

    Raises:
        ValueError: unknown name, bad pooling/resize, or a file of another type.
        FileNotFoundError: `weights` is a path that does not exist.
        WeightsNotAvailableError: the ImageNet download failed (offline).
            Keras' `get_file` has no timeout, so where a firewall drops
            packets instead of refusing them this may take the OS connect
            timeout (about two minutes) to fail.

    Example:

    >>> features = backbone("MobileNetV3Small", (32, 32, 3), weights=None)
    >>> features.output_shape
    (None, 576)
    """
    _checks.check_choice("pooling", pooling, _POOLINGS)
    if source_weights.resolve(weights) is not None:
        return _load_source_weights(weights, name, input_shape, trainable)
    weights = _check_weights(weights)
    if weights is not None and weights.endswith(".keras"):
        return _load_keras_file(weights, name, input_shape, trainable)
    cls = _resolve(name)
    family = cls.__module__.rsplit(".", 1)[-1]
    if family in _PREPROCESSING_INSIDE and kwargs.get("include_preprocessing") is False:
        raise ValueError(f"{cls.__name__} must keep its built-in preprocessing: "
                         "backbone() feeds it raw 0..255 images; drop "
                         "`include_preprocessing=False`")
    size = _target_size(input_shape, resize, _MIN_SIZE.get(family, 32))
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    if size != tuple(input_shape[:2]):
        x = keras.layers.Resizing(*size, name="resize")(x)
    if family not in _PREPROCESSING_INSIDE:
        x = PreprocessInput(family, name="preprocess")(x)
    h5_file = weights if weights and not weights.endswith(".weights.h5") and \
        weights != "imagenet" else None
    base = _build_base(cls, weights if weights == "imagenet" else h5_file,
                       (*size, input_shape[-1]), pooling, kwargs)
    model = keras.Model(inputs, base(x), name="backbone")
    if weights is not None and weights.endswith(".weights.h5"):
        model.load_weights(weights)
    model.trainable = trainable
    return model


def cut_backbone(model, layer="features", name="backbone"):
    """The feature extractor of a trained classifier: inputs -> `layer` output.

    The returned model shares its layers (and weights) with `model`; save it
    with `.save("backbone.keras")` and load it with
    `backbone(None, weights="backbone.keras")`.

    Args:
        model: a functional classifier, e.g. `kerastrain.models.small_cnn`.
        layer: name of the layer whose output is the feature vector.
            Defaults to `"features"` (small_cnn's pooled features).
        name: name of the returned model. Defaults to `"backbone"`.

    Returns:
        A functional `keras.Model`.
    """
    try:
        output = model.get_layer(layer).output
    except ValueError as err:
        raise ValueError(f"Model {model.name!r} has no layer {layer!r}; pass "
                         "`layer=` one of "
                         f"{[l.name for l in model.layers]}") from err
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, output, name=name)


def set_batch_norm_momentum(model, momentum):
    """Sets the `momentum` of every `BatchNormalization` layer in `model`
    (nested models included); returns how many layers were set.

    `keras.applications` builds BatchNorm with momentum 0.99 or 0.999: the
    moving statistics then average over the last ~100 or ~1,000 steps, so a
    network trained from scratch for a few hundred steps evaluates with
    statistics that are mostly its random start (a MobileNetV3Small trained on
    a small set stays at chance in inference mode). 0.9 averages over ~10
    steps. Set it before the model is compiled or fitted.

    Args:
        model: a Keras model.
        momentum: the new momentum, in `[0, 1)`.

    Returns:
        The number of BatchNormalization layers changed.
    """
    momentum = _checks.check_real("momentum", momentum, 0, 1, high_open=True)
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            count += 1
    return count


def scratch_classifier(name, num_classes, input_shape=(32, 32, 3), *, bn_momentum=0.9,
                       dropout=0.0, resize=None, kernel_regularizer=None, seed=None,
                       **kwargs):
    """A `keras.applications` network with random weights and a new
    classifier, to train from scratch (e.g. to make source weights).

    `raw images -> backbone(name, weights=None) -> [InvertedDropout] -> logits`,
    with the backbone as one nested model named `"backbone"` (its BatchNorm
    layers train normally and use `bn_momentum`, see
    `set_batch_norm_momentum`). Save the trained feature extractor with
    `model.get_layer("backbone").save(path)` and fine-tune from it with
    `backbone(None, weights=path)`.

    Args:
        name: a `keras.applications` model name.
        num_classes: number of classes (>= 2).
        input_shape: `(height, width, 3)` of the raw images. Defaults to
            `(32, 32, 3)`.
        bn_momentum: momentum of every BatchNorm layer, or `None` to keep
            Keras' (0.99 or 0.999). Defaults to `0.9`.
        dropout: `InvertedDropout` rate before the logits. Defaults to `0.0`.
        resize: `(height, width)` (or one int) the backbone sees. Defaults to
            `None` (see `backbone`).
        kernel_regularizer: regularizer of the logits layer. Defaults to `None`.
        seed: dropout seed. Defaults to `None`.
        **kwargs: arguments of the application (`alpha`, `minimalistic`, ...).

    Returns:
        An uncompiled functional `keras.Model` outputting logits.

    Example:

    >>> model = scratch_classifier("MobileNetV2", 5, alpha=0.35)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """
    _checks.check_int("num_classes", num_classes, minimum=2)
    _checks.check_real("dropout", dropout, 0, 1, high_open=True)
    features = backbone(name, input_shape, weights=None, resize=resize, **kwargs)
    if bn_momentum is not None:
        set_batch_norm_momentum(features, bn_momentum)
    inputs = keras.Input(input_shape, name="images")
    x = features(inputs)
    if dropout:
        x = InvertedDropout(dropout, seed=seed, name="dropout")(x)
    # float32 logits under a mixed precision policy (the Keras guide's advice).
    logits = keras.layers.Dense(num_classes, kernel_regularizer=kernel_regularizer,
                                dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="classifier")


def available_names():
    """The `keras.applications` model names `backbone()` accepts."""
    return sorted(n for n in dir(keras.applications)
                  if n[:1].isupper() and callable(getattr(keras.applications, n)))


def _resolve(name):
    names = {n.lower(): n for n in available_names()}
    if not isinstance(name, str) or name.lower() not in names:
        raise ValueError(f"Unknown backbone name {name!r}; expected one of "
                         f"{available_names()} (any case), or weights= a "
                         "`.keras` file")
    return getattr(keras.applications, names[name.lower()])


def _check_weights(weights):
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return "imagenet"
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError("Invalid value for `weights`: expected None, 'none', "
                         f"'imagenet', {source_weights.available_weights()} or a file "
                         f"path, received weights={weights!r}")
    path = os.fspath(weights)
    if not path.endswith((".keras", ".h5")):
        raise ValueError("Invalid value for `weights`: expected a `.keras`, "
                         "`.weights.h5` or `.h5` file, a source-weights directory or "
                         f"the name of shipped weights {source_weights.available_weights()}, "
                         f"received weights={path!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist; pass an "
                                "existing .keras/.weights.h5/.h5 file, "
                                "weights=None for random init, or 'imagenet'")
    return path


def _target_size(input_shape, resize, min_size):
    if len(input_shape) != 3:
        raise ValueError("Invalid value for `input_shape`: expected (height, "
                         f"width, channels), received input_shape={input_shape!r}")
    if resize is not None:
        size = tuple(resize) if isinstance(resize, (tuple, list)) else (resize, resize)
        if len(size) != 2 or not all(_checks.is_int(s) and s >= min_size for s in size):
            raise ValueError(f"Invalid value for `resize`: expected an int or "
                             f"(height, width) >= {min_size}, received "
                             f"resize={resize!r}")
        return size
    return tuple(s if s is None else max(s, min_size) for s in input_shape[:2])


def _build_base(cls, weights, input_shape, pooling, kwargs):
    try:
        return cls(include_top=False, weights=weights, input_shape=input_shape,
                   pooling=pooling, **kwargs)
    except Exception as err:
        # get_file() turns every download failure into a bare Exception.
        if weights == "imagenet" and (type(err) is Exception or isinstance(
                err, (OSError, urllib.error.URLError))):
            raise WeightsNotAvailableError(
                f"Could not download the ImageNet weights of {cls.__name__} "
                f"({err}). Without network access pass weights= the shipped "
                f"source weights ({', '.join(map(repr, source_weights.available_weights()))}"
                "), a file path (a .keras/.weights.h5 backbone, or Keras' "
                "*_notop.h5 file copied into ~/.keras/models or passed directly) "
                "or weights=None / 'none' for random init") from err
        raise


def _load_source_weights(weights, name, input_shape, trainable):
    manifest = source_weights.read_manifest(weights)
    architecture = manifest["architecture"]
    if name is not None and name.lower() != architecture.lower():
        raise ValueError(f"The source weights {os.fspath(weights)!r} are a {architecture}, "
                         f"received name={name!r}; pass name={architecture!r} or None")
    saved = tuple(manifest["input_shape"])
    _check_channels(input_shape, saved, f"The source weights {os.fspath(weights)!r} take")
    model = source_weights.feature_extractor(source_weights.load_classifier(weights),
                                             manifest.get("feature_layer"))
    model = _resized_input(_under_global_policy(model), input_shape)
    model.trainable = trainable
    return model


def _load_keras_file(path, name, input_shape, trainable):
    if name is not None:
        warnings.warn(f"backbone(): `name`={name!r} is ignored, the architecture "
                      f"comes from {path!r}; pass name=None", stacklevel=3)
    model = keras.saving.load_model(path, compile=False)
    _check_channels(input_shape, tuple(model.input_shape[1:]),
                    f"The backbone in {path!r} takes")
    model = _resized_input(_under_global_policy(model), input_shape)
    model.trainable = trainable
    return model


def _check_channels(input_shape, saved, what):
    if input_shape is not None and (len(input_shape) != 3 or input_shape[-1] != saved[-1]):
        raise ValueError(f"{what} images of shape {saved}, received "
                         f"input_shape={tuple(input_shape)}; pass (height, width, "
                         f"{saved[-1]})")


def _resized_input(model, input_shape):
    """`model`, or where it was trained at another image size than
    `input_shape`'s, `images -> Resizing(its size) -> model`: features come
    from images of the size the weights learnt (photos of 224x224 through
    weights trained on 32x32 images see 32x32 ones)."""
    saved = tuple(model.input_shape[1:3])
    if input_shape is None or None in saved or tuple(input_shape[:2]) == saved:
        return model
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = keras.layers.Resizing(*saved, name="resize")(inputs)
    return keras.Model(inputs, model(x), name="backbone")


def _under_global_policy(model):
    """`model` with its weights, rebuilt under the global dtype policy when
    that is a mixed one: a `.keras` file restores the policy every layer was
    saved with (float32), which would leave a mixed precision run computing
    its backbone in float32."""
    policy = keras.config.dtype_policy()
    if policy.name == "float32":
        return model
    saved = keras.saving.serialize_keras_object(keras.dtype_policies.DTypePolicy("float32"))
    wanted = keras.saving.serialize_keras_object(policy)

    def swap(node):
        if node == saved:
            return wanted
        if isinstance(node, dict):
            return {key: swap(value) for key, value in node.items()}
        if isinstance(node, list):
            return [swap(value) for value in node]
        return node

    rebuilt = keras.saving.deserialize_keras_object(
        swap(keras.saving.serialize_keras_object(model)))
    rebuilt.set_weights(model.get_weights())
    return rebuilt
