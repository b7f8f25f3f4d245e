"""Storage backends: one writer protocol and one reader protocol, one module per format.

The converter only talks to `DatasetWriter`; loaders and tools only talk to `DatasetReader`.
A backend registers itself by name in `WRITERS`; `open_reader` picks a reader from the manifest
or, for datasets mtldata did not write, from what is on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mtldata.errors import DatasetFormatError, MtlDataError
from mtldata.storage.manifest_check import check_manifest
from mtldata.storage.read_limits import sample_limit
from mtldata.storage.records import Sample

MANIFEST_NAME = "manifest.json"
MANIFEST_MAX_BYTES = 64 << 20  # a real manifest is a few KB (a few MB with many image sizes)


@dataclass(frozen=True)
class WriterOptions:
    """What a backend needs to know before the first sample arrives."""

    num_labels: int
    label_names: tuple[str, ...] = ()
    extra: dict[str, Any] | None = None  # backend-specific options (HDF5 dtype, shard size, ...)
    encoded_images: bool = False  # samples carry encoded file bytes, not raw pixels
    destination: Path | None = None  # where the dataset lives once published (for self-naming lists)


@runtime_checkable
class DatasetWriter(Protocol):
    """Writes samples in index order into a staging directory; durable only at `commit`."""

    def put(self, sample: Sample) -> None: ...

    def commit(self) -> None:
        """Make every sample put so far durable (a resume point)."""

    def truncate_from(self, index: int) -> None:
        """Drop every sample whose index is >= `index` (undoes work past the last resume point)."""

    def close(self) -> dict[str, Any]:
        """Flush and close; return the backend's part of the manifest (file names, layout)."""


@runtime_checkable
class DatasetReader(Protocol):
    """Random and in-order access to the samples of a dataset, whatever its format.

    A reader may also offer `sample_view(i)`: the same sample, its raw pixels a view of the
    reader's own storage or buffer instead of a copy, valid only until its next read or close.
    The loader uses it where present (it copies each image into its batch at once).
    """

    def __len__(self) -> int: ...

    def key(self, i: int) -> str: ...

    def sample(self, i: int) -> Sample: ...

    def labels(self, i: int) -> np.ndarray: ...

    def __iter__(self) -> Iterator[Sample]: ...

    def describe(self) -> dict[str, Any]:
        """Format facts for `mtldata info`: backend, layout, what the files are."""

    def close(self) -> None: ...


WriterFactory = Callable[[Path, WriterOptions], DatasetWriter]
WRITERS: dict[str, WriterFactory] = {}
READERS: dict[str, Callable[[Path, dict[str, Any]], DatasetReader]] = {}


def register_writer(name: str) -> Callable[[WriterFactory], WriterFactory]:
    def decorate(factory: WriterFactory) -> WriterFactory:
        WRITERS[name] = factory
        return factory

    return decorate


def _load_builtin_backends() -> None:
    # Imported here, not at module top, so that `mtldata.storage.backends` stays cheap and each backend
    # module's heavy import (lmdb, h5py) happens only when it is used.
    from mtldata.storage.backends import hdf5 as _hdf5  # noqa: F401  (h5py itself only when a file is used)
    from mtldata.storage.backends import lmdb as _lmdb  # noqa: F401


def check_writer_options(backend: str, options: WriterOptions) -> None:
    """Reject options `backend` cannot honour before anything is written.

    A writer class may define a static `check_options(options)` raising MtlDataError; backends
    without one accept anything.
    """
    _load_builtin_backends()
    if backend not in WRITERS:
        raise MtlDataError(f"unknown backend {backend!r}; available: {', '.join(sorted(WRITERS))}")
    check = getattr(WRITERS[backend], "check_options", None)
    if check is not None:
        check(options)


