"""Random search over training settings (Bergstra & Bengio, 2012).

Random search beats grid search when few of the settings matter: every trial
tries a new value of *each* setting, so `n` trials probe `n` values of the
one that matters instead of `n ** (1 / d)`. Scale-like settings (learning
rate, weight decay) are drawn log-uniformly, so that each decade gets the
same share of trials.

The search runs on KerasTuner (`keras_tuner.RandomSearch`), which already
samples log-uniformly from a seed, stores every trial, resumes an interrupted
search (a trial cut off half way runs again) and records a failing trial with
its traceback instead of stopping. What this module adds: a search space
that is a plain JSON-able dict, trials that call any `train_fn(config) ->
metrics` (such as `recipes.train.run`) with the sampled settings merged into
a base config, each trial's `config.json` and `metrics.json`, and a results
table and plot.

Example:

>>> space = {"learning_rate": log_uniform(1e-4, 1e-1),
...          "dropout": uniform(0.0, 0.5),
...          "augment": choice(["light", "standard"])}
>>> sample(space, seed=0)
{'learning_rate': 0.000517..., 'dropout': 0.118..., 'augment': 'standard'}
>>> trials = random_search(train.run, space, trials=20, output_dir="runs/search",
...                        base_config=config)
>>> trials[0].values, trials[0].score
"""

import csv
import dataclasses
import io
import math
import os

import keras_tuner

