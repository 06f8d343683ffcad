"""Transfer a pretrained backbone to a new image dataset: CNN codes or fine-tuning.

Takes any `keras.applications` backbone (`--backbone=MobileNetV3Small`,
`EfficientNetB0`, `ResNet50`, ...) with ImageNet weights, or a feature
extractor this toolkit trained (`python -m recipes.train --save_backbone=...`,
then `--weights=PATH.keras`), and fits it to the data spec:

- `--mode=features`: CNN codes. The frozen backbone encodes every image once
  and a linear softmax classifier (`kerastrain.transfer.LinearProbe`) is
  fitted on the codes; seconds, and strong when the data is scarce.
- `--mode=finetune`: phase 1 trains a new head on the frozen backbone for
  `--head_steps` optimizer steps (rounded up to whole epochs; or
  `--epochs_head` epochs) at `--learning_rate`; phase 2 unfreezes the top
  `--unfreeze` blocks (BatchNorm stays frozen, in inference mode) and trains
  `--finetune_steps` steps (or `--epochs_finetune` epochs) at
  `--learning_rate * --finetune_lr_factor` under `--schedule`, optionally
  unfreezing gradually (`--gradual`), with lower rates lower down
  (`--block_lr_decay`), weight averaging (`--swa_start`, `--ema`) or a
  snapshot ensemble (`--snapshots`), all in phase 2. The head standardises
  the CNN codes (mean and variance of the training images' codes) and its
  logits start at zero (loss ln k), so the defaults suit any backbone and
  any data size; `--learning_rate=auto` sets the rate with the LR range test
  on the head (`kerastrain.transfer.find_head_learning_rate`, plotted to
  `lr_finder.png`).

This recipe does not resume an interrupted run (recipes.train does): started
again, it trains from the first epoch and replaces the run directory, with a
warning when that directory holds an interrupted run.

Writes the run directory of the recipe contract (`config.json`,
`history.csv`, `metrics.json`, `training_curves.png`, `learning_rate.png`,
`confusion_matrix.png`) and, with `--export_dir`, a SavedModel that serves
raw uint8 images of any size.

    python -m recipes.train --classes=airplane,automobile,bird,cat,deer \\
        --save_backbone=runs/source/backbone.keras
    python -m recipes.finetune --weights=runs/source/backbone.keras \\
        --classes=dog,frog,horse,ship,truck --labels_per_class=50 \\
        --export_dir=saved_models/target
    python -m recipes.finetune --data=folder:~/photos --backbone=EfficientNetB0 \\
        --weights=imagenet --image_size=224 --mode=features

The run evaluates every model it made, as `recipes.train` does: `final`
(in features mode, the linear classifier on the backbone), `ema`, `swa`,
`ensemble`; `--export=best` (the default) exports the best on validation
data and says which, `--export=NAME` picks one. `metrics.json` names it in
`exported_model`; `test_accuracy`, `test_loss` (mean cross-entropy) and
`validation_accuracy` are its figures; every other figure names its model
(`final_test_accuracy` or `ema_test_accuracy`, `swa_test_accuracy`,
`ensemble_test_accuracy`, the same for `_validation_accuracy`,
`last_snapshot_test_accuracy`,
`snapshot_test_accuracies`, `head_validation_accuracy` for the head after
phase 1). It also holds `epochs` (`head_epochs` + `finetune_epochs`),
`head_learning_rate` (the phase-1 rate, found with `auto`) and
`train_seconds`. Other code calls `run(config)` with a dict of flag values;
missing ones take their defaults.
"""

import csv
import io
import os
import time

from absl import app
from absl import flags

from recipes import flags as recipe_flags

recipe_flags.define(__name__, "data", "training")
flags.DEFINE_string("backbone", "MobileNetV3Small",
                    "keras.applications model name (any case); ignored when "
                    "--weights is a .keras file, which holds its architecture.")
flags.DEFINE_string("weights", "imagenet",
                    "imagenet (Keras' download, needs network once), none "
                    "(random init), cifar10-source (shipped, 32x32 images), a "
                    "source-weights directory (recipes.train --save_source_weights), "
                    "or a .keras / .weights.h5 / .h5 file path.")
