"""SavedModel export with a raw-image serving signature, checked by reloading.

`model.export()` writes the model's own forward pass: float inputs of the
training size in, logits out. A served classifier needs more: uint8 images of
any size in, probabilities, class ids and class names out, with the names
shipped inside the artifact. `export_saved_model` builds that endpoint on
`keras.export.ExportArchive` (which tracks the model's variables and writes
the SavedModel), writes it atomically, then reloads it and checks that it
predicts what the Keras model predicts.
"""

import json
import os
import shutil
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from kerastrain import _checks, _introspect, _io, evaluation
from kerastrain.data import decode_image, resize  # noqa: F401 (decode_image: public here too)

CLASS_NAMES_FILE = "class_names.txt"
# Written into every export's assets/: how a directory is recognised as a
# kerastrain export, the only kind of directory an export may replace.
MARKER_FILE = "kerastrain_export.json"
_FORMAT = "kerastrain.export"
BYTES_SIGNATURE = "serving_bytes"
_OUTPUTS = ("auto", "logits", "probabilities")
_TOLERANCE = 1e-4


def export_saved_model(model, path, class_names, *, outputs="auto",
                       image_size=None, verify=True, overwrite=False,
                       force=False, probe_images=None):
    """Exports `model` as a SavedModel that serves raw uint8 images.

    The `serving_default` signature takes `images`, a `uint8` tensor of shape
    `(batch, height, width, 3)` of any height and width, resizes it to
    `image_size` exactly as `kerastrain.data.load(image_size=...)` resizes
    training images (`kerastrain.data.resize`: bilinear, rounded to uint8),
    passes it as the 0..255 floats the model expects, runs the model in inference mode (BatchNorm moving
    statistics, no dropout) and returns `{"probabilities": float32 (batch,
    classes), "class_ids": int64 (batch,), "class_names": string (batch,)}`.
    The class names are shipped as the asset `assets/class_names.txt` and
    returned by the endpoint `class_names()`; the asset
    `assets/kerastrain_export.json` marks the directory as a kerastrain
    export (see `is_export`). Works for any single-input
    image classifier: plain models, weight-averaged models and whole
    `kerastrain.ensemble.Ensemble`s (one graph).

    The `serving_bytes` signature takes `images`, a `string` tensor of shape
    `(batch,)` holding encoded JPEG/PNG files, decodes each exactly as
    `kerastrain.data` decoded the training images (`kerastrain.data.decode_image`:
    JPEGs with the accurate integer DCT, bit-identical to PIL), resizes it like
    `serving_default` and returns the same outputs: serving the raw test
    files reproduces the accuracy measured in training exactly.

    The SavedModel is written to a temporary directory next to `path`,
    reloaded and verified, and only then renamed into place,
    so `path` never holds a half-written export; on any error the temporary
    directory is removed. An existing `path` is replaced only when asked
    (`overwrite=True`) and only when it is itself a kerastrain export: a
    file or any other directory (a user's data, another model) is never
    deleted unless `force=True` says so explicitly.

    Args:
        model: built Keras classifier taking `(batch, h, w, 3)` 0..255 images.
        path: directory to write the SavedModel to.
        class_names: one unique, non-empty, single-line string per class.
        outputs: what the model emits: `"logits"` (softmax is added),
            `"probabilities"` (served as they are) or `"auto"` (probabilities
            if the model's last layer applies softmax, else logits).
            Defaults to `"auto"`.
        image_size: `(height, width)` served images are resized to.
            Defaults to `None` (the model's input size).
        verify: reload the SavedModel and check that it matches the Keras
            model within 1e-4 on `probe_images`. Defaults to `True`.
        overwrite: replace `path` when it holds a previous kerastrain
            export (recognised by `is_export`); anything else at `path` is
            refused with `FileExistsError`. Defaults to `False` (an existing
            `path` is refused).
        force: with `overwrite=True`, replace whatever `path` holds, a file
            or a directory that is no kerastrain export included (its
            content is deleted). Defaults to `False`.
        probe_images: uint8 `(batch, h, w, 3)` images for the check.
            Defaults to `None` (four seeded random images).

    Returns:
        The absolute path of the SavedModel.

    Example:

    >>> export_saved_model(model, "saved_models/cnn", data.class_names)
    >>> serve, names = load_serving("saved_models/cnn")
    >>> serve(uint8_images)["class_names"]
    """
    path = os.path.abspath(os.fspath(path))
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("Invalid value for `model`: expected a built keras.Model "
                         "(call it on a batch of images first), received "
                         f"model={model!r}")
    _checks.check_choice("outputs", outputs, _OUTPUTS)
    class_names = _check_class_names(class_names, model)
    image_size = _check_image_size(image_size, model)
    _checks.check("overwrite", overwrite, isinstance(overwrite, bool), "a bool")
    _checks.check("force", force, isinstance(force, bool), "a bool")
    _check_replaceable(path, overwrite, force)
    if outputs == "auto":
        outputs = "probabilities" if _introspect.outputs_probabilities(model) else "logits"
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        target = os.path.join(staging, "saved_model")
        _write(model, target, class_names, outputs, image_size)
        if verify:
            _verify(model, target, class_names, outputs, image_size, probe_images)
        _io.replace_path(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def is_export(path):
    """Whether `path` is a directory written by `export_saved_model`.

    Recognised by the SavedModel's `saved_model.pb` and the marker asset
    `assets/kerastrain_export.json` that every export carries.

    Args:
        path: any path.

    Returns:
        `True` for a kerastrain export, `False` for anything else (a file, a
        missing path, another directory or another SavedModel).
    """
    path = os.fspath(path)
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "saved_model.pb")):
        return False
    try:
        with open(os.path.join(path, "assets", MARKER_FILE), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == _FORMAT


def load_serving(path):
    """Loads an export of `export_saved_model` for inference.

    Args:
        path: the SavedModel directory.

    Returns:
        A tuple `(serve, class_names)`: `serve(images)` takes a uint8
        `(batch, h, w, 3)` array or tensor (the `serving_default` signature)
        or a list of encoded JPEG/PNG files' bytes (the `serving_bytes`
        signature, which decodes them as training did) and returns the
        serving dict as NumPy arrays (`class_names` decoded to `str`);
        `class_names` is the list of the model's class names.
    """
    loaded = tf.saved_model.load(os.fspath(path))
    if not hasattr(loaded, "class_names") or "serving_default" not in loaded.signatures:
        raise ValueError(f"Invalid value for `path`: {os.fspath(path)!r} is not a "
                         "SavedModel written by `export_saved_model`.")
    signature = loaded.signatures["serving_default"]
    from_bytes = loaded.signatures.get(BYTES_SIGNATURE)
    class_names = [n.decode("utf-8") for n in loaded.class_names().numpy()]

    def serve(images):
        if isinstance(images, (list, tuple)) and images and all(
                isinstance(i, bytes) for i in images):
            images = tf.constant(list(images), tf.string)
        images = tf.convert_to_tensor(images)
        if images.dtype == tf.string and images.shape.rank == 1 and from_bytes is not None:
            result = from_bytes(images=images)
        elif images.dtype == tf.uint8 and images.shape.rank == 4:
            result = signature(images=images)
        else:
            raise ValueError("Invalid value for `images`: expected uint8 images of "
                             "shape (batch, height, width, 3) or a list of encoded "
                             f"image files' bytes, received {images.dtype.name} of "
                             f"shape {images.shape}")
        result = {k: v.numpy() for k, v in result.items()}
        result["class_names"] = np.array(
            [n.decode("utf-8") for n in result["class_names"]])
        return result

    serve.saved_model = loaded  # keeps the restored resources alive
    return serve, class_names


def _write(model, target, class_names, outputs, image_size):
    with tempfile.TemporaryDirectory() as asset_dir:
        names_file = os.path.join(asset_dir, CLASS_NAMES_FILE)
        with open(names_file, "w", encoding="utf-8") as f:
            f.write("\n".join(class_names) + "\n")
        # The table reads the names from an Asset, so the file is copied into
        # the SavedModel's assets/ and the table is rebuilt from it on load.
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                names_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE),
            default_value="")
        num_classes = len(class_names)

        def classify(x):
            y = tf.cast(model(x, training=False), tf.float32)
            probabilities = y if outputs == "probabilities" else tf.nn.softmax(y)
            class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {"probabilities": probabilities, "class_ids": class_ids,
                    "class_names": table.lookup(class_ids)}

        def serve(images):
            return classify(tf.cast(resize(images, image_size), tf.float32))

        def serve_bytes(encoded):
            # One image at a time: encoded files may differ in size.
            x = tf.map_fn(lambda b: resize(decode_image(b), image_size),
                          encoded, fn_output_signature=tf.uint8)
            return classify(tf.cast(tf.ensure_shape(x, [None, *image_size, 3]),
                                    tf.float32))

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(table)
        # The first endpoint becomes `serving_default`.
        archive.add_endpoint(
            "serve", serve,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "images")])
        archive.add_endpoint(
            BYTES_SIGNATURE, serve_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, "images")])
        archive.add_endpoint(
            "class_names",
            lambda: table.lookup(tf.range(num_classes, dtype=tf.int64)),
            input_signature=[])
        archive.write_out(target, verbose=False)
    marker = {"format": _FORMAT, "version": 1, "class_names": class_names,
              "image_size": list(image_size), "outputs": outputs,
              "signatures": ["serving_default", BYTES_SIGNATURE]}
    with open(os.path.join(target, "assets", MARKER_FILE), "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=2)
        f.write("\n")


def _check_replaceable(path, overwrite, force):
    """Refuses to replace anything at `path` but a previous export, unless forced."""
    if not os.path.lexists(path) or (overwrite and force):
        return
    if not overwrite:
        raise FileExistsError(f"{path!r} already exists; pass overwrite=True to "
                              "replace a previous export, or choose another path.")
    if not is_export(path):
        what = ("a directory" if os.path.isdir(path) and not os.path.islink(path)
                else "a file")
        raise FileExistsError(
            f"{path!r} is {what} that is not a kerastrain export (it has no "
            f"assets/{MARKER_FILE}), so the export will not replace it: choose "
            "another path, or pass force=True to delete it and export there.")


def _verify(model, target, class_names, outputs, image_size, probe_images):
    if probe_images is None:
        rng = np.random.default_rng(0)
        probe_images = rng.integers(0, 256, (4, *image_size, 3), dtype=np.uint8)
    serve, served_names = load_serving(target)
    if served_names != class_names:
        raise RuntimeError(f"Export verification failed: the SavedModel's class "
                           f"names {served_names} differ from {class_names}.")
    x = tf.cast(resize(tf.convert_to_tensor(probe_images), image_size), tf.float32)
    y = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float32)
    expected = evaluation.probabilities(y, from_logits=outputs == "logits")
    got = serve(probe_images)["probabilities"]
    # The bytes signature, on lossless PNGs of the same images, must agree.
    encoded = [tf.io.encode_png(image).numpy() for image in np.asarray(probe_images)]
    got_bytes = serve(encoded)["probabilities"]
    error = float(max(np.max(np.abs(got - expected)), np.max(np.abs(got_bytes - expected))))
    if not error <= _TOLERANCE:
        raise RuntimeError(
            "Export verification failed: the reloaded SavedModel's probabilities "
            f"differ from the Keras model's by up to {error:.3g} (> {_TOLERANCE}) "
            "on the probe images, so nothing was written. The model must be "
            "deterministic in inference mode and traceable by tf.function (no "
            "Python-side randomness or state in `call`).")
    if outputs == "logits" and np.all(y >= 0) and np.allclose(y.sum(-1), 1, atol=1e-5):
        warnings.warn("The model's outputs look like probabilities but were read "
                      "as logits and softmaxed again; pass "
                      "outputs='probabilities' if the model ends in a softmax.",
                      stacklevel=3)


