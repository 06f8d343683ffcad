"""`tf.distribute` strategies by name, for recipes and user scripts.

Keras trains under any `tf.distribute.Strategy`: build and compile the model
inside `strategy.scope()` and call `fit` as usual; the batch size of the
dataset is the global batch, split across replicas. This module maps the
names recipes accept (`--strategy=...`) to strategies, with the setup each
one needs and a clear error when that setup is missing:

- `"default"`: the default strategy (one device: the first GPU, else CPU).
- `"mirrored"`: `MirroredStrategy`, synchronous data parallelism over every
  local GPU (or the given devices).
- `"multi_worker"`: `MultiWorkerMirroredStrategy`, the same over several
  machines. Every machine runs the same command with its own `TF_CONFIG`,
  e.g. `{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task":
  {"type": "worker", "index": 0}}`; worker 0 is the chief. Create it at
  program start, before any other TensorFlow op.
- `"tpu"`: `TPUStrategy` on a Cloud TPU found by `TPUClusterResolver`
  (`tpu="local"` on a TPU VM, else the TPU's name or `grpc://` address).

and holds what scaling out changes in a training setup: the global batch of a
per-replica batch (`global_batch_size`), the learning rate for it
(`learning_rate_factor`: linear scaling, Goyal et al. 2017, or square root)
and the mixed precision policy of the accelerator (`mixed_precision_policy`,
built under `dtype_policy`).
"""

import contextlib
import json
import math
import os
import warnings

import keras
import tensorflow as tf

from kerastrain.distribute import _keras_compat

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
LR_SCALING = ("linear", "sqrt", "none")


def get_strategy(name="default", *, devices=None, tpu=None):
    """Builds a `tf.distribute.Strategy` from its name.

    Args:
        name: `"default"`, `"mirrored"`, `"multi_worker"` or `"tpu"`.
            Defaults to `"default"`.
        devices: for `"mirrored"`, the devices to replicate over (e.g.
            `["/gpu:0", "/gpu:1"]`). Defaults to `None` (every local GPU,
            else the CPU).
        tpu: for `"tpu"`, the TPU name or address, `"local"` on a TPU VM.
            Defaults to `None` (`TPU_NAME` from the environment).

    Returns:
        A `tf.distribute.Strategy`.

    Example:

    >>> strategy = get_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = kerastrain.models.small_cnn(10)
    ...     model.compile(...)
    >>> model.fit(data.train, epochs=10)
    """
    if name not in STRATEGIES:
        raise ValueError(f"Invalid value for `name`: expected one of {STRATEGIES}, "
                         f"received name={name!r}")
    if devices is not None and name != "mirrored":
        raise ValueError(f"`devices` applies to the 'mirrored' strategy only, "
                         f"received name={name!r}, devices={devices!r}")
    if tpu is not None and name != "tpu":
        raise ValueError(f"`tpu` applies to the 'tpu' strategy only, received "
                         f"name={name!r}, tpu={tpu!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            warnings.warn("get_strategy('multi_worker'): TF_CONFIG is not set, so "
                          "this process trains as a cluster of one worker. Set "
                          "TF_CONFIG on every machine to train on several.",
                          stacklevel=2)
        # Keras 3's fit fails under two or more workers with TensorFlow's own
        # class; this subclass fixes the two `reduce` calls it fails in.
        return _keras_compat.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu)


def global_batch_size(batch_size, strategy=None):
    """The global batch of `batch_size` images per replica of `strategy`.

    Args:
        batch_size: images per replica per step.
        strategy: a `tf.distribute.Strategy`. Defaults to `None` (the current
            one).

    Returns:
        `batch_size * strategy.num_replicas_in_sync`: the batch size to give
        the dataset `fit` reads, which Keras splits across the replicas.
    """
    strategy = strategy or tf.distribute.get_strategy()
    return int(batch_size) * strategy.num_replicas_in_sync


def learning_rate_factor(replicas, rule="linear"):
    """How much to scale a learning rate tuned on one replica for `replicas`.

    With `replicas` times the batch, each step averages the gradient over
    `replicas` times the images. `"linear"` (Goyal et al. 2017, "Accurate,
    Large Minibatch SGD") multiplies the rate by `replicas`, which keeps SGD's
    progress per image and is the usual rule with a warm-up; `"sqrt"` by
    `sqrt(replicas)`, which keeps the gradient noise, often better for Adam;
    `"none"` keeps the rate.

    Args:
        replicas: replicas in sync (`strategy.num_replicas_in_sync`).
        rule: `"linear"`, `"sqrt"` or `"none"`. Defaults to `"linear"`.

    Returns:
        The factor, 1.0 on one replica.
    """
    if rule not in LR_SCALING:
        raise ValueError(f"Invalid value for `rule`: expected one of {LR_SCALING}, "
                         f"received rule={rule!r}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"Invalid value for `replicas`: expected an int >= 1, "
                         f"received replicas={replicas!r}")
    return {"linear": float(replicas), "sqrt": math.sqrt(replicas), "none": 1.0}[rule]


