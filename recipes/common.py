"""Wiring shared by the recipe scripts: flags, schedules, callbacks, outputs.

Every recipe writes the same run directory (the output contract):
`config.json` (all flags), `history.csv`, `metrics.json`, PNG plots and,
with `--export_dir`, a SavedModel. The techniques themselves live in the
`kerastrain` package; this module only turns flag values into library calls.

absl flags are global to a process, so the flags recipes share are defined
here, once, however many recipes are imported: a recipe calls the
`define_*_flags` of the groups it uses, which become its key flags (its
`--help` and its config), and defines only the flags that are its own, under
names no other recipe uses.
"""

import json
import math
import os
import sys

import keras
import numpy as np
from absl import app
from absl import flags
from absl import logging

import kerastrain as kt
from kerastrain import _io
from kerastrain import callbacks as kt_callbacks
from kerastrain import distribute, ensemble, export, transfer

FLAGS = flags.FLAGS

SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine",
             "cyclical", "warm_restarts", "one_cycle")
CYCLIC_SCHEDULES = ("cyclical", "warm_restarts")
REGULARIZERS = ("none", "l2", "l1", "elastic_net")
_GROUPS = {}  # flag group -> names of its flags, once defined
# Epoch-counted default schedule arguments and their step-counted forms: an
# override of either form in --schedule_args replaces the default.
_SAME_QUANTITY = {"boundaries_epochs": "boundaries", "k_per_epoch": "k",
                  "decay_epochs": "decay_steps", "step_size_epochs": "step_size",
                  "first_cycle_epochs": "first_cycle_steps",
                  "total_epochs": "total_steps"}


def define_data_flags(default_data="cifar10_mini"):
    """Defines the data flags shared by every recipe; `--seed` too."""
    _share("data", lambda: _define_data_flags(default_data))


def define_model_flags():
    """Defines `--width` and `--blocks` of `kerastrain.models.small_cnn`."""
    _share("model", _define_model_flags)


def define_optimizer_flags():
    """Defines `--optimizer` and `--learning_rate`."""
    _share("optimizer", _define_optimizer_flags)


def define_output_flags():
    """Defines `--output_dir` (default: `runs/RECIPE`, see `complete_config`)."""
    _share("output", _define_output_flags)


def define_training_flags():
    """Defines the optimizer, schedule, regularization, averaging, scale and
    output flags shared by the training recipes. The number of epochs is each
    recipe's own flag."""
    _share("optimizer", _define_optimizer_flags)
    _share("output", _define_output_flags)
    _share("training", _define_training_flags)


def _share(group, define):
    """Defines the flags of `group` once per process and makes them key flags
    of the recipe calling `define_*_flags`: listed by its `--help` and part of
    its config (`flag_config`)."""
    recipe = sys._getframe(2).f_globals["__name__"]
    if recipe == "__main__":
        recipe = sys.argv[0]  # absl's name for the main module
    if group not in _GROUPS:
        before = set(FLAGS)
        define()
        _GROUPS[group] = sorted(set(FLAGS) - before)
    for name in _GROUPS[group]:
        FLAGS.register_key_flag_for_module(recipe, FLAGS[name])


def _define_data_flags(default_data):
    flags.DEFINE_string(
        "data", default_data,
        "Data spec: cifar10_mini (embedded), folder:PATH or tfds:NAME.")
    flags.DEFINE_list("classes", None,
                      "Comma list of class names to keep, in label order.")
    flags.DEFINE_integer("labels_per_class", None,
                         "Keep this many training images per class (few-shot).")
    flags.DEFINE_integer("image_size", None,
                         "Resize images to this square size (default: as stored).")
    flags.DEFINE_integer("batch_size", 64, "Global batch size.")
    flags.DEFINE_float("validation_fraction", 0.1,
                       "Fraction of the training images held out for validation.")
    flags.DEFINE_integer("seed", 0, "Random seed for data order, init and augmentation.")


