"""Train an image classifier from scratch with kerastrain's techniques.

Trains `kerastrain.models.small_cnn`, or any `keras.applications` network
from random weights (`--architecture=MobileNetV3Small`), on any data spec with a chosen
optimizer, learning-rate schedule, augmentation policy, dropout and
L2/L1/elastic-net regularization, optionally averaging weights (SWA, EMA) or
collecting a snapshot ensemble, under any `tf.distribute` strategy. Writes
the run directory of the recipe contract (`config.json`, `history.csv`,
`metrics.json`, `training_curves.png`, `learning_rate.png`) and, with
`--export_dir`, a SavedModel that serves raw uint8 images.

    python -m recipes.train --epochs=12 --schedule=cosine --output_dir=runs/cnn
    python -m recipes.train --optimizer=momentum --learning_rate=0.05 \\
        --schedule=warm_restarts --snapshots=3 --export_dir=saved_models/snap
    python -m recipes.train --swa_start=9 --swa_lr=0.01 --epochs=12
    python -m recipes.train --save_backbone=runs/source/backbone.keras \\
        --classes=airplane,automobile,bird,cat,deer
    python -m recipes.train --architecture=MobileNetV3Small --label_smoothing=0.1 \\
        --classes=airplane,automobile,bird,cat,deer --save_source_weights=runs/sw

`--save_source_weights=DIR` writes the trained classifier with a manifest
(architecture, data, this command, test accuracy, sha256): source weights
that `recipes.finetune --weights=DIR` and `kerastrain.transfer.backbone`
load.

The run evaluates every model it made: the trained weights (`final`, or
`ema` with `--ema`: Keras' `use_ema` leaves the moving average in the
model), the SWA average (`swa`, with `--swa_start`) and the snapshot
ensemble (`ensemble`, with `--snapshots`). `--export=best` (the default)
exports the one with the highest validation accuracy and says which;
`--export=NAME` picks one. `metrics.json` names it in `exported_model`, and
`test_accuracy`, `test_loss` (mean cross-entropy) and `validation_accuracy`
are its figures. Every other figure names its model:
`final_test_accuracy` (or `ema_test_accuracy`), `swa_test_accuracy`,
`ensemble_test_accuracy`, the same for `_validation_accuracy`,
`last_snapshot_test_accuracy` and `snapshot_test_accuracies`, as the run
has them; plus `epochs` and `train_seconds`. Other code calls
`run(config)` with a dict of flag values; missing ones take their defaults.
"""

import time

from absl import app
from absl import flags

from recipes import flags as recipe_flags

recipe_flags.define(__name__, "data", "model", "training")
flags.DEFINE_integer("epochs", 10, "Training epochs.")
flags.DEFINE_string("save_backbone", None,
                    "Write the trained feature extractor (model without its "
                    "classifier) to this .keras file, for recipes.finetune --weights.")
flags.DEFINE_string("save_source_weights", None,
                    "Write the trained classifier and its manifest (architecture, "
                    "data, this command, test accuracy, sha256) to this directory: "
                    "source weights for recipes.finetune --weights=DIR.")
flags.DEFINE_string("architecture", "small_cnn",
                    "small_cnn (--width, --blocks), or a keras.applications name "
                    "(MobileNetV2, EfficientNetB0, ...) trained from scratch "
                    "(weights=None).")
flags.DEFINE_string("architecture_args", None,
                    'JSON dict of the keras.applications arguments, e.g. \'{"alpha": 0.35}\'.')
flags.DEFINE_integer("resize", None,
                     "Side the keras.applications model sees (the images are "
                     "resized inside the model). Default: the image size.")
flags.DEFINE_float("bn_momentum", 0.9,
                   "BatchNorm momentum of a keras.applications model (Keras "
                   "builds 0.99/0.999, which needs thousands of steps to settle).")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the cross-entropy.")


