"""The recipes' flags: shared groups, configs and the checks between flags.

absl flags are global to a process, so the flags recipes share are defined
here, once, however many recipes are imported. A recipe names the groups it
uses, `flags.define(__name__, "data", "training")`; they become its key
flags (its `--help` and its config) next to the flags that are its own,
which it defines under names no other recipe uses.

This module imports absl alone: a recipe defines its flags from it and
imports TensorFlow only once they are parsed, so that `--help` answers at
once. The names of the library's choices (strategies, augmentation
policies) are therefore listed here; a test keeps them equal to the
library's.
"""

import json
import math
import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS

SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine",
             "cyclical", "warm_restarts", "one_cycle")
CYCLIC_SCHEDULES = ("cyclical", "warm_restarts")
REGULARIZERS = ("none", "l2", "l1", "elastic_net")
AUGMENT_POLICIES = ("none", "light", "standard", "heavy")  # kt.augment.POLICIES
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")  # kt.distribute.STRATEGIES
LR_SCALING = ("linear", "sqrt", "none")  # kt.distribute.LR_SCALING
# The models a training run can export; `best` picks one on validation data.
EXPORTS = ("best", "final", "ema", "swa", "ensemble")
_GROUPS = {}  # flag group -> names of its flags, once defined


def define(module, *groups):
    """Defines the flag `groups` (once per process) as key flags of `module`.

    Args:
        module: the recipe's `__name__`.
        *groups: any of `"data"` (data spec and `--seed`), `"model"`
            (`small_cnn`'s `--width`, `--blocks`), `"optimizer"`
            (`--optimizer`, `--learning_rate`), `"output"` (`--output_dir`)
            and `"training"` (schedule, regularization, averaging, strategy,
            export and verbosity; it includes `"optimizer"` and `"output"`).
    """
    for group in groups:
        if group == "training":
            define(module, "optimizer", "output")
        if group not in _DEFINITIONS:
            raise ValueError(f"Unknown flag group {group!r}; expected one of "
                             f"{sorted(_DEFINITIONS)}")
        if group not in _GROUPS:
            before = set(FLAGS)
            _DEFINITIONS[group]()
            _GROUPS[group] = sorted(set(FLAGS) - before)
        for name in _GROUPS[group]:
            FLAGS.register_key_flag_for_module(_absl_module(module), FLAGS[name])


