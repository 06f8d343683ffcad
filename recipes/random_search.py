"""Random search over the settings of the train recipe.

Samples `--trials` configurations from a search space (log-uniform learning
rates and penalties, uniform dropout, choices of optimizer, schedule or
augmentation policy, ...) and trains each with `recipes.train.run`, every
other flag of the train recipe (`--epochs`, `--width`, `--data`, ...) being
shared by all trials; `--epochs` is each trial's budget. Writes to
`--output_dir` one directory per trial (`trials/trial_<id>/` with the run
directory of the train recipe), `results.csv` and `results.md` (best
validation accuracy first) and `parameters.png` (each setting against
validation accuracy). Run the same command again to resume an interrupted
search; a larger `--trials` extends it.

    python -m recipes.random_search --trials=20 --epochs=8 --output_dir=runs/search
    python -m recipes.random_search --space=space.json --trials=30

A space file maps train flags to distributions:

    {"learning_rate": {"distribution": "log_uniform", "low": 1e-4, "high": 3e-2},
     "weight_decay": {"distribution": "log_uniform", "low": 1e-6, "high": 1e-3},
     "dropout": {"distribution": "uniform", "low": 0.0, "high": 0.5},
     "batch_size": {"distribution": "int_range", "low": 32, "high": 256, "log": true},
     "augment": {"distribution": "choice", "values": ["none", "light", "standard"]}}
"""

import os

from absl import app
from absl import flags

from recipes import flags as recipe_flags
from recipes import train

FLAGS = flags.FLAGS
flags.DEFINE_integer("trials", 10, "Total number of trials of the search.")
flags.DEFINE_string("space", None, "JSON file of the search space (see the module "
                    "docstring); default: learning rate, weight decay, dropout "
                    "and augmentation policy.")
flags.DEFINE_enum("objective", "validation_accuracy",
                  ["validation_accuracy", "test_accuracy"],
                  "Metric of recipes.train to rank the trials by.")

DEFAULT_SPACE = {
    "learning_rate": {"distribution": "log_uniform", "low": 3e-4, "high": 3e-2},
    "weight_decay": {"distribution": "log_uniform", "low": 1e-6, "high": 1e-3},
    "dropout": {"distribution": "uniform", "low": 0.0, "high": 0.5},
    "augment": {"distribution": "choice", "values": ["none", "light", "standard"]},
}


def main(argv):
    recipe_flags.check_no_arguments(argv)
    recipe_flags.quiet_tensorflow()
    from kerastrain import search  # once the flags are parsed: fast --help

    base_config = recipe_flags.flag_config(train.__name__)
    output_dir = base_config.pop("output_dir") or os.path.join("runs", "random_search")
    shared = [f"--{name}" for name in ("export_dir", "save_backbone") if base_config[name]]
    if shared:
        raise SystemExit(f"error: {shared} would be overwritten by every trial; rerun "
                         "recipes.train with the best trial's config.json to export it.")
    trials = recipe_flags.run_or_explain(
        lambda space: search.random_search(
            train.run, space, FLAGS.trials, output_dir, base_config=base_config,
            objective=FLAGS.objective, seed=FLAGS.seed),
        FLAGS.space or DEFAULT_SPACE)
    completed = sum(trial.score is not None for trial in trials)
    print(f"\n{completed} of {len(trials)} trials completed; results in "
          f"{os.path.join(output_dir, 'results.md')}")
    if completed:
        print(f"best {FLAGS.objective} {trials[0].score:.4f} with {trials[0].values}")


if __name__ == "__main__":
    app.run(main)
