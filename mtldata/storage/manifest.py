"""The dataset manifest: a versioned description written last, and only when a dataset is complete."""

from __future__ import annotations

import hashlib
import math
import mmap
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtldata.durable import write_json_atomic
from mtldata.storage import record_digests
from mtldata.storage.backends import MANIFEST_NAME

FORMAT_NAME = "mtldata"
FORMAT_VERSION = 1
MAX_DISTINCT = 64  # a label column's distinct values are kept in the manifest up to this many


@dataclass
class LabelStats:
    """Running min / max / mean and missing (NaN) count of each label column, JSON-serialisable.

    A column's min/max/mean cover its labelled values; they are None when every value is missing.
    """

    count: int = 0
    sums: list[float] = field(default_factory=list)
    mins: list[float | None] = field(default_factory=list)
    maxs: list[float | None] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    # What label checks against tasks.toml read instead of the labels (non-missing values only):
    # whether every value of a column is an integer, and its distinct values while they are few.
    integral: list[bool] | None = None
    distinct: list[list[float] | None] | None = None

    def add(self, labels: Any) -> None:
        # a numpy row hands its values over in one call (per-element float() costs 20 us a sample)
        values = labels.tolist() if hasattr(labels, "tolist") else [float(v) for v in labels]
        self._note_values(values)
        if not self.sums:
            self.sums = [0.0] * len(values)
            self.mins = [None] * len(values)
            self.maxs = [None] * len(values)
        if len(self.missing) != len(values):  # also a resume of a conversion started before this field
            self.missing = [0] * len(values)
        for j, v in enumerate(values):
            if math.isnan(v):
                self.missing[j] += 1
                continue
            self.sums[j] += v
            low, high = self.mins[j], self.maxs[j]
            self.mins[j] = v if low is None else min(low, v)
            self.maxs[j] = v if high is None else max(high, v)
        self.count += 1

    def add_rows(self, rows: np.ndarray) -> None:
        """`add` for each row of an (n, K) array, in a few array operations: the same figures as
        n calls (sums are still taken one value after another, so they round alike)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or not len(rows):
            return
        n, k = rows.shape
        if not self.sums:
            self.sums, self.mins, self.maxs = [0.0] * k, [None] * k, [None] * k
        if len(self.missing) != k:
            self.missing = [0] * k
        if (self.integral is None or self.distinct is None) and not self.count:
            self.integral, self.distinct = [True] * k, [[] for _ in range(k)]
        nan = np.isnan(rows)
        missing = nan.sum(axis=0).tolist()
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is nan, as in the loop
            # A cumulative sum down each column runs one value after another, as the loop does; a
            # missing value adds 0.0, which leaves a sum that started at 0.0 as skipping it would.
            sums = np.cumsum(np.vstack((self.sums, np.where(nan, 0.0, rows))), axis=0)[-1].tolist()
            whole = np.all(nan | (np.mod(rows, 1.0) == 0.0), axis=0).tolist()  # inf is not integral
        lows = np.where(nan, np.inf, rows).min(axis=0).tolist()
        highs = np.where(nan, -np.inf, rows).max(axis=0).tolist()
        # -0.0 beside 0.0: min()/max() keep whichever came first, so look where they are
        signed_zeros = bool(np.any((rows == 0.0) & np.signbit(rows)))
        sets = None
        if self.integral is not None and self.distinct is not None:
            sets = self.__dict__.setdefault("_sets", [None if c is None else set(c) for c in self.distinct])
        for j in range(k):
            self.missing[j] += missing[j]
            if missing[j] == n:
                continue
            self.sums[j] = sums[j]
            low, high = lows[j], highs[j]
            if signed_zeros and (low == 0.0 or high == 0.0):
                column = rows[~nan[:, j], j]
                low = float(column[np.argmax(column == low)])
                high = float(column[np.argmax(column == high)])
            self.mins[j] = low if self.mins[j] is None else min(self.mins[j], low)
            self.maxs[j] = high if self.maxs[j] is None else max(self.maxs[j], high)
            if sets is None:
                continue
            if self.integral[j] and not whole[j]:  # type: ignore[index]
                self.integral[j] = False  # type: ignore[index]
            seen = sets[j]
            if seen is not None:
                column = rows[~nan[:, j], j]
                _, first = np.unique(column, return_index=True)
                for v in column[np.sort(first)].tolist():  # in order of first appearance
                    if v not in seen:
                        seen.add(v)
                        self.distinct[j].append(v)  # type: ignore[index, union-attr]
                if len(seen) > MAX_DISTINCT:
                    self.distinct[j] = sets[j] = None  # type: ignore[index]
        self.count += n

    def _note_values(self, values: list[float]) -> None:
        if self.integral is None or self.distinct is None:
            if self.count:  # resumed from a state saved before these were kept: leave them unknown
                return
            self.integral, self.distinct = [True] * len(values), [[] for _ in values]
        # sets beside the (JSON-friendly) lists, for membership tests; not a field, so never saved
        sets = self.__dict__.setdefault("_sets", [None if c is None else set(c) for c in self.distinct])
        for j, v in enumerate(values):
            v = float(v)
            if math.isnan(v):  # a missing label
                continue
            if self.integral[j] and not v.is_integer():
                self.integral[j] = False
            seen = sets[j]
            if seen is not None and v not in seen:
                seen.add(v)
                self.distinct[j].append(v)
                if len(seen) > MAX_DISTINCT:
                    self.distinct[j] = sets[j] = None

    def summary(self, names: list[str]) -> list[dict[str, Any]]:
        missing = self.missing or [0] * len(self.sums)
        out = (
            [
                {
                    "name": names[j],
                    "min": self.mins[j],
                    "max": self.maxs[j],
                    "mean": self.sums[j] / (self.count - missing[j]) if self.count > missing[j] else None,
                    "missing": missing[j],
                }
                for j in range(len(self.sums))
            ]
            if self.count
            else []
        )
        if self.integral is not None and self.distinct is not None:
            for j, column in enumerate(out):
                seen = self.distinct[j]
                column.update(integral=self.integral[j], values=None if seen is None else sorted(seen))
        return out


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
    # With --allow-missing: {"count", "by_column", "stored_as": {column: ignore value}}; None otherwise.
    missing_labels: dict[str, Any] | None = None
    key_format: str = "%08d_<path>"
    complete: bool = True
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return plain_copy(self)


def plain_copy(value: Any) -> Any:
    """What dataclasses.asdict makes of a dataclass (dicts, lists and tuples copied, nested
    dataclasses as dicts), without its deepcopy of every number and string: a manifest with label
    statistics took milliseconds, paid at every commit of a conversion."""
    if isinstance(value, dict):
        return {key: plain_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_copy(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain_copy(item) for item in value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_copy(getattr(value, f.name)) for f in fields(value)}
    return value


FILE_DIGESTS = ("xxh3_128", "sha256")  # a file checksum's digest key; sha256 in datasets before XXH3
FILE_DIGEST = FILE_DIGESTS[0]


def file_digest(path: Path, algorithm: str = FILE_DIGEST, *, mapped: bool = False) -> str:
    """The hex digest of a whole file.

    XXH3-128 hashes a float32 HDF5 shard at memory speed; sha256 took longer than decoding its
    images (issue 15). Like the record digests, it guards against damage, not against forgery.
    `mapped`: hash the file where it lies in the page cache, no copy (only for a file this process
    just wrote: one cut short by someone else while mapped would be a SIGBUS, not an error).
    """
    if algorithm == "xxh3_128":
        import xxhash

        state: Any = xxhash.xxh3_128()
    elif algorithm == "sha256":
        state = hashlib.sha256()
    else:
        raise ValueError(f"unknown file digest {algorithm!r} (known: {', '.join(FILE_DIGESTS)})")
    with open(path, "rb", buffering=0) as fh:
        if mapped:
            if size := os.fstat(fh.fileno()).st_size:
                with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as view:
                    state.update(view)
            return state.hexdigest()
        buffer = bytearray(4 << 20)
        view = memoryview(buffer)
        while n := fh.readinto(buffer):
            state.update(view[:n])
    return state.hexdigest()


def _xxh3() -> Any:
    import xxhash

    return xxhash.xxh3_128()


def region_digests(path: Path, offset: int, length: int, data_digest: str | None = None) -> dict[str, Any]:
    """A file's checksum in two parts: XXH3-128 of the byte range [offset, offset + length) (an HDF5
    shard's pixel data, which its writer hashes as it writes them: reading them back cost more than
    hashing) and of every byte outside it, in file order. `data_digest`: the first, if known."""
    data, rest = _xxh3(), _xxh3()
    end = offset + length
    buffer = bytearray(4 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        at = 0
        while True:
            limit = len(buffer)
            if data_digest is not None:  # the range is known: only the bytes outside it are read
                if offset <= at < end:
                    at = fh.seek(end)
                elif at < offset:
                    limit = min(limit, offset - at)
            n = fh.readinto(view[:limit])
            if not n:
                break
            chunk = view[:n]
            inside = max(0, min(at + n, end) - max(at, offset))
            if inside:
                start = max(at, offset) - at
                data.update(chunk[start : start + inside])
                rest.update(chunk[:start])
                rest.update(chunk[start + inside :])
            else:
                rest.update(chunk)
            at += n
    return {
        "data_region": [offset, length],
        "data_xxh3_128": data_digest if data_digest is not None else data.hexdigest(),
        "rest_xxh3_128": rest.hexdigest(),
    }


def file_checksum(
    path: Path,
    record_digest: str = record_digests.ALGORITHM,
    algorithm: str = FILE_DIGEST,
    region: tuple[int, int] | None = None,
    data_digest: str | None = None,
) -> dict[str, Any]:
    """What the manifest records to check the file `path` by: its size and digest (whole, or split
    at `region` as `region_digests` says), and the per-record digests file beside it when there is
    one (HDF5 shards)."""
    found: dict[str, Any] = {"bytes": path.stat().st_size}
    if region is None:
        found[algorithm] = file_digest(path, algorithm)
    else:
        found.update(region_digests(path, *region, data_digest=data_digest))
    digests = path.with_name(path.name + record_digests.SUFFIX)
    if digests.is_file():  # the file's samples have digests of their own (HDF5 shards)
        found.update(record_digest=record_digest, record_digests=digests.name)
    return found


def checksum(
    path: Path,
    record_digest: str = record_digests.ALGORITHM,
    file_digest: str = FILE_DIGEST,
    region: tuple[int, int] | None = None,
) -> dict[str, Any] | None:
    """What the manifest records to check `path` by: an LMDB's record digest, a file's digest, or None.

    `record_digest`: the per-record digest algorithm (a dataset written before XXH3 used sha256);
    `file_digest`: a file's whole-file digest (sha256 in datasets written before XXH3 was used there);
    `region`: a file's checksum is split there (see region_digests).
    """
    if (path / "data.mdb").is_file():
        from mtldata.storage.backends.lmdb import database_digest

        return database_digest(path, algorithm=record_digest)
    if path.is_file():
        return file_checksum(path, record_digest, file_digest, region)
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
