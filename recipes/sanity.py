"""Sanity-check a model and its data before training for days.

Runs every check of `kerastrain.sanity` on a fresh model from
`kerastrain.models` and the training split of a data spec: the data itself
(labels in range, pixel range, class balance), the loss at initialization
against `ln(C)` (and softmax applied twice), finite non-zero gradients for
every weight, per-layer activation statistics, a stronger L2 penalty raising
the loss, memorizing 20 examples, and whether a few steps at the learning
rate lower the loss. Prints a table and writes `sanity.md`, `sanity.json`,
`activations.png` and `config.json` to `--output_dir` (default:
`runs/sanity`). It takes about a minute on a laptop CPU.

    python -m recipes.sanity --output_dir=runs/sanity
    python -m recipes.sanity --learning_rate=0.5 --optimizer=sgd
    python -m recipes.sanity --data=folder:/path/to/images --image_size=64
"""

import os

from absl import app
from absl import flags

from recipes import flags as recipe_flags

# --learning_rate is the rate judged (and the overfit check trains with);
# --width and --blocks shape the model when it is small_cnn.
recipe_flags.define(__name__, "data", "model", "optimizer", "output")
flags.DEFINE_string("model", "small_cnn",
                    "Name of a model function of kerastrain.models.")
flags.DEFINE_integer("overfit_steps", 300,
                     "Step budget for memorizing 20 training examples.")
flags.DEFINE_integer("learning_rate_steps", 20,
                     "Steps of the learning-rate check.")


def run(config):
    """Runs the checks as `config` says; returns the list of results.

    Args:
        config: dict of flag values of this recipe (see `--help`); missing
            ones take their defaults.
    """
    # Imported once the flags are parsed, so that --help answers at once.
    from kerastrain import _io, sanity
    from recipes import common

    config = recipe_flags.complete_config(config, __name__)
    data = common.load_data(config)
    _io.makedirs(config["output_dir"])
    _io.write_json(os.path.join(config["output_dir"], "config.json"), config)
    build_model = sanity.compiled_builder(
        config["model"], data.num_classes, optimizer=config["optimizer"],
        input_shape=data.image_shape, width=config["width"],
        blocks=config["blocks"])
    return sanity.run_checks(
        build_model, data, learning_rate=config["learning_rate"],
        output_dir=config["output_dir"], seed=config["seed"],
        overfit_steps=config["overfit_steps"],
        learning_rate_steps=config["learning_rate_steps"])


def main(argv):
    recipe_flags.check_no_arguments(argv)
    recipe_flags.quiet_tensorflow()
    config = recipe_flags.complete_config(recipe_flags.flag_config(__name__), __name__)
    results = recipe_flags.run_or_explain(run, config)
    passed = sum(result.passed for result in results)
    print(f"\n{passed} of {len(results)} checks passed; report in "
          f"{os.path.join(config['output_dir'], 'sanity.md')}")


if __name__ == "__main__":
    app.run(main)
