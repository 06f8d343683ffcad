"""TensorFlow Datasets classification sets for `kerastrain.data.load`.

`tensorflow_datasets` is imported only when a `tfds:` spec is read: it is
slow to import and optional for every other spec. Examples are read with the
image left encoded (`tfds.decode.SkipDecoding`): the labels are read up front
without decoding a pixel, and `kerastrain.data` decodes the bytes itself, in
parallel, as it does a folder's files.
"""


class DataNotPreparedError(RuntimeError):
    """A TFDS dataset is not prepared locally and could not be downloaded."""


def open_builder(name, split_names, data_dir):
    """Prepares a TFDS set with the builder steps `tfds.load` runs.

    Running them one by one tells a failed download (offline) apart from an
    unknown name.

    Args:
        name: the TFDS dataset name.
        split_names: `[]` (the dataset's train, validation if any, and test
            splits), or 2 or 3 TFDS split strings for train[, validation]
            and test.
        data_dir: where TFDS finds prepared data, or `None`.

    Returns:
        `(builder, class_names, {split key: TFDS split string})` with keys
        among `"train"`, `"validation"` and `"test"`.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 (slow; tfds specs only)

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as err:
        raise ValueError(f"Unknown TFDS dataset {name!r} in 'tfds:{name}'; "
                         "tfds.list_builders() lists the known names") from err
    try:
        builder.download_and_prepare()  # Returns at once when prepared.
    except Exception as err:  # Offline downloads fail with many error types.
        raise DataNotPreparedError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r} and "
            f"downloading it failed ({type(err).__name__}: {err}); probably no "
            "network is reachable. On a machine with network access run "
            f"`tfds build {name} --data_dir=DIR`, copy DIR here and pass "
            "data_dir=DIR to load() (or set TFDS_DATA_DIR=DIR)") from err
    info = builder.info
    keys = info.supervised_keys
    label = info.features[keys[1]] if keys else None
    if not hasattr(label, "names") or not hasattr(info.features[keys[0]], "encoding_format"):
        raise ValueError(f"TFDS dataset {name!r} has no (image, class label) "
                         "supervised keys; use an image classification dataset")
    split_keys = ["train", "validation", "test"] if len(split_names) == 3 or (
        not split_names and "validation" in info.splits) else ["train", "test"]
    return builder, list(label.names), dict(zip(split_keys, split_names or split_keys))


def encoded(builder, split):
    """`(encoded image bytes, label)` of a split, in stored order."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    image_key = builder.info.supervised_keys[0]
    return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False,
                              decoders={image_key: tfds.decode.SkipDecoding()})


def labels(builder, split):
    """A split's labels as an int64 array, read without decoding images."""
    import numpy as np  # noqa: PLC0415

    batches = encoded(builder, split).map(lambda _, label: label).batch(4096)
    values = [batch.numpy() for batch in batches]
    return np.concatenate(values).astype(np.int64) if values else np.zeros(0, np.int64)
