"""The dataset manifest: a versioned description written last, and only when a dataset is complete."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtldata.durable import write_json_atomic
from mtldata.storage import record_digests
from mtldata.storage.backends import MANIFEST_NAME

FORMAT_NAME = "mtldata"
FORMAT_VERSION = 1


@dataclass
class LabelStats:
    """Running min / max / mean of each label column, mergeable and JSON-serialisable."""

    count: int = 0
    sums: list[float] = field(default_factory=list)
    mins: list[float] = field(default_factory=list)
    maxs: list[float] = field(default_factory=list)

    def add(self, labels: Any) -> None:
        # a numpy row hands its values over in one call (per-element float() costs 20 us a sample)
        values = labels.tolist() if hasattr(labels, "tolist") else [float(v) for v in labels]
        if not self.sums:
            self.sums = [0.0] * len(values)
            self.mins = list(values)
            self.maxs = list(values)
        for j, v in enumerate(values):
            self.sums[j] += v
            self.mins[j] = min(self.mins[j], v)
            self.maxs[j] = max(self.maxs[j], v)
        self.count += 1

    def summary(self, names: list[str]) -> list[dict[str, Any]]:
        return (
            [
                {
                    "name": names[j],
                    "min": self.mins[j],
                    "max": self.maxs[j],
                    "mean": self.sums[j] / self.count,
                }
                for j in range(len(self.sums))
            ]
            if self.count
            else []
        )


@dataclass
class Manifest:
    """Everything a reader (or a person) needs to know about a converted dataset."""

    backend: str
    count: int
    num_labels: int
    label_names: list[str]
    image: dict[str, Any]
    files: dict[str, Any]
    source: dict[str, Any]
    options: dict[str, Any]
    errors: dict[str, Any]
    label_stats: list[dict[str, Any]]
    created: str
    mtldata_version: str
    # Relative path of each stored file or LMDB -> its checksum, read back after writing; `mtldata verify`
    # recomputes them.
    checksums: dict[str, Any] = field(default_factory=dict)
    # A part of a sharded conversion: {"index", "count", "positions": [start, stop]}; None otherwise.
    shard: dict[str, Any] | None = None
    key_format: str = "%08d_<path>"
    complete: bool = True
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checksum(path: Path) -> dict[str, Any] | None:
    """What the manifest records to check `path` by: an LMDB's record digest, a file's sha256, or None."""
    if (path / "data.mdb").is_file():
        from mtldata.storage.backends.lmdb import database_digest

        return database_digest(path)
    if path.is_file():
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                sha.update(block)
        found: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}
        digests = path.with_name(path.name + record_digests.SUFFIX)
        if digests.is_file():  # the file's samples have digests of their own (HDF5 shards)
            found.update(record_digest=record_digests.ALGORITHM, record_digests=digests.name)
        return found
    return None


def dataset_checksums(
    directory: Path, files: dict[str, Any], known: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Checksums of what a writer's `files` names (paths relative to `directory`, or lists of them), by path.

    `known` holds checksums a writer computed while writing; those paths are not read again.
    """
    out = dict(known or {})
    for value in files.values():
        for rel in value if isinstance(value, list) else [value]:
            if isinstance(rel, str) and rel not in out and (found := checksum(directory / rel)) is not None:
                out[rel] = found
    return out


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST_NAME
    write_json_atomic(path, manifest.to_dict())
    return path
