"""Small reference models for examples, tests, recipes and benchmarks.

The toolkit's techniques apply to any Keras model; these builders exist so
that recipes, tests and benchmarks share one well-behaved baseline network
instead of each defining its own.
"""

import keras

from kerastrain import _checks
from kerastrain.layers import InvertedDropout


def small_cnn(
    num_classes,
    input_shape=(32, 32, 3),
    width=32,
    blocks=3,
    dropout=0.0,
    batch_norm=True,
    kernel_regularizer=None,
    name="small_cnn",
):
    """A compact VGG-style CNN that takes raw 0..255 images.

    Each block is two 3x3 convolutions (with optional BatchNorm) followed by
    2x2 max pooling; the width doubles every block. A global average pool and
    one `Dense` layer produce logits (no softmax), so compile it with
    `SparseCategoricalCrossentropy(from_logits=True)`.

    Args:
        num_classes: number of output classes.
        input_shape: `(height, width, channels)` of the input images.
            Defaults to `(32, 32, 3)`.
        width: number of filters of the first block. Defaults to `32`.
        blocks: number of convolution blocks. Defaults to `3`.
        dropout: `InvertedDropout` rate before the classifier. Defaults to
            `0.0` (no dropout layer).
        batch_norm: whether to add BatchNorm after each convolution.
            Defaults to `True`.
        kernel_regularizer: optional regularizer for every kernel.
        name: model name. Defaults to `"small_cnn"`.

    Returns:
        An uncompiled functional `keras.Model` whose last layer, named
        `"classifier"`, outputs logits; `model.get_layer("features")` is the
        pooled feature vector (use it to cut a backbone).

    Example:

    >>> model = small_cnn(10, width=16, blocks=2)
    >>> model.output_shape
    (None, 10)
    """
    _checks.check_int("num_classes", num_classes, minimum=1)
    _checks.check_int("width", width, minimum=1)
    _checks.check_int("blocks", blocks, minimum=1)
    inputs = keras.Input(shape=input_shape, name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    filters = width
    for block in range(blocks):
        for conv in range(2):
            x = keras.layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not batch_norm,
                kernel_initializer="he_normal",
                kernel_regularizer=kernel_regularizer,
                name=f"block{block + 1}_conv{conv + 1}",
            )(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(
                    name=f"block{block + 1}_bn{conv + 1}"
                )(x)
            x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block + 1}_pool")(x)
        filters *= 2
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    if dropout:
        x = InvertedDropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, kernel_regularizer=kernel_regularizer, dtype="float32",
        name="classifier",
    )(x)
    return keras.Model(inputs, outputs, name=name)

