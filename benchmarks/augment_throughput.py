"""Augmentation throughput: kerastrain's fused policy vs Keras layers vs ImageDataGenerator.

Times, in one run and over the same real CIFAR-10 images (the embedded
`cifar10_mini` train split, repeated to `--num_images`):

- `none`: the bare batched pipeline (the ceiling),
- `kerastrain`: `Augmentation.from_policy(--policy).apply(...)`,
- `projective_v3`: the same policy with TensorFlow's own resampling kernel
  (one `ImageProjectiveTransformV3` call per batch, same matrices and colour
  jitter) in place of kerastrain's XLA-fused warp,
- `keras_layers`: the equivalent stack of Keras 3 preprocessing layers
  (RandomFlip, RandomRotation, RandomZoom, RandomShear, RandomTranslation,
  RandomColorJitter) mapped over batches in `tf.data`,
- `imagedatagenerator`: `tf_keras`' legacy `ImageDataGenerator.flow` with the
  equivalent settings (it has no contrast/saturation/hue; it needs SciPy).

Each method gets one untimed warm-up pass; the timed passes are interleaved
across methods so that load from other processes hits all of them alike.
Besides images/s (wall clock), the CPU time per image (all threads) is
recorded: on a shared machine it is the steadier measure of the work done.
Writes `results/augment_throughput.json` and `results/augment_throughput.md`.

Run:

    python -m benchmarks.augment_throughput --batch_size=256 --num_images=40000
"""

import json
import math
import os
import pathlib
import platform
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from kerastrain import augment, data

flags.DEFINE_integer("batch_size", 256, "Images per batch.")
flags.DEFINE_integer("num_images", 40000, "Images per timed pass (the 5000 train images repeated).")
flags.DEFINE_integer("repeats", 3, "Timed passes per method; the best and the median are reported.")
flags.DEFINE_string("policy", "standard", "kerastrain policy to time (and to mirror in the baselines).")
flags.DEFINE_string("output_dir", str(pathlib.Path(__file__).parent / "results"), "Where results go.")
FLAGS = flags.FLAGS


def _keras_layers(config, seed=0):
    """The Keras 3 layer stack closest to an `Augmentation` config."""
    common = dict(fill_mode=config["fill_mode"], interpolation=config["interpolation"], seed=seed)
    layers = []
    if config["flip"]:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config["rotate"]:
        layers.append(keras.layers.RandomRotation(config["rotate"] / 360.0, **common))
    if config["stretch"]:
        s = config["stretch"]
        layers.append(keras.layers.RandomZoom((-s, s), (-s, s), **common))
    if config["shear"]:
        k = math.tan(math.radians(config["shear"]))
        layers.append(keras.layers.RandomShear(x_factor=k, y_factor=k, **common))
    if config["translate"]:
        t = config["translate"]
        layers.append(keras.layers.RandomTranslation(t, t, **common))
    jitter = config["color_jitter"]
    if jitter:
        s = jitter["saturation"]
        # Keras' saturation factor f scales chroma by f / (1 - f); 0.5 is a no-op.
        layers.append(keras.layers.RandomColorJitter(
            value_range=(0, 255),
            brightness_factor=jitter["brightness"] or None,
            contrast_factor=jitter["contrast"] or None,
            saturation_factor=((1 - s) / (2 - s), (1 + s) / (2 + s)) if s else None,
            hue_factor=2 * jitter["hue"] or None,  # Keras shifts hue by factor / 2.
            seed=seed,
        ))
    return layers


def _image_data_generator_kwargs(config):
    jitter = config["color_jitter"] or {}
    kwargs = dict(
        rotation_range=config["rotate"], width_shift_range=config["translate"],
        height_shift_range=config["translate"], shear_range=config["shear"],
        zoom_range=config["stretch"], horizontal_flip=config["flip"],
        fill_mode=config["fill_mode"],
    )
    if jitter.get("brightness"):
        kwargs["brightness_range"] = (1 - jitter["brightness"], 1 + jitter["brightness"])
    return kwargs


def _tf_data_method(pipeline):
    """Returns `run(num_batches)`; each call iterates a fresh finite pipeline."""
    def run(num_batches):
        count = 0
        for images, _ in pipeline.take(num_batches).prefetch(tf.data.AUTOTUNE):
            count += int(images.shape[0])
        return count
    return run


def _generator_method(iterator):
    def run(num_batches):
        count = 0
        for _ in range(num_batches):
            images, _ = next(iterator)
            count += len(images)
        return count
    return run


