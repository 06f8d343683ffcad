"""kerastrain.data.check_folder and recipes.check_data on real, planted files."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from absl.testing import flagsaver
from PIL import Image

import kerastrain
from kerastrain import _io
from kerastrain.data import FolderReport, check_folder
from recipes import check_data
from recipes import flags as recipe_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = pathlib.Path(kerastrain.__file__).parent / "datasets" / "cifar10_mini"


def _real_jpegs(class_name, count):
    return sorted((EMBEDDED / "train" / class_name).glob("*.jpg"))[:count]


def _clean_folder(root):
    """root/{train,test}/{cat,dog}/*.jpg: 3 real JPEGs per folder."""
    for split, offset in (("train", 0), ("test", 3)):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for source in _real_jpegs(name, 6)[offset:offset + 3]:
                shutil.copy(source, folder / source.name)
    return root


@pytest.fixture
def planted(tmp_path):
    """A clean folder plus one file of each defect; returns (root, defects)."""
    root = _clean_folder(tmp_path / "images")
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    source = _real_jpegs("cat", 1)[0]
    data = source.read_bytes()
    defects = {"truncated": cat / "truncated.jpg", "not_image": dog / "page.jpg",
               "grayscale": cat / "gray.png", "cmyk": dog / "print.jpeg",
               "tiny": cat / "icon.JPG", "copy": dog / "copy.jpg"}
    defects["truncated"].write_bytes(data[:len(data) // 2])
    defects["not_image"].write_bytes(b"<html><body>404 Not Found</body></html>")
    with Image.open(_real_jpegs("dog", 8)[7]) as image:
        image.convert("L").save(defects["grayscale"])
        image.convert("CMYK").save(defects["cmyk"])
        image.resize((8, 8)).save(defects["tiny"], format="JPEG")
    shutil.copy(cat / source.name, defects["copy"])
    defects["original"] = cat / source.name
    # Not scanned: hidden names and other extensions.
    (cat / ".broken.jpg").write_bytes(b"junk")
    (root / ".cache").mkdir()
    (root / ".cache" / "junk.png").write_bytes(b"junk")
    (dog / "notes.txt").write_text("not an image")
    return root, {key: str(path) for key, path in defects.items()}


def test_finds_each_planted_defect_and_nothing_else(planted):
    root, defects = planted
    report = check_folder(root, verbose=0)
    assert isinstance(report, FolderReport)
    assert report.root == str(root)
    assert report.num_files == 12 + 6
    assert [path for path, _ in report.unreadable] == sorted(
        [defects["truncated"], defects["not_image"]])
    reasons = dict(report.unreadable)
    assert "truncated" in reasons[defects["truncated"]].lower()
    assert "cannot identify image file" in reasons[defects["not_image"]]
    assert "BytesIO" not in reasons[defects["not_image"]]
    assert report.grayscale == (defects["grayscale"],)
    assert report.cmyk == (defects["cmyk"],)
    assert report.tiny == ((defects["tiny"], (8, 8)),)
    assert report.duplicates == (tuple(sorted([defects["original"], defects["copy"]])),)
    assert report.problems == 6 and not report.ok
    assert dict(report.class_counts) == {
        os.path.join("train", "cat"): 6, os.path.join("train", "dog"): 6,
        os.path.join("test", "cat"): 3, os.path.join("test", "dog"): 3}


def test_min_size_and_workers(planted):
    root, defects = planted
    report = check_folder(root, min_size=8, workers=1, verbose=0)
    assert report.tiny == ()
    large = check_folder(root, min_size=33, workers=4, verbose=0)
    # Every decoded image is 32x32 but the 8x8 one.
    assert len(large.tiny) == 18 - 2
    assert large.unreadable == report.unreadable
    assert large.duplicates == report.duplicates


def test_a_clean_folder_is_ok(tmp_path):
    root = _clean_folder(tmp_path)
    report = check_folder(str(root), verbose=0)
    assert report.ok and report.problems == 0
    assert report.num_files == 12
    assert (report.unreadable, report.grayscale, report.cmyk, report.tiny,
            report.duplicates) == ((), (), (), (), ())
    assert "no problems found" in str(report)


def test_summary_lists_the_files_and_what_to_do(planted):
    root, defects = planted
    text = check_folder(root, verbose=0).summary()
    assert text.startswith(f"Checked 18 image files in {root}: 6 problems found.")
    for line in ("\nunreadable: 2 files. Pillow cannot decode them",
                 "\ngrayscale: 1 file. kerastrain.data.load converts them to RGB",
                 "\ncmyk: 1 file. ", "\ntiny: 1 file. A side is under 32 px",
                 "\nduplicates: 1 group. ", 'on_bad_image="skip"', "test accuracy",
                 f"\n  - {defects['tiny']}: 8x8\n",
                 f"\n  - {defects['original']} = {defects['copy']}\n"):
        assert line in text
    for path in defects.values():
        assert path in text


def test_progress_lines_in_a_log(planted, capsys):
    root, _ = planted
    check_folder(root)  # stdout is captured: plain lines, not a bar
    assert "Checking images: 18/18 files" in capsys.readouterr().out


def test_missing_and_empty_folders_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass the path"):
        check_folder(tmp_path / "nowhere")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"No image files \(\.jpg, .*check the path"):
        check_folder(tmp_path / "empty")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_folder(tmp_path / "empty" / "cat" / "notes.txt")


@pytest.mark.parametrize("argument, value", [("min_size", 0), ("min_size", 3.5),
                                             ("workers", 0), ("verbose", 2),
                                             ("verbose", True)])
def test_invalid_arguments(tmp_path, argument, value):
    with pytest.raises(ValueError, match=f"Invalid value for `{argument}`: expected"):
        check_folder(tmp_path, **{argument: value})


def test_the_recipe_returns_the_report_and_writes_it(planted, tmp_path):
    root, _ = planted
    output_dir = tmp_path / "run"
    report = check_data.run({"data": f"folder:{root}", "output_dir": str(output_dir)})
    assert report == check_folder(root, verbose=0)
    saved = _io.read_json(output_dir / "check_data.json")
    assert saved == _io.jsonable(report.to_dict())
    assert saved["ok"] is False and saved["problems"] == 6
    assert report.summary() in (output_dir / "check_data.md").read_text()


def test_the_recipe_writes_nothing_without_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = _clean_folder(tmp_path / "images")
    assert check_data.run({"data": f"folder:{root}", "min_size": 16}).ok
    assert sorted(os.listdir(tmp_path)) == ["images"]


def test_the_recipe_rejects_other_specs():
    with pytest.raises(ValueError, match="Invalid value for --data: expected "
                       "'folder:PATH'.*received data='tfds:mnist'"):
        check_data.run({"data": "tfds:mnist"})
    with pytest.raises(ValueError, match="Unknown settings"):
        check_data.run({"data": "cifar10_mini", "batch_size": 8})


def test_the_recipe_takes_only_its_flags_whatever_the_import_order():
    """Imported before the recipes that define the shared data flags, it
    still has --data (theirs) and not the rest of their group."""
    code = ("import recipes.check_data, recipes.sanity, recipes.train, sys\n"
            "from recipes import flags\n"
            "print(sorted(flags.default_config('recipes.check_data')))\n"
            "print(sorted(m for m in ('tensorflow', 'kerastrain') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == [
        "['data', 'min_size', 'output_dir', 'workers']", "[]"]
    assert set(recipe_flags.default_config("recipes.check_data")) == {
        "data", "min_size", "workers", "output_dir"}


def test_the_command_line_exits_1_on_problems_0_when_clean(planted, tmp_path, capsys):
    root, defects = planted
    with flagsaver.flagsaver(data=f"folder:{root}"):
        with pytest.raises(SystemExit) as exit_info:
            check_data.main(["check_data"])
    # A message for SystemExit is printed to stderr with exit status 1.
    assert "6 problems found" in exit_info.value.code
    assert defects["truncated"] in capsys.readouterr().out
    clean = _clean_folder(tmp_path / "clean")
    with flagsaver.flagsaver(data=f"folder:{clean}"):
        check_data.main(["check_data"])
    assert "no problems found" in capsys.readouterr().out


def test_the_report_as_json(planted):
    root, _ = planted
    report = check_folder(root, verbose=0)
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["duplicates"] == [list(group) for group in report.duplicates]
    assert payload["tiny"] == [[path, [8, 8]] for path, _ in report.tiny]


def test_many_folders_are_summed_up():
    report = FolderReport(root="r", num_files=3 * 40, class_counts=tuple(
        (f"class{i:02d}", 1 if i == 7 else 3) for i in range(40)))
    assert "Images per folder: 40 folders, from 1 (class07) to 3 (class00)" in str(report)
