"""Compare SGD, momentum, Nesterov, AdaGrad, RMSProp and Adam on 2-D functions.

Runs the real Keras optimizers (built by `kerastrain.optimizers.build`) for
the same number of steps on three test functions of `kerastrain.toy_problems`
and shows how they move:

- `quadratic`: an ill-conditioned bowl `(x^2 + 100 y^2) / 2`. Plain SGD
  must keep its rate below `2 / 100`; just under that limit (its fastest
  rate) it zig-zags across the valley and crawls along it. Momentum and
  Nesterov at about half that rate get there 2-3 times sooner.
- `saddle`: `x^2 + y^4 / 4 - y^2 / 2`, started `1e-3` off the saddle's stable
  manifold `y = 0`. SGD slides into the saddle and stays for hundreds of
  steps (exactly on `y = 0` it stays for ever); momentum and the adaptive
  methods, whose step does not shrink with the tiny gradient, escape.
- `rosenbrock`: the curved banana valley.

The learning rates (`LEARNING_RATES`) are near the best of a 1-2-5 grid for
each optimizer. On the saddle and Rosenbrock, SGD, momentum and Nesterov
share one rate, so the difference between them is the momentum alone; on
the quadratic SGD gets its own (0.019), since Nesterov with momentum 0.9 is
unstable there above `1.36 / 100`. `--learning_rates` overrides any of them.

Writes to `--output_dir`: `trajectories.png` (paths over contour plots),
`results.md` and `results.json` (learning rate, steps until the loss stays
within `--tolerance` of the minimum, final distance to the minimum, per
problem and optimizer) and `config.json`. It takes about 10 seconds on a CPU.

    python -m recipes.compare_optimizers --output_dir=runs/compare_optimizers
    python -m recipes.compare_optimizers --problems=saddle --steps=300 \\
        --learning_rates='{"adam": 0.1, "saddle": {"sgd": 0.05}}'
"""

import os

from absl import app
from absl import flags

from recipes import flags as recipe_flags

recipe_flags.define(__name__, "output")
flags.DEFINE_list("problems", ["quadratic", "saddle", "rosenbrock"],
                  "Test functions of kerastrain.toy_problems.")
flags.DEFINE_list("optimizers", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"],
                  "Optimizer names for kerastrain.optimizers.build.")
flags.DEFINE_integer("steps", 500, "Optimizer steps, the same for every run.")
flags.DEFINE_float("tolerance", 1e-3,
                   "A run has converged once f - min f stays <= this.")
flags.DEFINE_float("condition_number", 100.0,
                   "Curvature ratio of the quadratic's valley.")
flags.DEFINE_string("learning_rates", None,
                    'JSON overrides of the learning rates: {"adam": 0.1} for every '
                    'problem, {"saddle": {"sgd": 0.05}} for one.')

# Default learning rate per problem and optimizer (see the module docstring).
LEARNING_RATES = {
    "quadratic": {"sgd": 0.019, "momentum": 0.01, "nesterov": 0.01,
                  "adagrad": 0.5, "rmsprop": 0.01, "adam": 0.1},
    "saddle": {"sgd": 0.01, "momentum": 0.01, "nesterov": 0.01,
               "adagrad": 0.2, "rmsprop": 0.01, "adam": 0.05},
    "rosenbrock": {"sgd": 0.001, "momentum": 0.001, "nesterov": 0.001,
                   "adagrad": 0.5, "rmsprop": 0.01, "adam": 0.2},
}


def learning_rates(config):
    """The learning rate of every (problem, optimizer) pair of a config."""
    overrides = recipe_flags.json_dict_flag(config, "learning_rates")
    rates = {}
    for problem in config["problems"]:
        per_problem = overrides.get(problem, {})
        if not isinstance(per_problem, dict):
            raise ValueError(f"Invalid value for --learning_rates: the entry for "
                             f"{problem!r} must be a dict of optimizer rates")
        rates[problem] = {}
        for name in config["optimizers"]:
            rate = per_problem.get(name, overrides.get(name, LEARNING_RATES[problem].get(name)))
            if rate is None:
                raise ValueError(
                    f"No default learning rate for optimizer {name!r} on {problem!r}: "
                    f"pass --learning_rates='{{\"{name}\": 0.01}}'")
            rates[problem][name] = rate
    return rates