def _build_methods(images, labels, skipped):
    base = tf.data.Dataset.from_tensor_slices((images, labels)).batch(FLAGS.batch_size)
    base = base.cache().repeat()
    policy = augment.Augmentation.from_policy(FLAGS.policy, seed=0)
    layers = _keras_layers(policy.get_config())

    def keras_stack(x, y):
        x = tf.cast(x, tf.float32)
        for layer in layers:
            x = layer(x, training=True)
        return tf.saturate_cast(tf.round(x), tf.uint8), y

    def projective_v3(x, y):
        # Same draws, colour matrix and warp matrices as `policy`; only the
        # resampling kernel differs.
        draws = augment._named_draws(
            tf.random.uniform([tf.shape(x)[0], len(augment._DRAWS)], seed=0))
        x = tf.cast(x, tf.float32)
        if policy.color_jitter:
            x = policy._jitter(x, tf.reduce_mean(x, axis=[1, 2]), draws)
        matrices = policy._matrices(draws, x.shape[1], x.shape[2])
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=tf.reshape(matrices, [-1, 9])[:, :8],
            output_shape=tf.shape(x)[1:3], fill_value=policy.fill_value,
            interpolation=policy.interpolation.upper(),
            fill_mode=policy.fill_mode.upper())
        return tf.saturate_cast(tf.round(x), tf.uint8), y

    methods = {
        "none": _tf_data_method(base),
        "kerastrain": _tf_data_method(policy.apply(base)),
        "projective_v3": _tf_data_method(
            base.map(projective_v3, num_parallel_calls=tf.data.AUTOTUNE)),
        "keras_layers": _tf_data_method(
            base.map(keras_stack, num_parallel_calls=tf.data.AUTOTUNE)),
    }
    settings = {"policy": policy.get_config(), "keras_layers": [
        {"class": type(layer).__name__, **layer.get_config()} for layer in layers]}
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
        import scipy  # noqa: F401  (ImageDataGenerator's transforms need it)
        kwargs = _image_data_generator_kwargs(policy.get_config())
        flow = ImageDataGenerator(**kwargs).flow(
            images.astype(np.float32), labels, batch_size=FLAGS.batch_size,
            shuffle=False, seed=0)
        methods["imagedatagenerator"] = _generator_method(flow)
        settings["imagedatagenerator"] = {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in kwargs.items()}
    except ImportError as error:
        skipped["imagedatagenerator"] = f"ImportError: {error}"
    return methods, settings


def _write(results, output_dir):
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "augment_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    best, median = results["images_per_second"], results["median_images_per_second"]
    cpu = results["cpu_microseconds_per_image"]
    machine = results["machine"]
    lines = [
        f"# Augmentation throughput: `{results['settings']['policy_name']}` policy",
        "",
        f"{machine['usable_cpus']} usable CPUs, TensorFlow {machine['tensorflow']}, "
        f"Keras {machine['keras']}, batch size {results['settings']['batch_size']}, "
        f"{results['settings']['images_per_pass']} images per pass, best and median of "
        f"{results['settings']['repeats']} passes; load average "
        f"{machine['load_average_before'][0]:.1f} before, {machine['load_average_after'][0]:.1f} after.",
        "",
        "| pipeline | best images/s | median images/s | CPU us/image |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {best[name]:,.0f} | {median[name]:,.0f} | {cpu[name]:,.1f} |"
              for name in best]
    lines += ["", "Speed-up of kerastrain (images/s; CPU time per image):", ""]
    lines += [f"- vs {name}: {value:.2f}x; {results['cpu_ratios'][name]:.2f}x"
              + (f" (target {results['targets'][name]:.0f}x)" if name in results["targets"] else "")
              for name, value in results["ratios"].items()]
    lines += [f"- skipped {name}: {why}" for name, why in results["skipped"].items()]
    (output_dir / "augment_throughput.md").write_text("\n".join(lines) + "\n")


def _time(methods, num_batches):
    """Interleaves the timed passes; returns per-method wall and CPU seconds."""
    wall = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    for _ in range(FLAGS.repeats):
        for name, run in methods.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            count = run(num_batches)
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu, count


def main(argv):
    del argv
    load_before = os.getloadavg()
    splits = data.load("cifar10_mini", batch_size=FLAGS.batch_size, validation_fraction=0.0)
    pairs = list(splits.train.as_numpy_iterator())
    images = np.concatenate([x for x, _ in pairs])
    labels = np.concatenate([y for _, y in pairs])
    skipped = {}
    methods, settings = _build_methods(images, labels, skipped)
    epoch_batches = math.ceil(len(images) / FLAGS.batch_size)
    for run in methods.values():  # Warm-up: traces, compiles, fills the cache.
        run(epoch_batches)
    wall, cpu, count = _time(methods, FLAGS.num_images // FLAGS.batch_size)
    best = {name: count / min(s) for name, s in wall.items()}
    median = {name: count / float(np.median(s)) for name, s in wall.items()}
    cpu_us = {name: 1e6 * float(np.median(s)) / count for name, s in cpu.items()}
    others = [name for name in ("projective_v3", "keras_layers", "imagedatagenerator")
              if name in best]
    results = {
        "images_per_second": best,
        "median_images_per_second": median,
        "cpu_microseconds_per_image": cpu_us,
        "ratios": {name: best["kerastrain"] / best[name] for name in others},
        "cpu_ratios": {name: cpu_us[name] / cpu_us["kerastrain"] for name in others},
        "targets": {"keras_layers": 3.0, "imagedatagenerator": 8.0},
        "skipped": skipped,
        "settings": {"policy_name": FLAGS.policy, "batch_size": FLAGS.batch_size,
                     "images_per_pass": count, "repeats": FLAGS.repeats,
                     "train_images": int(len(images)), **settings},
        "machine": {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "load_average_before": list(load_before),
                    "load_average_after": list(os.getloadavg()),
                    "tensorflow": tf.__version__, "keras": keras.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
    }
    _write(results, FLAGS.output_dir)
    print((pathlib.Path(FLAGS.output_dir) / "augment_throughput.md").read_text())


if __name__ == "__main__":
    app.run(main)
