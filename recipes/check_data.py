"""Check an image folder before training: list every problem file at once.

Runs `kerastrain.data.check_folder` on the folder of `--data`: every image
file is read and fully decoded once, in parallel, and the report lists the
files that cannot be decoded, grayscale and CMYK images, images with a side
under `--min_size` pixels, and files with identical bytes (which leak
between training and test data). It prints the report and exits with status
0 when the folder is clean, 1 when it found problems, so that a script can
stop before training. With `--output_dir`, it also writes the report as
`check_data.json` and `check_data.md` there (nothing is written without it).

    python -m recipes.check_data --data=folder:/path/to/images
    python -m recipes.check_data --data=folder:/path/to/images --min_size=64 \\
        --output_dir=runs/check_data
"""

import os
import pathlib

from absl import app
from absl import flags

from recipes import flags as recipe_flags

# Of the shared data flags only --data concerns a scan (the others shape
# batches and splits), so the group is defined as recipes.flags' own and
# --data alone is declared a flag of this recipe.
recipe_flags.define(recipe_flags.__name__, "data")
flags.declare_key_flag("data")
recipe_flags.define(__name__, "output")
flags.DEFINE_integer("min_size", 32, "Images with a width or height under this "
                     "many pixels are reported as tiny.")
flags.DEFINE_integer("workers", None, "Threads that read and decode the files "
                     "(default: one per CPU core).")


def run(config):
    """Checks the folder of `config["data"]`; returns the `FolderReport`.

    Args:
        config: dict of flag values of this recipe (see `--help`); missing
            ones take their defaults. The report files are written only when
            `output_dir` is given.

    Raises:
        ValueError: for a data spec other than `folder:PATH` or
            `cifar10_mini`, or a folder without images.
        FileNotFoundError: for a folder that does not exist.
    """
    # Imported once the flags are parsed, so that --help answers at once.
    from kerastrain import _io
    from kerastrain.data import _scan

    output_dir = config.get("output_dir")  # complete_config fills in a default
    config = recipe_flags.complete_config(config, __name__)
    report = _scan.check_folder(_folder(config["data"]), min_size=config["min_size"],
                                workers=config["workers"])
    if output_dir:
        _io.makedirs(output_dir)
        _io.write_json(os.path.join(output_dir, "check_data.json"), report.to_dict())
        _io.write_text(os.path.join(output_dir, "check_data.md"),
                       f"# Data check\n\n```\n{report.summary()}```\n")
    return report


def _folder(spec):
    """The folder of a data spec: `folder:PATH`, or the embedded set."""
    import kerastrain

    kind, _, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if spec == "cifar10_mini":
        return str(pathlib.Path(kerastrain.__file__).parent / "datasets" / "cifar10_mini")
    if kind == "folder" and rest:
        return os.path.expanduser(rest)
    raise ValueError(f"Invalid value for --data: expected 'folder:PATH' (or "
                     f"'cifar10_mini'), received data={spec!r}; this recipe checks "
                     "image folders, so point it at the folder of the images")


def _print_report(report):
    print(report.summary(), end="")
    if not report.ok:
        raise SystemExit(f"{report.problems} problem{'s' if report.problems > 1 else ''} "
                         f"found in {report.root}: fix or remove the files listed above")


main = recipe_flags.main(run, __name__, report=_print_report)


if __name__ == "__main__":
    app.run(main)
