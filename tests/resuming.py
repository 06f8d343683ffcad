"""A user's own `fit` with `kt.callbacks.BackupAndRestore`, run by
tests/test_resume.py in subprocesses: killed (SIGKILL, no clean-up) at a
given step, then started again with the same command.

    python tests/resuming.py OUT_DIR [--kill_at=STEP] [--save_freq=N]

Trains a small CNN with dropout on augmented cifar10_mini images for three
epochs with op determinism on, and writes the final weights and the loss
history to OUT_DIR/result.npz.
"""

import argparse
import os
import signal

import keras
import numpy as np
import tensorflow as tf

import kerastrain as kt


class _KillAt(keras.callbacks.Callback):
    """Kills this process, without any clean-up, after optimizer step `step`."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--kill_at", type=int)
    parser.add_argument("--save_freq", default="epoch")
    parser.add_argument("--cache", default="memory")
    args = parser.parse_args()
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    data = kt.data.load("cifar10_mini", classes="cat,dog,ship", batch_size=64,
                        cache=args.cache, validation_fraction=0.1, seed=0)
    augmentation = kt.augment.Augmentation.from_policy("standard", seed=0)
    model = kt.models.small_cnn(3, width=8, blocks=2, dropout=0.3)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
    callbacks = [kt.callbacks.BackupAndRestore(os.path.join(args.out_dir, "backup"),
                                               save_freq=save_freq)]
    if args.kill_at:
        callbacks.append(_KillAt(args.kill_at))
    history = model.fit(augmentation.apply(data.train), validation_data=data.validation,
                        epochs=3, callbacks=callbacks, verbose=0)
    np.savez(os.path.join(args.out_dir, "result.npz"),
             *[np.asarray(w) for w in model.weights],
             loss=np.asarray(history.history["loss"]),
             val_loss=np.asarray(history.history["val_loss"]))


if __name__ == "__main__":
    main()