def _define_model_flags():
    flags.DEFINE_integer("width", 32, "Filters of the first convolution block.")
    flags.DEFINE_integer("blocks", 3, "Convolution blocks (width doubles each block).")


def _define_optimizer_flags():
    flags.DEFINE_string("optimizer", "adam",
                        "sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw, "
                        "or any Keras optimizer name.")
    flags.DEFINE(_LearningRateParser(), "learning_rate", 1e-3,
                 "Base (peak) learning rate of the schedule; recipes.finetune "
                 "also takes auto (the LR range test on the new head).")


class _LearningRateParser(flags.FloatParser):
    """A positive float, or `auto`."""

    def __init__(self):
        super().__init__(lower_bound=0.0)

    def parse(self, argument):
        if isinstance(argument, str) and argument.strip().lower() == "auto":
            return "auto"
        value = super().parse(argument)
        if not 0 < value < math.inf:
            raise ValueError(f"expected a number > 0 or auto, received {argument!r}")
        return value

    def flag_type(self):
        return "float or auto"


def _define_output_flags():
    flags.DEFINE_string("output_dir", None, "Run directory (default: runs/RECIPE).")


def _define_training_flags():
    flags.DEFINE_float("weight_decay", None,
                       "Decoupled weight decay of the optimizer (e.g. adamw).")
    flags.DEFINE_enum("schedule", "constant", SCHEDULES,
                      "Learning-rate schedule; its arguments derive from "
                      "--learning_rate and the epochs unless --schedule_args sets them.")
    flags.DEFINE_string("schedule_args", None,
                        'JSON dict of schedule arguments, e.g. \'{"factor": 0.5}\'; '
                        "epoch forms (drop_every_epochs, ...) are accepted.")
    flags.DEFINE_float("warmup_epochs", 0.0, "Linear warm-up epochs before the schedule.")
    flags.DEFINE_string("augment", "standard",
                        "Augmentation policy: none, light, standard or heavy.")
    flags.DEFINE_float("dropout", 0.0, "InvertedDropout rate before the classifier.")
    flags.DEFINE_enum("regularizer", "none", REGULARIZERS,
                      "Weight penalty on every kernel.")
    flags.DEFINE_float("regularization", 1e-4, "Strength of --regularizer.")
    flags.DEFINE_float("l1_ratio", 0.5, "L1 share of the elastic net penalty.")
    flags.DEFINE_integer("swa_start", None,
                         "Average the weights from this 0-based epoch on (SWA); the "
                         "averaged model is evaluated and exported.")
    flags.DEFINE_float("swa_lr", None, "Constant learning rate while averaging "
                       "(default: the schedule goes on).")
    flags.DEFINE_integer("snapshots", 0,
                         "Snapshot ensemble of this many cycles (needs --schedule="
                         "warm_restarts or cyclical); the ensemble is exported.")
    flags.DEFINE_bool("ema", False, "Keep an exponential moving average of the "
                      "trainable weights (Keras use_ema), validate on it and end "
                      "training with it.")
    flags.DEFINE_float("ema_momentum", 0.99, "EMA momentum.")
    flags.DEFINE_enum("strategy", "default", list(distribute.STRATEGIES),
                      "tf.distribute strategy.")
    flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu "
                        "('local' on a TPU VM).")
    flags.DEFINE_string("export_dir", None, "Write the SavedModel here; it replaces "
                        "only a previous kerastrain export.")
    flags.DEFINE_bool("overwrite_export", False, "Let --export_dir replace whatever "
                      "is at that path (a file, a directory that is no export).")
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity (0, 1 or 2).")


# -- configs ------------------------------------------------------------------


def flag_config(module="__main__"):
    """The parsed values of the flags of the recipe `module` (its key flags).

    Args:
        module: name of the recipe module whose flags to include. Defaults to
            `"__main__"` (the recipe being run).

    Returns:
        A JSON-able dict `{flag name: value}`.
    """
    return {f.name: f.value for f in _recipe_flags(module)}


def default_config(module):
    """The flag defaults of the recipe `module`, as a config dict."""
    return {f.name: f.default for f in _recipe_flags(module)}


