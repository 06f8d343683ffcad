"""Which keras.applications architecture to pretrain on 2 CPU cores.

Trains each candidate from scratch with `recipes.train --architecture=NAME` (the
same recipe and flags as the source-weights run, at a smaller budget) on the
source classes, and reports test accuracy against wall time, parameters and
the size of the saved feature extractor (what the package would ship).

Writes `results/backbone_choice.json` and `results/backbone_choice.md`.

Run (offline here; online users can leave --data at tfds:cifar10):

    python -m benchmarks.backbone_choice --data=folder:PATH/cifar10-bench
"""

import json
import os
import pathlib
import platform
import tempfile

from absl import app, flags

from recipes import train

SOURCE = ["airplane", "automobile", "bird", "cat", "deer"]
# name, keras.applications arguments, side the backbone sees (None: 32).
CANDIDATES = {
    "mobilenetv2_0.35": ("MobileNetV2", {"alpha": 0.35}, None),
    "mobilenetv2_0.35_64px": ("MobileNetV2", {"alpha": 0.35}, 64),
    "mobilenetv2_1.0": ("MobileNetV2", {"alpha": 1.0}, None),
    "mobilenetv3small_minimalistic": ("MobileNetV3Small", {"minimalistic": True}, None),
    "mobilenetv3small_minimalistic_64px": ("MobileNetV3Small", {"minimalistic": True}, 64),
    "mobilenetv3small": ("MobileNetV3Small", {}, None),
    "efficientnetb0": ("EfficientNetB0", {}, None),
    "resnet50v2": ("ResNet50V2", {}, None),
}

# --data is recipes.train's flag (default tfds:cifar10).
flags.DEFINE_integer("candidate_labels", 1000, "Training images per class.")
flags.DEFINE_integer("candidate_epochs", 5, "Epochs per candidate.")
flags.DEFINE_list("candidates", list(CANDIDATES), "Which candidates to run.")
flags.DEFINE_string("results_dir", str(pathlib.Path(__file__).parent / "results"),
                    "Where results go.")
FLAGS = flags.FLAGS


def _run(label, workdir):
    import keras

    name, arguments, resize = CANDIDATES[label]
    backbone_file = os.path.join(workdir, "backbone.keras")
    config = dict(
        data=FLAGS.data, classes=SOURCE, labels_per_class=FLAGS.candidate_labels,
        batch_size=128, epochs=FLAGS.candidate_epochs, architecture=name,
        architecture_args=json.dumps(arguments), resize=resize, optimizer="adam",
        learning_rate=2e-3, schedule="cosine", warmup_epochs=1.0, label_smoothing=0.1,
        augment="standard", output_dir=os.path.join(workdir, "run"), verbose=2,
        save_backbone=backbone_file)
    metrics = train.run(config)
    features = keras.saving.load_model(backbone_file, compile=False)
    return {"backbone": name, "arguments": arguments, "resize": resize or 32,
            "test_accuracy": metrics["test_accuracy"],
            "train_seconds": metrics["train_seconds"],
            "seconds_per_epoch": round(metrics["train_seconds"] / FLAGS.candidate_epochs, 1),
            "parameters": int(features.count_params()),
            "file_mb": round(os.path.getsize(backbone_file) / 2**20, 2)}


def _write(results, settings):
    output_dir = pathlib.Path(FLAGS.results_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"results": results, "settings": settings}
    (output_dir / "backbone_choice.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["# Backbone choice: keras.applications from scratch on the source classes", "",
             f"{settings['labels_per_class']} train images per class of {', '.join(SOURCE)} "
             f"({settings['data']}), {settings['epochs']} epochs, batch 128, Adam 2e-3 "
             "cosine with 1 warm-up epoch, label smoothing 0.1, standard augmentation, "
             f"BatchNorm momentum 0.9; {settings['usable_cpus']} CPU cores. Test: the "
             "data's test split of those classes.", "",
             "| architecture | input side | parameters | file MB | s per epoch | "
             "test accuracy |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results.values():
        arguments = ", ".join(f"{k}={v}" for k, v in r["arguments"].items())
        lines.append(f"| {r['backbone']}{f' ({arguments})' if arguments else ''} | {r['resize']} | {r['parameters']:,} | {r['file_mb']} | "
                     f"{r['seconds_per_epoch']} | {r['test_accuracy']:.3f} |")
    (output_dir / "backbone_choice.md").write_text("\n".join(lines) + "\n")


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.candidates) - set(CANDIDATES))
    if unknown:
        raise app.UsageError(f"Unknown --candidates {unknown}: choose from {list(CANDIDATES)}")
    # Runs of other candidates at the same settings are kept in the table.
    previous = pathlib.Path(FLAGS.results_dir) / "backbone_choice.json"
    results = {}
    settings = {"data": FLAGS.data, "labels_per_class": FLAGS.candidate_labels,
                "epochs": FLAGS.candidate_epochs, "usable_cpus": len(os.sched_getaffinity(0)),
                "python": platform.python_version()}
    if previous.exists():
        saved = json.loads(previous.read_text())
        if saved["settings"] == settings:
            results = {k: v for k, v in saved["results"].items() if k in CANDIDATES}
    for label in FLAGS.candidates:
        with tempfile.TemporaryDirectory() as workdir:
            results[label] = _run(label, workdir)
        print(f"{label}: {results[label]}", flush=True)
        _write(results, settings)
    print((pathlib.Path(FLAGS.results_dir) / "backbone_choice.md").read_text())


if __name__ == "__main__":
    app.run(main)
