"""Streams one epoch of a folder at a large `image_size` and prints this
process's peak resident memory in MB (run by tests/test_data_memory.py, one
fresh process per measurement).

    python tests/streaming_memory.py FOLDER IMAGE_SIZE CACHE
"""

import resource
import sys

from kerastrain import data


def main(folder, image_size, cache):
    loaded = data.load(f"folder:{folder}", image_size=int(image_size), cache=cache,
                       batch_size=32, validation_fraction=0)
    count = sum(len(labels) for _, labels in loaded.train)
    assert count == loaded.num_train, (count, loaded.num_train)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


if __name__ == "__main__":
    main(*sys.argv[1:])
