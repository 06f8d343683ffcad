"""Tests for kerastrain.callbacks.swa on tiny CNNs trained on real CIFAR-10 images."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrain import data as kt_data
from kerastrain.callbacks.swa import StochasticWeightAveraging

CLASSES = ("airplane", "automobile", "ship", "truck")
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def arrays():
    splits = kt_data.load("cifar10_mini", classes=CLASSES, labels_per_class=40,
                          batch_size=32, validation_fraction=0, seed=0)
    x, y = (np.concatenate(a) for a in zip(*splits.train.as_numpy_iterator()))
    order = np.argsort(np.arange(len(y)) % 7, kind="stable")  # fixed, mixed classes
    return x[order], y[order]


@pytest.fixture(scope="module")
def train_ds(arrays):
    return tf.data.Dataset.from_tensor_slices(arrays).batch(32)


@pytest.fixture(scope="module")
def bn_ds(arrays):
    # Uneven batches (50, 50, 50, 10) check the example weighting.
    return tf.data.Dataset.from_tensor_slices(arrays).batch(50)


def _cnn(batch_norm=True, dropout=0.0, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
              keras.layers.Conv2D(6, 3, name="conv1")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(name="bn1"))
    layers += [keras.layers.ReLU(), keras.layers.MaxPooling2D(),
               keras.layers.Conv2D(8, 3, name="conv2")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(name="bn2"))
    layers += [keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D()]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, seed=seed))
    layers.append(keras.layers.Dense(len(CLASSES)))
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), LOSS, metrics=["accuracy"])
    return model


def _recorder(model, store):
    return keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: store.__setitem__(epoch, model.get_weights()))


def _bn_slots(model):
    return {i for i, v in enumerate(model.weights) if "moving" in v.path}


def _reference_bn_stats(model, dataset, names):
    """Mean and population variance of each BN layer's inputs over the whole
    pass (training mode, batch by batch as in the recomputation)."""
    aux = keras.Model(model.inputs, [model.get_layer(n).input for n in names])
    inputs = {n: [] for n in names}
    for x, _ in dataset:
        for name, z in zip(names, aux(x, training=True)):
            inputs[name].append(np.asarray(z, np.float64))
    whole = {n: np.concatenate(inputs[n]) for n in names}
    return {n: (z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2))) for n, z in whole.items()}


def test_average_is_mean_of_averaged_epochs_and_bn_is_recomputed(train_ds, bn_ds):
    model = _cnn(dropout=0.2)
    seen = {}
    swa = StochasticWeightAveraging(start_epoch=1, update_every=2, bn_update_data=bn_ds)
    model.fit(train_ds, epochs=6, callbacks=[_recorder(model, seen), swa], verbose=0)

    assert swa.averaged_epochs == [1, 3, 5]
    bn = _bn_slots(model)
    weights = model.get_weights()
    for i, w in enumerate(weights):
        np.testing.assert_array_equal(swa.final_weights[i], seen[5][i])
        if i not in bn:
            expected = np.mean([seen[e][i] for e in (1, 3, 5)], axis=0)
            np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(weights[0], seen[5][0], atol=1e-4)  # averaging moved them

    with swa.swap_in_final_weights() as swapped:
        for w, final in zip(swapped.get_weights(), swa.final_weights):
            np.testing.assert_array_equal(w, final)
    for w, averaged in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(w, averaged)
    # The reference pass updates the layers' statistics: read them first.
    moving = {n: [np.array(v) for v in model.get_layer(n).non_trainable_weights]
              for n in ("bn1", "bn2")}
    reference = _reference_bn_stats(model, bn_ds, ("bn1", "bn2"))
    for name, (mean, var) in reference.items():
        np.testing.assert_allclose(moving[name][0], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(moving[name][1], var, rtol=1e-4, atol=1e-5)


def test_model_without_batch_norm_needs_no_data(train_ds, recwarn):
    model = _cnn(batch_norm=False)
    seen = {}
    swa = StochasticWeightAveraging(start_fraction=0.5)
    model.fit(train_ds, epochs=4, callbacks=[_recorder(model, seen), swa], verbose=0)
    assert swa.averaged_epochs == [2, 3]
    for i, w in enumerate(model.get_weights()):
        np.testing.assert_allclose(w, (seen[2][i] + seen[3][i]) / 2, rtol=1e-6, atol=1e-7)
    assert not [w for w in recwarn if "StochasticWeightAveraging" in str(w.message)]


def _linear_model(learning_rate):
    # loss = mean(x . w) has the constant gradient mean(x): each SGD step moves
    # the kernel by exactly -lr * mean(x), which exposes the rate it used.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(keras.optimizers.SGD(learning_rate), lambda y, p: keras.ops.mean(p))
    return model


@pytest.mark.parametrize("base_schedule", [False, True])
@pytest.mark.parametrize("swa_schedule", [False, True])
def test_swa_learning_rate_drives_the_averaging_phase(arrays, base_schedule, swa_schedule):
    steps, start = 3, 2
    base = keras.optimizers.schedules.CosineDecay(0.2, 12) if base_schedule else 0.2
    swa_lr = (keras.optimizers.schedules.ExponentialDecay(0.05, 1, 0.5) if swa_schedule
              else 0.05)
    x = arrays[0][:16]
    ds = tf.data.Dataset.from_tensors((x, arrays[1][:16])).repeat(steps)
    model = _linear_model(base)
    kernels = [model.get_weights()[0]]
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: kernels.append(model.get_weights()[0]))
    swa = StochasticWeightAveraging(start_epoch=start, swa_learning_rate=swa_lr)
    model.fit(ds, epochs=4, callbacks=[swa, record], verbose=0)

    grad = (x.reshape(16, -1) / 255.0).mean(axis=0)
    bright = grad > 0.2
    used = [float(np.median(-(b - a)[bright, 0] / grad[bright]))
            for a, b in zip(kernels, kernels[1:])]
    expected = [float(base(t)) if base_schedule else 0.2 for t in range(steps * start)]
    expected += [0.05 * 0.5 ** t if swa_schedule else 0.05 for t in range(steps * 2)]
    np.testing.assert_allclose(used, expected, rtol=1e-3)
    if base_schedule:  # the optimizer gets its own schedule back
        config = keras.optimizers.serialize(model.optimizer)["config"]["learning_rate"]
        assert config["class_name"] == "CosineDecay"


class _Stop(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


@pytest.fixture(scope="module")
def uninterrupted(train_ds):
    model = _cnn(batch_norm=False)
    model.fit(train_ds, epochs=5, verbose=0, callbacks=[StochasticWeightAveraging(1)])
    return model.get_weights()


# Orders of (SWA, stop, BackupAndRestore): stop after both saved, between
# SWA's save and the backup (SWA rolls one epoch back), and after the backup
# but before SWA's save (SWA adds the restored weights).
# Stopping in the last epoch after the backup leaves no epoch to train: the
# resumed run only completes the average.
@pytest.mark.parametrize("order, stop_epoch", [("sbx", 3), ("sxb", 3), ("bxs", 3),
                                               ("bxs", 4)])
def test_resume_after_interruption_gives_the_same_average(train_ds, uninterrupted,
                                                          tmp_path, order, stop_epoch):
    model, seen = _cnn(batch_norm=False), {}

    def run(stop):
        callbacks = {"s": StochasticWeightAveraging(1, state_path=tmp_path / "swa.npz"),
                     "b": keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
                     "x": _Stop(stop_epoch if stop else -1)}
        ordered = [_recorder(model, seen)] + [callbacks[c] for c in order]
        model.fit(train_ds, epochs=5, verbose=0, callbacks=ordered)
        return callbacks["s"]

    with pytest.raises(RuntimeError, match="interrupted"):
        run(stop=True)
    assert (tmp_path / "swa.npz").exists()
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])  # BackupAndRestore
    swa = run(stop=False)                                                # must restore
    assert swa.averaged_epochs == [1, 2, 3, 4]
    assert not (tmp_path / "swa.npz").exists()
    for i, w in enumerate(model.get_weights()):
        expected = np.mean([seen[e][i] for e in (1, 2, 3, 4)], axis=0)
        np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(w, uninterrupted[i], rtol=1e-4, atol=1e-5)


_MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_swa import LOSS, _cnn, _reference_bn_stats
    from kerastrain.callbacks.swa import StochasticWeightAveraging
    data = np.load(sys.argv[1])
    ds = tf.data.Dataset.from_tensor_slices((data["x"], data["y"])).batch(32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _cnn()
        # A schedule, replaced by the SWA rate (a retraced step) from epoch 1 on.
        schedule = keras.optimizers.schedules.CosineDecay(0.05, 9)
        model.compile(keras.optimizers.SGD(schedule, momentum=0.9), LOSS)
    seen = {}
    swa = StochasticWeightAveraging(start_epoch=1, swa_learning_rate=0.01, bn_update_data=ds)
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: seen.__setitem__(e, model.get_weights()))
    history = model.fit(ds, validation_data=ds, epochs=3, verbose=0, callbacks=[record, swa])
    swa_val_loss = history.history["swa_val_loss"][-1]
    moving = [i for i, v in enumerate(model.weights) if "moving" in v.path]
    weights = model.get_weights()
    average_error = max(float(np.abs(w - (seen[1][i] + seen[2][i]) / 2).max())
                        for i, w in enumerate(weights) if i not in moving)
    replica_gap = max(float(np.abs(r.numpy() - v.numpy()).max())
                      for v in model.weights for r in v.value.values)
    plain = _cnn()
    plain.set_weights(weights)
    reference = _reference_bn_stats(plain, ds, ("bn1", "bn2"))
    bn_error = max(float(np.abs(np.array(v) - ref).max())
                   for n in ("bn1", "bn2")
                   for v, ref in zip(model.get_layer(n).non_trainable_weights, reference[n]))
    print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                      "distributed": type(model.weights[0].value).__name__,
                      "average_error": average_error, "replica_gap": replica_gap,
                      "bn_error": bn_error, "epochs": swa.averaged_epochs,
                      "swa_val_error": abs(swa_val_loss - model.evaluate(
                          ds, verbose=0, return_dict=True)["loss"]),
                      "schedule": type(model.optimizer._learning_rate).__name__}))
""")