flags.DEFINE_enum("mode", "finetune", ["features", "finetune"],
                  "features: linear classifier on frozen CNN codes; finetune: "
                  "new head, then the top blocks (two phases).")
flags.DEFINE_integer("head_steps", 100, "Phase 1 length in optimizer steps, "
                     "rounded up to whole epochs (--epochs_head overrides it).")
flags.DEFINE_integer("finetune_steps", 100, "Phase 2 length in optimizer steps, "
                     "rounded up to whole epochs (--epochs_finetune overrides it).")
flags.DEFINE_integer("epochs_head", None, "Phase 1 epochs: the head on the frozen "
                     "backbone (0 skips it). Default: --head_steps.")
flags.DEFINE_integer("epochs_finetune", None, "Phase 2 epochs: with the top "
                     "--unfreeze blocks trainable (0 trains the head only). "
                     "Default: --finetune_steps.")
flags.DEFINE_integer("unfreeze", 1, "Backbone blocks (or layers, see "
                     "--unfreeze_unit) unfrozen in phase 2, counted from the top.")
flags.DEFINE_enum("unfreeze_unit", "blocks", ["blocks", "layers"],
                  "What --unfreeze counts.")
flags.DEFINE_bool("gradual", False, "Phase 2 unfreezes one more block per epoch "
                  "until --unfreeze blocks train.")
flags.DEFINE_float("finetune_lr_factor", 0.3, "Phase 2 (peak) learning rate = "
                   "--learning_rate times this.")
flags.DEFINE_float("block_lr_decay", None, "Discriminative rates in phase 2: "
                   "each block down from the top trains at this factor of the "
                   "one above (e.g. 0.5).")
flags.DEFINE_integer("probe_epochs", 100, "--mode=features: epochs of the "
                     "linear classifier (Adam, 1e-2, full batches).")
flags.DEFINE_float("probe_l2", 1e-4, "--mode=features: L2 penalty of the "
                   "linear classifier.")


def run(config):
    """Transfers a backbone as `config` (flag values of this recipe, see
    `--help`; missing ones take their defaults) says; returns the metrics
    written to `metrics.json`."""
    # Imported once the flags are parsed, so that --help answers at once.
    import kerastrain as kt
    from recipes import common
    from recipes import run_dir

    setup = common.start(config, __name__, _check_config, resumes=False)
    config, data, output_dir = setup.config, setup.data, setup.output_dir
    epochs = _phase_epochs(config, setup.steps_per_epoch)
    if config["mode"] == "finetune":
        recipe_flags.check_config(config, max(epochs[1], 1), auto_learning_rate=True)
    weights, name = config["weights"], config["backbone"]
    if str(weights).endswith(".keras") or kt.transfer.source_weights.resolve(weights):
        name = None  # the file holds the architecture
    with kt.distribute.dtype_policy(setup.dtype_policy), setup.strategy.scope():
        backbone = kt.transfer.backbone(name, data.image_shape, weights)
    kt.transfer.check_codes(backbone, data.train)  # dead codes train to chance
    if config["mode"] == "features":
        exported, metrics, history, schedule, steps, logged = _features(
            config, data, backbone, output_dir)
    else:
        exported, metrics, history, schedule, steps, logged = _finetune(
            setup, backbone, *epochs)
    run_dir.write_outputs(output_dir, history, schedule, steps, metrics, logged)
    _confusion_matrix(exported, data, os.path.join(output_dir, "confusion_matrix.png"))
    run_dir.export_model(exported, config, data.class_names)
    return metrics


