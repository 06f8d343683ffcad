"""Training wiring shared by the recipes: flag values -> library calls.

The techniques live in the `kerastrain` package; this module only turns a
recipe's config (see `recipes.flags`) into data, a schedule, an optimizer,
the callbacks of the averaging, logging and resume flags, and the choice of
the model a run evaluates and exports. The run directory is
`recipes.run_dir`'s.

Recipes import this module (and with it TensorFlow) inside `run`, once absl
has parsed their flags.
"""

import math
import os
import typing

import keras
import tensorflow as tf

import kerastrain as kt
from kerastrain import _io
from kerastrain import callbacks as kt_callbacks
from recipes import run_dir
from recipes.flags import CYCLIC_SCHEDULES, complete_config, json_dict_flag

# Epoch-counted default schedule arguments and their step-counted forms: an
# override of either form in --schedule_args replaces the default.
_SAME_QUANTITY = {"boundaries_epochs": "boundaries", "k_per_epoch": "k",
                  "decay_epochs": "decay_steps", "step_size_epochs": "step_size",
                  "first_cycle_epochs": "first_cycle_steps",
                  "total_epochs": "total_steps"}
# The exported model of --export=best without validation data, in order of
# preference: what the run was set up to make.
_DEFAULT_EXPORTS = ("ensemble", "swa", "ema", "final")


class Setup(typing.NamedTuple):
    """What `start` makes of a recipe's config before any model exists.

    Attributes:
        config: the completed config (flag values, as `config.json` keeps).
        strategy: the `tf.distribute` strategy of `--strategy`.
        data: the `DataSplits`, batched at the global batch size.
        steps_per_epoch: optimizer steps per epoch at the global batch.
        global_batch_size: `--batch_size` times the replicas.
        output_dir: the run directory.
        learning_rate_factor: what `--learning_rate` and `--swa_lr` are
            multiplied by for the replicas (`--lr_scaling`); 1.0 on one.
        dtype_policy: the Keras dtype policy models are built under
            (`--mixed_precision`), or `None` (float32).
    """

    config: dict
    strategy: object
    data: object
    steps_per_epoch: int
    global_batch_size: int
    output_dir: str
    learning_rate_factor: float
    dtype_policy: object

    def learning_rate(self, rate):
        """`rate` (a flag's value) scaled for the replicas; `None` stays."""
        return None if rate is None else rate * self.learning_rate_factor

    def jit_compile(self):
        """`--jit_compile` as Keras' `compile` takes it."""
        return {"auto": "auto", "true": True, "false": False}[self.config["jit_compile"]]

    def metrics(self, model):
        """The scale-out figures `metrics.json` records for a run of `model`."""
        return {"replicas": self.strategy.num_replicas_in_sync,
                "global_batch_size": self.global_batch_size,
                "learning_rate_factor": self.learning_rate_factor,
                "dtype_policy": self.dtype_policy or "float32",
                "jit_compile": bool(model.jit_compile),
                "data_cache": self.data.cache}