def test_mirrored_strategy_on_two_devices(arrays, tmp_path):
    np.savez(tmp_path / "data.npz", x=arrays[0][:96], y=arrays[1][:96])
    tests = pathlib.Path(__file__).parent
    done = subprocess.run([sys.executable, "-c", _MIRRORED, str(tmp_path / "data.npz"),
                           str(tests)], capture_output=True, text=True, timeout=300,
                          cwd=tests.parent, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["distributed"] == "MirroredVariable"
    assert result["epochs"] == [1, 2] and result["schedule"] == "CosineDecay"
    assert result["average_error"] < 1e-6
    assert result["replica_gap"] == 0.0
    assert result["bn_error"] < 1e-4
    assert result["swa_val_error"] < 1e-5


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of `start_epoch` and `start_fraction`"),
    ({"start_epoch": 1, "start_fraction": 0.5}, "exactly one"),
    ({"start_epoch": -1}, "Invalid value for `start_epoch`"),
    ({"start_epoch": 1.5}, "Invalid value for `start_epoch`"),
    ({"start_fraction": 1.0}, "Invalid value for `start_fraction`"),
    ({"start_epoch": 0, "update_every": 0}, "Invalid value for `update_every`"),
    ({"start_epoch": 0, "swa_learning_rate": -0.1}, "Invalid value for `swa_learning_rate`"),
    ({"start_epoch": 0, "swa_learning_rate": "high"}, "Invalid value for `swa_learning_rate`"),
    ({"start_epoch": 0, "state_path": "swa.json"}, "Invalid value for `state_path`"),
    ({"start_epoch": 0, "bn_update_data": 3}, "Invalid value for `bn_update_data`"),
    ({"start_epoch": 0, "bn_update_data": tf.data.Dataset.range(3).repeat()},
     "repeats forever"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StochasticWeightAveraging(**kwargs)


@pytest.fixture(scope="module")
def shared_model():
    """One compiled model for the checks at fit time (its train step is traced once)."""
    return _cnn()


def test_batch_norm_without_data_warns_and_keeps_last_statistics(train_ds, shared_model):
    swa = StochasticWeightAveraging(start_epoch=1)
    with pytest.warns(UserWarning, match="bn_update_data"):
        shared_model.fit(train_ds.take(2), epochs=2, verbose=0, callbacks=[swa])
    assert swa.averaged_epochs == [1]
    for i in _bn_slots(shared_model):
        np.testing.assert_array_equal(shared_model.get_weights()[i], swa.final_weights[i])


def test_renorm_batch_norm_is_rejected(train_ds):
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 3),
                              keras.layers.BatchNormalization(renorm=True),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    model.compile("sgd", LOSS)
    with pytest.raises(ValueError, match="renorm=True"):
        model.fit(train_ds.take(1), callbacks=[StochasticWeightAveraging(0)], verbose=0)


def test_empty_bn_data_is_rejected(train_ds, shared_model):
    swa = StochasticWeightAveraging(0, bn_update_data=train_ds.take(0))
    with pytest.raises(ValueError, match="no batches"):
        shared_model.fit(train_ds.take(1), callbacks=[swa], verbose=0)


def test_state_of_another_model_is_rejected(train_ds, tmp_path, shared_model):
    path = tmp_path / "swa.npz"
    np.savez(path, average_0=np.zeros(3), epochs=np.array([0]), start_step=np.array(-1))
    with pytest.raises(ValueError, match="does not match"):
        shared_model.fit(train_ds.take(1), verbose=0, callbacks=[
            StochasticWeightAveraging(0, bn_update_data=train_ds, state_path=path)])


def test_state_ahead_of_the_resumed_epoch_by_two_is_rejected(train_ds, tmp_path,
                                                             shared_model):
    path = tmp_path / "swa.npz"
    arrays = {f"average_{i}": w for i, w in enumerate(shared_model.get_weights())
              if i not in _bn_slots(shared_model)}
    arrays = {f"average_{i}": w for i, w in enumerate(arrays.values())}
    np.savez(path, **arrays, epochs=np.array([0, 1, 2]), start_step=np.array(-1))
    with pytest.raises(RuntimeError, match="only one epoch can be rolled back"):
        shared_model.fit(train_ds.take(1), epochs=3, initial_epoch=1, verbose=0, callbacks=[
            StochasticWeightAveraging(0, bn_update_data=train_ds, state_path=path)])


def test_no_averaged_epoch_warns_and_leaves_the_model(train_ds, shared_model):
    before = shared_model.get_weights()
    swa = StochasticWeightAveraging(start_epoch=5, bn_update_data=train_ds)
    with pytest.warns(UserWarning, match="no epoch was averaged"):
        shared_model.fit(train_ds.take(1), epochs=1, callbacks=[swa], verbose=0)
    assert swa.final_weights is None and swa.averaged_epochs == []
    assert not np.allclose(shared_model.get_weights()[0], before[0])  # trained, not averaged
    with pytest.raises(RuntimeError, match="No final weights"):
        with swa.swap_in_final_weights():
            pass


# -- EMA, single-use data, all-or-nothing swap, validation of the average -------------


def _ema_values(model):
    """The optimizer's EMA of every weight of `model` (all trainable here)."""
    optimizer = model.optimizer
    ema = {id(v): a for v, a in zip(optimizer._trainable_variables,
                                    optimizer._model_variables_moving_average)}
    return [ema[id(v)].numpy() for v in model.weights]


@pytest.mark.parametrize("swap", [None, "before", "after"])
def test_with_use_ema_the_ema_weights_are_averaged(train_ds, swap):
    model = _cnn(batch_norm=False)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9, use_ema=True, ema_momentum=0.9),
                  LOSS)
    raw, ema = {}, {}
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: (
        raw.__setitem__(e, model.get_weights()), ema.__setitem__(e, _ema_values(model))))
    swa = StochasticWeightAveraging(start_epoch=1)
    callbacks = [record, swa]
    if swap:  # wherever SwapEMAWeights swaps the EMA into the model at epoch ends
        callbacks.insert(1 if swap == "before" else 2,
                         keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    model.fit(train_ds.take(3), epochs=3, verbose=0, callbacks=callbacks)

    for i, w in enumerate(model.get_weights()):
        np.testing.assert_allclose(w, (ema[1][i] + ema[2][i]) / 2, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(swa.final_weights[i], ema[2][i], rtol=1e-6, atol=1e-7)
    gap = max(np.abs(w - (raw[1][i] + raw[2][i]) / 2).max()
              for i, w in enumerate(model.get_weights()))
    assert gap > 1e-3  # the raw average is another model


def test_recipe_with_ema_and_swa_averages_the_ema(arrays, tmp_path):
    """The callbacks of `recipes.train --ema --swa_start=1`, as its README says."""
    from recipes import common, train  # noqa: F401 (train defines its flags)
    from recipes import flags as recipe_flags

    config = recipe_flags.complete_config(dict(ema=True, ema_momentum=0.9, swa_start=1,
                                               epochs=3, learning_rate=0.05), "recipes.train")
    ds = tf.data.Dataset.from_tensor_slices((arrays[0][:96], arrays[1][:96])).batch(32)
    model = _cnn(batch_norm=False)
    model.compile(common.optimizer(config, config["learning_rate"]), LOSS)
    data = kt_data.DataSplits(ds, None, ds, CLASSES, (32, 32, 3), 96, 0, 96, 32)
    made = common.training_callbacks(config, data, config["learning_rate"], 3, 3,
                                     str(tmp_path))
    callbacks, swa = made.for_fit(), made.swa
    ema = {}
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: ema.__setitem__(e, _ema_values(model)))
    model.fit(ds, epochs=3, verbose=0, callbacks=[record] + callbacks)
    assert swa.averaged_epochs == [1, 2]
    for i, w in enumerate(model.get_weights()):
        np.testing.assert_allclose(w, (ema[1][i] + ema[2][i]) / 2, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(swa.final_weights[i], ema[2][i], rtol=1e-6, atol=1e-7)


def _batches(x, fail_after=None):
    for i in range(0, len(x), 40):
        if i // 40 == fail_after:
            raise RuntimeError("data source failed")
        yield x[i:i + 40]


def test_exhausted_generator_is_refused_when_training_starts(arrays, train_ds, shared_model):
    swa = StochasticWeightAveraging(0, bn_update_data=_batches(arrays[0]))
    shared_model.fit(train_ds.take(1), verbose=0, callbacks=[swa])  # reads it once
    epochs, before = [], shared_model.get_weights()
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epochs.append(e))
    with pytest.raises(ValueError, match="`bn_update_data`: the iterator is exhausted"):
        shared_model.fit(train_ds.take(1), verbose=0, callbacks=[swa, record])
    assert epochs == []  # refused before any training
    for w, b in zip(shared_model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_failed_batch_norm_pass_leaves_the_final_weights(arrays, train_ds, shared_model,
                                                         tmp_path):
    seen, path = {}, tmp_path / "swa.npz"
    swa = StochasticWeightAveraging(0, state_path=path,
                                    bn_update_data=_batches(arrays[0], fail_after=2))
    with pytest.raises(RuntimeError, match="data source failed"):
        shared_model.fit(train_ds.take(2), epochs=2, verbose=0,
                         callbacks=[_recorder(shared_model, seen), swa])
    for w, final in zip(shared_model.get_weights(), seen[1]):
        np.testing.assert_array_equal(w, final)  # neither averaged nor half-updated
    assert swa.final_weights is None
    assert path.exists()  # a rerun under BackupAndRestore can still finish the average


def test_averaged_model_is_evaluated_on_the_validation_data(train_ds, bn_ds, shared_model):
    end_logs = {}
    swa = StochasticWeightAveraging(start_epoch=1, bn_update_data=bn_ds)
    after = keras.callbacks.LambdaCallback(on_train_end=lambda logs: end_logs.update(logs))
    history = shared_model.fit(train_ds.take(2), validation_data=bn_ds.take(2), epochs=3,
                               verbose=0, callbacks=[swa, after])
    expected = shared_model.evaluate(bn_ds.take(2), verbose=0, return_dict=True)
    for name in ("loss", "accuracy"):
        logged = history.history[f"swa_val_{name}"]
        assert len(logged) == 3 and all(np.isnan(logged[:2]))
        assert logged[-1] == pytest.approx(expected[name], rel=1e-5)
        assert end_logs[f"swa_val_{name}"] == logged[-1]
    assert history.history["val_loss"][-1] != pytest.approx(expected["loss"], rel=1e-3)
