"""Tests for kerastrain.data on the embedded CIFAR-10 sample and small folders."""

import collections
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import kerastrain
from kerastrain import data

MINI = pathlib.Path(kerastrain.__file__).parent / "datasets" / "cifar10_mini"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck")


def _collect(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def _reference(split, name, start=0, stop=None):
    """The folder's images of one class, decoded by PIL in file-name order."""
    paths = sorted((MINI / split / name).glob("*.jpg"))[start:stop]
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def _digests(images):
    return collections.Counter(image.tobytes() for image in images)


def _copy_jpegs(dest, split, names, count, offset=0):
    for name in names:
        (dest / name).mkdir(parents=True)
        for path in sorted((MINI / split / name).glob("*.jpg"))[offset:offset + count]:
            shutil.copy(path, dest / name / path.name)


def _png(path, array, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


@pytest.fixture(scope="module")
def mini():
    splits = data.load("cifar10_mini")
    return splits, _collect(splits.train), _collect(splits.validation), \
        _collect(splits.test)


def test_cifar10_mini_counts_and_types(mini):
    splits, (_, train_y), (_, val_y), (test_x, test_y) = mini
    assert splits.class_names == CLASSES and splits.num_classes == 10
    counts = (splits.num_train, splits.num_validation, splits.num_test)
    assert counts == (4500, 500, 1000)
    assert splits.image_shape == (32, 32, 3) and test_x.shape == (1000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(train_y), [450] * 10)
    np.testing.assert_array_equal(np.bincount(val_y), [50] * 10)
    np.testing.assert_array_equal(np.bincount(test_y), [100] * 10)
    x, y = next(iter(splits.train))
    assert x.shape == (64, 32, 32, 3) and x.dtype == "uint8" and y.dtype == "int64"


def test_validation_is_disjoint_stratified_part_of_train(mini):
    _, (train_x, train_y), (val_x, val_y), _ = mini
    for label in (0, 5):
        folder = _digests(_reference("train", CLASSES[label]))
        train = _digests(train_x[train_y == label])
        val = _digests(val_x[val_y == label])
        assert not set(train) & set(val)
        assert train + val == folder


def test_test_split_is_the_test_folder_in_order(mini):
    *_, (test_x, test_y) = mini
    np.testing.assert_array_equal(test_x[test_y == 3], _reference("test", "cat"))


def test_classes_selects_and_orders(mini):
    splits = data.load("cifar10_mini", classes=["dog", "cat"], validation_fraction=0)
    assert splits.class_names == ("dog", "cat") and splits.validation is None
    assert (splits.num_train, splits.num_test) == (1000, 200)
    test_x, test_y = _collect(splits.test)
    np.testing.assert_array_equal(test_x[test_y == 0], _reference("test", "dog"))
    np.testing.assert_array_equal(test_x[test_y == 1], _reference("test", "cat"))
    same = data.load("cifar10_mini", classes=" dog, cat", validation_fraction=0)
    np.testing.assert_array_equal(_collect(same.test)[1], test_y)


def test_unknown_class_lists_available():
    with pytest.raises(ValueError, match=r"\['zebra'\].*airplane.*truck"):
        data.load("cifar10_mini", classes=["cat", "zebra"])


def test_labels_per_class_is_seeded(mini):
    full_val_y = mini[2][1]
    first = data.load("cifar10_mini", labels_per_class=5, seed=1)
    train_x, train_y = _collect(first.train)
    assert first.num_train == 50 and first.num_validation == 500
    np.testing.assert_array_equal(np.bincount(train_y), [5] * 10)
    np.testing.assert_array_equal(np.bincount(_collect(first.validation)[1]),
                                  np.bincount(full_val_y))
    again = _collect(data.load("cifar10_mini", labels_per_class=5, seed=1).train)
    assert _digests(again[0]) == _digests(train_x)
    other = _collect(data.load("cifar10_mini", labels_per_class=5, seed=2).train)
    assert _digests(other[0]) != _digests(train_x)
    # A class gets the same few-shot draw whichever classes are selected.
    cats = _collect(data.load("cifar10_mini", classes=["cat"], labels_per_class=5,
                              seed=1).train)
    assert _digests(cats[0]) == _digests(train_x[train_y == 3])


def test_labels_per_class_larger_than_available():
    with pytest.raises(ValueError, match="only 450 training images"):
        data.load("cifar10_mini", labels_per_class=451)


def test_train_shuffle_is_seeded_and_reshuffled_each_epoch():
    def labels(splits):
        return np.concatenate([y.numpy() for _, y in splits.train])

    splits = data.load("cifar10_mini", seed=3, batch_size=500)
    epoch1, epoch2 = labels(splits), labels(splits)
    assert not np.array_equal(epoch1, epoch2)
    again = labels(data.load("cifar10_mini", seed=3, batch_size=500))
    other = labels(data.load("cifar10_mini", seed=4, batch_size=500))
    np.testing.assert_array_equal(epoch1, again)
    assert not np.array_equal(epoch1, other)
    assert len(set(epoch1[:100].tolist())) > 5  # Mixed classes, not folder order.


def test_image_size_resizes(tmp_path):
    _copy_jpegs(tmp_path / "train", "train", ["cat", "dog"], 5)
    _copy_jpegs(tmp_path / "test", "test", ["cat", "dog"], 5)
    test_x = _collect(data.load(f"folder:{tmp_path}").test)[0]
    same = _collect(data.load(f"folder:{tmp_path}", image_size=32).test)[0]
    np.testing.assert_array_equal(same, test_x)
    small = data.load(f"folder:{tmp_path}", image_size=(16, 24))
    small_x = _collect(small.test)[0]
    assert small.image_shape == (16, 24, 3) and small_x.shape == (10, 16, 24, 3)
    assert _collect(small.train)[0].shape[1:] == (16, 24, 3)
    # Bilinear resizing keeps each image's mean colour.
    np.testing.assert_allclose(small_x.mean(axis=(1, 2)), test_x.mean(axis=(1, 2)),
                               atol=3)


def test_folder_train_test_layout(tmp_path):
    _copy_jpegs(tmp_path / "train", "train", ["cat", "dog"], 10)
    _copy_jpegs(tmp_path / "test", "test", ["cat", "dog"], 3)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    splits = data.load(f"folder:{tmp_path}", batch_size=4)
    assert splits.class_names == ("cat", "dog")
    assert (splits.num_train, splits.num_validation, splits.num_test) == (18, 2, 6)
    test_x, test_y = _collect(splits.test)
    np.testing.assert_array_equal(test_x[test_y == 1], _reference("test", "dog", 0, 3))

    shutil.copytree(tmp_path / "test", tmp_path / "val")
    with_val = data.load(f"folder:{tmp_path}", batch_size=4)
    assert (with_val.num_train, with_val.num_validation) == (20, 6)
    assert data.load(f"folder:{tmp_path}", validation_fraction=0).validation is None


def test_folder_flat_layout_is_split_per_class(tmp_path):
    _copy_jpegs(tmp_path, "train", ["bird", "frog", "ship"], 10)
    png = tmp_path / "ship" / "extra.PNG"
    _png(png, _reference("train", "ship", 20, 21)[0], "RGB")
    splits = data.load(f"folder:{tmp_path}", seed=5)
    # 10 (11 for ship) per class: 20% to test, then 10% of the rest to validation.
    assert (splits.num_train, splits.num_validation, splits.num_test) == (22, 3, 6)
    parts = [_collect(ds) for ds in (splits.train, splits.validation, splits.test)]
    originals = np.concatenate([_reference("train", name, 0, 10)
                                for name in ("bird", "frog", "ship")]
                               + [_reference("train", "ship", 20, 21)])
    loaded = sum((_digests(x) for x, _ in parts), collections.Counter())
    assert loaded == _digests(originals)
    for _, labels in parts:
        np.testing.assert_array_equal(np.unique(labels), [0, 1, 2])


def test_edited_files_are_decoded_again(tmp_path):
    path = tmp_path / "a" / "x.png"
    _png(path, np.zeros((4, 4, 3)), "RGB")
    _png(tmp_path / "a" / "y.png", np.zeros((4, 4, 3)), "RGB")
    _png(tmp_path / "b" / "z.png", np.zeros((4, 4, 3)), "RGB")
    _png(tmp_path / "b" / "w.png", np.zeros((4, 4, 3)), "RGB")
    def images():
        splits = data.load(f"folder:{tmp_path}", validation_fraction=0)
        return np.concatenate([_collect(splits.train)[0], _collect(splits.test)[0]])

    first = images()
    _png(path, np.full((4, 4, 3), 200), "RGB")
    os.utime(path, ns=(1, 10**18))  # A new modification time even on coarse clocks.
    second = images()
    assert first.max() == 0 and second.max() == 200


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(16).reshape(4, 4) * 10
    rgba = np.dstack([np.full((4, 4), 10), np.full((4, 4), 20), np.full((4, 4), 30),
                      np.full((4, 4), 128)])
    _png(tmp_path / "train" / "a" / "gray.png", gray, "L")
    _png(tmp_path / "train" / "a" / "rgba.png", rgba, "RGBA")
    _png(tmp_path / "train" / "a" / "rgb.png", np.full((4, 4, 3), 7), "RGB")
    _png(tmp_path / "test" / "a" / "gray.png", gray, "L")
    _png(tmp_path / "test" / "a" / "rgba.png", rgba, "RGBA")
    splits = data.load(f"folder:{tmp_path}", validation_fraction=0)
    images = _collect(splits.test)[0]
    assert splits.image_shape == (4, 4, 3) and images.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(images[0], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(images[1], rgba[..., :3])


def test_mixed_sizes_need_image_size(tmp_path):
    for name in ("a", "b", "c"):
        _png(tmp_path / "k" / f"{name}.png", np.zeros((6, 6, 3)), "RGB")
    _png(tmp_path / "k" / "odd.png", np.full((9, 5, 3), 100), "RGB")
    with pytest.raises(ValueError, match=r"odd\.png.*\(9, 5\).*image_size="):
        data.load(f"folder:{tmp_path}", validation_fraction=0)
    splits = data.load(f"folder:{tmp_path}", image_size=(6, 6), validation_fraction=0)
    assert splits.image_shape == (6, 6, 3)
    images = np.concatenate([_collect(splits.train)[0], _collect(splits.test)[0]])
    assert sorted(images.max(axis=(1, 2, 3)).tolist()) == [0, 0, 0, 100]


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load(f"folder:{tmp_path / 'nowhere'}")


def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="No class folders"):
        data.load(f"folder:{tmp_path}")


def test_class_without_images(tmp_path):
    _copy_jpegs(tmp_path, "train", ["cat"], 3)
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match="Class 'dog' has no images"):
        data.load(f"folder:{tmp_path}")


def test_test_class_unknown_to_train(tmp_path):
    _copy_jpegs(tmp_path / "train", "train", ["cat"], 3)
    _copy_jpegs(tmp_path / "test", "test", ["cat", "dog"], 1)
    with pytest.raises(ValueError, match=r"\['dog'\].*not among the training"):
        data.load(f"folder:{tmp_path}")


def test_only_train_folder(tmp_path):
    _copy_jpegs(tmp_path / "train", "train", ["cat"], 3)
    with pytest.raises(ValueError, match="expected train/ and test/"):
        data.load(f"folder:{tmp_path}")


def test_corrupt_image_is_named(tmp_path):
    _copy_jpegs(tmp_path, "train", ["cat"], 3)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        data.load(f"folder:{tmp_path}")


def test_unknown_spec_lists_valid_specs():
    with pytest.raises(ValueError,
                       match=r"'hub:x'.*cifar10_mini.*folder:PATH.*tfds:NAME"):
        data.load("hub:x")
    with pytest.raises(ValueError, match="tfds:NAME:TRAIN:TEST"):
        data.load("tfds:mnist:train")


@pytest.mark.parametrize("kwargs, name", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.0}, "batch_size"),
    ({"seed": -1}, "seed"), ({"labels_per_class": 0}, "labels_per_class"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"validation_fraction": -0.1}, "validation_fraction"),
    ({"image_size": (0, 8)}, "image_size"), ({"image_size": "32"}, "image_size"),
    ({"classes": []}, "classes"), ({"classes": ["cat", "cat"]}, "classes"),
])
def test_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid value for `{name}`"):
        data.load("cifar10_mini", **kwargs)


