"""One worker of a two-worker MultiWorkerMirroredStrategy cluster reading a
data spec streamed, as `model.fit` would: run by tests/test_data_sharding.py
with `TF_CONFIG` set, it writes the digests of the training images this
worker's replica received in one epoch, one per line.

    python tests/sharded_reading.py SPEC OUTPUT
"""

import hashlib
import sys

from kerastrain import data, distribute


def main(spec, output):
    strategy = distribute.get_strategy("multi_worker")
    loaded = data.load(spec, cache="none", batch_size=8, validation_fraction=0)
    digests = []
    for images, labels in strategy.experimental_distribute_dataset(loaded.train):
        for x, y in zip(strategy.experimental_local_results(images),
                        strategy.experimental_local_results(labels)):
            digests += [hashlib.sha1(image.tobytes() + bytes([label])).hexdigest()
                        for image, label in zip(x.numpy(), y.numpy())]
    with open(output, "w", encoding="ascii") as f:
        f.write("\n".join(digests) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
