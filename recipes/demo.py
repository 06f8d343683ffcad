"""Transfer learning demo: 50 labels per class, three ways (`make demo`).

On the embedded CIFAR-10 images, offline, in a few minutes on a laptop CPU:

1. take the source weights shipped in the package (`cifar10-source`: a
   `keras.applications` MobileNetV3Small trained from scratch on the
   CIFAR-10 classes airplane, automobile, bird, cat, deer; no ImageNet
   download needed);
2. on the target classes dog, frog, horse, ship, truck, with only 50
   labelled images per class, train
   - the same architecture from random weights (`recipes.train --architecture`),
   - a linear classifier on the pretrained CNN codes
     (`recipes.finetune --mode=features`),
   - the pretrained network fine-tuned in two phases
     (`recipes.finetune --mode=finetune`);
3. print the test accuracies, write `report.md` with the plots, and copy the
   best model's SavedModel to `saved_models/transfer_demo`.

    python -m recipes.demo
    python -m recipes.demo --demo_dir=runs/transfer_demo --demo_seed=1

Each step is a recipe run with its own run directory under `--demo_dir`;
`report.md` lists the equivalent command lines.
"""

import json
import os
import shutil
import time

from absl import app
from absl import flags

from recipes import finetune
from recipes import flags as recipe_flags
from recipes import train

flags.DEFINE_string("demo_dir", "runs/transfer_demo", "Where the runs and report.md go.")
flags.DEFINE_string("demo_export_dir", "saved_models/transfer_demo",
                    "Where the best model's SavedModel is copied.")
flags.DEFINE_integer("demo_seed", 0, "Seed of every run.")
flags.DEFINE_float("demo_epochs_scale", 1.0, "Multiplies every epoch count "
                   "(0.2 for a quick smoke run).")
flags.DEFINE_list("demo_methods", ["scratch", "linear_probe", "fine_tune"],
                  "Which of the three runs to make (scratch is the slowest).")

SOURCE = ["airplane", "automobile", "bird", "cat", "deer"]
TARGET = ["dog", "frog", "horse", "ship", "truck"]
# The source weights shipped in the package: a keras.applications network
# trained on SOURCE (kerastrain/weights/cifar10-source/manifest.json).
WEIGHTS = "cifar10-source"
FEW_SHOT = dict(classes=TARGET, labels_per_class=50, validation_fraction=0.0,
                batch_size=32, augment="standard", verbose=0)
# (name, recipe, settings); epochs are scaled by --demo_epochs_scale. The
# scratch run gets the architecture of WEIGHTS from its manifest.
RUNS = [
    ("scratch", train, dict(FEW_SHOT, epochs=40, optimizer="adam", learning_rate=2e-3,
                            schedule="cosine", warmup_epochs=2, label_smoothing=0.1)),
    ("linear probe", finetune, dict(FEW_SHOT, mode="features", weights=WEIGHTS,
                                    probe_epochs=100)),
    ("fine-tune", finetune, dict(FEW_SHOT, mode="finetune", weights=WEIGHTS,
                                 epochs_head=10, epochs_finetune=20, unfreeze=2,
                                 learning_rate=3e-3, finetune_lr_factor=0.3,
                                 schedule="cosine")),
]


def run(config):
    """Runs the demo as `config` (this recipe's flag values) says.

    Returns:
        `(results, best)`: `{method: metrics}` and the name of the method
        whose model is exported.
    """
    # Imported once the flags are parsed, so that --help answers at once.
    import kerastrain as kt
    from kerastrain import _io

    config = recipe_flags.complete_config(config, __name__)
    directory, export_dir = config["demo_dir"], config["demo_export_dir"]
    seed, epochs_scale = config["demo_seed"], config["demo_epochs_scale"]
    if os.path.lexists(export_dir) and not kt.export.is_export(export_dir):
        raise ValueError(f"--demo_export_dir={export_dir!r} is not a kerastrain export, "
                         "which the demo would replace; choose another path.")
    manifest = kt.transfer.read_weights_manifest(WEIGHTS)
    runs = [run for run in RUNS if _slug(run[0]) in config["demo_methods"]]
    unknown = sorted(set(config["demo_methods"]) - {_slug(name) for name, _, _ in RUNS})
    if unknown or not runs:
        raise ValueError(f"Invalid value for --demo_methods: expected some of "
                         f"{[_slug(name) for name, _, _ in RUNS]}, received "
                         f"{config['demo_methods']!r}")
    results, commands = {}, {}
    start = time.time()
    for name, recipe, settings in runs:
        run_config = run_settings(name, recipe, settings, seed, directory, epochs_scale,
                                  manifest)
        print(f"{name} ...", flush=True)
        results[name] = recipe.run(run_config)
        print(f"  test accuracy {results[name]['test_accuracy']:.3f}", flush=True)
        commands[name] = recipe_flags.command(recipe.__name__, run_config)
    seconds = time.time() - start
    best = max(results, key=lambda n: results[n]["test_accuracy"])
    best_export = os.path.join(directory, _slug(best), "saved_model")
    _io.atomic_write(export_dir, lambda staging: shutil.copytree(best_export, staging))
    kt.plots.comparison_bars(
        {name: metrics["test_accuracy"] for name, metrics in results.items()},
        os.path.join(directory, "comparison.png"), ylabel="test accuracy (target)")
    _write_report(directory, results, commands, best, export_dir, seconds, manifest)
    return results, best