def test_tfds_mock_grayscale_to_rgb():
    with tfds.testing.mock_data(num_examples=20):
        splits = data.load("tfds:mnist", batch_size=8, validation_fraction=0)
        reference = list(tfds.as_numpy(tfds.load("mnist", split="test",
                                                 as_supervised=True)))
        names = tfds.builder("mnist").info.features["label"].names
        three = data.load("tfds:mnist:train[:50%]:train:test", batch_size=8)
    assert splits.class_names == tuple(names) and splits.image_shape == (28, 28, 3)
    assert (splits.num_train, splits.num_test) == (20, 20)
    test_x, test_y = _collect(splits.test)
    gray_to_rgb = np.stack([np.repeat(x, 3, axis=-1) for x, _ in reference])
    np.testing.assert_array_equal(test_x, gray_to_rgb)
    np.testing.assert_array_equal(test_y, [y for _, y in reference])
    assert (three.num_train, three.num_validation, three.num_test) == (20, 20, 20)


def test_tfds_offline_dataset_fails_clearly(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    # The machine may be online: make every download fail as it does offline.
    for method in ("download", "download_and_extract"):
        monkeypatch.setattr(tfds.download.DownloadManager, method, unreachable)
    with pytest.raises(data.DataNotPreparedError,
                       match=r"not prepared.*tfds build mnist.*data_dir"):
        data.load("tfds:mnist", data_dir=str(tmp_path))


def test_tfds_unknown_name():
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_set'"):
        data.load("tfds:no_such_set")