from kerastrain import _checks, _io
from kerastrain import plots


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One setting's distribution; build it with `uniform`, `log_uniform`,
    `int_range` or `choice`."""

    distribution: str
    low: float = None
    high: float = None
    values: tuple = None
    log: bool = False

    def get_config(self):
        """Returns the JSON-able config that `parameter_from_config` reads."""
        if self.distribution == "choice":
            return {"distribution": "choice", "values": list(self.values)}
        config = {"distribution": self.distribution, "low": self.low, "high": self.high}
        return {**config, "log": True} if self.distribution == "int_range" and self.log else config

    def _declare(self, hp, name):
        """Adds this parameter to a `keras_tuner.HyperParameters`."""
        if self.distribution == "choice":
            return hp.Choice(name, list(self.values))
        if self.distribution == "int_range":
            return hp.Int(name, self.low, self.high, sampling="log" if self.log else "linear")
        return hp.Float(name, self.low, self.high,
                        sampling="log" if self.distribution == "log_uniform" else "linear")


def uniform(low, high):
    """A float drawn uniformly from `[low, high)`, e.g. a dropout rate.

    Args:
        low: the smallest value.
        high: the bound, larger than `low`.

    Returns:
        A `Parameter`.
    """
    return Parameter("uniform", *_check_bounds("uniform", low, high))


def log_uniform(low, high):
    """A float whose logarithm is uniform over `[log(low), log(high))`.

    Each decade gets the same share of draws, which is what scale-like
    settings (learning rates, penalty strengths) need: a plain uniform over
    `[1e-5, 1e-1)` puts 90% of its draws above `1e-2`.

    Args:
        low: the smallest value, `> 0`.
        high: the bound, larger than `low`.

    Returns:
        A `Parameter`.

    Example:

    >>> sample({"learning_rate": log_uniform(1e-4, 1e-1)}, seed=1)
    {'learning_rate': 0.0739...}
    """
    low, high = _check_bounds("log_uniform", low, high)
    if low <= 0:
        raise ValueError(f"Invalid value for `low`: log_uniform needs 0 < low < high, "
                         f"received low={low!r}")
    return Parameter("log_uniform", low, high)


def int_range(low, high, log=False):
    """An integer drawn uniformly from `low..high`, both included.

    Args:
        low: the smallest integer.
        high: the largest integer, larger than `low`.
        log: whether to draw log-uniformly (batch sizes, widths), which
            needs `low >= 1`. Defaults to `False`.

    Returns:
        A `Parameter`.
    """
    if not all(_checks.is_int(v) for v in (low, high)):
        raise ValueError(f"Invalid value for `low`/`high`: int_range needs integers, "
                         f"received low={low!r}, high={high!r}")
    low, high = _check_bounds("int_range", low, high)
    if log and low <= 0:
        raise ValueError(f"Invalid value for `low`: int_range(log=True) needs low >= 1, "
                         f"received low={low!r}")
    return Parameter("int_range", int(low), int(high), log=bool(log))


def choice(values):
    """One of `values`, each equally likely, e.g. optimizer names.

    Args:
        values: a list of at least two distinct strings, numbers or
            booleans, all of one type.

    Returns:
        A `Parameter`.
    """
    values = tuple(values) if isinstance(values, (list, tuple)) else ()
    types = {type(v) for v in values}
    if (len(values) < 2 or len(set(values)) != len(values) or len(types) != 1
            or not types <= {str, int, float, bool}):
        raise ValueError(
            "Invalid value for `values`: choice needs at least two distinct values "
            f"of one type (str, int, float or bool), received values={values!r}")
    return Parameter("choice", values=values)


_BUILDERS = {"uniform": uniform, "log_uniform": log_uniform, "int_range": int_range,
             "choice": choice}


def parameter_from_config(config):
    """Builds a `Parameter` from its config (what `Parameter.get_config` returns).

    Args:
        config: a dict such as `{"distribution": "log_uniform", "low": 1e-4,
            "high": 1e-1}` or `{"distribution": "choice", "values": ["adam", "sgd"]}`.

    Returns:
        A `Parameter`.
    """
    config = dict(config) if isinstance(config, dict) else {}
    distribution = config.pop("distribution", None)
    if distribution not in _BUILDERS:
        raise ValueError(
            f"Invalid parameter config: expected a dict with 'distribution' one of "
            f"{list(_BUILDERS)}, received distribution={distribution!r}")
    try:
        return _BUILDERS[distribution](**config)
    except TypeError as error:
        raise ValueError(f"Invalid {distribution} parameter config {config}: {error}") from None


def load_space(space):
    """Reads a search space.

    Args:
        space: a dict `{setting name: Parameter or its config}`, or the path
            of a JSON file holding a dict of configs.

    Returns:
        A dict `{setting name: Parameter}`.
    """
    if isinstance(space, (str, os.PathLike)):
        space = _io.read_json(space)
    if not isinstance(space, dict) or not space:
        raise ValueError("Invalid value for `space`: expected a non-empty dict "
                         f"{{name: parameter}}, received {space!r}")
    return {str(name): value if isinstance(value, Parameter) else parameter_from_config(value)
            for name, value in space.items()}


def sample(space, seed=0):
    """Draws one value of each setting of `space`.

    KerasTuner draws each value from its own seed; `sample(space, seed)`
    returns exactly what trial `k` of `random_search(..., seed=seed - k)`
    tries (unless that search skipped a duplicate draw).

    Args:
        space: `{name: Parameter}`, configs, or a JSON path (see `load_space`).
        seed: an int >= 0. Defaults to `0`.

    Returns:
        A dict `{name: value}`.
    """
    hyperparameters = _hyperparameters(load_space(space))
    first = _seed_state(seed, len(hyperparameters.space))
    return {hp.name: hp.random_sample(first + i) for i, hp in enumerate(hyperparameters.space)}


@dataclasses.dataclass
class TrialResult:
    """One trial of a search.

    Attributes:
        trial_id: KerasTuner's id of the trial (its directory is `trial_<id>`).
        status: `"COMPLETED"` or `"FAILED"` (or KerasTuner's other statuses).
        values: the sampled settings.
        metrics: what `train_fn` returned (empty when it failed).
        score: the objective, or `None`.
        error: the last line of the failure's traceback, or `None`.
        directory: the trial's directory, the `output_dir` of its config.
    """

    trial_id: str
    status: str
    values: dict
    metrics: dict
    score: float
    error: str
    directory: str


def random_search(train_fn, space, trials, output_dir, *, base_config=None,
                  objective="validation_accuracy", direction="max", seed=0,
                  max_consecutive_failures=None, verbose=1):
    """Trains `trials` randomly sampled configurations and ranks them.

    Each trial calls `train_fn({**base_config, **sampled, "output_dir":
    trial_dir})`, which trains with that budget (the config's epochs) and
    returns a metrics dict holding `objective`. Everything is stored under
    `output_dir`: `trials/trial_<id>/` with `config.json`, `metrics.json`,
    whatever `train_fn` writes there and KerasTuner's `trial.json` (status
    and, for a failure, the traceback); `results.csv` and `results.md`
    (best first) and `parameters.png` (each setting against the objective).
    Running it again with the same arguments resumes: finished trials are
    kept, a trial cut off half way runs again; a larger `trials` extends it.
    A trial that raises is recorded as failed and the search goes on.

    Args:
        train_fn: a callable `config -> metrics dict`, e.g. `recipes.train.run`.
        space: `{name: Parameter}`, configs, or a JSON path (see `load_space`).
        trials: the total number of trials.
        output_dir: the search directory.
        base_config: the settings shared by every trial; every name of
            `space` must be one of its keys. Defaults to `None` (`{}`, any name).
        objective: the metric to rank by. Defaults to `"validation_accuracy"`.
        direction: `"max"` or `"min"`. Defaults to `"max"`.
        seed: seeds the sampling, an int >= 0. Defaults to `0`.
        max_consecutive_failures: stop after this many failures in a row.
            Defaults to `None` (never stop).
        verbose: KerasTuner's progress output, `0` or `1`. Defaults to `1`.

    Returns:
        A list of `TrialResult`, best first, failed trials last.
    """
    space = load_space(space)
    base_config = dict(base_config or {})
    _checks.check_int("trials", trials, minimum=1)
    if max_consecutive_failures is not None:
        _checks.check_int("max_consecutive_failures", max_consecutive_failures, minimum=1)
    _checks.check_choice("direction", direction, ("max", "min"))
    unknown = sorted(set(space) - set(base_config)) if base_config else []
    if unknown:
        raise ValueError(f"Invalid value for `space`: {unknown} are not settings of "
                         f"`base_config`; known settings: {sorted(base_config)}")
    seed_state = _seed_state(seed, len(space))
    settings = {"space": {k: v.get_config() for k, v in space.items()},
                "base_config": {k: v for k, v in base_config.items() if k != "output_dir"},
                "objective": objective, "direction": direction, "seed": seed}
    _check_resume(output_dir, settings)
    tuner = _Tuner(
        train_fn, base_config, objective,
        hyperparameters=_hyperparameters(space), tune_new_entries=False,
        allow_new_entries=False, objective=keras_tuner.Objective(objective, direction),
        max_trials=trials, seed=seed_state,
        max_consecutive_failed_trials=max_consecutive_failures or trials + 1,
        directory=output_dir, project_name="trials")
    try:
        tuner.search(verbose=verbose)
    except keras_tuner.errors.FatalError as error:
        raise ValueError(str(error)) from None
    results = _collect(tuner, objective, direction)
    _write_results(results, space, output_dir, objective, direction)
    return results


class _Tuner(keras_tuner.RandomSearch):
    """KerasTuner's random search whose trials call `train_fn(config)`."""

    def __init__(self, train_fn, base_config, objective_name, **kwargs):
        super().__init__(**kwargs)
        self._train_fn, self._base_config = train_fn, base_config
        self._objective_name = objective_name

    def run_trial(self, trial, *args, **kwargs):
        directory = self.get_trial_dir(trial.trial_id)
        config = {**self._base_config, **trial.hyperparameters.values, "output_dir": directory}
        _io.write_json(os.path.join(directory, "config.json"), config)
        metrics = self._train_fn(config)
        score = metrics.get(self._objective_name) if isinstance(metrics, dict) else None
        if not _checks.is_number(score):
            # Not the trial's fault: no trial could be ranked, so stop at once.
            raise keras_tuner.errors.FatalError(
                f"`train_fn` must return a dict holding the objective "
                f"{self._objective_name!r}, received {metrics!r}. Pass "
                "`objective=` one of its keys (e.g. 'test_accuracy' when there is "
                "no validation split).")
        if not math.isfinite(score):
            raise RuntimeError(f"The objective {self._objective_name} is {score}.")
        _io.write_json(os.path.join(directory, "metrics.json"), metrics)
        return {k: float(v) for k, v in metrics.items() if _checks.is_number(v)}


def _hyperparameters(space):
    hyperparameters = keras_tuner.HyperParameters()
    for name, parameter in space.items():
        parameter._declare(hyperparameters, name)
    return hyperparameters


def _seed_state(seed, size):
    # KerasTuner seeds each draw with a counter starting at the oracle's seed;
    # spacing searches `size` apart keeps `sample(space, s)` free of overlap.
    # The oracle takes a seed of 0 for "unseeded", hence the `+ 1`.
    return (_checks.check_int("seed", seed, minimum=0) + 1) * size


def _check_resume(output_dir, settings):
    path = os.path.join(output_dir, "search.json")
    if _io.exists(path):
        changed = _differences(_io.read_json(path), _io.jsonable(settings))
        if changed:
            raise ValueError(
                f"{output_dir} holds a search with other settings ({', '.join(changed)}); "
                "resume it with the same settings, or choose a new `output_dir`.")
    _io.write_json(path, settings)


def _differences(saved, settings):
    found = []
    for key, value in settings.items():
        old = saved.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            found += [f"{key}.{k}: {old.get(k)!r} -> {value.get(k)!r}"
                      for k in sorted(set(old) | set(value)) if old.get(k) != value.get(k)]
        elif old != value:
            found.append(f"{key}: {old!r} -> {value!r}")
    return found


def _collect(tuner, objective, direction):
    results = []
    for trial in tuner.oracle.trials.values():
        directory = tuner.get_trial_dir(trial.trial_id)
        metrics, score, error = {}, None, None
        if trial.status == "COMPLETED":
            metrics = _io.read_json(os.path.join(directory, "metrics.json"))
            score = float(metrics[objective])
        elif trial.message:
            error = trial.message.strip().splitlines()[-1]
        results.append(TrialResult(trial.trial_id, trial.status,
                                   dict(trial.hyperparameters.values), metrics,
                                   score, error, directory))
    sign = -1 if direction == "max" else 1
    return sorted(results, key=lambda r: (r.score is None,
                                          0 if r.score is None else sign * r.score,
                                          r.trial_id))


def _write_results(results, space, output_dir, objective, direction):
    names = list(space)
    extra = sorted({k for r in results for k, v in r.metrics.items()
                    if k != objective and _checks.is_number(v)})
    header = ["rank", "trial", "status", objective, *names, *extra, "error"]
    rows = [[rank, r.trial_id, r.status, r.score, *(r.values.get(n) for n in names),
             *(r.metrics.get(k) for k in extra), r.error or ""]
            for rank, r in enumerate(results, 1)]
    table = io.StringIO()
    csv.writer(table).writerows([header, *rows])
    _io.write_text(os.path.join(output_dir, "results.csv"), table.getvalue())
    short = header[:4 + len(names)] + ["error"]
    lines = ["| " + " | ".join(short) + " |", "|" + " --- |" * len(short)]
    for row in rows:
        cells = row[:4 + len(names)] + [row[-1]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    _io.write_text(os.path.join(output_dir, "results.md"), "\n".join(lines) + "\n")
    done = [r for r in results if r.score is not None]
    if done:
        log_parameters = [n for n, p in space.items()
                          if p.distribution == "log_uniform" or p.log]
        plots.search_parameters(
            {n: [r.values[n] for r in done] for n in names}, [r.score for r in done],
            os.path.join(output_dir, "parameters.png"), objective=objective,
            direction=direction, log_parameters=log_parameters)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "/")


def _check_bounds(name, low, high):
    if not (_checks.is_real(low) and _checks.is_real(high) and low < high):
        raise ValueError(f"Invalid value for `low`/`high`: {name} needs finite "
                         f"low < high, received low={low!r}, high={high!r}")
    return float(low), float(high)
