"""A fast parallel scan of an image folder that lists every problem file.

`kerastrain.data.load` stops at the first file it cannot decode and names
only that one; a folder scraped from the web or exported from a labelling
tool often has dozens. `check_folder` reads every image file under a folder
once, in parallel threads (Pillow releases the GIL while it decodes, hashlib
while it hashes), and reports all of them at once:

- `unreadable`: files Pillow cannot open or fully decode (truncated
  downloads, HTML error pages saved as `.jpg`), with the error;
- `grayscale` and `cmyk`: images in a mode other than color RGB(A);
- `tiny`: images narrower or shorter than `min_size` pixels;
- `duplicates`: groups of files with identical bytes, which leak the same
  example into training and test when they sit in both splits.

    >>> report = kt.data.check_folder("/data/flowers")
    >>> print(report)
    >>> report.ok
    False
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import os
import typing

from PIL import Image

from kerastrain import _checks
from kerastrain import _io
from kerastrain.data._sources import IMAGE_EXTENSIONS

# Single-channel modes (with alpha, bit depths and byte orders); "P" images
# with an all-gray palette count too (see `_is_grayscale`).
_GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "F")
_CHUNK_FILES = 64  # most files a worker inspects per task
_LISTED_FOLDERS = 30  # more folders are summed up in the report


class _File(typing.NamedTuple):
    """What one worker finds out about one file."""

    path: str
    digest: bytes | None  # None when the file could not be read at all
    error: str | None
    mode: str | None
    shape: tuple | None  # (height, width)
    grayscale: bool


@dataclasses.dataclass(frozen=True)
class FolderReport:
    """What `check_folder` found; `str(report)` is `report.summary()`.

    Attributes:
        root: the folder scanned, as given.
        num_files: image files scanned.
        unreadable: `(path, reason)` of the files Pillow cannot decode.
        grayscale: paths of single-channel images (and gray palettes).
        cmyk: paths of CMYK images.
        tiny: `(path, (height, width))` of images with a side < `min_size`.
        duplicates: groups (of >= 2 paths) of files with identical bytes.
        class_counts: `(folder, count)` of the image files of every folder
            that holds some, relative to `root` (`"train/cat"`, or `"cat"`).
        min_size: the `min_size` the scan used.
    """

    root: str
    num_files: int
    unreadable: tuple = ()
    grayscale: tuple = ()
    cmyk: tuple = ()
    tiny: tuple = ()
    duplicates: tuple = ()
    class_counts: tuple = ()
    min_size: int = 32

    @property
    def problems(self):
        """Findings to act on: each file listed under a kind of problem, and
        of each duplicate group every copy but one."""
        return (len(self.unreadable) + len(self.grayscale) + len(self.cmyk)
                + len(self.tiny) + sum(len(group) - 1 for group in self.duplicates))

    @property
    def ok(self):
        """True when the scan found no problem."""
        return self.problems == 0

    def to_dict(self):
        """The report as a JSON-able dict (with `ok` and `problems`)."""
        return {**dataclasses.asdict(self), "ok": self.ok, "problems": self.problems}

    def summary(self):
        """A human-readable multi-line report: a count per kind of problem,
        the files, and what to do about them."""
        found = _plural(self.problems, "problem") if self.problems else "no problems"
        lines = [f"Checked {_plural(self.num_files, 'image file')} in {self.root}: "
                 f"{found} found."]
        if self.class_counts:
            lines += _counts(self.class_counts)
        converted = ("kerastrain.data.load converts them to RGB, but they are "
                     "often a sign of a wrong file")
        for title, advice, entries in (
                ("unreadable", "Pillow cannot decode them: replace or delete them, "
                 "or load with on_bad_image=\"skip\" to skip them.",
                 [f"{path}: {reason}" for path, reason in self.unreadable]),
                ("grayscale", f"{converted}.", self.grayscale),
                ("cmyk", f"{converted} (CMYK is for print).", self.cmyk),
                ("tiny", f"A side is under {self.min_size} px (height x width "
                 "shown): check that they are real images, not icons or "
                 "thumbnails.", [f"{path}: {h}x{w}" for path, (h, w) in self.tiny]),
                ("duplicates", "Groups of files with identical bytes: keep one of "
                 "each, since a copy in the training data of a test image "
                 "inflates test accuracy.",
                 [" = ".join(group) for group in self.duplicates])):
            if entries:
                what = "group" if title == "duplicates" else "file"
                lines.append(f"{title}: {_plural(len(entries), what)}. {advice}")
                lines += [f"  - {entry}" for entry in entries]
        return "\n".join(lines) + "\n"

    def __str__(self):
        return self.summary()


def _plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _counts(class_counts, width=88):
    """Lines of images per folder: each folder, or the extremes of many."""
    if len(class_counts) > _LISTED_FOLDERS:
        fewest = min(class_counts, key=lambda item: item[1])
        most = max(class_counts, key=lambda item: item[1])
        return [f"Images per folder: {len(class_counts)} folders, from {fewest[1]} "
                f"({fewest[0]}) to {most[1]} ({most[0]})"]
    lines = ["Images per folder:"]
    for folder, count in class_counts:
        entry = f" {folder} {count},"
        if len(lines[-1]) + len(entry) > width:
            lines.append(" ")
        lines[-1] += entry
    lines[-1] = lines[-1][:-1]
    return lines


def check_folder(path, *, min_size=32, workers=None, verbose=1):
    """Scans every image file under `path` and lists the problem files.

    Every file with an image extension (`.jpg .jpeg .png .bmp .gif`, any
    case) under `path` is read once, hashed (SHA-1) and fully decoded with
    Pillow, so that truncated files fail as they would in training. Hidden
    files and folders (`.name`, such as macOS's `._photo.jpg`) are skipped.
    Any layout is scanned, `PATH/<class>/*` and
    `PATH/{train,test,val}/<class>/*` alike.

    Args:
        path: the folder.
        min_size: images with a width or height below this many pixels are
            `tiny`. Defaults to 32.
        workers: threads that read and decode. Defaults to `os.cpu_count()`.
        verbose: 0 silent, 1 progress: a bar on a terminal, a line per tenth
            of the files in a log. Defaults to 1.

    Returns:
        A `FolderReport`; its paths are strings (`path` joined with the
        file's relative path), sorted.

    Raises:
        FileNotFoundError: if `path` does not exist.
        NotADirectoryError: if `path` is a file.
        ValueError: for invalid arguments, or a folder without image files.

    Example:

    >>> report = check_folder("/data/flowers", min_size=64)
    >>> if not report.ok:
    ...     print(report)  # what is wrong with which file, and what to do
    """
    root = os.fspath(path)
    min_size = _checks.check_int("min_size", min_size, minimum=1)
    if workers is not None:
        workers = _checks.check_int("workers", workers, minimum=1)
    verbose = _checks.check_int("verbose", verbose, minimum=0, maximum=1)
    paths = _image_files(root)
    files = _scan(paths, workers or os.cpu_count() or 1, verbose)
    return _report(root, files, min_size)


def _image_files(root):
    """Sorted paths of the image files under `root`, hidden names skipped."""
    if not os.path.exists(root):
        raise FileNotFoundError(f"Folder {root!r} does not exist; pass the path of "
                                "an image folder (PATH/<class>/*.jpg or "
                                "PATH/train/<class>/*.jpg)")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root!r} is a file, not a folder; pass the folder "
                                 "that holds the class folders")
    paths = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        paths += [os.path.join(directory, name) for name in names
                  if not name.startswith(".")
                  and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
    if not paths:
        raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                         f"{root!r}; expected PATH/<class>/*.jpg or "
                         "PATH/train/<class>/*.jpg, so check the path")
    return sorted(paths)


def _scan(paths, workers, verbose):
    """Inspects `paths` in `workers` threads, with a progress display."""
    bar = _io.progress(len(paths), "Checking images", verbose=verbose,
                       unit_name="file")
    # A future per file costs as much as decoding a small JPEG (a hand-off
    # between threads under the GIL), so a task is a run of up to 64 files;
    # at least 4 tasks per worker keep the load even and the bar moving.
    size = max(1, min(_CHUNK_FILES, len(paths) // (4 * workers)))
    chunks = [paths[start:start + size] for start in range(0, len(paths), size)]
    files = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for chunk in pool.map(_inspect_all, chunks):
            files += chunk
            bar.update(len(files))
    return files


def _inspect_all(paths):
    return [_inspect(path) for path in paths]


def _inspect(path):
    """Reads, hashes and decodes one file (in a worker thread)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        return _File(path, None, f"cannot read the file ({error})", None, None, False)
    digest = hashlib.sha1(data).digest()
    buffer = io.BytesIO(data)
    try:
        with Image.open(buffer) as image:
            image.load()  # Decodes it all: a truncated file fails here.
            return _File(path, digest, None, image.mode, image.size[::-1],
                         _is_grayscale(image))
    # Malformed files make Pillow's plugins raise about anything (OSError,
    # SyntaxError, struct.error, IndexError...): all mean "cannot decode".
    except Exception as error:  # noqa: BLE001
        # Pillow names the file by the repr of the buffer; the report names it.
        reason = str(error).replace(repr(buffer), "").strip() or type(error).__name__
        return _File(path, digest, reason, None, None, False)


def _is_grayscale(image):
    if image.mode in ("P", "PA"):
        palette = image.getpalette() or []
        return palette[0::3] == palette[1::3] == palette[2::3]
    return image.mode in _GRAYSCALE_MODES or image.mode.startswith("I;16")


def _report(root, files, min_size):
    by_digest = collections.defaultdict(list)
    for file in files:
        if file.digest is not None:
            by_digest[file.digest].append(file.path)
    decoded = [file for file in files if file.error is None]
    counts = collections.Counter()
    for directory, count in collections.Counter(
            os.path.dirname(file.path) for file in files).items():
        counts[os.path.relpath(directory, root)] += count
    return FolderReport(
        root=root,
        num_files=len(files),
        unreadable=tuple(sorted((f.path, f.error) for f in files if f.error is not None)),
        grayscale=tuple(sorted(f.path for f in decoded if f.grayscale)),
        cmyk=tuple(sorted(f.path for f in decoded if f.mode == "CMYK")),
        tiny=tuple(sorted((f.path, f.shape) for f in decoded if min(f.shape) < min_size)),
        duplicates=tuple(sorted(tuple(sorted(group)) for group in by_digest.values()
                                if len(group) > 1)),
        class_counts=tuple(sorted(counts.items())),
        min_size=min_size)
