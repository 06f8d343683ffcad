"""Data throughput at full size: kerastrain's loader paths vs Keras' own.

Generates (seeded, in a temporary directory) a folder of real-looking
256x256 JPEGs, the embedded CIFAR-10 images upscaled with noise, laid out
`train/<class>/` (+ a small `test/`), at each of `--sizes`. Then, in one run,
each method feeds one epoch of the training images as `image_size=(224,
224)` batches through the standard augmentation:

- `memory`: `kerastrain.data.load(cache="memory")` (decodes every image
  once into RAM first; only where it fits),
- `streaming`: `kerastrain.data.load(cache="none")` (parallel `tf.data`
  decode and resize every epoch),
- `keras`: `keras.utils.image_dataset_from_directory` (cast to uint8 for the
  same augmentation),
- `tfrecord`: `kerastrain.data.load("tfrecord:...", cache="none")` on shards
  written once by `kerastrain.data.to_tfrecord` (its conversion time is
  reported separately).

Each timed epoch of a (method, size) runs in its own process, so its peak resident memory
(`resource.getrusage` `ru_maxrss`) is its own; the memory right after the
imports is reported too, so the part due to the data shows. Reported:
images/s of the second epoch (once `tf.data`'s AUTOTUNE has settled, as in
any run of many epochs) and of the first after its first batch, time to the first batch
(from the `load` call, which includes listing files and, for `memory`,
decoding them all), and peak RSS. Writes `results/data_throughput.json` and
`results/data_throughput.md`.

Run:

    python -m benchmarks.data_throughput                 # 5,000 and 20,000 images
    python -m benchmarks.data_throughput --sizes=2000 --methods=streaming,keras
"""

import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent import futures

import numpy as np
from absl import app, flags

flags.DEFINE_list("sizes", ["5000", "20000"], "Training images per generated folder.")
flags.DEFINE_list("methods", ["memory", "streaming", "keras", "tfrecord"], "Methods to time.")
flags.DEFINE_integer("batch_size", 64, "Images per batch.")
flags.DEFINE_integer("repeats", 1, "Processes per (method, size), interleaved "
                     "across methods; the median is reported.")
flags.DEFINE_integer("source_size", 256, "Side of the generated JPEGs.")
flags.DEFINE_integer("image_size", 224, "Side of the batches fed to the model.")
flags.DEFINE_string("policy", "standard", "Augmentation policy applied to every method.")
flags.DEFINE_string("work_dir", None, "Where the folders go (default: a temporary "
                    "directory, deleted at the end).")
flags.DEFINE_string("output_dir", str(pathlib.Path(__file__).parent / "results"),
                    "Where results go.")
# Internal: one timed (method, folder) in a fresh process.
flags.DEFINE_string("measure", None, "Internal: time METHOD on --folder and print JSON.")
flags.DEFINE_string("folder", None, "Internal: the folder --measure reads.")
FLAGS = flags.FLAGS

MINI = pathlib.Path(__file__).parent.parent / "kerastrain" / "datasets" / "cifar10_mini"
TEST_PER_CLASS = 10


def _write_jpeg(job):
    from PIL import Image

    source, target, size, seed = job
    rng = np.random.default_rng(seed)
    image = np.asarray(Image.open(source).convert("RGB").resize((size, size),
                                                               Image.BICUBIC), np.float32)
    noisy = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(target, quality=90)