def _define_data_flags():
    flags.DEFINE_string(
        "data", "cifar10_mini",
        "Data spec: cifar10_mini (embedded), folder:PATH, tfrecord:PATH (from "
        "kerastrain.data.to_tfrecord) or tfds:NAME.")
    flags.DEFINE_list("classes", None,
                      "Comma list of class names to keep, in label order.")
    flags.DEFINE_integer("labels_per_class", None,
                         "Keep this many training images per class (few-shot).")
    flags.DEFINE_integer("image_size", None,
                         "Resize images to this square size (default: as stored; "
                         "needed when images differ in size).")
    flags.DEFINE_enum("resize_mode", "stretch", ["stretch", "crop", "pad"],
                      "With --image_size: stretch to fit, or keep the aspect ratio "
                      "and crop the centre or pad with black.")
    flags.DEFINE_string("cache", "auto", "auto (in memory when the decoded images "
                        "take at most a tenth of the free memory, else streamed), memory, "
                        "none (streamed: decoded every epoch) or disk:PATH.")
    flags.DEFINE_enum("on_bad_image", "error", ["error", "skip"],
                      "A file that cannot be decoded stops the run naming it "
                      "(error), or is left out with a warning (skip).")
    flags.DEFINE_integer("batch_size", 64, "Images per replica per step; the global "
                         "batch is this times the replicas of --strategy.")
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
    flags.DEFINE_enum("augment", "standard", AUGMENT_POLICIES, "Augmentation policy.")
    flags.DEFINE_float("dropout", 0.0, "InvertedDropout rate before the classifier.")
    flags.DEFINE_enum("regularizer", "none", REGULARIZERS,
                      "Weight penalty on every kernel.")
    flags.DEFINE_float("regularization", 1e-4, "Strength of --regularizer.")
    flags.DEFINE_float("l1_ratio", 0.5, "L1 share of the elastic net penalty.")
    flags.DEFINE_integer("swa_start", None,
                         "Average the weights from this 0-based epoch on (SWA).")
    flags.DEFINE_float("swa_lr", None, "Constant learning rate while averaging "
                       "(default: the schedule goes on).")
    flags.DEFINE_integer("snapshots", 0,
                         "Snapshot ensemble of this many cycles (needs --schedule="
                         "warm_restarts or cyclical).")
    flags.DEFINE_bool("ema", False, "Keep an exponential moving average of the "
                      "trainable weights (Keras use_ema), validate on it and end "
                      "training with it.")
    flags.DEFINE_float("ema_momentum", 0.99, "EMA momentum.")
    flags.DEFINE_enum("export", "best", EXPORTS,
                      "The model evaluated as test_accuracy and exported: final "
                      "(the trained weights), ema, swa, ensemble (the snapshots), "
                      "or best: the one of these the run has with the highest "
                      "validation accuracy.")
    flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.")
    flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu "
                        "('local' on a TPU VM).")
    flags.DEFINE_enum("lr_scaling", "linear", LR_SCALING,
                      "How --learning_rate (and --swa_lr) scale with the replicas "
                      "of --strategy: linear (x replicas, for the global batch "
                      "--batch_size x replicas), sqrt, or none. One replica: no change.")
    flags.DEFINE_bool("mixed_precision", False,
                      "Compute in mixed precision: mixed_float16 on GPU, "
                      "mixed_bfloat16 on TPU (variables, logits and the export "
                      "stay float32). Slower on a CPU.")
    flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                      "XLA-compile the training step (Keras compile's jit_compile; "
                      "auto: on a GPU or TPU when every layer supports it).")
    flags.DEFINE_string("export_dir", None, "Write the SavedModel here; it replaces "
                        "only a previous kerastrain export.")
    flags.DEFINE_bool("overwrite_export", False, "Let --export_dir replace whatever "
                      "is at that path (a file, a directory that is no export).")
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity (0, 1 or 2); with "
                         "--verbosity (absl's log level) TensorFlow's own log "
                         "lines show too.")


_DEFINITIONS = {"data": _define_data_flags, "model": _define_model_flags,
                "optimizer": _define_optimizer_flags, "output": _define_output_flags,
                "training": _define_training_flags}


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


def command(module, config):
    """The command line that runs the recipe `module` with `config`: its
    flags that differ from their defaults (paths and lists as typed)."""
    defaults = default_config(module)
    name = module
    if module == "__main__":  # run as `python -m recipes.NAME`
        name = getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", module)
    parts = [f"python -m {name}"]
    for key in sorted(config):
        value = config[key]
        if key in defaults and value == defaults[key]:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        parts.append(f"--{key}={shlex.quote(str(value))}")
    return " ".join(parts)


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
    if config.get("output_dir") is None and "output_dir" in defaults:
        config["output_dir"] = os.path.join("runs", _recipe_name(module))
    return config


def _recipe_flags(module):
    """The flags `module` defines plus the shared groups it asked for."""
    return sorted(FLAGS.get_key_flags_for_module(_absl_module(module)),
                  key=lambda f: f.name)


def _absl_module(module):
    """absl's name for a module: the main module is named after its file."""
    return sys.argv[0] if module == "__main__" else module


def _recipe_name(module):
    if module == "__main__":  # `python -m recipes.train`: name it after its file
        module = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    return module.rsplit(".", 1)[-1]


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


# -- checks -------------------------------------------------------------------