def mixed_precision_policy(strategy=None):
    """The Keras mixed precision policy for the accelerator of `strategy`.

    `"mixed_bfloat16"` under a `TPUStrategy` (TPUs compute in bfloat16, no
    loss scaling needed); `"mixed_float16"` otherwise (GPU tensor cores;
    `compile` wraps the optimizer in a `LossScaleOptimizer`). Variables stay
    float32 either way. On a CPU both are slower than float32.

    Args:
        strategy: a `tf.distribute.Strategy`. Defaults to `None` (the current
            one).
    """
    strategy = strategy or tf.distribute.get_strategy()
    tpu_classes = (tf.distribute.TPUStrategy,
                   getattr(tf.distribute.experimental, "TPUStrategy", tf.distribute.TPUStrategy))
    if isinstance(strategy, tpu_classes):
        return "mixed_bfloat16"
    return "mixed_float16"


@contextlib.contextmanager
def dtype_policy(policy):
    """Layers built inside the block take the Keras dtype `policy`; the
    global policy is restored on exit (Keras' own setter is process-wide).

    kerastrain's classifiers keep their logits layer in float32, as the Keras
    mixed precision guide advises, and exports serve float32 probabilities.

    Args:
        policy: a Keras dtype policy name (`"float32"`, `"mixed_float16"`,
            `"mixed_bfloat16"`) or `None` (no change).

    Example:

    >>> with dtype_policy(mixed_precision_policy(strategy)), strategy.scope():
    ...     model = kerastrain.models.small_cnn(10)
    """
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def current_task():
    """This process's task in its cluster, from `TF_CONFIG`.

    Returns:
        `(type, index)`, e.g. `("worker", 1)`, or `None` without `TF_CONFIG`
        (or one without a task).

    Raises:
        ValueError: when `TF_CONFIG` is not a JSON object.
    """
    config = _tf_config()
    task = config.get("task")
    if not task:
        return None
    return str(task.get("type", "worker")), int(task.get("index", 0))


def cluster_size():
    """How many workers (and chief) `TF_CONFIG`'s cluster has; 1 without one.

    Parameter servers and evaluators do not count: they read no training data.
    """
    cluster = _tf_config().get("cluster") or {}
    return max(1, sum(len(cluster.get(kind) or ()) for kind in ("chief", "worker")))


def worker_index():
    """This process's place among its cluster's chief and workers (0-based,
    the chief first, as `MultiWorkerMirroredStrategy` orders them); 0
    without `TF_CONFIG`. Training data shard `worker_index()` of
    `cluster_size()` belongs to this process."""
    task = current_task()
    if task is None or task[0] == "chief":
        return 0
    has_chief = bool((_tf_config().get("cluster") or {}).get("chief"))
    return task[1] + (1 if has_chief else 0)


def is_chief():
    """Whether this process is the chief of its cluster (or runs alone).

    In a `MultiWorkerMirroredStrategy` cluster every worker runs the same
    program; only the chief (worker 0, or the task of type `"chief"`) should
    write files others read, such as exports and reports.

    Returns:
        `True` without `TF_CONFIG`, or when `TF_CONFIG`'s task is the chief.
    """
    task = current_task()
    if task is None or task[0] == "chief":
        return True
    return task == ("worker", 0) and "chief" not in _tf_config().get("cluster", {})


def _tf_config():
    text = os.environ.get("TF_CONFIG") or "{}"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        config = error
    if not isinstance(config, dict):
        raise ValueError(f"Invalid TF_CONFIG environment variable: expected a JSON "
                         f"object with 'cluster' and 'task', received {text!r}")
    return config


def _tpu_strategy(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise RuntimeError(
            f"No TPU found for tpu={tpu!r} ({type(error).__name__}: {error}). On a "
            "TPU VM pass tpu='local' (--tpu=local); otherwise pass the TPU's name "
            "or grpc:// address, or set TPU_NAME.") from error
    return tf.distribute.TPUStrategy(resolver)
