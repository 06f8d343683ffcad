"""Makes Keras 3 `model.fit` work under a multi-worker `tf.distribute` strategy.

Keras 3 (through 3.15 at least; keras-team/keras#20585) breaks `fit` under
`MultiWorkerMirroredStrategy` with two workers or more, in two calls of its
TensorFlow trainer to `strategy.reduce`:

1. `_maybe_symbolic_build` all-reduces the first *data batch* across workers
   to get symbolic input shapes; the collective reduce cannot take the
   `(images, labels)` structure and fails with "Attempt to convert a value
   (PerReplica...) to a Tensor".
2. `reduce_per_replica` averages the per-replica logs of each step with
   `strategy.reduce("MEAN", v, axis=0)`, which fails on the scalar losses
   and metrics ("Invalid reduction dimension 0 for input with 0 dimensions").

Both are calls to the strategy, so the fix is scoped to it: no Keras code is
patched. `MultiWorkerMirroredStrategy` here is TensorFlow's class with a
`reduce` that takes what the strategy documents it takes: a nested structure
is reduced leaf by leaf (and the integer leaves that collectives cannot sum,
such as uint8 images, as int32, cast back), and a scalar over `axis=0`
(which a scalar does not have) is reduced over the replicas alone. Any other
strategy, and this one in single-worker mode, behaves as TensorFlow's.
"""

import tensorflow as tf

# Dtypes that CollectiveReduceV2 reduces (its `T` attribute).
_COLLECTIVE_DTYPES = (tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` whose `reduce` Keras' `fit` can use."""

    def reduce(self, reduce_op, value, axis):
        if not self.extended._in_multi_worker_mode():
            return super().reduce(reduce_op, value, axis)
        if not isinstance(value, (tf.Tensor, tf.distribute.DistributedValues)) and \
                tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
        local = self.experimental_local_results(value)[0]
        if axis is not None and local.shape.rank == 0:
            axis = None
        if local.dtype in _COLLECTIVE_DTYPES or not local.dtype.is_integer:
            return super().reduce(reduce_op, value, axis)
        # Collectives have no uint8/int8/int16 kernel (Keras' case: images).
        if isinstance(value, tf.distribute.DistributedValues):
            wide = self.run(lambda v: tf.cast(v, tf.int32), args=(value,))
        else:
            wide = tf.cast(value, tf.int32)
        return tf.cast(super().reduce(reduce_op, wide, axis), local.dtype)
