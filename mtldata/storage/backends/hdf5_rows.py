"""An HDF5 shard's pixel rows written straight into its file as they arrive, HDF5's bytes laid around them.

A contiguous dataset's raw data is one byte range of the file that HDF5 reads as is, at an offset
fixed when the dataset is allocated; that offset depends on what was created before it, not on the
number of rows. So the writer converts each row to the shard's dtype and writes it with pwrite at
its place in the shard's temporary file as it arrives (no second pass over the pixels, no h5py call
per row), hashing the bytes on the way; at seal, h5py writes a skeleton of the shard (the same
datasets, `data` allocated but never written, so a hole in the file) and the skeleton's bytes are
copied around the rows. Reading the rows back and rewriting them through h5py at seal cost more
than decoding the images (issue 15).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mtldata.errors import DatasetStateError

COPY_BYTES = 4 << 20  # bytes copied at a time between files


def allocate_contiguous(group: Any, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """A contiguous dataset whose file space is allocated now and never filled by HDF5."""
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # every row is written by RowFile
    return group.create_dataset(name, shape, dtype, dcpl=dcpl)


class RowFile:
    """Rows of uint8 pixels, written in order in `dtype` from `offset` on in the file `path` (created
    if missing; rows already there are taken back with `adopt`), with the XXH3-128 digest of the
    bytes of every row so far. Values are converted a piece at a time into one small buffer that
    stays in the CPU cache (a whole float32 image converted at once does not, and costs three times
    as much)."""

    PIECE = 1 << 16  # values converted and written at a time

    def __init__(self, path: Path, offset: int, dtype: np.dtype) -> None:
        import xxhash

        self.path, self.offset, self.dtype = path, offset, np.dtype(dtype)
        self.buffer = np.empty(self.PIECE, self.dtype)
        self.rows = self.length = 0
        self.digest = xxhash.xxh3_128()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)

    def write(self, pixels: np.ndarray) -> None:
        """Append one row (any shape; its values in C order)."""
        flat = pixels.reshape(-1)
        at = self.offset + self.length
        if self.dtype == flat.dtype:
            pwrite_all(self.fd, flat, at)
            self.digest.update(flat)
        else:
            for start in range(0, flat.size, self.PIECE):
                piece = flat[start : start + self.PIECE]
                out = self.buffer[: piece.size]
                np.copyto(out, piece, casting="unsafe")
                pwrite_all(self.fd, out, at + start * self.dtype.itemsize)
                self.digest.update(out)
        self.rows += 1
        self.length += flat.size * self.dtype.itemsize

    def adopt(self, shape: tuple[int, ...]) -> np.ndarray:
        """Take the next row as the file holds it (written before a resume): its bytes join the
        digest, and its pixels come back as uint8 (exact: they were written from uint8)."""
        size = int(np.prod(shape)) * self.dtype.itemsize
        data = os.pread(self.fd, size, self.offset + self.length)
        if len(data) != size:
            raise DatasetStateError(
                f"{self.path}: row {self.rows} is missing or cut short; the conversion cannot be "
                f"resumed (start over with --overwrite)"
            )
        self.digest.update(data)
        self.rows += 1
        self.length += size
        return np.frombuffer(data, self.dtype).astype(np.uint8).reshape(shape)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def pwrite_all(fd: int, data: Any, at: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def copy_range(source: Path, target: Path, start: int, end: int, to: int | None = None) -> None:
    """Copy bytes [start, end) of `source` into `target` at `to` (default: the same offset)."""
    to = start if to is None else to
    buffer = bytearray(min(COPY_BYTES, max(0, end - start)))
    view = memoryview(buffer)
    with open(source, "rb", buffering=0) as src, open(target, "r+b", buffering=0) as dst:
        src.seek(start)
        while start < end:
            n = src.readinto(view[: min(len(buffer), end - start)])
            if not n:
                raise OSError(f"{source}: ends at {start}, before {end}")
            pwrite_all(dst.fileno(), view[:n], to)
            start, to = start + n, to + n


def lay_around(skeleton: Path, target: Path, offset: int, length: int) -> None:
    """Make `target`, which holds a skeleton's hole [offset, offset + length) filled, the whole file:
    every byte of `skeleton` outside that range is copied into place and `target` cut to its size."""
    size = skeleton.stat().st_size
    copy_range(skeleton, target, 0, offset)
    copy_range(skeleton, target, offset + length, size)
    os.truncate(target, size)
