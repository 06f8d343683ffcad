"""Quick demo: train a small CNN on the embedded CIFAR-10 subset.

Loads `cifar10_mini` (real CIFAR-10 images shipped with kerastrain), applies
the `standard` augmentation policy in the tf.data pipeline, trains a small
CNN for a few epochs and prints its test accuracy. It runs offline in a few
minutes on a laptop CPU.

    python -m recipes.demo --epochs=8 --output_dir=runs/demo
"""

import json
import os
import time

from absl import app
from absl import flags

import kerastrain as kt

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 8, "Training epochs.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate (Adam).")
flags.DEFINE_string("augment", "standard", "Augmentation policy name.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string(
    "output_dir", "runs/demo", "Where to write metrics and the preview PNG."
)


def main(argv):
    del argv
    import keras

    keras.utils.set_random_seed(FLAGS.seed)
    data = kt.data.load(
        "cifar10_mini", batch_size=FLAGS.batch_size, seed=FLAGS.seed
    )
    augmentation = kt.augment.Augmentation.from_policy(
        FLAGS.augment, seed=FLAGS.seed
    )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    preview = kt.augment.preview(
        data.train,
        os.path.join(FLAGS.output_dir, "augmentation.png"),
        augmentation=augmentation,
    )
    model = kt.models.small_cnn(data.num_classes, dropout=0.2)
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.time()
    model.fit(
        augmentation.apply(data.train),
        validation_data=data.validation,
        epochs=FLAGS.epochs,
        verbose=2,
    )
    seconds = time.time() - start
    loss, accuracy = model.evaluate(data.test, verbose=0)
    metrics = {
        "test_accuracy": float(accuracy),
        "test_loss": float(loss),
        "epochs": FLAGS.epochs,
        "train_seconds": round(seconds, 1),
    }
    with open(os.path.join(FLAGS.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(
        f"\ncifar10_mini test accuracy: {accuracy:.3f} "
        f"(loss {loss:.3f}, {FLAGS.epochs} epochs in {seconds:.0f} s)\n"
        f"augmentation preview: {preview}"
    )


if __name__ == "__main__":
    app.run(main)
