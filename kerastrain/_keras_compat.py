"""Makes Keras 3 `model.fit` work under a multi-worker `tf.distribute` strategy.

Keras 3 (through 3.15 at least; keras-team/keras#20585) breaks `fit` under
`MultiWorkerMirroredStrategy` with two workers or more, in two places of its
TensorFlow trainer:

1. `_maybe_symbolic_build` all-reduces the first *data batch* across workers
   to get symbolic input shapes; the collective reduce cannot take the
   `(images, labels)` structure and fails with "Attempt to convert a value
   (PerReplica...) to a Tensor".
2. `reduce_per_replica` averages the per-replica logs of each step with
   `strategy.reduce("MEAN", v, axis=0)`, which fails on the scalar losses
   and metrics ("Invalid reduction dimension 0 for input with 0 dimensions").

`fix_multi_worker_fit()` replaces both, for multi-worker strategies only:
shapes come from this worker's first replica (no communication), and the
scalar logs are averaged over the replicas (`axis=None`). Single-worker
strategies keep Keras' own code paths.
"""

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as _trainer

_PATCHED = []


def fix_multi_worker_fit():
    """Installs the two fixes (once per process)."""
    if _PATCHED:
        return
    original_reduce = _trainer.reduce_per_replica
    original_build = _trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _multi_worker(strategy):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None)
                if _trainer._is_per_replica_instance(v) else v, values)
        return original_reduce(values, strategy, reduction)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not _multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tree.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v,
                next(batches))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    _trainer.reduce_per_replica = reduce_per_replica
    _trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _PATCHED.append(True)


def _multi_worker(strategy):
    return _trainer._collective_all_reduce_multi_worker(strategy)
