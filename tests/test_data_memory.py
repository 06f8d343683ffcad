"""Streaming holds a few batches, not the data: peak memory does not grow
with the number of images (while decoding into memory grows by each one)."""

import pathlib
import subprocess
import sys

import pytest
from PIL import Image

import kerastrain
from test_distribute import _env

SCRIPT = pathlib.Path(__file__).parent / "streaming_memory.py"
MINI = pathlib.Path(kerastrain.__file__).parent / "datasets" / "cifar10_mini"
IMAGE_SIZE = 256  # 192 KiB per decoded image.


def _folder(root, count):
    """`count` small JPEGs (64x64, from the embedded images) in two classes,
    which the loader resizes up to IMAGE_SIZE."""
    for name in ("cat", "dog"):
        for split in ("train", "test"):
            (root / split / name).mkdir(parents=True)
        paths = sorted((MINI / "train" / name).glob("*.jpg"))
        for i in range(count // 2):
            image = Image.open(paths[i % len(paths)]).resize((64, 64), Image.BILINEAR)
            image.save(root / "train" / name / f"{i:05d}.jpg")
            if i < 4:
                image.save(root / "test" / name / f"{i:05d}.jpg")
    return root


def _peak_mb(folder, cache):
    result = subprocess.run([sys.executable, str(SCRIPT), str(folder), str(IMAGE_SIZE),
                             cache], env=_env(), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.split()[-1])


@pytest.mark.timeout(400)
def test_streaming_memory_does_not_grow_with_the_number_of_images(tmp_path):
    small = _folder(tmp_path / "small", 300)
    large = _folder(tmp_path / "large", 1500)
    extra_mb = 1200 * IMAGE_SIZE * IMAGE_SIZE * 3 / 2**20  # 225 MB decoded.
    streamed = [_peak_mb(small, "none"), _peak_mb(large, "none")]
    in_memory = _peak_mb(large, "memory")
    # Streaming: well under the decoded size of the extra images ...
    assert streamed[1] - streamed[0] < 0.3 * extra_mb, streamed
    # ... which the in-memory path does hold: the measure can tell.
    assert in_memory - streamed[1] > 0.7 * extra_mb, (in_memory, streamed)
