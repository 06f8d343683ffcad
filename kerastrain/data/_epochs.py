"""Training pipelines whose random draws are functions of (seed, epoch, batch).

`tf.data`'s `shuffle(reshuffle_each_iteration=True)` and
`Dataset.random(rerandomize_each_iteration=True)` draw each epoch from the
history of the dataset object: a fresh process that resumes a run at epoch k
replays epoch 0's order, and the resumed run is not the run it replaces.

kerastrain's training pipelines (`kerastrain.data.load`'s `train` split and
`Augmentation.apply`) are built as *passes* instead: each iteration of the
dataset is one epoch, `make_pass(epoch, skip)` — the epoch's batches from
batch `skip` on, every draw seeded by (seed, epoch, position). Each pipeline
keeps an `EpochCounter`: a pass begins its epoch and advances it by one, so
consecutive iterations are epochs 0, 1, 2, ... as before. `set_epoch(epoch,
step)` sets every live counter: the next pass of each pipeline is `epoch`,
beginning at batch `step` (a resumed epoch's remaining batches).
`kerastrain.callbacks.BackupAndRestore` calls it at every epoch's start and
on resume, which is what makes a resumed run identical to the uninterrupted
one.

A pass that begins at batch `step > 0` yields fewer batches than the
declared length, so Keras' `fit` ends that epoch early (with its "ran out of
data" warning, which the backup callback silences) and the next epoch is
whole again. The declared length is kept by `repeat().take(batches)` over
the passes: a pass that ended before `batches` marks its counter, and the
repetition after it is empty, which ends the iteration.
"""

import weakref

import tensorflow as tf

_COUNTERS = weakref.WeakSet()
# The last `set_epoch`: where a pipeline made after it begins.
_POSITION = [0, 0]


class EpochCounter:
    """The epoch and first batch of a pipeline's next pass."""

    def __init__(self):
        with tf.init_scope():
            self.epoch = tf.Variable(_POSITION[0], dtype=tf.int64, trainable=False)
            self.skip = tf.Variable(_POSITION[1], dtype=tf.int64, trainable=False)
            # Set when a pass ran out before the declared length: the next
            # repetition is empty and ends the iteration.
            self.ended = tf.Variable(False, trainable=False)
        _COUNTERS.add(self)

    def set(self, epoch, step=0):
        self.epoch.assign(epoch)
        self.skip.assign(step)
        self.ended.assign(False)

    def begin(self):
        """In a `tf.data` function: `(epoch, skip, empty)` of the pass that
        begins now; advances the counter to the next epoch."""
        empty = self.ended.read_value()
        epoch, skip = self.epoch.read_value(), self.skip.read_value()
        with tf.control_dependencies([empty, epoch, skip]):
            updates = [self.ended.assign(False),
                       self.epoch.assign(tf.where(empty, epoch, epoch + 1)),
                       self.skip.assign(tf.where(empty, skip, tf.zeros_like(skip)))]
        with tf.control_dependencies(updates):
            return tf.identity(epoch), tf.identity(skip), tf.identity(empty)

    def mark_ended(self):
        with tf.control_dependencies([self.ended.assign(True)]):
            return tf.constant(0, tf.int64)


def set_epoch(epoch, step=0):
    """Makes the next pass of every kerastrain training pipeline epoch `epoch`
    (0-based), beginning at its batch `step`.

    `kerastrain.callbacks.BackupAndRestore` calls this; call it yourself
    before iterating a pipeline outside `fit` to get a given epoch's batches.
    Pipelines made later begin there too.
    """
    _POSITION[:] = [int(epoch), int(step)]
    for counter in list(_COUNTERS):
        counter.set(epoch, step)


def passes(make_pass, batches=None):
    """A dataset whose every iteration is one pass, `make_pass(epoch, skip)`.

    Args:
        make_pass: `(epoch, skip) -> tf.data.Dataset` of the epoch's batches
            from batch `skip` on (int64 scalar tensors).
        batches: the batches of a whole pass, declared as the dataset's
            cardinality (Keras then knows an epoch's steps); `None` when
            unknown.

    Returns:
        `(dataset, counter)`.
    """
    counter = EpochCounter()

    def one_pass(epoch, skip, empty):
        ds = make_pass(epoch, skip).take(tf.where(empty, tf.constant(0, tf.int64), -1))
        if batches is None:
            return ds
        end = tf.data.Dataset.from_tensors(empty).filter(tf.logical_not).map(
            lambda _: counter.mark_ended()).flat_map(lambda _: ds.take(0))
        return ds.concatenate(end)

    ds = tf.data.Dataset.from_tensors(0).map(lambda _: counter.begin()).flat_map(one_pass)
    if batches is not None:
        ds = ds.repeat().take(batches)
    return ds, counter


def seed(base, epoch, position):
    """A stateless `[2]` seed for draw `position` of `epoch` from seed `base`."""
    return tf.stack([tf.cast(base, tf.int64) * 1_000_003 + epoch,
                     tf.cast(position, tf.int64)])


def window_shuffle(ds, size, base, epoch):
    """`ds` shuffled within consecutive windows of `size` elements, in a
    seeded order of (base, epoch): the epoch-determined stand-in for a
    `shuffle` buffer (whose seed cannot be a tensor) on a sequential stream."""
    def keyed(position, element):
        return tf.random.stateless_uniform([], seed(base, epoch, position)), element

    def ordered(keys, elements):
        order = tf.argsort(keys)
        return tf.nest.map_structure(lambda t: tf.gather(t, order), elements)

    return ds.enumerate().map(keyed).batch(size).map(ordered).unbatch()
