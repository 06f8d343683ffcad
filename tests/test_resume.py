"""Interrupted training resumes as if never interrupted: the training
pipelines are functions of (seed, epoch, batch), and
`kt.callbacks.BackupAndRestore` backs up everything a step depends on."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import kerastrain as kt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "resuming.py")
# tests/resuming.py: 3 classes x 450 training images in batches of 64 = 22
# steps per epoch, 3 epochs.


@pytest.fixture(autouse=True)
def _epoch_zero():
    yield
    kt.data.set_epoch(0)  # Pipelines made by later tests begin at epoch 0.


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def _same(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x, u) and np.array_equal(y, v) for (x, y), (u, v) in zip(a, b))


_EPOCH_2 = """
import sys, numpy as np, kerastrain as kt
data = kt.data.load("cifar10_mini", classes="cat,dog", batch_size=128, cache=sys.argv[1])
aug = kt.augment.Augmentation.from_policy("standard", seed=3)
kt.data.set_epoch(2, int(sys.argv[2]))
batches = list(aug.apply(data.train))
np.savez(sys.argv[3], images=np.concatenate([np.asarray(x) for x, _ in batches]),
         labels=np.concatenate([np.asarray(y) for _, y in batches]))
"""


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_a_fresh_process_sees_what_the_original_saw_at_that_epoch(tmp_path, cache):
    data = kt.data.load("cifar10_mini", classes="cat,dog", batch_size=128, cache=cache)
    augmented = kt.augment.Augmentation.from_policy("standard", seed=3).apply(data.train)
    kt.data.set_epoch(0)
    epochs = [_batches(augmented) for _ in range(3)]
    assert not _same(epochs[1], epochs[2])  # a new order and new draws each epoch
    step, out = 3, tmp_path / "epoch2.npz"  # epoch 2 from its batch 3 on
    subprocess.run([sys.executable, "-c", _EPOCH_2, cache, str(step), str(out)],
                   check=True, cwd=ROOT)
    with np.load(out) as saved:
        rest = epochs[2][step:]
        np.testing.assert_array_equal(saved["images"], np.concatenate([x for x, _ in rest]))
        np.testing.assert_array_equal(saved["labels"], np.concatenate([y for _, y in rest]))
    # The labels too, and a pipeline without augmentation alike.
    kt.data.set_epoch(2, 3)
    assert _same(_batches(data.train), [b for b in _batches_of_epoch(data.train, 2)][3:])


def _batches_of_epoch(dataset, epoch):
    kt.data.set_epoch(epoch)
    return _batches(dataset)


def test_both_paths_give_the_same_epochs():
    memory = kt.data.load("cifar10_mini", classes="cat,dog", cache="memory", seed=5)
    streamed = kt.data.load("cifar10_mini", classes="cat,dog", cache="none", seed=5)
    for epoch in (0, 4):
        assert _same(_batches_of_epoch(memory.train, epoch),
                     _batches_of_epoch(streamed.train, epoch))


def _train(out_dir, *args):
    return subprocess.run([sys.executable, SCRIPT, str(out_dir), *args], cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = _train(out)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out / "result.npz") as saved:
        return {name: saved[name] for name in saved.files}


@pytest.mark.parametrize("kill_at, save_freq, resumed_epoch", [
    (30, "epoch", 1),  # in epoch 1, backed up at the end of epoch 0
    (33, "5", 1),      # in epoch 1, backed up 30 steps in (8 into epoch 1)
    (65, "4", 2),      # the last epoch's last-but-one step: backed up 64 steps in
])
def test_killed_run_started_again_ends_bit_identical(tmp_path, uninterrupted, kill_at,
                                                     save_freq, resumed_epoch):
    killed = _train(tmp_path, f"--kill_at={kill_at}", f"--save_freq={save_freq}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "result.npz").exists()
    resumed = _train(tmp_path, f"--save_freq={save_freq}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ran out of data" not in resumed.stderr
    with np.load(tmp_path / "result.npz") as saved:
        for name in saved.files:
            expected = uninterrupted[name]
            if name in ("loss", "val_loss"):  # the epochs this process ran
                expected = expected[resumed_epoch:]
            np.testing.assert_array_equal(saved[name], expected, err_msg=name)
    assert not (tmp_path / "backup").exists()  # deleted once training completed


def test_backup_is_written_whole_or_not_at_all(tmp_path):
    pointer = kt.callbacks.backup.read_pointer(tmp_path)
    assert pointer is None
    (tmp_path / "checkpoint.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a kerastrain backup pointer"):
        kt.callbacks.backup.read_pointer(tmp_path)
    with pytest.raises(ValueError, match="save_freq"):
        kt.callbacks.BackupAndRestore(tmp_path, save_freq=0)


def test_a_diverged_fit_keeps_its_last_good_backup(tmp_path):
    import keras

    data = kt.data.load("cifar10_mini", classes="cat,dog", batch_size=100)
    model = kt.models.small_cnn(2, width=4, blocks=1)
    # Sane for 4 steps, then a rate that blows the weights up.
    rate = keras.optimizers.schedules.PiecewiseConstantDecay([4], [1e-3, 1e12])
    model.compile(keras.optimizers.SGD(rate), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    backup = kt.callbacks.BackupAndRestore(tmp_path / "backup", save_freq=2)
    model.fit(data.train, epochs=3, verbose=0,
              callbacks=[backup, keras.callbacks.TerminateOnNaN()])
    pointer = kt.callbacks.backup.read_pointer(tmp_path / "backup")
    # Kept, from after the sane steps, before the end of the epoch that diverged.
    assert pointer["epoch"] == 0 and 4 <= pointer["step"] < 9
    model.load_weights(str(tmp_path / "backup" / pointer["files"]) + ".weights.h5")
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