def check_config(config, epochs, auto_learning_rate=False):
    """Checks the flags of a training recipe that only make sense together,
    before any work.

    Args:
        config: a completed config.
        epochs: the number of epochs the recipe trains (those that average,
            for a recipe with phases).
        auto_learning_rate: whether the recipe takes `--learning_rate=auto`.
            Defaults to `False`.
    """
    _check_learning_rate(config.get("learning_rate"), auto_learning_rate)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"Invalid value for --epochs: expected an int >= 1, "
                         f"received epochs={epochs!r}")
    for name, choices in (("augment", AUGMENT_POLICIES), ("regularizer", REGULARIZERS),
                          ("export", EXPORTS), ("strategy", STRATEGIES),
                          ("lr_scaling", LR_SCALING),
                          ("jit_compile", ("auto", "true", "false"))):
        if config[name] not in choices:
            raise ValueError(f"Invalid value for --{name}: expected one of "
                             f"{list(choices)}, received {config[name]!r}")
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
    _check_export(config)
    if config["strategy"] != "tpu" and config.get("tpu"):
        raise ValueError("--tpu names the TPU of --strategy=tpu; received "
                         f"--strategy={config['strategy']}")
    if config.get("export_dir") and os.path.abspath(config["export_dir"]) == \
            os.path.abspath(config["output_dir"]):
        raise ValueError("--export_dir must differ from --output_dir: the export "
                         "replaces its directory")


def _check_learning_rate(rate, auto_learning_rate):
    if rate == "auto" and not auto_learning_rate:
        raise ValueError("--learning_rate=auto is for recipes.finetune (the LR range "
                         "test on its head); pass a number, or find one with "
                         "kerastrain.lr_finder")
    if rate is not None and rate != "auto" and (
            isinstance(rate, bool) or not isinstance(rate, (int, float))
            or not 0 < rate < math.inf):
        raise ValueError("Invalid value for --learning_rate: expected a number > 0"
                         f"{' or auto' if auto_learning_rate else ''}, received {rate!r}")


def _check_export(config):
    """`--export=NAME` needs the flags that make that model."""
    needs = {"swa": ("swa_start", "--swa_start=EPOCH"),
             "ensemble": ("snapshots", "--snapshots=N --schedule=warm_restarts"),
             "ema": ("ema", "--ema")}
    choice = config["export"]
    if choice in needs and config.get(needs[choice][0]) in (None, 0, False):
        raise ValueError(f"--export={choice} exports a model this run does not make: "
                         f"pass {needs[choice][1]}, or another --export")
    if choice == "final" and config.get("ema"):
        raise ValueError("--export=final with --ema: the trained model holds the "
                         "moving average (Keras' use_ema), so pass --export=ema")


# -- the command line ---------------------------------------------------------


def main(run, module, report=None):
    """The absl `main` of a recipe: flags -> `run(config)` -> printed results.

    Args:
        run: the recipe's `run(config)`.
        module: the recipe's `__name__`.
        report: prints what `run` returns. Defaults to `print_metrics` (for
            a metrics dict).
    """
    def recipe_main(argv):
        check_no_arguments(argv)
        quiet_tensorflow()
        (report or print_metrics)(run_or_explain(run, flag_config(module)))
    return recipe_main


def check_no_arguments(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags take the "
                             "form --name=value.")


def quiet_tensorflow():
    """Keeps TensorFlow's start-up lines (CUDA probing, CPU features, absl's
    INFO log) out of a recipe's output, unless `--verbosity` is given.

    TensorFlow's C++ code logs at import and at the first device query, some
    of it before its log level applies, so both run with stderr muted; the
    Python errors they may raise still propagate. Call it before anything
    imports TensorFlow.
    """
    if FLAGS["verbosity"].present:
        return
    logging.set_verbosity(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        import tensorflow as tf
        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_or_explain(run, config):
    """Runs `run(config)`; a bad flag or input exits with its message, and
    Ctrl-C with what to do next (exit status 130), no traceback."""
    try:
        return run(config)
    except (ValueError, OSError, RuntimeError) as error:
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        print("\ninterrupted: every file was written whole (or not at all). Run the "
              "same command again: recipes.train resumes from its last complete "
              "epoch, other recipes start afresh.", file=sys.stderr)
        raise SystemExit(130) from None


def print_metrics(metrics):
    """Prints the metrics as a short aligned table."""
    print()
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4f}" for v in value)
        print(f"{key:>30}  {value}")
