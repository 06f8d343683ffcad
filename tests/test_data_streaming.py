"""The streamed and the in-memory paths of kerastrain.data.load agree; full-size
and mixed-size images, corrupt files, TFRecord shards, disk caches."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kerastrain
from kerastrain import data

MINI = pathlib.Path(kerastrain.__file__).parent / "datasets" / "cifar10_mini"
GENERATED_CLASSES = ("bird", "cat", "ship", "truck")


def _arrays(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def _upscaled_jpegs(root, per_class, size=96, seed=0):
    """Real CIFAR images upscaled to `size` with noise, as JPEGs in
    `root/<class>/` (the flat layout: load splits off the test part)."""
    rng = np.random.default_rng(seed)
    for name in GENERATED_CLASSES:
        (root / name).mkdir(parents=True)
        for path in sorted((MINI / "train" / name).glob("*.jpg"))[:per_class]:
            image = np.asarray(Image.open(path).resize((size, size), Image.BILINEAR),
                               np.float32)
            noisy = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / name / path.name, quality=90)
    return root


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return _upscaled_jpegs(tmp_path_factory.mktemp("generated"), per_class=60)


def _both(spec, **kwargs):
    return (data.load(spec, cache="memory", **kwargs),
            data.load(spec, cache="none", **kwargs))


@pytest.mark.parametrize("case", ["mini", "generated"])
def test_memory_and_streaming_give_the_same_data(case, generated):
    if case == "mini":
        spec, kwargs = "cifar10_mini", dict(classes="ship,cat,dog", labels_per_class=90,
                                            seed=3, batch_size=32)
    else:
        spec, kwargs = f"folder:{generated}", {}
    memory, streamed = _both(spec, **kwargs)
    assert (memory.cache, streamed.cache) == ("memory", "none")
    for name in ("class_names", "image_shape", "num_train", "num_validation",
                 "num_test", "batch_size"):
        assert getattr(memory, name) == getattr(streamed, name), name
    for split in ("validation", "test", "train"):
        expected = _arrays(getattr(memory, split))
        got = _arrays(getattr(streamed, split))
        np.testing.assert_array_equal(got[1], expected[1], err_msg=split)
        np.testing.assert_array_equal(got[0], expected[0], err_msg=split)
    # The second epoch's (new) order agrees too.
    second = [_arrays(ds.train)[1] for ds in (memory, streamed)]
    np.testing.assert_array_equal(*second)


def test_streamed_train_is_reshuffled_each_epoch(generated):
    streamed = data.load(f"folder:{generated}", cache="none", batch_size=16)
    first, second = (_arrays(streamed.train)[1] for _ in range(2))
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)
    again = data.load(f"folder:{generated}", cache="none", batch_size=16)
    np.testing.assert_array_equal(_arrays(again.train)[1], first)


def test_auto_streams_when_memory_is_short(generated, monkeypatch):
    assert data.load(f"folder:{generated}").cache == "memory"
    monkeypatch.setattr(data, "available_memory", lambda: 1 << 20)  # 1 MiB
    streamed = data.load(f"folder:{generated}")
    assert streamed.cache == "none"
    assert streamed.image_shape == (96, 96, 3)
    # Its length is known, as Keras wants it for steps per epoch.
    assert int(streamed.train.cardinality()) == -(-streamed.num_train // 64)


def _mixed_folder(root):
    """Photos-like: every size differs; wide, tall and square images."""
    sizes = [(96, 96), (64, 128), (120, 40), (33, 57), (200, 150), (48, 48)]
    for label, name in enumerate(("cat", "dog")):
        for i, (h, w) in enumerate(sizes):
            source = sorted((MINI / "train" / name).glob("*.jpg"))[i]
            image = Image.open(source).resize((w, h), Image.BILINEAR)
            for split in ("train", "test"):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                image.save(root / split / name / f"{i}.jpg", quality=95)
    return root


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_mixed_sizes_just_work_with_image_size(tmp_path, cache):
    root = _mixed_folder(tmp_path)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="image_size"):
        _arrays(data.load(f"folder:{root}", cache=cache, validation_fraction=0).test)
    for mode in data.RESIZE_MODES:
        loaded = data.load(f"folder:{root}", image_size=(40, 56), cache=cache,
                           resize_mode=mode, validation_fraction=0)
        images, labels = _arrays(loaded.test)
        assert loaded.image_shape == (40, 56, 3) and images.shape == (12, 40, 56, 3)
        np.testing.assert_array_equal(labels, [0] * 6 + [1] * 6)


def test_resize_modes_keep_or_change_the_aspect_ratio():
    wide = np.full((20, 80, 3), 200, np.uint8)
    wide[:, :20] = 0  # A black left quarter.
    padded = data.resize(tf.constant(wide), (40, 40), "pad").numpy()
    # 20x80 scaled to 10x40, centred: black bands of 15 rows above and below.
    assert padded[:14].max() == 0 and padded[26:].max() == 0 and padded[20, 30].min() == 200
    cropped = data.resize(tf.constant(wide), (40, 40), "crop").numpy()
    # The central 20x20 of the image (columns 30-50): all bright.
    assert cropped.min() == 200
    stretched = data.resize(tf.constant(wide), (40, 40), "stretch").numpy()
    assert stretched[:, 0].max() == 0 and stretched[:, -1].min() == 200
    same = data.resize(tf.constant(wide), (20, 80)).numpy()
    np.testing.assert_array_equal(same, wide)


def _with_corrupt_file(tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for path in sorted((MINI / split / name).glob("*.jpg"))[:12]:
                folder.joinpath(path.name).write_bytes(path.read_bytes())
    good = sorted((tmp_path / "train" / "dog").glob("*.jpg"))[3]
    bad = good.with_name("0000_truncated.jpg")
    bad.write_bytes(good.read_bytes()[:300])
    return bad


def test_streamed_corrupt_file_is_named(tmp_path):
    bad = _with_corrupt_file(tmp_path)
    streamed = data.load(f"folder:{tmp_path}", cache="none", validation_fraction=0)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Cannot decode image.*0000_truncated\.jpg.*on_bad_image set to skip"):
        _arrays(streamed.train)
    with pytest.raises(ValueError, match=f"Cannot decode image '{bad}'"):
        data.load(f"folder:{tmp_path}", cache="memory")


def test_streamed_bad_files_at_the_end_are_named(tmp_path):
    _with_corrupt_file(tmp_path)
    for name in ("zzzz_a.jpg", "zzzz_b.jpg"):  # The test split's last two files.
        (tmp_path / "test" / "dog" / name).write_bytes(b"not an image")
    streamed = data.load(f"folder:{tmp_path}", cache="none", validation_fraction=0,
                         on_bad_image="skip")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Cannot decode image.*zzzz_b\.jpg.*\(and.*1.*more before it"):
        _arrays(data.load(f"folder:{tmp_path}", cache="none", validation_fraction=0).test)
    assert len(_arrays(streamed.test)[1]) == 24 and streamed.num_test == 26


def test_corrupt_file_is_skipped_and_counted(tmp_path, capfd):
    bad = _with_corrupt_file(tmp_path)
    streamed = data.load(f"folder:{tmp_path}", cache="none", validation_fraction=0,
                         on_bad_image="skip")
    images, labels = _arrays(streamed.train)
    assert streamed.num_train == 25 and len(labels) == 24
    assert np.bincount(labels).tolist() == [12, 12]
    err = capfd.readouterr().err
    assert "skipped unreadable image" in err and str(bad) in err and "1 skipped" in err
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image.*0000_truncated"):
        memory = data.load(f"folder:{tmp_path}", cache="memory", validation_fraction=0,
                           on_bad_image="skip")
    assert memory.num_train == 24
    np.testing.assert_array_equal(np.sort(_arrays(memory.train)[1]), np.sort(labels))


def test_tfrecord_round_trip_equals_the_folder(generated, tmp_path):
    out = tmp_path / "shards"
    data.to_tfrecord(f"folder:{generated}", out, shard_mb=0.2, verbose=0)
    shards = sorted(p.name for p in out.glob("*.tfrecord"))
    assert len(shards) >= 4 and (out / "kerastrain-tfrecord.json").exists()
    spec, kwargs = f"tfrecord:{out}", dict(classes="truck,cat,bird", seed=2,
                                           labels_per_class=20)
    folder = data.load(f"folder:{generated}", cache="memory", **kwargs)
    for cache in ("memory", "none"):
        loaded = data.load(spec, cache=cache, **kwargs)
        assert (loaded.class_names, loaded.num_train, loaded.num_validation,
                loaded.num_test) == (folder.class_names, folder.num_train,
                                     folder.num_validation, folder.num_test)
        for split in ("validation", "test"):
            for got, expected in zip(_arrays(getattr(loaded, split)),
                                     _arrays(getattr(folder, split))):
                np.testing.assert_array_equal(got, expected)
        got, expected = _arrays(loaded.train), _arrays(folder.train)
        if cache == "memory":  # The same order as well.
            np.testing.assert_array_equal(got[0], expected[0])
        key = lambda pair: sorted(x.tobytes() + bytes([y]) for x, y in zip(*pair))  # noqa: E731
        assert key(got) == key(expected)
    # Written again over itself: replaced; over anything else: refused.
    data.to_tfrecord(f"folder:{generated}", out, verbose=0)
    assert sorted(p.name for p in out.glob("*.tfrecord")) != shards
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="did not write.*notes.txt"):
        data.to_tfrecord(f"folder:{generated}", other, verbose=0)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="to_tfrecord"):
        data.load(f"tfrecord:{other}")


def test_disk_cache_holds_decoded_images(generated, tmp_path):
    cache = tmp_path / "cache"
    first = data.load(f"folder:{generated}", cache=f"disk:{cache}", image_size=48)
    memory = data.load(f"folder:{generated}", cache="memory", image_size=48)
    for split in ("validation", "test"):
        for got, expected in zip(_arrays(getattr(first, split)),
                                 _arrays(getattr(memory, split))):
            np.testing.assert_array_equal(got, expected)
    labels = _arrays(first.train)[1]
    assert sorted(labels) == sorted(_arrays(memory.train)[1])
    assert any(cache.iterdir())


def test_drop_remainder_gives_static_batches(generated):
    for cache in ("memory", "none"):
        loaded = data.load(f"folder:{generated}", batch_size=16, cache=cache,
                           drop_remainder=True, image_size=32)
        assert loaded.train.element_spec[0].shape == (16, 32, 32, 3)
        assert all(len(y) == 16 for _, y in loaded.test)


@pytest.mark.parametrize("kwargs, name", [
    (dict(cache="ram"), "cache"), (dict(cache="disk:"), "cache"),
    (dict(on_bad_image="ignore"), "on_bad_image"),
    (dict(resize_mode="fit"), "resize_mode"), (dict(drop_remainder=1), "drop_remainder"),
])
def test_new_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid value for `{name}`"):
        data.load("cifar10_mini", **kwargs)


def test_tfds_streams_the_same_splits():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        memory, streamed = _both("tfds:mnist", batch_size=8, classes="3,1,7,0,2,4,5,6,8,9")
    assert streamed.cache == "none" and streamed.image_shape == (28, 28, 3)
    assert (memory.num_train, memory.num_validation, memory.num_test) == (
        streamed.num_train, streamed.num_validation, streamed.num_test)
    for split in ("validation", "test"):
        for got, expected in zip(_arrays(getattr(streamed, split)),
                                 _arrays(getattr(memory, split))):
            np.testing.assert_array_equal(got, expected)
    got, expected = _arrays(streamed.train), _arrays(memory.train)
    assert sorted(got[1]) == sorted(expected[1])


def test_random_resized_crop_decodes_a_part_anew_each_epoch(generated):
    jpeg = next(generated.glob("cat/*.jpg")).read_bytes()
    seed = tf.constant([3, 0], tf.int64)
    part = data.random_resized_crop(tf.constant(jpeg), (40, 40), (0.2, 0.3), seed)
    # Decoding only the window (JPEG) gives the pixels a whole decode then cut gives.
    whole = data.crop_decoded(data.decode_image(tf.constant(jpeg)), (40, 40),
                              (0.2, 0.3), seed)
    assert part.shape == (40, 40, 3)
    np.testing.assert_allclose(part.numpy(), whole.numpy(), atol=2)
    for cache in ("none", "memory"):
        kwargs = dict(image_size=40, cache=cache, random_resized_crop=(0.2, 0.3))
        loaded = data.load(f"folder:{generated}", **kwargs)
        first, second = _arrays(loaded.train), _arrays(loaded.train)
        np.testing.assert_array_equal(first[1], _arrays(
            data.load(f"folder:{generated}", image_size=40, cache=cache).train)[1])
        assert first[0].shape[1:] == (40, 40, 3) and not np.array_equal(first[0], second[0])
        again = _arrays(data.load(f"folder:{generated}", **kwargs).train)
        np.testing.assert_array_equal(again[0], first[0])  # Seeded.
        # Validation and test are not cropped.
        np.testing.assert_array_equal(_arrays(loaded.test)[0], _arrays(
            data.load(f"folder:{generated}", image_size=40, cache=cache).test)[0])
    with pytest.raises(ValueError, match="needs image_size"):
        data.load("cifar10_mini", random_resized_crop=(0.5, 1.0))
    with pytest.raises(ValueError, match="Invalid value for `random_resized_crop`"):
        data.load("cifar10_mini", image_size=32, random_resized_crop=(0.5, 1.5))
