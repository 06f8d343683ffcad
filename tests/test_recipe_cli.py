"""The recipes on the command line: fast --help, quiet start-up, one flag list."""

import os
import re
import subprocess
import sys

import pytest

import kerastrain as kt
from recipes import flags as recipe_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("train", "finetune", "demo", "sanity", "random_search", "compare_optimizers",
           "check_data")
# TensorFlow's C++ log lines (absl format: I0000 00:00:... file.cc:31] ...).
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:", re.MULTILINE)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, **extra}


def test_recipes_define_their_flags_without_importing_tensorflow():
    """--help answers before any heavy import: importing every recipe module
    (which defines its flags) loads neither TensorFlow nor Keras."""
    code = ("import sys\n"
            + "".join(f"import recipes.{name}\n" for name in RECIPES)
            + "heavy = sorted(m for m in ('tensorflow', 'keras', 'kerastrain') "
              "if m in sys.modules)\n"
              "print(heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("recipe", ["train", "finetune"])
def test_help_lists_the_flags(recipe):
    result = subprocess.run([sys.executable, "-m", f"recipes.{recipe}", "--helpshort"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=_env())
    # (absl exits 1 after printing the help.)
    assert "--export: <best|final|ema|swa|ensemble>" in result.stdout
    assert "--data" in result.stdout and "--strategy" in result.stdout
    assert not TF_LOG_LINE.search(result.stderr)


def test_tensorflow_start_up_lines_are_quiet(tmp_path):
    """A recipe prints its own output, not TensorFlow's C++ start-up log (CUDA
    probing, CPU features), unless --verbosity is given."""
    result = subprocess.run(
        [sys.executable, "-m", "recipes.compare_optimizers", "--problems=saddle",
         "--optimizers=adam", "--steps=20", f"--output_dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr
    assert "| adam |" in result.stdout
    assert not TF_LOG_LINE.search(result.stderr), result.stderr[-2000:]


def test_flag_choices_match_the_library():
    assert recipe_flags.STRATEGIES == kt.distribute.STRATEGIES
    assert recipe_flags.LR_SCALING == kt.distribute.LR_SCALING
    assert set(recipe_flags.AUGMENT_POLICIES) == set(kt.augment.POLICIES)
    schedules = {"step", "exponential", "inverse_time", "cosine", "cyclical",
                 "warm_restarts", "one_cycle", "constant"}
    assert set(recipe_flags.SCHEDULES) == schedules
    for name in recipe_flags.SCHEDULES:  # every listed schedule builds
        kt.schedules.get(name, **_schedule_arguments(name))


def _schedule_arguments(name):
    return {"constant": dict(learning_rate=0.1),
            "step": dict(initial_learning_rate=0.1, boundaries=[10]),
            "exponential": dict(initial_learning_rate=0.1, k=0.01),
            "inverse_time": dict(initial_learning_rate=0.1, k=0.01),
            "cosine": dict(initial_learning_rate=0.1, decay_steps=10),
            "cyclical": dict(base_lr=0.01, max_lr=0.1, step_size=5),
            "warm_restarts": dict(initial_learning_rate=0.1, first_cycle_steps=5),
            "one_cycle": dict(max_lr=0.1, total_steps=10)}[name]


def test_flag_groups_register_without_frame_inspection():
    """A module names itself: its key flags are the groups it asked for."""
    recipe_flags.define("tests.some_recipe", "data")
    names = {f.name for f in recipe_flags.FLAGS.get_key_flags_for_module("tests.some_recipe")}
    assert {"data", "classes", "batch_size", "seed"} <= names
    assert "learning_rate" not in names
    with pytest.raises(ValueError, match="Unknown flag group 'optimiser'"):
        recipe_flags.define("tests.some_recipe", "optimiser")


def test_ctrl_c_exits_with_what_to_do_not_a_traceback(capsys):
    def interrupted(config):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        recipe_flags.run_or_explain(interrupted, {})
    assert exit_info.value.code == 130
    assert "Run the same command again: recipes.train resumes" in capsys.readouterr().err