def start(config, module, check, resumes=True):
    """The first steps of a training recipe's `run`, before any model exists.

    Completes `config` with the flag defaults of `module`, checks it
    (`check(config)`), creates the `tf.distribute` strategy (before any other
    TensorFlow call, as multi-worker training needs), checks the run
    directory (`run_dir.check`), seeds every generator with `--seed` and
    loads the data at the global batch size (`--batch_size` per replica).

    Returns:
        A `Setup`.
    """
    config = complete_config(config, module)
    check(config)
    distribution = strategy(config)
    output_dir = run_dir.check(config, resumes=resumes)
    keras.utils.set_random_seed(config["seed"])
    batch_size = kt.distribute.global_batch_size(config["batch_size"], distribution)
    replicas = distribution.num_replicas_in_sync
    factor = kt.distribute.learning_rate_factor(replicas, config["lr_scaling"])
    if replicas > 1:
        _io.say(f"Training on {replicas} replicas: global batch {batch_size} "
                f"(--batch_size={config['batch_size']} per replica), learning "
                f"rates x{factor:g} (--lr_scaling={config['lr_scaling']}).")
    policy = None
    if config["mixed_precision"]:
        policy = kt.distribute.mixed_precision_policy(distribution)
        if not tf.config.list_physical_devices("GPU") and policy == "mixed_float16":
            _io.say("--mixed_precision on a CPU: mixed_float16 computes, but more "
                    "slowly than float32; it is meant for GPUs and TPUs.")
    data = load_data(config, batch_size, distribution)
    steps_per_epoch = -(-data.num_train // batch_size)
    return Setup(config, distribution, data, steps_per_epoch, batch_size, output_dir,
                 factor, policy)


def strategy(config):
    """The `tf.distribute` strategy of `--strategy` (create it first thing)."""
    tpu = config.get("tpu") if config["strategy"] == "tpu" else None
    return kt.distribute.get_strategy(config["strategy"], tpu=tpu)


def load_data(config, batch_size=None, distribution=None):
    """Loads the data spec of a config, batched at `batch_size` (default
    `--batch_size`); under a TPU strategy every batch is whole (static
    shapes)."""
    tpu = isinstance(distribution, tf.distribute.TPUStrategy)
    return kt.data.load(
        config["data"], image_size=config.get("image_size"),
        batch_size=batch_size or config["batch_size"], classes=config.get("classes"),
        labels_per_class=config.get("labels_per_class"),
        validation_fraction=config["validation_fraction"], seed=config["seed"],
        cache=config.get("cache", "auto"), on_bad_image=config.get("on_bad_image", "error"),
        resize_mode=config.get("resize_mode", "stretch"), drop_remainder=tpu)


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


def loss(config):
    """The cross-entropy on logits, with `--label_smoothing` if set."""
    return kt.regularizers.SparseCategoricalCrossentropy(
        label_smoothing=config.get("label_smoothing") or 0.0)


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


class TrainingCallbacks:
    """The callbacks of a config's averaging, logging and resume flags.

    Attributes:
        logging: for every phase of training: `run_dir.CreateOnTrainBegin`
            (the run directory appears when training starts),
            `LearningRateLogger` (the rate applied at each step),
            `TerminateOnNaN` and `CSVLogger` (`history.csv`, appended to
            phase after phase).
        averaging: `StochasticWeightAveraging` and `SnapshotEnsemble`, as the
            flags ask; for the phase that averages.
        resume: `BackupAndRestore`, for a recipe that resumes interrupted
            runs; else empty.
        swa: the `StochasticWeightAveraging` callback, or `None`.
        snapshot_dir: the snapshot directory, or `None`.
    """

    def __init__(self, logging, averaging, resume, swa, snapshot_dir, ema):
        self.logging, self.averaging, self.resume = logging, averaging, resume
        self.swa, self.snapshot_dir, self._ema = swa, snapshot_dir, ema

    def for_fit(self):
        """All of them in the order one `fit` needs: the snapshots see the raw
        weights at epoch ends and `BackupAndRestore` backs them up before
        `SwapEMAWeights` swaps the EMA in (SWA reads the EMA from the
        optimizer: with `--ema` it averages the EMA)."""
        logger, rest = self.logging[:-1], self.logging[-1:]
        swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if self._ema else []
        return logger + self.averaging + self.resume + swap + rest


def training_callbacks(config, data, schedule, steps_per_epoch, epochs, output_dir, *,
                       first_epoch=0, resumes=True, learning_rate_factor=1.0):
    """The `TrainingCallbacks` of a config.

    Args:
        config: a completed config.
        data: the `DataSplits` (SWA recomputes BatchNorm statistics on
            `data.train`).
        schedule: the learning-rate schedule of the averaging phase (snapshots
            are taken at its cycle ends).
        steps_per_epoch: optimizer steps per epoch.
        epochs: the epochs of the averaging phase.
        output_dir: the run directory.
        first_epoch: the index of the averaging phase's first epoch
            (`--swa_start` counts from it). Defaults to `0`.
        resumes: whether the recipe resumes an interrupted run from a Keras
            backup in `output_dir/backup` (and SWA from its state file).
            Defaults to `True`.
        learning_rate_factor: `--swa_lr`'s factor for the replicas
            (`Setup.learning_rate_factor`). Defaults to `1.0`.
    """
    history = os.path.join(output_dir, "history.csv")
    if not (resumes and _io.isdir(os.path.join(output_dir, run_dir.BACKUP))):
        _io.remove(history)  # a new run: its phases append to a new file
    logging = [run_dir.CreateOnTrainBegin(config), keras.callbacks.TerminateOnNaN(),
               keras.callbacks.CSVLogger(history, append=True)]
    if config.get("block_lr_decay") is None:  # MultiOptimizer has no single rate
        logging.insert(1, kt_callbacks.LearningRateLogger())
    averaging, swa, snapshot_dir = [], None, None
    if config.get("swa_start") is not None:
        state = os.path.join(output_dir, "swa_state.npz") if resumes else None
        swa = kt_callbacks.StochasticWeightAveraging(
            start_epoch=first_epoch + config["swa_start"],
            swa_learning_rate=(None if config.get("swa_lr") is None
                               else config["swa_lr"] * learning_rate_factor),
            bn_update_data=data.train,
            state_path=state)
        averaging.append(swa)
    if config.get("snapshots"):
        snapshot_dir = os.path.join(output_dir, "snapshots")
        averaging.append(snapshot_callback(config, schedule, epochs * steps_per_epoch,
                                           snapshot_dir, f"{epochs} epochs"))
    # An interrupted run resumes from the backup when started again; Keras
    # deletes the backup once training completes.
    resume = ([keras.callbacks.BackupAndRestore(os.path.join(output_dir, run_dir.BACKUP))]
              if resumes else [])
    return TrainingCallbacks(logging, averaging, resume, swa, snapshot_dir,
                             ema=bool(config.get("ema")))


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


# -- the exported model -------------------------------------------------------


def evaluate(model, data, callbacks, ema=False, export="best"):
    """Evaluates every model the run made and picks the one to export.

    The candidates are the trained model (`"final"`, or `"ema"` with
    `use_ema`, which leaves the moving average in the model), the SWA average
    (`"swa"`) and the snapshot ensemble (`"ensemble"`), as the run has them.
    `export` names one, or with `"best"` the candidate with the highest
    validation accuracy is exported (ties: the lower validation loss); without
    validation data `"best"` takes the ensemble, else SWA, else the trained
    model, and says so. The choice and its reason are printed.

    Every figure says which model it is about. `exported_model` names the
    exported one; `test_accuracy`, `test_loss` (the mean cross-entropy,
    without weight penalties, so that models and ensembles compare) and
    `validation_accuracy` are its figures. `MODEL_test_accuracy` and
    `MODEL_validation_accuracy` are every candidate's; with snapshots,
    `last_snapshot_test_accuracy` and `snapshot_test_accuracies` (every
    snapshot's) too.

    Args:
        model: the trained model (logits), holding its final weights: the SWA
            average with SWA, the EMA with `ema`. With `"final"` or `"ema"`
            chosen over SWA, it gets the trained weights back.
        data: the `DataSplits`.
        callbacks: the run's `TrainingCallbacks`.
        ema: whether the model was trained with `use_ema`. Defaults to `False`.
        export: `--export`. Defaults to `"best"`.

    Returns:
        `(exported, metrics)`: the model to export and the metrics of the
        output contract.
    """
    trained = "ema" if ema else "final"
    splits = {"test": data.test, "validation": data.validation}
    scores = {}

    def score(name, candidate):
        scores[name] = {split: kt.evaluation.evaluate(candidate, dataset)
                        for split, dataset in splits.items() if dataset is not None}

    swa = callbacks.swa
    if swa is not None and swa.final_weights is not None:
        score("swa", model)
        with swa.swap_in_final_weights():
            score(trained, model)
    else:
        score(trained, model)
    ensemble = members = None
    if callbacks.snapshot_dir is not None:
        ensemble = kt.ensemble.Ensemble.from_directory(callbacks.snapshot_dir)
        score("ensemble", ensemble)
        members = ensemble.evaluate_members(data.test)["members"]
    chosen, reason = _choose(export, scores)
    _io.say(reason)
    if chosen == trained and "swa" in scores:
        model.set_weights(swa.final_weights)
    metrics = {"exported_model": chosen, "export": export,
               "test_accuracy": scores[chosen]["test"]["accuracy"],
               "test_loss": scores[chosen]["test"]["loss"]}
    if data.validation is not None:
        metrics["validation_accuracy"] = scores[chosen]["validation"]["accuracy"]
    for split in splits:
        metrics.update({f"{name}_{split}_accuracy": result[split]["accuracy"]
                        for name, result in scores.items() if split in result})
    if members is not None:
        metrics["last_snapshot_test_accuracy"] = members[-1]
        metrics["snapshot_test_accuracies"] = members
    return (ensemble if chosen == "ensemble" else model), metrics


def _choose(export, scores):
    """`(name, reason)` of the model `--export` asks for among `scores`."""
    if export != "best":
        if export not in scores:
            raise ValueError(f"--export={export}: this run made only "
                             f"{sorted(scores)}; pass one of those")
        return export, f"Exporting the {export} model (--export={export})."
    if len(scores) == 1:
        (name,) = scores
        return name, f"Exporting the {name} model, the only one this run made."
    if "validation" not in next(iter(scores.values())):
        name = next(n for n in _DEFAULT_EXPORTS if n in scores)
        return name, (f"Exporting the {name} model: with no validation data "
                      "(--validation_fraction=0) --export=best cannot compare "
                      f"{', '.join(scores)}; pass --export=NAME to choose.")
    name = max(scores, key=lambda n: (scores[n]["validation"]["accuracy"],
                                      -scores[n]["validation"]["loss"]))
    figures = ", ".join(f"{n} {s['validation']['accuracy']:.4f}" for n, s in scores.items())
    return name, (f"Exporting the {name} model, the best on validation data "
                  f"(validation accuracy: {figures}).")
