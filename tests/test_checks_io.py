"""The shared argument checks and atomic file writes."""

import json
import math
import os

import numpy as np
import pytest

from kerastrain import _checks, _io


@pytest.mark.parametrize("value", [float("inf"), -math.inf, float("nan"), True, "1", None])
def test_real_rejects_non_finite_booleans_and_strings(value):
    with pytest.raises(ValueError, match="Invalid value for `lr`"):
        _checks.check_real("lr", value, low=0, low_open=True)


def test_real_bounds_open_and_closed():
    assert _checks.check_real("x", 0, low=0) == 0.0
    with pytest.raises(ValueError, match=r"expected 0 < x"):
        _checks.check_real("x", 0, low=0, low_open=True)
    with pytest.raises(ValueError, match=r"x < 1"):
        _checks.check_real("x", 1, high=1, high_open=True)
    assert _checks.check_real("x", np.float32(0.5), 0, 1) == 0.5
    assert _checks.check_real("x", float("inf"), finite=False) == float("inf")


def test_int_rejects_booleans_and_floats():
    assert _checks.check_int("n", np.int64(3), minimum=1) == 3
    for value in (True, 2.0, -1):
        with pytest.raises(ValueError, match="expected an int >= 0"):
            _checks.check_int("n", value, minimum=0)
    with pytest.raises(ValueError, match=r"an int in \[1, 3\]"):
        _checks.check_int("n", 4, 1, 3)


def test_choice_and_seed():
    assert _checks.check_choice("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"one of \['a', 'b'\]"):
        _checks.check_choice("mode", "c", ("a", "b"))
    assert _checks.check_seed("seed", None) is None
    with pytest.raises(ValueError):
        _checks.check_seed("seed", -1)


def test_atomic_write_replaces_whole_file_or_leaves_the_old_one(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    _io.write_json(path, {"b": np.float32(0.5), "a": np.int64(2)})
    assert json.loads(path.read_text()) == {"a": 2, "b": 0.5}

    def broken(temporary):
        with open(temporary, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _io.atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"a": 2, "b": 0.5}
    assert sorted(os.listdir(path.parent)) == ["metrics.json"]


def test_atomic_write_of_a_directory_leaves_no_temporary(tmp_path):
    def broken(temporary):
        os.makedirs(os.path.join(temporary, "inner"))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        _io.atomic_write(tmp_path / "model.keras", broken)
    assert os.listdir(tmp_path) == []


def test_remove_and_read_json(tmp_path):
    _io.write_json(tmp_path / "a" / "x.json", [1, 2])
    assert _io.read_json(tmp_path / "a" / "x.json") == [1, 2]
    _io.remove(tmp_path / "a")
    _io.remove(tmp_path / "missing")
    assert not _io.exists(tmp_path / "a")


def test_is_number_keeps_nan_and_inf_but_not_booleans():
    assert _checks.is_number(float("nan")) and _checks.is_number(np.float32("inf"))
    assert not _checks.is_number(True) and not _checks.is_number("1")
    assert not _checks.is_real(float("nan"), finite=False)
    assert _checks.is_real(float("inf"), finite=False)


def test_messages_say_finite_and_show_flags_as_typed():
    with pytest.raises(ValueError, match=r"^Invalid value for `lr`: expected 0 < lr < inf, "
                                         r"received lr=inf$"):
        _checks.check_real("lr", float("inf"), low=0, low_open=True)
    with pytest.raises(ValueError, match=r"expected -inf < x <= 1, received x=nan"):
        _checks.check_real("x", float("nan"), high=1)
    with pytest.raises(ValueError, match=r"^Invalid value for --steps: expected an int >= 1"):
        _checks.check_int("--steps", 0, minimum=1)


def test_jsonable_is_what_read_json_returns(tmp_path):
    payload = {"space": {"low": np.float32(0.5), "values": ("a", "b")}, "n": np.int64(3)}
    _io.write_json(tmp_path / "s.json", payload)
    assert _io.jsonable(payload) == _io.read_json(tmp_path / "s.json")