def _phase_epochs(config, steps_per_epoch):
    """`(head epochs, finetune epochs)`: the epoch flags, else the step budgets
    rounded up to whole epochs."""
    def epochs(phase):
        given = config[f"epochs_{phase}"]
        return given if given is not None else -(-config[f"{phase}_steps"] // steps_per_epoch)
    return epochs("head"), epochs("finetune")


def _trains(config, phase):
    """Whether phase `"head"` or `"finetune"` gets any epochs."""
    given = config[f"epochs_{phase}"]
    return bool(given if given is not None else config[f"{phase}_steps"])


def _check_config(config):
    for key in ("epochs_head", "epochs_finetune", "head_steps", "finetune_steps",
                "unfreeze", "probe_epochs"):
        if config[key] is not None and config[key] < 0:
            raise ValueError(f"Invalid value for --{key}: expected an int >= 0, "
                             f"received {config[key]}")
    if config["mode"] == "features":
        phase_two = [f"--{key}" for key in ("swa_start", "snapshots", "ema",
                                            "block_lr_decay", "gradual") if config[key]]
        if phase_two:
            raise ValueError(f"{', '.join(phase_two)} apply to --mode=finetune; "
                             "--mode=features fits a linear classifier only")
        if config["regularizer"] != "none":
            raise ValueError(f"--regularizer={config['regularizer']} applies to "
                             "--mode=finetune; --mode=features penalizes its linear "
                             "classifier with --probe_l2")
        recipe_flags.check_config(config, 1, auto_learning_rate=True)
        return
    if not (_trains(config, "head") or _trains(config, "finetune")):
        raise ValueError("Nothing to train: pass --epochs_head, --epochs_finetune, "
                         "--head_steps or --finetune_steps > 0")
    averaging = [f"--{key}" for key in ("swa_start", "snapshots", "ema")
                 if config[key] not in (None, 0, False)]
    if averaging and not _trains(config, "finetune"):
        raise ValueError(f"{', '.join(averaging)} apply to phase 2; pass "
                         "--epochs_finetune > 0")
    clashes = [f"--{key}" for key in ("swa_lr", "snapshots", "ema", "gradual")
               if config[key] not in (None, 0, False)]
    if config["block_lr_decay"] is not None and clashes:
        raise ValueError(f"{', '.join(clashes)} cannot be combined with "
                         "--block_lr_decay: Keras' MultiOptimizer has no single "
                         "learning rate, no moving average and needs every "
                         "variable trainable at every step")


def _features(config, data, backbone, output_dir):
    import kerastrain as kt
    from recipes import run_dir

    start = time.time()
    verbose = 1 if config["verbose"] == 1 else 0
    codes = {split: kt.transfer.extract_features(backbone, getattr(data, split), verbose)
             for split in ("train", "validation", "test")
             if getattr(data, split) is not None}
    run_dir.create(config)
    probe = kt.transfer.LinearProbe(
        data.num_classes, l2=config["probe_l2"], epochs=config["probe_epochs"],
        seed=config["seed"]).fit(*codes["train"], validation=codes.get("validation"))
    train_seconds = time.time() - start
    test = probe.evaluate(*codes["test"])
    metrics = {"exported_model": "final", "export": config["export"],
               "test_accuracy": test["accuracy"], "test_loss": test["loss"]}
    if "validation" in codes:
        metrics["validation_accuracy"] = probe.evaluate(*codes["validation"])["accuracy"]
    metrics.update(final_test_accuracy=test["accuracy"], epochs=config["probe_epochs"],
                   train_seconds=round(train_seconds, 1))
    history = probe.history
    _write_history(os.path.join(output_dir, "history.csv"), history.history)
    steps = config["probe_epochs"] * -(-data.num_train // probe.batch_size)
    return probe.to_model(backbone), metrics, history, probe.learning_rate, steps, ()


def _finetune(setup, backbone, head_epochs, epochs):
    import kerastrain as kt
    from recipes import common

    config, data, output_dir, steps_per_epoch = (
        setup.config, setup.data, setup.output_dir, setup.steps_per_epoch)
    with kt.distribute.dtype_policy(setup.dtype_policy), setup.strategy.scope():
        model = kt.transfer.build_classifier(
            backbone, data.num_classes, dropout=config["dropout"], seed=config["seed"],
            standardize_on=data.train)
        regularizer = common.regularizer(config)
        if regularizer is not None:
            model = kt.regularizers.apply(model, regularizer)
    optimizer = {"name": config["optimizer"]}
    if config["weight_decay"] is not None:
        optimizer["weight_decay"] = config["weight_decay"]
    augmentation = kt.augment.Augmentation.from_policy(config["augment"],
                                                       seed=config["seed"])
    head_lr, range_test = _head_learning_rate(setup, model, optimizer, augmentation)
    schedule = kt.schedules.get(common.schedule_config(
        config, steps_per_epoch, max(epochs, 1),
        learning_rate=head_lr * config["finetune_lr_factor"]))
    # Phase 2's SWA and snapshots count epochs on from phase 1.
    callbacks = common.training_callbacks(
        config, data, schedule, steps_per_epoch, epochs, output_dir,
        first_epoch=head_epochs, resumes=False,
        learning_rate_factor=setup.learning_rate_factor)
    start = time.time()
    head, tuned = kt.transfer.fine_tune(
        model, data, head_epochs=head_epochs, finetune_epochs=epochs,
        unfreeze_top=config["unfreeze"], unit=config["unfreeze_unit"],
        gradual=config["gradual"], head_lr=head_lr,
        finetune_lr=schedule, block_lr_decay=config["block_lr_decay"],
        optimizer=optimizer, ema_momentum=config["ema_momentum"] if config["ema"] else None,
        augmentation=augmentation, callbacks=callbacks.logging,
        finetune_callbacks=callbacks.averaging, jit_compile=setup.jit_compile(),
        verbose=config["verbose"])
    train_seconds = time.time() - start
    history = _merge(head, tuned)
    if range_test is not None:
        range_test.plot(os.path.join(output_dir, "lr_finder.png"))
    common.check_finite(history)
    exported, metrics = common.evaluate(model, data, callbacks, ema=config["ema"],
                                        export=config["export"])
    if head is not None and "val_accuracy" in head.history:
        metrics["head_validation_accuracy"] = head.history["val_accuracy"][-1]
    metrics.update(epochs=head_epochs + epochs, head_epochs=head_epochs,
                   finetune_epochs=epochs, head_learning_rate=head_lr,
                   train_seconds=round(train_seconds, 1), **setup.metrics(model))
    return (exported, metrics, history, schedule, max(epochs, 1) * steps_per_epoch,
            callbacks.logging)


def _head_learning_rate(setup, model, optimizer, augmentation):
    """`(rate, None)` with `--learning_rate` (scaled for the replicas); with
    `auto`, the LR range test's suggestion for the head at the global batch
    and the test (its plot goes to `lr_finder.png`)."""
    import kerastrain as kt

    if setup.config["learning_rate"] != "auto":
        return setup.learning_rate(float(setup.config["learning_rate"])), None
    result = kt.transfer.find_head_learning_rate(model, setup.data, optimizer,
                                                 augmentation)
    if result.suggestion is None:
        raise RuntimeError(f"The LR range test on the head stopped after "
                           f"{len(result.losses)} steps ({result.stop_reason}) without "
                           "a suggestion; pass --learning_rate=NUMBER")
    return result.suggestion, result


def _merge(*histories):
    """One `History` of the phases, epoch after epoch."""
    import keras

    merged = keras.callbacks.History()
    for history in filter(None, histories):
        for key, values in history.history.items():
            merged.history.setdefault(key, []).extend(values)
    return merged


def _write_history(path, history):
    from kerastrain import _io

    text = io.StringIO()
    keys = sorted(history)
    writer = csv.writer(text)
    writer.writerow(["epoch"] + keys)
    for epoch in range(len(history[keys[0]])):
        writer.writerow([epoch] + [history[key][epoch] for key in keys])
    _io.write_text(path, text.getvalue())


def _confusion_matrix(model, data, path):
    import kerastrain as kt

    probabilities, labels = kt.evaluation.predict_probabilities(model, data.test)
    return kt.plots.confusion_matrix(labels, probabilities.argmax(-1), data.class_names,
                                     path)


main = recipe_flags.main(run, __name__)


if __name__ == "__main__":
    app.run(main)