def complete_config(config, module):
    """`config` completed with the flag defaults of the recipe `module`.

    Lets callers such as a random search pass only the settings they change.

    Raises:
        ValueError: for a key that is no flag of the recipe.
    """
    defaults = default_config(module)
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown settings {unknown}; the recipe's flags are "
                         f"{sorted(defaults)}")
    config = {**defaults, **config}
    if config.get("output_dir") is None:
        config["output_dir"] = os.path.join("runs", _recipe_name(module))
    return config


def _recipe_flags(module):
    """The flags `module` defines plus the shared groups it asked for."""
    return sorted(FLAGS.get_key_flags_for_module(module), key=lambda f: f.name)


def _recipe_name(module):
    if module == "__main__":  # `python -m recipes.train`: name it after its file
        module = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    return module.rsplit(".", 1)[-1]


def check_config(config, epochs, auto_learning_rate=False):
    """Checks the flags that only make sense together, before any work.

    Args:
        config: a completed config.
        epochs: the number of epochs the recipe trains.
        auto_learning_rate: whether the recipe takes `--learning_rate=auto`.
            Defaults to `False`.
    """
    rate = config.get("learning_rate")
    if rate == "auto" and not auto_learning_rate:
        raise ValueError("--learning_rate=auto is for recipes.finetune (the LR range "
                         "test on its head); pass a number, or find one with "
                         "kerastrain.lr_finder")
    if rate is not None and rate != "auto" and (
            isinstance(rate, bool) or not isinstance(rate, (int, float))
            or not 0 < rate < math.inf):
        raise ValueError("Invalid value for --learning_rate: expected a number > 0"
                         f"{' or auto' if auto_learning_rate else ''}, received {rate!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"Invalid value for --epochs: expected an int >= 1, "
                         f"received epochs={epochs!r}")
    if config["augment"] not in kt.augment.POLICIES:
        raise ValueError(f"Invalid value for --augment: expected one of "
                         f"{list(kt.augment.POLICIES)}, received {config['augment']!r}")
    if config.get("swa_start") is not None and not 0 <= config["swa_start"] < epochs:
        raise ValueError(f"Invalid value for --swa_start: expected 0 <= swa_start < "
                         f"epochs={epochs}, received swa_start={config['swa_start']}")
    if config.get("swa_lr") is not None and config.get("swa_start") is None:
        raise ValueError("--swa_lr sets the learning rate while averaging; pass "
                         "--swa_start too (the epoch averaging starts)")
    snapshots = config.get("snapshots") or 0
    if snapshots < 0 or snapshots == 1:
        raise ValueError(f"Invalid value for --snapshots: expected 0 (none) or at "
                         f"least 2 snapshots, received snapshots={snapshots}")
    if snapshots and config["schedule"] not in CYCLIC_SCHEDULES:
        raise ValueError(f"--snapshots={snapshots} needs a schedule with cycles: pass "
                         f"--schedule=warm_restarts or --schedule=cyclical (received "
                         f"--schedule={config['schedule']})")
    if config["regularizer"] not in REGULARIZERS:
        raise ValueError(f"Invalid value for --regularizer: expected one of "
                         f"{REGULARIZERS}, received {config['regularizer']!r}")
    if config["strategy"] != "tpu" and config.get("tpu"):
        raise ValueError("--tpu names the TPU of --strategy=tpu; received "
                         f"--strategy={config['strategy']}")
    if config.get("export_dir") and os.path.abspath(config["export_dir"]) == \
            os.path.abspath(config["output_dir"]):
        raise ValueError("--export_dir must differ from --output_dir: the export "
                         "replaces its directory")
    check_export_dir(config)


def check_export_dir(config):
    """Refuses an `--export_dir` that holds anything but a kerastrain export
    (unless `--overwrite_export`), before any training."""
    path = config.get("export_dir")
    if (not path or config.get("overwrite_export") or not os.path.lexists(path)
            or export.is_export(path)):
        return
    what = "a directory" if os.path.isdir(path) else "a file"
    raise ValueError(f"--export_dir={path!r} is {what} that is not a kerastrain export; "
                     "the export would delete it. Choose another --export_dir, or "
                     "pass --overwrite_export to replace it.")