def run(config):
    """Runs every optimizer on every problem; returns `(results, paths)`.

    `results[problem][optimizer]` holds `learning_rate`, `steps_to_tolerance`
    (`None` when not reached), `final_gap` (`f - min f` at the last point,
    `None` when the run diverged), `final_point` and `diverged`;
    `paths[problem][optimizer]` is the `(steps + 1, 2)` array of points.
    Missing settings take their flag defaults; the default `output_dir` is
    `runs/compare_optimizers`.
    """
    # Imported once the flags are parsed, so that --help answers at once.
    import numpy as np

    import kerastrain as kt
    from kerastrain import _io

    config = recipe_flags.complete_config(config, __name__)
    _check(config)
    _io.makedirs(config["output_dir"])
    _io.write_json(os.path.join(config["output_dir"], "config.json"), config)
    problems = [_problem(name, config) for name in config["problems"]]
    rates = learning_rates(config)
    results, paths = {}, {}
    for problem in problems:
        results[problem.name], paths[problem.name] = {}, {}
        for name in config["optimizers"]:
            optimizer = kt.optimizers.build(name, rates[problem.name][name])
            points = kt.toy_problems.optimize_2d(problem.function, problem.start,
                                                  optimizer, config["steps"])
            with np.errstate(invalid="ignore", over="ignore"):
                values = kt.toy_problems.evaluate(problem.function, points)
            diverged = not np.isfinite(values[-1])
            paths[problem.name][name] = points
            results[problem.name][name] = {
                "learning_rate": rates[problem.name][name],
                "steps_to_tolerance": kt.toy_problems.steps_to_tolerance(
                    values, problem.minimum_value, config["tolerance"]),
                "final_gap": None if diverged else float(values[-1] - problem.minimum_value),
                "final_point": None if diverged else points[-1].tolist(),
                "diverged": bool(diverged),
            }
    kt.plots.plot_optimizer_paths(problems, paths,
                                  os.path.join(config["output_dir"], "trajectories.png"))
    _io.write_json(os.path.join(config["output_dir"], "results.json"), results)
    _io.write_text(os.path.join(config["output_dir"], "results.md"),
                   markdown_table(results, config))
    return results, paths


def markdown_table(results, config):
    """The results as one markdown table per problem."""
    lines = []
    for problem, rows in results.items():
        lines += [f"### {problem} ({config['steps']} steps)", "",
                  f"| optimizer | learning rate | steps until f - min f <= "
                  f"{config['tolerance']:g} | final f - min f |",
                  "| --- | ---: | ---: | ---: |"]
        for name, row in rows.items():
            steps = row["steps_to_tolerance"]
            steps = "not reached" if steps is None else str(steps)
            gap = "diverged" if row["diverged"] else f"{row['final_gap']:.2e}"
            lines.append(f"| {name} | {row['learning_rate']:g} | {steps} | {gap} |")
        lines.append("")
    return "\n".join(lines)


def _problem(name, config):
    import kerastrain as kt

    if name == "quadratic":
        return kt.toy_problems.get(name, condition_number=config["condition_number"])
    return kt.toy_problems.get(name)


def _check(config):
    from kerastrain import _checks

    _checks.check_int("--steps", config["steps"], minimum=1)
    _checks.check_real("--tolerance", config["tolerance"], low=0, low_open=True)


def main(argv):
    recipe_flags.check_no_arguments(argv)
    recipe_flags.quiet_tensorflow()
    config = recipe_flags.complete_config(recipe_flags.flag_config(__name__), __name__)
    results, _ = recipe_flags.run_or_explain(run, config)
    print(markdown_table(results, config))
    print(f"Wrote {os.path.join(config['output_dir'], 'trajectories.png')}")


if __name__ == "__main__":
    app.run(main)
