"""Reads a TensorFlow Datasets classification set for `kerastrain.data.load`.

`tensorflow_datasets` is imported only when a `tfds:` spec is read: it is
slow to import and optional for every other spec.
"""

from PIL import Image


class DataNotPreparedError(RuntimeError):
    """A TFDS dataset is not prepared locally and could not be downloaded."""


def read(name, split_names, data_dir):
    """Reads TFDS splits with the builder steps `tfds.load` runs.

    Running them one by one tells a failed download (offline) apart from an
    unknown name.

    Args:
        name: the TFDS dataset name.
        split_names: `[]` (the dataset's train, validation if any, and test
            splits), or 2 or 3 TFDS split strings for train[, validation]
            and test.
        data_dir: where TFDS finds prepared data, or `None`.

    Returns:
        `(class_names, names, images, labels)`: `names` and RGB PIL `images`
        per example in split order, `labels` a dict `{split key: [label]}`
        with keys among `"train"`, `"validation"` and `"test"`.
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
    label = info.features[info.supervised_keys[1]] if info.supervised_keys else None
    if not hasattr(label, "names"):
        raise ValueError(f"TFDS dataset {name!r} has no (image, class label) "
                         "supervised keys; use an image classification dataset")
    keys = ["train", "validation", "test"] if len(split_names) == 3 or (
        not split_names and "validation" in info.splits) else ["train", "test"]
    split_names = split_names or keys
    names, images, labels = [], [], {}
    for key, split in zip(keys, split_names):
        examples = list(tfds.as_numpy(builder.as_dataset(split=split,
                                                         as_supervised=True)))
        names += [f"{name}:{split} example {i}" for i in range(len(examples))]
        images += [Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)
                   .convert("RGB") for x, _ in examples]
        labels[key] = [y for _, y in examples]
    return list(label.names), names, images, labels