def generate(root, count, size):
    """`count` training JPEGs (+ a few test ones) under `root`, seeded."""
    sources = {}
    for path in sorted((MINI / "train").glob("*/*.jpg")):
        sources.setdefault(path.parent.name, []).append(path)
    classes = sorted(sources)
    jobs = []
    for split, total in (("train", count), ("test", TEST_PER_CLASS * len(classes))):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(total):
            name = classes[i % len(classes)]
            source = sources[name][(i // len(classes)) % len(sources[name])]
            jobs.append((source, root / split / name / f"{i:06d}.jpg", size, len(jobs)))
    with futures.ProcessPoolExecutor() as pool:
        list(pool.map(_write_jpeg, jobs, chunksize=64))
    return sum(1 for _ in (root / "train").glob("*/*.jpg"))


def measure(method, folder):
    """Times one epoch of `method` on `folder`; returns a dict of figures."""
    import tensorflow as tf  # noqa: PLC0415 (after absl parsed the flags)

    from kerastrain import augment, data  # noqa: PLC0415

    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = (FLAGS.image_size, FLAGS.image_size)
    policy = augment.Augmentation.from_policy(FLAGS.policy, seed=0)
    start = time.perf_counter()
    if method == "keras":
        import keras  # noqa: PLC0415

        train = keras.utils.image_dataset_from_directory(
            folder / "train", image_size=size, batch_size=FLAGS.batch_size, shuffle=True,
            seed=0, verbose=False).map(
            lambda x, y: (tf.cast(tf.round(x), tf.uint8), y),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        spec = f"tfrecord:{folder}-tfrecord" if method == "tfrecord" else f"folder:{folder}"
        cache = "memory" if method == "memory" else "none"
        train = data.load(spec, image_size=size, batch_size=FLAGS.batch_size,
                          validation_fraction=0, cache=cache).train
    augmented = policy.apply(train)
    iterator = iter(augmented)
    first = next(iterator)
    first_batch_s = time.perf_counter() - start
    images, timed = len(first[1]), time.perf_counter()
    for _, labels in iterator:
        images += len(labels)
    first_epoch_s = time.perf_counter() - timed
    # The second epoch: tf.data's AUTOTUNE has settled, as in a long run.
    timed = time.perf_counter()
    images = sum(len(labels) for _, labels in augmented)
    seconds = time.perf_counter() - timed
    return {"images": images, "images_per_s": images / seconds,
            "first_epoch_images_per_s": (images - len(first[1])) / first_epoch_s,
            "first_batch_s": first_batch_s, "epoch_s": seconds,
            "baseline_rss_mb": baseline_mb,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_measure(method, folder):
    args = [sys.executable, "-m", "benchmarks.data_throughput", f"--measure={method}",
            f"--folder={folder}", f"--batch_size={FLAGS.batch_size}",
            f"--image_size={FLAGS.image_size}", f"--policy={FLAGS.policy}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(args, capture_output=True, text=True, env=env,
                            cwd=pathlib.Path(__file__).parent.parent)
    if result.returncode != 0:
        raise RuntimeError(f"{method} on {folder} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _table(rows):
    lines = ["| images | method | images/s | vs keras | first epoch images/s | "
             "first batch s | peak RSS MB | RSS above imports MB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = row.get("vs_keras")
        lines.append(
            f"| {row['size']} | {row['method']} | {row['images_per_s']:.0f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | "
            f"{row['first_epoch_images_per_s']:.0f} | {row['first_batch_s']:.1f} | "
            f"{row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] - row['baseline_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.measure:
        print(json.dumps(measure(FLAGS.measure, pathlib.Path(FLAGS.folder))))
        return
    from kerastrain import data  # noqa: PLC0415

    work = tempfile.TemporaryDirectory(prefix="data-throughput-") if not FLAGS.work_dir else None
    root = pathlib.Path(FLAGS.work_dir or work.name)
    rows, conversions = [], {}
    try:
        for size in map(int, FLAGS.sizes):
            folder = root / f"jpeg{FLAGS.source_size}-{size}"
            started = time.perf_counter()
            if not folder.exists():
                count = generate(folder, size, FLAGS.source_size)
                print(f"generated {count} JPEGs in {time.perf_counter() - started:.0f} s",
                      flush=True)
            if "tfrecord" in FLAGS.methods:
                started = time.perf_counter()
                data.to_tfrecord(f"folder:{folder}", f"{folder}-tfrecord", verbose=0)
                conversions[size] = time.perf_counter() - started
            runs = {method: [] for method in FLAGS.methods}
            for _ in range(FLAGS.repeats):  # Interleaved: machine load hits all alike.
                for method in FLAGS.methods:
                    runs[method].append(_run_measure(method, folder))
            for method, results in runs.items():
                row = {"size": size, "method": method, "repeats": len(results)}
                for name in results[0]:
                    row[name] = float(np.median([r[name] for r in results]))
                row["images_per_s_all"] = [r["images_per_s"] for r in results]
                rows.append(row)
                print(f"{size} images, {method}: {row['images_per_s']:.0f} images/s "
                      f"(median of {len(results)}), first batch "
                      f"{row['first_batch_s']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB",
                      flush=True)
            keras_rate = next((row["images_per_s"] for row in rows
                               if row["size"] == size and row["method"] == "keras"), None)
            for row in rows:
                if row["size"] == size and keras_rate:
                    row["vs_keras"] = row["images_per_s"] / keras_rate
    finally:
        if work is not None:
            work.cleanup()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    result = {"machine": machine, "batch_size": FLAGS.batch_size,
              "source_size": FLAGS.source_size, "image_size": FLAGS.image_size,
              "policy": FLAGS.policy, "rows": rows,
              "tfrecord_conversion_s": conversions}
    out = pathlib.Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    conversion = ", ".join(f"{size} images {s:.0f} s" for size, s in conversions.items())
    text = (f"# Data throughput\n\n{machine}; {FLAGS.source_size}x{FLAGS.source_size} "
            f"JPEGs fed as {FLAGS.image_size}x{FLAGS.image_size} batches of "
            f"{FLAGS.batch_size} through the `{FLAGS.policy}` augmentation. images/s: "
            "the second epoch (tf.data's AUTOTUNE settled, as in a long run); first "
            "epoch: after the first batch. Per row the median of "
            f"{FLAGS.repeats} processes, interleaved across methods.\n\n" + _table(rows) + "\n\n"
            f"TFRecord conversion (once): {conversion or 'not run'}.\n")
    (out / "data_throughput.md").write_text(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