def _check_class_names(class_names, model):
    if isinstance(class_names, str) or not all(
            isinstance(n, str) and n and "\n" not in n and "\r" not in n
            for n in class_names):
        raise ValueError("Invalid value for `class_names`: expected a list of "
                         "non-empty single-line strings, received "
                         f"class_names={class_names!r}")
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"Invalid value for `class_names`: names must be unique, "
                         f"received class_names={class_names}")
    try:
        num_classes = model.compute_output_shape(_introspect.input_shape(model))[-1]
    except Exception:  # subclassed models may not know their output shape
        num_classes = None
    if num_classes is not None and num_classes != len(class_names):
        raise ValueError(f"Invalid value for `class_names`: the model outputs "
                         f"{num_classes} classes but {len(class_names)} names "
                         f"were given: class_names={class_names}")
    return class_names


def _check_image_size(image_size, model):
    input_shape = _introspect.input_shape(model)
    if input_shape is not None and input_shape[-1] != 3:
        raise ValueError("Invalid value for `model`: the serving signature takes "
                         f"RGB images but the model's input shape is {input_shape}")
    model_size = None if input_shape is None else tuple(input_shape[1:3])
    if image_size is None:
        if model_size is None or None in model_size:
            raise ValueError("Invalid value for `image_size`: the model's input "
                             "size is not fixed, so pass image_size=(height, width).")
        return model_size
    if (not isinstance(image_size, (list, tuple)) or len(image_size) != 2 or not all(
            _checks.is_int(s) and s > 0 for s in image_size)):
        raise ValueError("Invalid value for `image_size`: expected (height, width) "
                         f"positive integers, received image_size={image_size!r}")
    image_size = tuple(image_size)
    if model_size is not None and any(
            m is not None and m != s for m, s in zip(model_size, image_size)):
        raise ValueError(f"Invalid value for `image_size`: the model takes "
                         f"{model_size} images, received image_size={image_size}")
    return image_size