def run(config):
    """Trains, evaluates and exports as `config` says; returns the metrics
    written to `metrics.json`. `config` holds flag values of this recipe (see
    `--help`); missing ones take their defaults."""
    # Imported once the flags are parsed, so that --help answers at once.
    import kerastrain as kt
    from recipes import common
    from recipes import run_dir

    setup = common.start(config, __name__, _check)
    config, data, steps_per_epoch, output_dir = (
        setup.config, setup.data, setup.steps_per_epoch, setup.output_dir)
    total_steps = steps_per_epoch * config["epochs"]
    schedule = kt.schedules.get(common.schedule_config(
        config, steps_per_epoch, config["epochs"],
        learning_rate=setup.learning_rate(config["learning_rate"])))
    with kt.distribute.dtype_policy(setup.dtype_policy), setup.strategy.scope():
        model = _model(config, data)
        model.compile(optimizer=common.optimizer(config, schedule),
                      loss=common.loss(config), metrics=["accuracy"],
                      jit_compile=setup.jit_compile())
    augmentation = kt.augment.Augmentation.from_policy(config["augment"],
                                                       seed=config["seed"])
    callbacks = common.training_callbacks(
        config, data, schedule, steps_per_epoch, config["epochs"], output_dir,
        learning_rate_factor=setup.learning_rate_factor)
    start = time.time()
    # shuffle=False: the dataset reshuffles itself every epoch.
    history = model.fit(augmentation.apply(data.train), validation_data=data.validation,
                        epochs=config["epochs"], callbacks=callbacks.for_fit(),
                        shuffle=False, verbose=config["verbose"])
    train_seconds = time.time() - start
    common.check_finite(history)
    exported, metrics = common.evaluate(model, data, callbacks, ema=config["ema"],
                                        export=config["export"])
    metrics.update(epochs=config["epochs"], train_seconds=round(train_seconds, 1),
                   **setup.metrics(model))
    run_dir.write_outputs(output_dir, history, schedule, total_steps, metrics,
                          callbacks.logging)
    if config["save_backbone"]:
        run_dir.save_backbone(model, config["save_backbone"])
    if config["save_source_weights"]:
        _save_source_weights(model, config, data, metrics)
    run_dir.export_model(exported, config, data.class_names)
    return metrics


def _save_source_weights(model, config, data, metrics):
    """The trained weights (`final`/`ema`, not an average or ensemble) as
    source weights, with the figure measured for them."""
    from kerastrain.transfer import source_weights

    name = "ema" if config["ema"] else "final"
    manifest = source_weights.save(
        model, config["save_source_weights"], architecture=config["architecture"],
        arguments=recipe_flags.json_dict_flag(config, "architecture_args"),
        class_names=data.class_names, data=config["data"],
        command=recipe_flags.command(__name__, config),
        test_accuracy=metrics[f"{name}_test_accuracy"], test_images=data.num_test)
    print(f"Source weights in {config['save_source_weights']} (test accuracy "
          f"{manifest['source_test_accuracy']:.4f}, sha256 {manifest['sha256'][:12]}...)")


def _check(config):
    import kerastrain as kt

    recipe_flags.check_config(config, config["epochs"])
    name = config["architecture"]
    names = kt.transfer.available_names()
    if name != "small_cnn" and name.lower() not in {n.lower() for n in names}:
        raise ValueError(f"Invalid value for --architecture: expected small_cnn or a "
                         f"keras.applications name ({', '.join(names[:6])}, ...), "
                         f"received {name!r}")
    recipe_flags.json_dict_flag(config, "architecture_args")
    for flag in ("bn_momentum", "label_smoothing"):
        if not 0 <= config[flag] < 1:
            raise ValueError(f"Invalid value for --{flag}: expected a number in "
                             f"[0, 1), received {config[flag]!r}")
    if config["resize"] is not None and config["resize"] < 32:
        raise ValueError("Invalid value for --resize: expected a side of at least "
                         f"32 pixels, received {config['resize']!r}")


def _model(config, data):
    import kerastrain as kt
    from recipes import common

    if config["architecture"] == "small_cnn":
        return kt.models.small_cnn(
            data.num_classes, input_shape=data.image_shape, width=config["width"],
            blocks=config["blocks"], dropout=config["dropout"],
            kernel_regularizer=common.regularizer(config))
    resize = config["resize"]
    return kt.transfer.scratch_classifier(
        config["architecture"], data.num_classes, data.image_shape,
        bn_momentum=config["bn_momentum"], dropout=config["dropout"],
        resize=(resize, resize) if resize else None,
        kernel_regularizer=common.regularizer(config), seed=config["seed"],
        **recipe_flags.json_dict_flag(config, "architecture_args"))


main = recipe_flags.main(run, __name__)


if __name__ == "__main__":
    app.run(main)