def run_settings(name, recipe, settings, seed, directory, epochs_scale, manifest):
    """The recipe config of one demo run: its own run directory and export,
    epochs scaled (at least 1), and for the scratch run the architecture of
    the source weights' manifest."""
    config = dict(settings, seed=seed, output_dir=os.path.join(directory, _slug(name)),
                  export_dir=os.path.join(directory, _slug(name), "saved_model"))
    for key in ("epochs", "epochs_head", "epochs_finetune", "probe_epochs"):
        if key in config:
            config[key] = max(1, round(config[key] * epochs_scale))
    if recipe is train:  # the same architecture, from random weights
        config.update(architecture=manifest["architecture"],
                      architecture_args=json.dumps(manifest["arguments"]))
    return config


def _table(results):
    lines = ["| method | test accuracy | test loss | epochs | train seconds |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, metrics in results.items():
        lines.append(f"| {name} | {metrics['test_accuracy']:.3f} | "
                     f"{metrics['test_loss']:.3f} | {metrics['epochs']} | "
                     f"{metrics['train_seconds']:.0f} |")
    return "\n".join(lines)


def _write_report(directory, results, commands, best, export_dir, seconds, manifest):
    target = results
    arguments = ", ".join(f"{k}={v}" for k, v in manifest["arguments"].items())
    lines = [
        "# Transfer learning with 50 labels per class", "",
        f"Backbone: {manifest['architecture']}({arguments}) with the shipped source "
        f"weights `{WEIGHTS}`, trained on {', '.join(manifest['class_names'])} "
        f"({manifest['data']}; source test accuracy {manifest['source_test_accuracy']:.3f} "
        f"on {manifest['source_test_images']} images). Target classes "
        f"{', '.join(TARGET)} with 50 labelled images per class; test accuracy on the "
        "100 test images per class. `scratch` is the same architecture from random "
        "weights.", "",
        _table(results), "",
        f"Best on the target: **{best}**, exported to `{export_dir}`. "
        f"Total time {seconds / 60:.1f} min.", "",
        "![test accuracy](comparison.png)", "",
    ]
    for name in target:
        slug = _slug(name)
        lines += [f"## {name}", "", f"![training curves]({slug}/training_curves.png)",
                  f"![confusion matrix]({slug}/confusion_matrix.png)"
                  if os.path.exists(os.path.join(directory, slug, "confusion_matrix.png"))
                  else "", ""]
    lines += ["## Commands", "", "```", f"# source weights: {manifest['command']}"]
    lines += [commands[n] for n in results] + ["```", ""]
    from kerastrain import _io

    path = os.path.join(directory, "report.md")
    _io.write_text(path, "\n".join(lines))
    _io.write_json(os.path.join(directory, "results.json"), results)
    return path


def _slug(name):
    return name.split(" (")[0].replace(" ", "_").replace("-", "_")


def _print_results(outcome):
    results, best = outcome
    print()
    print(_table(results))
    print(f"\nbest: {best}; SavedModel in {flags.FLAGS.demo_export_dir}; report in "
          f"{os.path.join(flags.FLAGS.demo_dir, 'report.md')}")


main = recipe_flags.main(run, __name__, report=_print_results)


if __name__ == "__main__":
    app.run(main)
