"""Which snapshot files mtldata wrote: a ledger beside them, so a run replaces only its own.

Caffe writes `<prefix>_iter_N.caffemodel` and `.solverstate` over whatever holds those names.
mtldata records every snapshot file it writes (name, size, sha256) in LEDGER_NAME in the same
folder, durably, and refuses to write over a file of such a name that the ledger does not account
for: it is someone else's (another tool's run, a file the user put there).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mtldata.durable import write_bytes_atomic, write_json_atomic
from mtldata.errors import DatasetStateError, shorten

LEDGER_NAME = ".mtldata-snapshots.json"
LEDGER_MAX_BYTES = 16 << 20  # a real ledger holds two small entries per snapshot
_CHUNK = 1 << 20


def _digest(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _valid_entry(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("size"), int)
        and isinstance(value.get("sha256"), str)
    )


class SnapshotLedger:
    """The snapshot files mtldata wrote in one folder: name -> the (size, sha256) it may hold.

    A name maps to a list: while a file is being replaced both its old and its new contents are
    accounted for, so a crash between the ledger and the rename leaves either one recognised.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LEDGER_NAME
        self.entries = self._read()

    def _read(self) -> dict[str, list[dict[str, Any]]]:
        # A missing, damaged or foreign ledger accounts for nothing: every existing name is refused.
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(LEDGER_MAX_BYTES + 1)
            doc = json.loads(raw.decode("utf-8")) if len(raw) <= LEDGER_MAX_BYTES else None
        except (OSError, ValueError):
            return {}
        files = doc.get("files") if isinstance(doc, dict) else None
        if not isinstance(files, dict):
            return {}
        return {
            name: [v for v in versions if _valid_entry(v)]
            for name, versions in files.items()
            if isinstance(name, str) and isinstance(versions, list)
        }

    def owns(self, path: Path) -> bool:
        """Whether `path` (an existing file in the folder) holds contents this ledger recorded."""
        versions = self.entries.get(path.name)
        if not versions or path.is_symlink() or not path.is_file():
            return False
        size = path.stat().st_size
        candidates = {v["sha256"] for v in versions if v["size"] == size}
        return bool(candidates) and _file_digest(path) in candidates

    def check_writable(self, paths: Iterable[Path]) -> None:
        """Refuse, naming the first, a path that exists and was not written by mtldata."""
        for path in paths:
            if (path.exists() or path.is_symlink()) and not self.owns(path):
                raise DatasetStateError(
                    f"{shorten(str(path))}: exists and was not written by mtldata (not in "
                    f"{LEDGER_NAME}); it is left untouched: move it away, or choose another "
                    f"--workdir or snapshot_prefix"
                )

    def _save(self) -> None:
        write_json_atomic(self.path, {"files": self.entries})

    def write(self, path: Path, data: bytes) -> Path:
        """Write `data` to `path` (a file in the folder) atomically, recorded in the ledger first."""
        if path.parent.resolve() != self.folder.resolve():
            raise ValueError(f"{path} is not in the ledger's folder {self.folder}")
        self.check_writable([path])
        entry = _digest(data)
        self.entries[path.name] = [*self.entries.get(path.name, []), entry]
        self._save()
        write_bytes_atomic(path, data)
        self.entries[path.name] = [entry]
        self._save()
        return path