def make_writer(backend: str, staging: Path, options: WriterOptions) -> DatasetWriter:
    """Create the writer of `backend` in the staging directory."""
    _load_builtin_backends()
    if backend not in WRITERS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(sorted(WRITERS))}")
    return WRITERS[backend](staging, options)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a dataset directory, checked (`check_manifest`), or None if it has none."""
    manifest = path / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        with open(manifest, "rb") as fh:
            raw = fh.read(MANIFEST_MAX_BYTES + 1)
    except OSError as exc:
        raise DatasetFormatError(f"{manifest}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MANIFEST_MAX_BYTES:
        raise DatasetFormatError(
            f"{manifest}: over {MANIFEST_MAX_BYTES >> 20} MB; not a manifest mtldata wrote"
        )
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{manifest}: not UTF-8 text (byte {exc.start})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DatasetFormatError(f"{manifest}: not valid JSON ({str(exc)[:200]})") from None
    check_manifest(doc, manifest)
    return doc


def open_reader(
    path: str | Path, labels: str | Path | None = None, *, max_sample_bytes: int | None = None
) -> DatasetReader:
    """Open any dataset mtldata can read.

    `path` is an mtldata dataset directory, a plain Caffe LMDB directory (one int label per
    record), or an image LMDB with `labels` naming its float-label LMDB (the multi-label layout).
    It may also be an `.h5` file, an HDF5Data `source` list of them, or a folder holding
    `hdf5_list.txt`. A stored sample declared over `max_sample_bytes` (default: `read_limits`'
    current limit, 1 GiB) is refused before anything is allocated for it.
    """
    with sample_limit(max_sample_bytes):
        return _open_reader(Path(path), labels)


def _open_reader(path: Path, labels: str | Path | None) -> DatasetReader:
    _load_builtin_backends()
    from mtldata.storage.backends.lmdb import LmdbReader

    staging = path if path.name.endswith(".partial") else path.with_name(path.name + ".partial")
    if not path.exists():
        from mtldata.storage.output_guard import not_there_yet

        raise DatasetFormatError(not_there_yet(path) or f"{path}: no such file or directory")
    if labels is not None:
        return LmdbReader(path, Path(labels))
    manifest = read_manifest(path)
    if manifest is not None:
        if not manifest.get("complete", False):
            raise DatasetFormatError(f"{path}: the dataset is incomplete (an interrupted conversion)")
        backend = manifest.get("backend")
        if backend == "lmdb":
            return LmdbReader.from_manifest(path, manifest)
        if backend in READERS:
            return READERS[backend](path, manifest)
        raise DatasetFormatError(
            f"{path}: manifest names backend {backend!r}, which this mtldata cannot read"
        )
    if staging.is_dir():
        raise DatasetFormatError(f"{staging}: {_staging_status(staging)}")
    if path.is_file() or (path / "hdf5_list.txt").is_file():
        # An .h5 file, an HDF5Data `source` list, or a folder holding hdf5_list.txt.
        from mtldata.storage.backends.hdf5 import open_hdf5

        return open_hdf5(path)
    if (path / "data.mdb").is_file():
        return LmdbReader(path, None)
    if (path / "images.lmdb" / "data.mdb").is_file():
        label_dir = path / "labels.lmdb"
        return LmdbReader(path / "images.lmdb", label_dir if label_dir.is_dir() else None)
    raise DatasetFormatError(
        f"{path}: not a dataset mtldata knows (no manifest.json, no LMDB data.mdb, no hdf5_list.txt)"
    )


def _staging_status(staging: Path) -> str:
    from mtldata.storage.output_guard import staging_status

    return staging_status(staging)


def dataset_num_labels(path: str | Path, labels: str | Path | None = None) -> int | None:
    """K of a dataset: from its manifest, else the length of its first label vector (None if empty)."""
    reader = open_reader(path, labels)
    try:
        manifest = getattr(reader, "manifest", None)
        if isinstance(manifest, dict) and isinstance(manifest.get("num_labels"), int):
            return manifest["num_labels"]
        return int(np.asarray(reader.labels(0)).size) if len(reader) else None
    finally:
        reader.close()
