"""`import kerastrain` has no side effects on the user's session: it leaves
matplotlib's backend alone and imports no matplotlib module and not
KerasTuner, which are loaded only where a picture is drawn or a search is
made. (Keras itself imports `matplotlib.pyplot`, for
`keras.visualization`; that import selects no backend. So the modules are
compared with those `import keras` loads.)

Each case runs in a fresh interpreter: what is imported is fixed per process.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    env.pop("MPLBACKEND", None)  # the code chooses the backend, if any
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.timeout(300)
def test_import_keeps_the_users_backend_and_plots_still_write_pngs(tmp_path):
    # A backend the user chose (svg, which any machine can run); before the
    # fix, importing kerastrain switched it to Agg.
    out = _run(f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        import kerastrain as kt
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert "keras_tuner" not in sys.modules
        path = kt.plots.comparison_bars({{"a": 0.5, "b": 0.75}}, {str(tmp_path / "bars.png")!r})
        kt.plots.training_curves({{"loss": [2.0, 1.0]}}, {str(tmp_path / "curves.png")!r})
        # Drawing a picture changes nothing either, and leaves no pyplot figure.
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
        print("wrote", path)
    """)
    assert "wrote" in out
    for name, size in (("bars.png", (440, 320)), ("curves.png", (400, 320))):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
        with Image.open(tmp_path / name) as image:
            assert image.size == size, name


@pytest.mark.timeout(300)
def test_import_loads_no_matplotlib_or_keras_tuner_until_used():
    out = _run("""
        import sys
        import keras  # noqa: F401
        before = set(sys.modules)
        import kerastrain as kt
        loaded = sorted(name for name in set(sys.modules) - before
                        if name.split(".")[0] in ("matplotlib", "keras_tuner"))
        print("after import:", loaded)
        # The modules are still attributes of the package.
        space = {"learning_rate": kt.search.log_uniform(1e-4, 1e-1)}
        value = kt.search.sample(space, seed=0)["learning_rate"]
        assert 1e-4 <= value < 1e-1, value
        assert "keras_tuner" in sys.modules
        assert callable(kt.plots.comparison_bars) and "search" in dir(kt)
        from kerastrain import search  # noqa: F401
        import kerastrain.search  # noqa: F401
        print("ok")
    """)
    assert "after import: []" in out, out
    assert out.strip().endswith("ok")
