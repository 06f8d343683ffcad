"""tf.distribute on CPU: MirroredStrategy over two logical devices and a
two-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1, with SWA.

Each comparison is a fresh process (tests/distributed_training.py): logical
devices and collective ops are fixed when TensorFlow starts.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kerastrain import distribute

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_training.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _train(tmp_path, batch_norm=False):
    """Runs the script under the default strategy and MirroredStrategy over
    two logical CPUs, in one process; `batch_norm` is False, True, "sync"
    (synchronized) or "applications" (fine-tunes a keras.applications
    backbone). Returns `(single, mirrored)`."""
    output = tmp_path / "run.npz"
    flag = {False: [], True: ["--batch_norm"], "sync": ["--sync_batch_norm"],
            "applications": ["--applications"]}[batch_norm]
    args = [sys.executable, SCRIPT, "default,mirrored", str(output)] + flag
    result = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return tuple(dict(np.load(tmp_path / f"run_{name}.npz")) for name in ("default", "mirrored"))


def _weights(run, prefix="weight"):
    return [run[f"{prefix}_{i}"] for i in range(sum(k.startswith(prefix + "_") for k in run))]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _assert_swa_applied(run):
    """SWA averaged epochs 1 and 2 and left the average in the model."""
    np.testing.assert_array_equal(run["averaged_epochs"], [1, 2])
    changed = [not np.allclose(w, f) for w, f in zip(_weights(run), _weights(run, "final"))]
    assert any(changed), "the averaged weights equal the last epoch's weights"


@pytest.mark.timeout(300)
def test_mirrored_swa_with_batch_norm_matches_one_device(tmp_path):
    # Synchronized BatchNorm normalizes with the global batch's moments, so
    # two replicas train like one device; then the SWA average and the
    # BatchNorm statistics recomputed for it must agree too.
    single, mirrored = _train(tmp_path, batch_norm="sync")
    assert int(single["replicas"]) == 1 and int(mirrored["replicas"]) == 2
    assert mirrored["loss"][-1] < mirrored["loss"][0]
    _assert_swa_applied(mirrored)
    _assert_swa_applied(single)
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-4)
    paths = list(mirrored["paths"])
    statistics = [i for i, path in enumerate(paths) if "/moving_" in path]
    assert len(statistics) == 4  # two BatchNorm layers
    averaged, recomputed = _weights(mirrored), _weights(single)
    for i, path in enumerate(paths):
        # float32 sums in another order (two half batches, then the
        # all-reduce) through 12 steps of SGD with momentum: measured at most
        # 6.6e-5 on values of 0.05..3. Recomputing the statistics per replica
        # (on half batches) is off by 6e-3.
        np.testing.assert_allclose(averaged[i], recomputed[i], rtol=1e-4, atol=2e-4,
                                   err_msg=path)
    # The statistics were recomputed for the average, not kept from the last
    # epoch (the weights before averaging).
    final = _weights(mirrored, "final")
    for i in statistics:
        assert not np.allclose(averaged[i], final[i], rtol=1e-3, atol=1e-4), paths[i]


@pytest.mark.timeout(300)
def test_mirrored_fine_tunes_a_keras_applications_backbone_like_one_device(tmp_path):
    # BatchNorm frozen (inference mode) while the top block trains: the mean gradient over
    # the global batch of 32 is the same on one device and on two replicas of
    # 16, so the fine-tuned MobileNetV3Small and its predictions must agree.
    single, mirrored = _train(tmp_path, batch_norm="applications")
    assert int(single["replicas"]) == 1 and int(mirrored["replicas"]) == 2
    assert int(single["batch_size"]) == int(mirrored["batch_size"]) == 32
    assert mirrored["loss"][-1] < mirrored["loss"][0]  # it trains
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-4)
    for a, b in zip(_weights(mirrored), _weights(single)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(mirrored["predicted"], single["predicted"], atol=1e-4)


def test_global_batch_and_learning_rate_scaling():
    assert distribute.global_batch_size(16) == 16  # the default strategy: 1 replica
    assert distribute.learning_rate_factor(1) == 1.0
    assert distribute.learning_rate_factor(8) == 8.0
    assert distribute.learning_rate_factor(4, "sqrt") == 2.0
    assert distribute.learning_rate_factor(8, "none") == 1.0
    with pytest.raises(ValueError, match="rule"):
        distribute.learning_rate_factor(2, "quadratic")
    with pytest.raises(ValueError, match="replicas"):
        distribute.learning_rate_factor(0)


def run_cluster(commands, timeout):
    """Runs one worker process per command as a MultiWorkerMirroredStrategy
    cluster on 127.0.0.1 (each gets its TF_CONFIG) and waits for all; each
    must succeed."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(len(commands))]}
    workers = []
    for index, command in enumerate(commands):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            command, env=_env(TF_CONFIG=config), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    try:
        logs = [worker.communicate(timeout=timeout) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, (_, stderr) in zip(workers, logs):
        assert worker.returncode == 0, stderr[-3000:]


@pytest.mark.timeout(300)
def test_multi_worker_cluster_agrees_on_final_weights(tmp_path):
    outputs = [tmp_path / f"worker_{index}.npz" for index in range(2)]
    run_cluster([[sys.executable, SCRIPT, "multi_worker", str(output), "--batch_norm"]
                 for output in outputs], timeout=240)
    runs = [dict(np.load(output)) for output in outputs]
    assert [int(run["replicas"]) for run in runs] == [2, 2]
    for run in runs:
        _assert_swa_applied(run)
        assert run["loss"][-1] < run["loss"][0]
    for a, b in zip(_weights(runs[0]), _weights(runs[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_default_is_tensorflows_default_strategy():
    assert distribute.get_strategy() is tf.distribute.get_strategy()


def test_mirrored_replicates_over_the_given_devices():
    strategy = distribute.get_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1


def test_missing_tpu_gives_a_clear_error():
    with pytest.raises(RuntimeError, match="No TPU found .* pass tpu='local'"):
        distribute.get_strategy("tpu")


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="gpu"), "expected one of \\('default', 'mirrored'"),
    (dict(name="default", devices=["/cpu:0"]), "'mirrored' strategy only"),
    (dict(name="mirrored", tpu="local"), "'tpu' strategy only"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distribute.get_strategy(**kwargs)


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]},
      "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]},
      "task": {"type": "chief", "index": 0}}, True),
])
def test_is_chief(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert distribute.is_chief() is chief


def test_current_task_and_the_worker_run_directory(monkeypatch):
    from recipes import run_dir

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.current_task() is None
    assert run_dir.path({"output_dir": "runs/x"}) == "runs/x"
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}))
    assert distribute.current_task() == ("worker", 1)
    # Workers other than the chief write beside the chief's run directory.
    assert run_dir.path({"output_dir": "runs/x"}) == os.path.join("runs/x", "workers",
                                                                  "worker_1")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="Invalid TF_CONFIG environment variable"):
        distribute.is_chief()