def strategy(config):
    """The `tf.distribute` strategy of `--strategy` (create it first thing)."""
    tpu = config.get("tpu") if config["strategy"] == "tpu" else None
    return distribute.get_strategy(config["strategy"], tpu=tpu)


def prepare_output_dir(config, resumes=True):
    """Creates the run directory and writes `config.json`; returns its path.

    Workers other than the chief of a multi-worker cluster write to
    `output_dir/workers/worker_N`. A run directory holding the backup of an
    interrupted run resumes it, so it must have been started with the same
    flags. A recipe that does not resume (`resumes=False`) says so, with a
    warning, when the directory holds an interrupted run (a `config.json`
    without `metrics.json`): it starts afresh and replaces it.
    """
    output_dir = config["output_dir"]
    if not distribute.is_chief():
        task = json.loads(os.environ["TF_CONFIG"])["task"]
        output_dir = os.path.join(output_dir, "workers",
                                  f"{task['type']}_{task.get('index', 0)}")
    config_path = os.path.join(output_dir, "config.json")
    _check_run_directory(output_dir, config_path)
    if not resumes:
        if os.path.exists(config_path) and \
                not os.path.exists(os.path.join(output_dir, "metrics.json")):
            logging.warning(
                "%r holds an interrupted run, and this recipe does not resume "
                "interrupted runs (recipes.train does): this run starts again from "
                "the first epoch and replaces it.", output_dir)
    elif os.path.isdir(os.path.join(output_dir, "backup")) and os.path.exists(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        changed = sorted(k for k in set(previous) | set(config)
                         if previous.get(k) != config.get(k))
        if changed:
            raise ValueError(
                f"{output_dir!r} holds an interrupted run with other flags "
                f"({changed}), which this run would resume; pass the same flags "
                f"to resume it, or delete {os.path.join(output_dir, 'backup')!r} "
                "to start afresh.")
    os.makedirs(output_dir, exist_ok=True)
    write_json(config_path, config)
    return output_dir


def _check_run_directory(output_dir, config_path):
    """Refuses a file, or a non-empty directory that no recipe wrote (no
    `config.json` of a recipe): a run writes, replaces and deletes files in
    its directory (`backup/`, `snapshots/`, `history.csv`, ...)."""
    if not os.path.lexists(output_dir):
        return
    if not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir={output_dir!r} is a file; pass a directory "
                         "(new, empty, or the run directory of an earlier run).")
    if not os.listdir(output_dir):
        return
    try:
        with open(config_path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or "output_dir" not in previous:
        raise ValueError(
            f"--output_dir={output_dir!r} is a non-empty directory that is not a "
            "kerastrain run directory (it has no config.json written by a recipe); "
            "a run would write and delete files there. Pass a new or empty "
            "directory, or the run directory of an earlier run.")


def load_data(config):
    """Loads the data spec of a config."""
    return kt.data.load(
        config["data"], image_size=config.get("image_size"),
        batch_size=config["batch_size"], classes=config.get("classes"),
        labels_per_class=config.get("labels_per_class"),
        validation_fraction=config["validation_fraction"], seed=config["seed"])


# -- optimisation -------------------------------------------------------------


def schedule_config(config, steps_per_epoch, epochs, learning_rate=None):
    """The schedule config for `kt.schedules.get` from the recipe's flags.

    Defaults: `step` drops 10x at 1/2 and 3/4 of training; `exponential` and
    `inverse_time` end 100x and 10x lower; `cosine` and `one_cycle` span the
    run; `cyclical` and `warm_restarts` fit `--snapshots` (or 4) whole cycles
    into the steps after the warm-up. `--schedule_args` overrides any of it.
    """
    lr = config["learning_rate"] if learning_rate is None else learning_rate
    warmup_steps = round((config.get("warmup_epochs") or 0) * steps_per_epoch)
    cycle_steps = (epochs * steps_per_epoch - warmup_steps) // (config.get("snapshots") or 4)
    if config["schedule"] in CYCLIC_SCHEDULES and cycle_steps < 2:
        raise ValueError(f"Too few steps for {config.get('snapshots') or 4} cycles of "
                         f"--schedule={config['schedule']}: train more epochs or use "
                         "fewer --snapshots")
    defaults = {
        "constant": {"learning_rate": lr},
        "step": {"initial_learning_rate": lr, "factor": 0.1,
                 "boundaries_epochs": sorted({epochs // 2, (3 * epochs) // 4})},
        "exponential": {"initial_learning_rate": lr,
                        "k_per_epoch": math.log(100.0) / epochs},
        "inverse_time": {"initial_learning_rate": lr, "k_per_epoch": 9.0 / epochs},
        "cosine": {"initial_learning_rate": lr, "decay_epochs": epochs},
        "cyclical": {"base_lr": lr / 10, "max_lr": lr,
                     "step_size_epochs": (cycle_steps // 2) / steps_per_epoch},
        "warm_restarts": {"initial_learning_rate": lr, "t_mul": 1.0,
                          "first_cycle_epochs": cycle_steps / steps_per_epoch},
        "one_cycle": {"max_lr": lr, "total_epochs": epochs},
    }[config["schedule"]]
    overrides = json_dict_flag(config, "schedule_args")
    for key in overrides:
        for epoch_form, step_form in _SAME_QUANTITY.items():
            if key in (epoch_form, step_form):
                defaults.pop(epoch_form, None)
    result = {"name": config["schedule"], **defaults, **overrides,
              "steps_per_epoch": steps_per_epoch}
    if warmup_steps:
        result["warmup_steps"] = warmup_steps
    return result


def optimizer(config, schedule):
    """Builds the optimizer of a config around `schedule`."""
    kwargs = {}
    if config.get("weight_decay") is not None:
        kwargs["weight_decay"] = config["weight_decay"]
    if config.get("ema"):
        kwargs.update(use_ema=True, ema_momentum=config["ema_momentum"])
    return kt.optimizers.build(config["optimizer"], learning_rate=schedule, **kwargs)


def regularizer(config):
    """The kernel regularizer of `--regularizer`, or `None`."""
    strength = config["regularization"]
    return {
        "none": lambda: None,
        "l2": lambda: keras.regularizers.L2(strength),
        "l1": lambda: keras.regularizers.L1(strength),
        "elastic_net": lambda: kt.regularizers.ElasticNet(strength, config["l1_ratio"]),
    }[config["regularizer"]]()


# -- training -----------------------------------------------------------------


def training_callbacks(config, data, schedule, steps_per_epoch, epochs, output_dir):
    """Callbacks for the averaging, logging and resume flags of a config.

    Order matters: the snapshots see the raw weights at epoch ends and
    `BackupAndRestore` backs them up before `SwapEMAWeights` swaps the EMA in
    (SWA reads the EMA from the optimizer: with `--ema` it averages the EMA).

    Returns:
        `(callbacks, swa, snapshot_dir)`: `swa` is the
        `StochasticWeightAveraging` callback or `None`, `snapshot_dir` the
        snapshot directory or `None`.
    """
    callbacks = [kt_callbacks.LearningRateLogger(), keras.callbacks.TerminateOnNaN()]
    swa = snapshot_dir = None
    if config.get("swa_start") is not None:
        swa = kt_callbacks.StochasticWeightAveraging(
            start_epoch=config["swa_start"], swa_learning_rate=config.get("swa_lr"),
            bn_update_data=data.train,
            state_path=os.path.join(output_dir, "swa_state.npz"))
        callbacks.append(swa)
    if config.get("snapshots"):
        snapshot_dir = os.path.join(output_dir, "snapshots")
        callbacks.append(snapshot_callback(config, schedule, epochs * steps_per_epoch,
                                           snapshot_dir, f"{epochs} epochs"))
    backup_dir = os.path.join(output_dir, "backup")
    resuming = os.path.isdir(backup_dir)
    # An interrupted run resumes from the backup when started again; Keras
    # deletes the backup once training completes.
    callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
    if config.get("ema"):
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.append(keras.callbacks.CSVLogger(
        os.path.join(output_dir, "history.csv"), append=resuming))
    return callbacks, swa, snapshot_dir


def snapshot_callback(config, schedule, total_steps, snapshot_dir, budget):
    """The `SnapshotEnsemble` of `--snapshots` at the cycle ends of `schedule`.

    Args:
        budget: the training the `total_steps` stand for, named in the error
            when the schedule completes too few cycles.
    """
    try:
        ends = kt.schedules.cycle_end_steps(schedule, total_steps)
    except ValueError:
        raise ValueError(f"--snapshots={config['snapshots']} needs a --schedule with cycles "
                         f"(one of {list(CYCLIC_SCHEDULES)}), received "
                         f"--schedule={config['schedule']}") from None
    if len(ends) < config["snapshots"]:
        raise ValueError(
            f"--snapshots={config['snapshots']} but the schedule completes only "
            f"{len(ends)} cycles in {budget}; lower --snapshots or change "
            "--schedule_args")
    return kt_callbacks.SnapshotEnsemble(snapshot_dir, cycle_end_steps=ends,
                                         keep=config["snapshots"])


def check_finite(history):
    """Raises a clear error when training stopped on a NaN or inf loss."""
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise RuntimeError(
            f"Training diverged: the loss became {losses[-1]} in epoch {len(losses)}. "
            "Lower --learning_rate, add --warmup_epochs, or check the data; nothing "
            "was exported.")


def evaluate(model, data, swa=None, snapshot_dir=None, ema=False):
    """Test metrics of the exported model and of every other model of the run.

    Every figure says which model it is about. `exported_model` names the
    model that is exported: `"ensemble"` (the snapshot ensemble) with
    snapshots, else `"swa"` (the averaged weights) with SWA, else `"ema"`
    (Keras' moving average, which `use_ema` leaves in the model) or
    `"final"` (the weights at the end of training). `test_accuracy`,
    `test_loss` and `validation_accuracy` are always the exported model's.
    `MODEL_test_accuracy` is the test accuracy of each model the run has:
    `final_` or `ema_` (the trained weights before SWA averaging), `swa_`,
    `ensemble_` and `last_snapshot_`, and `snapshot_test_accuracies` lists
    every snapshot's. `test_loss` is the mean cross-entropy (without weight
    penalties, so that models and ensembles compare).

    Args:
        model: the trained model (outputs logits), holding its final weights:
            the SWA average with `swa`, the EMA with `ema`.
        data: the `DataSplits`.
        swa: the `StochasticWeightAveraging` callback, or `None`.
        snapshot_dir: the `SnapshotEnsemble` directory, or `None`.
        ema: whether the model was trained with `use_ema`. Defaults to `False`.

    Returns:
        `(exported, metrics)`: the model to export and the metrics of the
        output contract.
    """
    trained = "ema" if ema else "final"
    accuracy, loss = _accuracy_and_loss(model, data.test)
    accuracies = {}
    exported, exported_name, exported_loss = model, trained, loss
    if swa is not None and swa.final_weights is not None:
        accuracies["swa"] = accuracy
        exported_name = "swa"
        with swa.swap_in_final_weights():
            accuracies[trained] = _accuracy_and_loss(model, data.test)[0]
    else:
        accuracies[trained] = accuracy
    members = None
    if snapshot_dir is not None:
        exported, exported_name = ensemble.Ensemble.from_directory(snapshot_dir), "ensemble"
        members = exported.evaluate_members(data.test)["members"]
        accuracies["ensemble"], exported_loss = _accuracy_and_loss(exported, data.test)
        accuracies["last_snapshot"] = members[-1]
    metrics = {"exported_model": exported_name,
               "test_accuracy": accuracies[exported_name], "test_loss": exported_loss}
    if data.validation is not None:
        metrics["validation_accuracy"] = _accuracy_and_loss(exported, data.validation)[0]
    metrics.update({f"{name}_test_accuracy": value for name, value in accuracies.items()})
    if members is not None:
        metrics["snapshot_test_accuracies"] = members
    return exported, metrics


def _accuracy_and_loss(model, dataset):
    """Top-1 accuracy and mean cross-entropy of `model` on `(x, y)` batches."""
    outputs = model.predict(dataset.map(lambda x, y: x), verbose=0).astype(np.float64)
    labels = np.concatenate([y for _, y in dataset.as_numpy_iterator()]).reshape(-1)
    if not isinstance(model, ensemble.Ensemble):  # logits
        outputs = np.exp(outputs - outputs.max(-1, keepdims=True))
        outputs /= outputs.sum(-1, keepdims=True)
    accuracy = float(np.mean(outputs.argmax(-1) == labels))
    picked = outputs[np.arange(len(labels)), labels]
    return accuracy, float(-np.mean(np.log(np.maximum(picked, 1e-12))))


# -- outputs ------------------------------------------------------------------


def write_outputs(output_dir, history, schedule, total_steps, metrics, callbacks=()):
    """Writes `metrics.json`, the training curves and the learning-rate plot:
    the rates a `LearningRateLogger` among `callbacks` recorded at every step
    (what the optimizer applied, `--swa_lr` included), else `schedule`."""
    write_json(os.path.join(output_dir, "metrics.json"), metrics)
    kt.plots.training_curves(history.history,
                             os.path.join(output_dir, "training_curves.png"))
    logged = [c for c in callbacks if isinstance(c, kt_callbacks.LearningRateLogger)]
    if logged and logged[0].steps:
        schedule = {"learning rate applied": logged[0].rate_at}
        total_steps = logged[0].steps[-1] + 1
    kt.plots.plot_schedule(schedule, total_steps,
                           os.path.join(output_dir, "learning_rate.png"))


def export_model(model, config, class_names):
    """Exports `model` to `--export_dir` (chief only); returns the path or None."""
    if not config.get("export_dir") or not distribute.is_chief():
        return None
    return export.export_saved_model(model, config["export_dir"], class_names,
                                     overwrite=True,
                                     force=bool(config.get("overwrite_export")))


def save_backbone(model, path):
    """Saves the feature extractor of `model` (no classifier) as `.keras`."""
    return save_keras(transfer.cut_backbone(model), path)


# Every run-directory file goes through the library's atomic writer.
write_json = _io.write_json


def save_keras(model, path):
    """Saves a `.keras` file atomically (temporary file, then rename)."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"Invalid path {path!r}: expected a file name ending in .keras")
    return _io.atomic_write(path, model.save)


def run_or_explain(run, config):
    """Runs `run(config)`; a bad flag or input exits with its message, no traceback."""
    try:
        return run(config)
    except (ValueError, OSError, RuntimeError) as error:
        raise SystemExit(f"error: {error}") from None


def json_dict_flag(config, name):
    """Parses the JSON dict of flag `--name` (empty: `{}`), or says what is wrong."""
    text = config.get(name) or "{}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        value = error
    if not isinstance(value, dict):
        detail = f" ({value})" if isinstance(value, json.JSONDecodeError) else ""
        raise ValueError(f"Invalid value for --{name}: expected a JSON dict, "
                         f"received {text!r}{detail}")
    return value


def recipe_main(run, module):
    """The absl `main` of a recipe: flags -> `run(config)` -> printed metrics."""
    def main(argv):
        if not FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines are noise here
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags take the "
                                 "form --name=value.")
        print_metrics(run_or_explain(run, flag_config(module)))
    return main


def print_metrics(metrics):
    """Prints the metrics as a short aligned table."""
    print()
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4f}" for v in value)
        print(f"{key:>30}  {value}")
