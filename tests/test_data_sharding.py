"""A two-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1 streams a
folder and its TFRecord shards: each worker reads its own part, and the
parts are disjoint and together the whole training split, once per epoch."""

import collections
import hashlib
import pathlib
import sys

import pytest

import kerastrain
from kerastrain import data
from test_distribute import run_cluster

SCRIPT = pathlib.Path(__file__).parent / "sharded_reading.py"
MINI = pathlib.Path(kerastrain.__file__).parent / "datasets" / "cifar10_mini"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    for name in ("cat", "dog", "ship"):
        (root / name).mkdir()
        for path in sorted((MINI / "train" / name).glob("*.jpg"))[:30]:
            (root / name / path.name).write_bytes(path.read_bytes())
    return root


def _cluster_reads(spec, tmp_path):
    outputs = [tmp_path / f"worker_{index}.txt" for index in range(2)]
    run_cluster([[sys.executable, str(SCRIPT), spec, str(output)] for output in outputs],
                timeout=150)
    return [output.read_text().split() for output in outputs]


def _expected(spec):
    loaded = data.load(spec, cache="memory", validation_fraction=0)
    return collections.Counter(
        hashlib.sha1(image.tobytes() + bytes([label])).hexdigest()
        for x, y in loaded.train for image, label in zip(x.numpy(), y.numpy()))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["folder", "tfrecord"])
def test_workers_read_disjoint_parts_covering_the_data(kind, folder, tmp_path):
    spec = f"folder:{folder}"
    if kind == "tfrecord":
        data.to_tfrecord(spec, tmp_path / "shards", shard_mb=0.05, verbose=0)
        assert len(list((tmp_path / "shards").glob("all-*.tfrecord"))) >= 2
        spec = f"tfrecord:{tmp_path / 'shards'}"
    first, second = _cluster_reads(spec, tmp_path)
    assert first and second
    assert not set(first) & set(second)
    assert collections.Counter(first + second) == _expected(spec)
    if kind == "folder":  # By element: halves. By file: as the shards fall.
        assert abs(len(first) - len(second)) <= 8
