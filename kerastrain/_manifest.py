"""The snapshot manifest (private): one schema, one reader, one writer.

`kerastrain.callbacks.SnapshotEnsemble` writes `DIRECTORY/manifest.json` and
`kerastrain.ensemble.Ensemble.from_directory` reads it:

    {"version": 1,
     "snapshots": [{"index": 1, "file": "snapshot_01.keras", "epoch": 0,
                    "step": 3, "learning_rate": 0.0012, "metrics": {...}}, ...]}

`index` is the 1-based cycle, `epoch` the 0-based epoch, `step` the last
optimizer step before the save; `learning_rate` and `metrics` are a record.
Snapshots are listed in cycle order. A manifest without `version` is a
version 1 one written before the field existed; a later version is refused
rather than misread.
"""

import os

from kerastrain import _io
from kerastrain._checks import is_int

NAME = "manifest.json"
VERSION = 1
_REQUIRED = {"index": 1, "epoch": 0, "step": 0}  # integer fields and their minimum


def path(directory):
    return os.path.join(os.fspath(directory), NAME)


def read(directory):
    """The snapshot entries of `directory`'s manifest, in order; `None` without one.

    Raises:
        ValueError: for a manifest that does not follow the schema, or one of
            a later version.
    """
    manifest = path(directory)
    if not _io.exists(manifest):
        return None
    try:
        payload = _io.read_json(manifest)
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("snapshots"), list):
        raise ValueError(f"Invalid manifest {manifest!r}: expected JSON of the form "
                         '{"version": 1, "snapshots": [{"index": 1, "file": '
                         '"snapshot_01.keras", "epoch": 0, "step": 3, ...}, ...]}.')
    version = payload.get("version", 1)
    if version != VERSION:
        raise ValueError(f"Invalid manifest {manifest!r}: version {version!r} is not one "
                         f"this kerastrain reads (version {VERSION}); it was written by "
                         "a newer kerastrain, so upgrade kerastrain to read it.")
    entries = payload["snapshots"]
    for entry in entries:
        if not _valid(entry):
            raise ValueError(
                f"Invalid manifest {manifest!r}: every snapshot needs a `file` name and "
                f"integer `index` (>= 1), `epoch` and `step` (>= 0), received {entry!r}.")
    return entries


def write(directory, entries):
    """Writes `entries` as `directory`'s manifest, atomically."""
    _io.write_json(path(directory), {"version": VERSION, "snapshots": list(entries)})


def _valid(entry):
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return False
    if not entry["file"] or os.path.basename(entry["file"]) != entry["file"]:
        return False
    return all(is_int(entry.get(key)) and entry[key] >= low for key, low in _REQUIRED.items())
