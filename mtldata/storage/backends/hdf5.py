"""HDF5 backend: shards for Caffe's HDF5Data layer, and a reader for any list of HDF5 files.

A dataset is `part-00000.h5`, `part-00001.h5`, ... plus `hdf5_list.txt` (the layer's `source`).
Each shard holds `data` (N, C, H, W), `label` (N, K) float32, optionally one (N, k) float32
dataset per task, and `key` (the sample keys; Caffe loads only the datasets its tops name).

HDF5 files are not crash-safe while open for writing, so a shard is written whole, to a temporary
name, and renamed. The samples of the shard being filled wait in an append-only
`part-NNNNN.pending` file: `commit` only fsyncs it, and a torn tail is cut on resume. A frame of a
compressed shard holds its pixels; an uncompressed shard's pixels go, converted, as they arrive,
to their place in its row file (`part-NNNNN.h5.tmp`, see hdf5_rows.py), synced before the pending
file at a commit, and the frame only names its row. A shard is written (compressed) or its row file
made whole (uncompressed) when it is full.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtldata.durable import fsync_path
from mtldata.errors import DatasetFormatError, MtlDataError, SampleRejectedError
from mtldata.storage import record_digests
from mtldata.storage.backends import READERS, DatasetReader, WriterOptions, register_writer
from mtldata.storage.backends.hdf5_chunks import ChunkWriter, dataset_filters
from mtldata.storage.backends.hdf5_rows import RowFile, allocate_contiguous, copy_range, lay_around
from mtldata.storage.manifest import FILE_DIGEST, file_digest, region_digests
from mtldata.storage.planes import planes_into
from mtldata.storage.processes import available_cores, current_pid
from mtldata.storage.read_limits import SAMPLE_LIMIT_ENV, SAMPLE_LIMIT_FLAG, max_sample_bytes
from mtldata.storage.records import ImagePayload, Sample, missing_stored_as, restore_missing

LIST_NAME = "hdf5_list.txt"
DTYPES = ("float32", "uint8")
COMPRESSIONS = ("gzip", "lzf")
RESERVED_NAMES = ("data", "label", "key")
INT_MAX = 2**31 - 1  # Caffe loads a whole dataset into one blob, whose element count is an int
DEFAULT_SHARD_BYTES = 512 << 20  # of `data`: well under the ~2 GB files older Caffe builds crashed on
CHUNK_BYTES = 1 << 20
PIXELS_ATTR = "mtldata_data"  # value "pixels": `data` holds integral pixel values 0..255, any dtype
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FRAME = struct.Struct("<qIIII")  # index, key length, C, H, W; then key, K float32 labels, pixels
# A key length with this bit: the frame's pixels are not in the pending file but the next row of the
# shard's row file (uncompressed shards, see Hdf5Writer._ensure_rows)
_IN_ROWS = 1 << 31
_OPTION_KEYS = ("shard_size", "hdf5_dtype", "compression", "task_datasets")


def _h5py() -> Any:
    import h5py  # heavy: imported only when an HDF5 file is written or read

    return h5py


def shard_name(number: int) -> str:
    return f"part-{number:05d}.h5"


def _pending_name(number: int) -> str:
    return f"part-{number:05d}.pending"


def _key_index(key: str, where: Path) -> int:
    head = key.split("_", 1)[0]
    if not head.isdigit():
        raise DatasetFormatError(f"{where}: key {key!r} does not start with a %08d sample number")
    return int(head)


def task_datasets_option(taskset: Any) -> dict[str, Any]:
    """The `task_datasets` writer option for a `mtldata.tasks.TaskSet` (plain JSON types)."""
    return {"num_labels": taskset.num_labels, "tasks": [[t.name, t.start, t.stop] for t in taskset]}


@dataclass(frozen=True)
class Hdf5Options:
    """The HDF5 writer's options, read from `WriterOptions.extra` and checked."""

    shard_size: int | None = None  # None: as many samples as fit in DEFAULT_SHARD_BYTES
    dtype: str = "float32"
    compression: str | None = None
    tasks: tuple[tuple[str, int, int], ...] = ()

    @classmethod
    def parse(cls, options: WriterOptions) -> Hdf5Options:
        extra = dict(options.extra or {})
        unknown = sorted(set(extra) - set(_OPTION_KEYS))
        if unknown:
            raise MtlDataError(f"unknown HDF5 option(s) {unknown}; known: {list(_OPTION_KEYS)}")
        if options.encoded_images:
            raise MtlDataError(
                "HDF5 stores decoded pixels, not encoded image files: drop --encoded/--encode-type, "
                "or use --backend lmdb"
            )
        size = extra.get("shard_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise MtlDataError(f"shard_size must be a positive integer, got {size!r}")
        dtype = extra.get("hdf5_dtype") or "float32"
        if dtype not in DTYPES:
            raise MtlDataError(f"hdf5_dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        compression = extra.get("compression") or None
        if compression is not None and compression not in COMPRESSIONS:
            raise MtlDataError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        return cls(size, dtype, compression, _parse_tasks(extra.get("task_datasets"), options.num_labels))

    def resolve_shard_size(self, shape: tuple[int, int, int]) -> int:
        values = shape[0] * shape[1] * shape[2]
        if self.shard_size is None:
            return max(1, DEFAULT_SHARD_BYTES // (values * np.dtype(self.dtype).itemsize))
        if self.shard_size * values > INT_MAX:
            raise SampleRejectedError(
                f"--shard-size {self.shard_size} with {'x'.join(map(str, shape))} images gives a `data` "
                f"dataset of {self.shard_size * values} values, more than the {INT_MAX} (INT_MAX) Caffe "
                f"loads into one blob: use --shard-size {INT_MAX // values} or less"
            )
        return self.shard_size


def _parse_tasks(value: Any, k: int) -> tuple[tuple[str, int, int], ...]:
    if not value:
        return ()
    if not isinstance(value, dict) or not isinstance(value.get("tasks"), list):
        raise MtlDataError(
            f"task_datasets must be {{'num_labels': K, 'tasks': [[name, start, stop], ...]}}, got {value!r}"
        )
    if value.get("num_labels", k) != k:
        raise MtlDataError(f"the tasks are defined over {value['num_labels']} labels but the data has {k}")
    out: list[tuple[str, int, int]] = []
    for entry in value["tasks"]:
        name, start, stop = entry
        if name in RESERVED_NAMES or name in (t[0] for t in out):
            why = "is reserved for mtldata's own datasets" if name in RESERVED_NAMES else "is used twice"
            raise MtlDataError(
                f"task name {name!r} {why}: HDF5 dataset names must be unique "
                f"and not one of {', '.join(RESERVED_NAMES)}"
            )
        if not 0 <= start < stop <= k:
            raise MtlDataError(f"task {name!r}: columns {start}:{stop} do not lie within the {k} labels")
        out.append((str(name), int(start), int(stop)))
    return tuple(out)


def _frames(path: Path, k: int, payload: bool = True) -> Iterator[tuple[int, int, int, str, Any, Any, tuple]]:
    """The whole frames of a pending file: (offset, end, index, key, labels, pixels, shape).

    Stops at a torn tail (a frame cut by a crash). Without `payload`, labels and pixels are None;
    they are None too for a frame whose pixels are in the shard's row file (see _IN_ROWS). A frame
    with a negative index is not a sample (see _rows_frame). `pixels` is a view of one buffer
    reused for every frame (a fresh 200 KB buffer per frame costs its page faults each time): valid
    only until the next frame.
    """
    size = path.stat().st_size if path.exists() else 0
    if not size:
        return
    buffer = bytearray()
    with open(path, "rb") as fh:
        offset = 0
        while offset + _FRAME.size <= size:
            index, key_len, c, h, w = _FRAME.unpack(fh.read(_FRAME.size))
            in_rows = bool(key_len & _IN_ROWS)
            key_len &= ~_IN_ROWS
            end = offset + _FRAME.size + key_len + 4 * k + (0 if in_rows else c * h * w)
            if end > size:
                return
            if payload:
                key = fh.read(key_len).decode("utf-8")
                labels = np.frombuffer(fh.read(4 * k), dtype=np.float32)
                pixels = None
                if not in_rows:
                    if len(buffer) < c * h * w:
                        buffer = bytearray(c * h * w)
                    view = memoryview(buffer)[: c * h * w]
                    fh.readinto(view)
                    pixels = np.frombuffer(view, dtype=np.uint8).reshape(c, h, w)
            else:
                key, labels, pixels = "", None, None
                fh.seek(end)
            yield offset, end, index, key, labels, pixels, (c, h, w)
            offset = end


def _rows_frame(k: int, offset: int) -> bytes:
    """The frame that says where the shard's row file holds its rows (before any frame of _IN_ROWS)."""
    raw = json.dumps({"data_offset": offset}).encode("utf-8")
    return _FRAME.pack(-1, len(raw), 0, 0, 0) + raw + bytes(4 * k)


def _frame_head(
    index: int, key: str, labels: np.ndarray, shape: tuple[int, int, int], in_rows: bool = False
) -> bytes:
    """A pending frame up to its pixels, which follow it (or, `in_rows`, are in the row file)."""
    raw_key = key.encode("utf-8")
    flag = _IN_ROWS if in_rows else 0
    return b"".join((_FRAME.pack(index, len(raw_key) | flag, *shape), raw_key, labels.tobytes()))


def _frame(
    index: int, key: str, labels: np.ndarray, pixels: bytes | memoryview, shape: tuple[int, int, int]
) -> bytes:
    return _frame_head(index, key, labels, shape) + bytes(pixels)


def _write_all(fd: int, parts: list[Any]) -> None:
    """Write `parts` in turn with as few system calls as the kernel allows (no joined copy)."""
    left = [memoryview(part).cast("B") for part in parts]
    while left:
        n = os.writev(fd, left)
        while left and n >= len(left[0]):
            n -= len(left[0])
            left.pop(0)
        if left:
            left[0] = left[0][n:]


@register_writer("hdf5")
class Hdf5Writer:
    """Writes part-NNNNN.h5 shards of at most `shard_size` samples, and hdf5_list.txt at close."""

    def __init__(self, staging: Path, options: WriterOptions) -> None:
        self.opts = Hdf5Options.parse(options)
        self.dir = Path(staging)
        self.k = options.num_labels
        self.destination = options.destination
        self.shape: tuple[int, int, int] | None = None
        self.shard_size = 0
        # The manifest's checksum of each shard this writer sealed, by name (see _write_shard).
        self.checksums: dict[str, dict[str, Any]] = {}
        # Uncompressed shards: the row file of the shard being filled (hdf5_rows.py), with its keys,
        # label rows and record digests, taken stock of from the files when missing (after a resume
        # or a truncation).
        self._rows: RowFile | None = None
        self._keys: list[str] = []
        self._labels: list[np.ndarray] = []
        self._digests = bytearray()
        self._data_offset: int | None = None  # where HDF5 puts `data` in a shard (any row count)
        self._offset_named = False  # the pending file has the frame that names the rows' offset
        self.counts: list[int] = []
        while (self.dir / shard_name(len(self.counts))).is_file():
            self.counts.append(len(self._shard_indices(len(self.counts))))
        # Left by a crash while a shard was being written; an uncompressed shard's row file holds
        # the pixels of the shard being filled (see _ensure_rows): that one stays.
        rows_file = shard_name(len(self.counts)) + ".tmp" if self.opts.compression is None else None
        for pattern in ("part-*.h5.tmp", "part-*.h5.skeleton"):
            for tmp in self.dir.glob(pattern):
                if tmp.name != rows_file:
                    tmp.unlink()
        for stale in self.dir.glob("part-*.pending"):
            # Left by a crash between sealing a shard and removing its pending file.
            if stale.name != _pending_name(len(self.counts)):
                stale.unlink()
        self._open_pending()
        if self.counts:
            with _h5py().File(self.dir / shard_name(0), "r") as f:
                self._set_shape(tuple(int(d) for d in f["data"].shape[1:]))
        elif self.pending_count:
            first = next(f for f in _frames(self._pending_path, self.k, payload=False) if f[2] >= 0)
            self._set_shape(first[6])

    @staticmethod
    def check_options(options: WriterOptions) -> None:
        Hdf5Options.parse(options)

    @staticmethod
    def encode_payload_into(
        image: ImagePayload, labels: np.ndarray, buffer: memoryview
    ) -> tuple[ImagePayload, int] | None:
        """Run by the converter's decode workers: the decoded HxWxC pixels transposed to the planar
        CxHxW bytes this writer takes, straight into `buffer` (shared memory), with no planar copy
        made first. Returns the payload's description (no data) and its length; None when the image
        is encoded or does not fit. The writer converts the pixels to its dtype as it writes them."""
        c, h, w = image.shape
        size = c * h * w
        if image.encoded or size > len(buffer):
            return None
        pixels = image.data
        if isinstance(pixels, np.ndarray):
            planes = np.frombuffer(buffer, np.uint8, count=size).reshape(c, h, w)
            planes_into(pixels, planes)
        elif len(pixels) == size:
            buffer[:size] = pixels
        else:
            raise ValueError(f"raw image data holds {len(pixels)} bytes, its shape is {image.shape}")
        return image.with_data(b""), size

    @property
    def _pending_path(self) -> Path:
        return self.dir / _pending_name(len(self.counts))

    def _open_pending(self) -> None:
        frames = list(_frames(self._pending_path, self.k, payload=False))
        # unbuffered: a frame goes to the file in one writev, its pixels straight from the sample
        self._fh = open(self._pending_path, "ab", buffering=0)  # noqa: SIM115 - open until the shard is sealed
        self._fh.truncate(frames[-1][1] if frames else 0)  # cut a torn tail
        self.pending_count = sum(1 for f in frames if f[2] >= 0)

    def _set_shape(self, shape: tuple[int, int, int]) -> None:
        self.shard_size = self.opts.resolve_shard_size(shape)
        self.shape = shape

    def _shard_indices(self, number: int) -> list[int]:
        path = self.dir / shard_name(number)
        with _h5py().File(path, "r") as f:
            return [_key_index(k, path) for k in f["key"].asstr()[:]]

    def put(self, sample: Sample) -> None:
        image = sample.image
        if image.encoded:
            raise SampleRejectedError(
                "HDF5 stores decoded pixels, not encoded image bytes (use --backend lmdb)"
            )
        shape = tuple(int(d) for d in image.shape)
        if self.shape is None:
            self._set_shape(shape)
        elif shape != self.shape:
            got, want = ("x".join(map(str, s)) for s in (shape, self.shape))
            raise SampleRejectedError(
                f"image is {got} (CxHxW) but this HDF5 dataset holds {want} images (the first image's "
                f"size): HDF5 needs one image size, so pass --resize-width and --resize-height "
                f"(or --check-size to skip images of another size)"
            )
        labels = np.ascontiguousarray(sample.labels, dtype=np.float32).reshape(-1)
        if labels.size != self.k:
            raise ValueError(f"sample {sample.key!r} has {labels.size} labels, the writer expects {self.k}")
        if len(image.data) != shape[0] * shape[1] * shape[2]:
            raise ValueError(
                f"sample {sample.key!r}: raw image holds {len(image.data)} bytes, its shape is {shape}"
            )
        if self.opts.compression is None:
            # The pixels go to the row file first, then the frame that counts them (the row file
            # is synced first at a commit too): a frame never names a row that is not there.
            self._ensure_rows()
            # (the labels may be a view of the converter's rows: copied)
            self._add_row(sample.key, labels.copy(), np.frombuffer(image.data, np.uint8))
            parts = [_frame_head(sample.index, sample.key, labels, shape, in_rows=True)]
            if not self._offset_named:
                assert self._rows is not None
                parts.insert(0, _rows_frame(self.k, self._rows.offset))
        else:
            parts = [_frame_head(sample.index, sample.key, labels, shape), image.data]
        try:
            _write_all(self._fh.fileno(), parts)
        except OSError as exc:
            self._discard_rows()  # this sample's row is counted in memory: taken stock of again
            raise OSError(exc.errno, exc.strerror, str(self._pending_path)) from None
        self._offset_named = True
        self.pending_count += 1
        if self.pending_count >= self.shard_size:
            self._seal()

    def commit(self) -> None:
        path = self._pending_path
        try:
            if self._rows is not None:  # the rows the pending file's frames name, first
                path = self._rows.path
                os.fsync(self._rows.fd)
                path = self._pending_path
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None

    def _ensure_rows(self) -> None:
        """Open the row file of the shard being filled and take stock of the rows the pending file
        names: a frame with pixels (written by an earlier mtldata, or put back from a sealed shard)
        has them written to its row; a frame of _IN_ROWS has its row read back (for the digests)."""
        if self._rows is not None:
            return
        assert self.shape is not None
        final = self.dir / shard_name(len(self.counts))
        frames = _frames(self._pending_path, self.k)
        offset = None
        for _, _, index, key, _, _, _ in _frames(self._pending_path, self.k):
            if index < 0:
                offset = int(json.loads(key)["data_offset"])
                break
        offset_named = offset is not None  # else put names it before the first frame of _IN_ROWS
        if offset is None:
            if self._data_offset is None:
                probe = final.with_name(final.name + ".skeleton")
                try:
                    self._data_offset = self._skeleton(probe, 1)  # the offset does not depend on the rows
                finally:
                    probe.unlink(missing_ok=True)
            offset = self._data_offset
        self._offset_named = offset_named
        rows = RowFile(final.with_name(final.name + ".tmp"), offset, np.dtype(self.opts.dtype))
        self._rows = rows
        self._keys, self._labels, self._digests = [], [], bytearray()
        try:
            for _, _, index, key, labels, pixels, _ in frames:
                if index < 0:
                    continue
                if pixels is None:
                    pixels = rows.adopt(self.shape)
                    self._note_row(key, labels, pixels)
                else:
                    self._add_row(key, labels, pixels)
        except BaseException:
            self._discard_rows()
            raise

    def _add_row(self, key: str, labels: np.ndarray, pixels: np.ndarray) -> None:
        assert self._rows is not None
        path = self._rows.path
        try:
            self._rows.write(pixels)
        except BaseException as exc:
            self._discard_rows()  # taken stock of again from the files if the writer is used again
            if isinstance(exc, OSError):
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            raise
        self._note_row(key, labels, pixels)

    def _note_row(self, key: str, labels: np.ndarray, pixels: np.ndarray) -> None:
        self._keys.append(key)
        self._labels.append(labels)
        self._digests += record_digests.entry(
            key.encode("utf-8"), record_digests.pixels_and_labels(pixels.data, labels.tobytes())
        )

    def _discard_rows(self) -> None:
        """Close the row file (its rows stay: the pending file may name them)."""
        if self._rows is not None:
            self._rows.close()
        self._rows = None

    def _skeleton(
        self, path: Path, n: int, keys: list[str] | None = None, labels: np.ndarray | None = None
    ) -> int:
        """Write a shard of `n` samples to `path` without its pixels (`data` allocated, a hole), and
        with `keys` and `labels` when given; return where `data` lies in it."""
        assert self.shape is not None
        h5py = _h5py()
        with h5py.File(path, "w", libver=("earliest", "v108")) as f:  # readable by HDF5 1.8 (Caffe)
            f.attrs[PIXELS_ATTR] = "pixels"
            data = allocate_contiguous(f, "data", (n, *self.shape), np.dtype(self.opts.dtype))
            offset = data.id.get_offset()
            if offset is None:
                raise DatasetFormatError(f"{path}: HDF5 did not allocate the `data` dataset")
            if labels is not None and keys is not None:
                self._write_labels(f, labels, keys)
        return int(offset)

    def _write_labels(
        self, f: Any, labels: np.ndarray, keys: list[str], chunk_rows: int | None = None
    ) -> None:
        """A shard's `label`, one dataset per task, and `key`: contiguous, or (a compressed shard)
        compressed in chunks of `chunk_rows` samples."""

        def storage(width: int) -> dict[str, Any]:
            if chunk_rows is None:
                return {}
            return {"chunks": (chunk_rows, width), "compression": self.opts.compression}

        f.create_dataset("label", data=labels, **storage(labels.shape[1]))
        for name, start, stop in self.opts.tasks:
            f.create_dataset(name, data=np.ascontiguousarray(labels[:, start:stop]), **storage(stop - start))
        f.create_dataset("key", data=np.array(keys, dtype=object), dtype=_h5py().string_dtype("utf-8"))

    def _seal(self) -> None:
        """Write the pending samples as the next shard, atomically, and start a new pending file."""
        self.commit()
        self._fh.close()
        number, pending = len(self.counts), self._pending_path
        self._write_shard(number, pending)
        pending.unlink()
        self.counts.append(self.pending_count)
        self._open_pending()

    def _write_shard(self, number: int, pending: Path) -> None:
        assert self.shape is not None
        n, (c, h, w), k = self.pending_count, self.shape, self.k
        final = self.dir / shard_name(number)
        tmp = final.with_name(final.name + ".tmp")
        if self.opts.compression is None:
            tmp, digests, region = self._assemble_shard(final)
        else:
            dtype = np.dtype(self.opts.dtype)
            rows = max(1, min(n, CHUNK_BYTES // (c * h * w * dtype.itemsize)))
            try:
                digests = self._fill_shard(tmp, pending, n, (c, h, w), k, dtype, rows)
            except BaseException:
                tmp.unlink(missing_ok=True)  # a torn shard only takes space a resume needs
                raise
            region = None
        fsync_path(tmp)
        # The shard's per-record digests (`verify` names a damaged sample by them), in place first.
        digests_path = final.with_name(final.name + record_digests.SUFFIX)
        # Its checksum for the manifest, made now: the converter would read every shard again at the
        # end. Pixels were hashed as they were written: only the bytes around them are read.
        if region is not None:
            found = region_digests(tmp, *region)
        else:
            found = {FILE_DIGEST: file_digest(tmp, mapped=True)}
        self.checksums[final.name] = {
            "bytes": tmp.stat().st_size,
            **found,
            "record_digest": record_digests.ALGORITHM,
            "record_digests": digests_path.name,
        }
        digests_tmp = digests_path.with_name(digests_path.name + ".tmp")
        digests_tmp.write_bytes(digests)
        fsync_path(digests_tmp)
        os.replace(digests_tmp, digests_path)
        os.replace(tmp, final)
        fsync_path(self.dir)
        final.with_name(final.name + ".tmp").unlink(missing_ok=True)  # the row file, when not renamed

    def _assemble_shard(self, final: Path) -> tuple[Path, bytes, tuple[int, int, str]]:
        """Make the shard being filled a whole HDF5 file: h5py writes the skeleton, whose bytes are
        laid around the rows in the row file. Returns that file (still under a temporary name), the
        shard's per-record digests file, and where its pixels lie with their digest: (offset,
        length, hex). The rows themselves are never touched: a crash in here loses nothing."""
        self._ensure_rows()
        rows, self._rows = self._rows, None
        assert rows is not None and self.shape is not None
        rows.close()
        n, tmp = rows.rows, rows.path
        if n != self.pending_count:
            raise DatasetFormatError(
                f"{self._pending_path}: holds {self.pending_count} samples, its rows {n}"
            )
        skeleton = final.with_name(final.name + ".skeleton")
        try:
            # HDF5's C library does not always fail cleanly on a full disk: check the space first.
            key_bytes = sum(len(key) for key in self._keys)
            need = n * (4 * self.k * (1 + len(self.opts.tasks)) + 64) + key_bytes + (1 << 20)
            stat = os.statvfs(self.dir)
            if stat.f_bavail * stat.f_frsize < need:
                raise OSError(errno.ENOSPC, f"needs {need:,} bytes for the shard", str(final))
            offset = self._skeleton(skeleton, n, self._keys, np.stack(self._labels))
            if offset == rows.offset:
                lay_around(skeleton, tmp, offset, rows.length)
                skeleton.unlink()
                whole = tmp
            else:  # not seen: HDF5 placed `data` elsewhere for this row count; the rows go there
                copy_range(tmp, skeleton, rows.offset, rows.offset + rows.length, offset)
                whole = skeleton
        except BaseException:
            skeleton.unlink(missing_ok=True)
            raise
        return whole, bytes(self._digests), (offset, rows.length, rows.digest.hexdigest())

    def _fill_shard(
        self, tmp: Path, pending: Path, n: int, chw: tuple[int, int, int], k: int, dtype: np.dtype, rows: int
    ) -> bytes:
        """Write a compressed shard's datasets from the pending file, in chunks of `rows` samples;
        return its per-record digests file."""
        h5py = _h5py()
        c, h, w = chw
        compression = self.opts.compression
        with h5py.File(tmp, "w", libver=("earliest", "v108")) as f:  # readable by HDF5 1.8 (Caffe)
            f.attrs[PIXELS_ATTR] = "pixels"
            data = f.create_dataset(
                "data", (n, c, h, w), dtype, chunks=(rows, c, h, w), **dataset_filters(compression)
            )
            label_rows = np.empty((n, k), np.float32)
            key_list: list[str] = []
            digests = bytearray()
            row = 0
            with ChunkWriter(data, rows, available_cores()) as out:
                for _, _, _, key, labels, pixels, _ in _frames(pending, k):
                    if row == n:
                        break
                    digests += record_digests.entry(
                        key.encode("utf-8"), record_digests.pixels_and_labels(pixels.data, labels.tobytes())
                    )
                    out.write(pixels)
                    label_rows[row] = labels
                    key_list.append(key)
                    row += 1
            if row != n:
                raise DatasetFormatError(f"{pending}: holds {row} whole samples, expected {n}")
            self._write_labels(f, label_rows, key_list, chunk_rows=rows)
        return bytes(digests)

    def abandon(self) -> None:
        """Close the pending file after a failure; what was committed stays."""
        with contextlib.suppress(OSError):
            self._fh.close()
        if self._rows is not None:
            self._rows.close()  # its file goes when the next writer starts
            self._rows = None

    def truncate_from(self, index: int) -> None:
        self._discard_rows()  # taken stock of again from the files as they are after this
        self._fh.flush()
        starts = [f[0] for f in _frames(self._pending_path, self.k, payload=False) if f[2] >= index]
        if starts:
            self._fh.truncate(starts[0])
            self.pending_count -= len(starts)
        # A shard sealed after the last commit holds samples to drop: the last shards may go whole,
        # and one may be split, its kept rows going back to the pending file.
        while self.counts and self.pending_count == 0:
            number = len(self.counts) - 1
            indices = self._shard_indices(number)
            if indices[-1] < index:
                break
            kept = bisect.bisect_left(indices, index)
            self._fh.close()
            self._pending_path.unlink()
            (self.dir / (shard_name(len(self.counts)) + ".tmp")).unlink(missing_ok=True)  # its row file
            if kept:
                self._unseal(number, kept)
            (self.dir / shard_name(number)).unlink()
            self.checksums.pop(shard_name(number), None)
            (self.dir / (shard_name(number) + record_digests.SUFFIX)).unlink(missing_ok=True)
            fsync_path(self.dir)
            self.counts.pop()
            self._open_pending()
        if not self.counts and not self.pending_count:
            self.shape, self.shard_size = None, 0

    def _unseal(self, number: int, kept: int) -> None:
        """Copy the first `kept` rows of shard `number` back into its pending file."""
        path = self.dir / shard_name(number)
        with _h5py().File(path, "r") as f, open(self.dir / _pending_name(number), "wb") as out:
            keys = f["key"].asstr()[:kept]
            labels = f["label"][:kept].astype(np.float32)
            data = f["data"][:kept]
            for i in range(kept):
                pixels = data[i].astype(np.uint8)  # exact: the shard holds integral pixel values
                shape = tuple(int(d) for d in pixels.shape)
                out.write(_frame(_key_index(keys[i], path), keys[i], labels[i], pixels.tobytes(), shape))
            out.flush()
            os.fsync(out.fileno())

    def close(self) -> dict[str, Any]:
        if self.pending_count:
            self._seal()  # the last, smaller shard
        self._discard_rows()
        self._fh.close()
        self._pending_path.unlink(missing_ok=True)
        names = [shard_name(i) for i in range(len(self.counts))]
        # Caffe resolves `source` entries against its working directory: name the published files
        # absolutely, so a prototxt can point at the list from anywhere.
        base = Path(os.path.abspath(self.destination)) if self.destination is not None else None
        lines = [str(base / name) if base is not None else name for name in names]
        (self.dir / LIST_NAME).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        datasets: dict[str, Any] = {}
        if self.shape is not None:
            datasets = {
                "data": {
                    "dtype": self.opts.dtype,
                    "sample_shape": list(self.shape),
                    "values": "pixels 0..255, BGR (or gray), no mean subtracted, no scale",
                },
                "label": {"dtype": "float32", "sample_shape": [self.k]},
                **{
                    name: {"dtype": "float32", "sample_shape": [stop - start], "columns": [start, stop]}
                    for name, start, stop in self.opts.tasks
                },
                "key": {"dtype": "utf-8 string", "sample_shape": []},
            }
        return {
            "list": LIST_NAME,
            "shards": names,
            "shard_counts": list(self.counts),
            "samples_per_shard": self.shard_size or None,
            "datasets": datasets,
            "writer_options": {
                "shard_size": self.opts.shard_size,
                "hdf5_dtype": self.opts.dtype,
                "compression": self.opts.compression,
                "task_datasets": (
                    {"num_labels": self.k, "tasks": [list(t) for t in self.opts.tasks]}
                    if self.opts.tasks
                    else None
                ),
            },
        }


# ---------------------------------------------------------------------------------------------------
# Reading


def _check_sample_size(where: str, name: str, trailing: tuple[int, ...], itemsize: int) -> None:
    """Refuse, before any allocation, a dataset whose one sample (row) is over max_sample_bytes()."""
    size = itemsize
    for d in trailing:
        size *= int(d)
    if size > (limit := max_sample_bytes()):
        raise DatasetFormatError(
            f"{where}: dataset {name!r} declares samples of shape ({', '.join(map(str, trailing))}), "
            f"{size} bytes each, over the limit of {limit} bytes (`{SAMPLE_LIMIT_FLAG}` raises it, "
            f"or {SAMPLE_LIMIT_ENV}=<bytes>)"
        )


def _sample_shape(trailing: tuple[int, ...], path: Path, name: str) -> tuple[int, int, int]:
    # Caffe's legacy 4-D view pads missing axes with 1 at the end: (N, D) reads as D x 1 x 1.
    if not 1 <= len(trailing) <= 3:
        raise DatasetFormatError(
            f"{path}: dataset {name!r} has shape (N, {', '.join(map(str, trailing))}); "
            f"expected (N, C, H, W), (N, C, H) or (N, D)"
        )
    return tuple(trailing) + (1,) * (3 - len(trailing))  # type: ignore[return-value]


def _label_width(trailing: tuple[int, ...], path: Path, name: str) -> int:
    if not trailing:
        return 1
    if any(d != 1 for d in trailing[1:]):
        raise DatasetFormatError(
            f"{path}: dataset {name!r} has shape (N, {', '.join(map(str, trailing))}); label vectors "
            f"must be stored as (N,), (N, K) or (N, K, 1, 1)"
        )
    return trailing[0]


@dataclass(frozen=True)
class _FileInfo:
    path: Path
    count: int
    shape: tuple[int, int, int]
    data_dtype: np.dtype
    num_labels: int
    pixels: bool  # written by mtldata: `data` holds integral pixel values, returned as uint8
    has_keys: bool
    datasets: dict[str, Any]


class _OpenFile:
    """One HDF5 file opened in this process: `data` read one sample at a time into a buffer kept
    for the next read (fresh memory per read costs page faults), the small per-sample datasets
    (`label`, `key`) read a block of rows at a time, since one h5py read costs far more than a row.
    Like an LMDB transaction, it serves one thread."""

    BLOCK_ROWS = 1024
    CACHED_BLOCKS = 4

    def __init__(self, info: _FileInfo) -> None:
        h5py = _h5py()
        self.file = h5py.File(info.path, "r")
        data = self.file["data"]
        self.data_id = data.id
        self.file_space = data.id.get_space()
        self.count = (1, *(int(d) for d in data.shape[1:]))
        self.buffer = np.empty(self.count, data.dtype.newbyteorder("="))
        self.memory_space = h5py.h5s.create_simple(self.count)
        self.shape = info.shape
        self.pixels = np.empty(info.shape, np.uint8)
        self.same = np.empty(info.shape, np.bool_)
        self.blocks: dict[tuple[str, int], np.ndarray] = {}
        # a block of rows stays small however wide a label row is (its width passed the sample limit)
        row_bytes = max(1, math.prod(self.file["label"].shape[1:]) * self.file["label"].dtype.itemsize)
        self.block_rows = max(1, min(self.BLOCK_ROWS, (16 << 20) // row_bytes))

    def read_data(self, row: int) -> np.ndarray:
        """Sample `row` of `data` as (C, H, W), in this file's read buffer."""
        self.file_space.select_hyperslab((row,) + (0,) * (len(self.count) - 1), self.count)
        self.data_id.read(self.memory_space, self.file_space, self.buffer)
        return self.buffer.reshape(self.shape)

    def row(self, name: str, row: int) -> Any:
        """Row `row` of the dataset `name` (`label` or `key`), from a cached block of rows."""
        block = row // self.block_rows
        rows = self.blocks.get((name, block))
        if rows is None:
            if len(self.blocks) >= self.CACHED_BLOCKS:
                self.blocks.pop(next(iter(self.blocks)))
            start = block * self.block_rows
            rows = self.blocks[(name, block)] = self.file[name][start : start + self.block_rows]
        return rows[row - block * self.block_rows]

    def close(self) -> None:
        self.file.close()


class Hdf5Reader(DatasetReader):
    """Reads `data` and `label` of one or more HDF5 files as one sequence of samples.

    `sample(i).image` holds CHW uint8 bytes (format "raw") when the stored pixels are uint8,
    integral, or mtldata's float pixels; for other float data (e.g. already-transformed Caffe
    inputs) it holds float32 bytes with format "float32". `image_array(i)` gives the array either way.
    Files are opened lazily and reopened in a new process (h5py handles must not cross fork()).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        *,
        manifest: dict[str, Any] | None = None,
        source: Path | None = None,
        lines: Sequence[int] | None = None,
    ) -> None:
        self.files = [Path(f) for f in files]
        self.manifest = manifest
        self._stored_as = missing_stored_as(manifest)  # ignore values that stand for missing labels
        self.source = source
        self.infos = [self._inspect(p, None if lines is None else lines[j]) for j, p in enumerate(self.files)]
        for info in self.infos[1:]:
            first = self.infos[0]
            if (info.shape, info.num_labels) != (first.shape, first.num_labels):
                raise DatasetFormatError(
                    f"{info.path}: holds {'x'.join(map(str, info.shape))} samples with {info.num_labels} "
                    f"labels, but {first.path} holds {'x'.join(map(str, first.shape))} with "
                    f"{first.num_labels}: the files of one dataset must agree"
                )
        self._starts = (
            np.concatenate([[0], np.cumsum([i.count for i in self.infos])]).astype(np.int64).tolist()
        )
        self._pid: int | None = None
        self._handles: dict[int, Any] = {}

    @classmethod
    def from_manifest(cls, root: Path, manifest: dict[str, Any]) -> Hdf5Reader:
        names = manifest.get("files", {}).get("shards", [])
        return cls([root / name for name in names], manifest=manifest)

    @staticmethod
    def _inspect(path: Path, line: int | None) -> _FileInfo:
        where = f"{path}" if line is None else f"{path} (line {line})"
        try:
            return Hdf5Reader._inspect_file(path, where)
        except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            # h5py's errors for damaged files and layouts it cannot map to numpy
            raise DatasetFormatError(f"{where}: not a readable HDF5 file ({exc})") from None

    @staticmethod
    def _inspect_file(path: Path, where: str) -> _FileInfo:
        if not path.is_file():
            raise DatasetFormatError(f"{where}: no such HDF5 file")
        h5py = _h5py()
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise DatasetFormatError(f"{where}: not a readable HDF5 file ({exc})") from exc
        with f:
            names = sorted(f.keys())
            missing = [n for n in ("data", "label") if not isinstance(f.get(n), h5py.Dataset)]
            if missing:
                raise DatasetFormatError(
                    f"{where}: no {' and no '.join(repr(m) for m in missing)} dataset (it has "
                    f"{', '.join(names) or 'none'}); mtldata reads the tops `data` and `label`"
                )
            data, label = f["data"], f["label"]
            if data.ndim < 2 or data.dtype.kind not in "uif":
                raise DatasetFormatError(
                    f"{where}: dataset 'data' is {data.dtype} {data.shape}; "
                    f"expected numbers shaped (N, C, H, W)"
                )
            if label.dtype.kind not in "uif":
                raise DatasetFormatError(
                    f"{where}: dataset 'label' has dtype {label.dtype}; expected numbers"
                )
            if label.ndim == 0 or label.shape[0] != data.shape[0]:
                raise DatasetFormatError(
                    f"{where}: 'data' holds {data.shape[0]} samples but 'label' has shape {label.shape}"
                )
            _check_sample_size(where, "data", data.shape[1:], data.dtype.itemsize)
            _check_sample_size(where, "label", label.shape[1:], label.dtype.itemsize)
            key = f.get("key")
            return _FileInfo(
                path=path,
                count=int(data.shape[0]),
                shape=_sample_shape(tuple(int(d) for d in data.shape[1:]), path, "data"),
                data_dtype=data.dtype,
                num_labels=_label_width(tuple(int(d) for d in label.shape[1:]), path, "label"),
                pixels=f.attrs.get(PIXELS_ATTR) in ("pixels", b"pixels"),
                has_keys=isinstance(key, h5py.Dataset) and key.shape == (data.shape[0],),
                datasets={
                    n: {"dtype": str(f[n].dtype), "shape": list(f[n].shape)}
                    for n in names
                    if isinstance(f[n], h5py.Dataset)
                },
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _handles={})
        return state

    def _file(self, j: int) -> _OpenFile:
        if self._pid != current_pid():
            # In a forked child the parent's handles are dropped, not closed.
            self._handles, self._pid = {}, current_pid()
        handle = self._handles.get(j)
        if handle is None:
            handle = self._handles[j] = _OpenFile(self.infos[j])
        return handle

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        i %= n
        j = bisect.bisect_right(self._starts, i) - 1
        return j, i - self._starts[j]

    def __len__(self) -> int:
        return self._starts[-1]

    def key(self, i: int) -> str:
        j, row = self._locate(i)
        if self.infos[j].has_keys:
            value = self._file(j).row("key", row)
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return f"{i % len(self):08d}_{self.files[j].name}#{row}"

    def labels(self, i: int) -> np.ndarray:
        j, row = self._locate(i)
        try:
            labels = np.array(self._file(j).row("label", row), dtype=np.float32).reshape(-1)  # a copy
        except OSError as exc:  # h5py's word for a damaged file
            raise DatasetFormatError(f"{self.files[j]}: label {row} cannot be read ({exc})") from None
        return restore_missing(labels, self._stored_as)

    def image_array(self, i: int) -> np.ndarray:
        """Sample i's image as a (C, H, W) array: uint8 for pixel data, float32 for other float data."""
        return self._image(*self._locate(i)).copy()

    def _image(self, j: int, row: int) -> np.ndarray:
        """Sample `row` of file j as image_array gives it, in a buffer the next read overwrites."""
        info = self.infos[j]
        handle = self._file(j)
        values = handle.read_data(row)
        if values.dtype == np.uint8:
            return values
        if values.dtype.kind in "ui" or info.pixels:
            pixels = handle.pixels
            with np.errstate(invalid="ignore"):  # NaN and out-of-range values are caught below
                np.copyto(pixels, values, casting="unsafe")
            # a value survives the round trip through uint8 only if it is an integer in 0..255
            if not np.equal(pixels, values, out=handle.same).all():
                raise DatasetFormatError(
                    f"{info.path}: sample {row} of 'data' holds values in [{values.min()}, {values.max()}], "
                    f"not integral pixels 0..255"
                )
            return pixels
        if values.dtype != np.float32:
            return values.astype(np.float32)
        return values

    def sample(self, i: int) -> Sample:
        return self._read(i, view=False)

    def sample_view(self, i: int) -> Sample:
        """`sample(i)` with the pixels a view of this reader's read buffer, not a copy: valid only
        until the next read, so copy out what you keep (the loader copies into its batch at once)."""
        return self._read(i, view=True)

    def _read(self, i: int, view: bool) -> Sample:
        j, row = self._locate(i)
        try:
            return self._read_row(i, j, row, view)
        except OSError as exc:  # h5py's word for a damaged file
            raise DatasetFormatError(f"{self.files[j]}: sample {row} cannot be read ({exc})") from None

    def _read_row(self, i: int, j: int, row: int, view: bool) -> Sample:
        image = self._image(j, row)
        fmt = "raw" if image.dtype == np.uint8 else "float32"
        data = memoryview(image).cast("B") if view else image.tobytes()
        payload = ImagePayload(data, False, tuple(int(d) for d in image.shape), fmt)
        return Sample(index=i % len(self), key=self.key(i), image=payload, labels=self.labels(i))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.sample(i)

    def describe(self) -> dict[str, Any]:
        if self.manifest is not None or (self.infos and all(info.pixels for info in self.infos)):
            layout = "mtldata"
        elif self.source is not None:
            layout = "HDF5Data source list"
        else:
            layout = "HDF5 file"
        return {
            "backend": "hdf5",
            "layout": layout,
            "list": str(self.source) if self.source is not None else None,
            "files": [str(p) for p in self.files],
            "datasets": self.infos[0].datasets if self.infos else {},
        }

    def close(self) -> None:
        if self._pid == current_pid():
            for handle in self._handles.values():
                handle.close()
        self._handles, self._pid = {}, None


READERS["hdf5"] = Hdf5Reader.from_manifest


def read_hdf5_list(path: Path) -> tuple[list[Path], list[int]]:
    """The files an HDF5Data `source` list names, and the line of each.

    Entries are whitespace-separated, as Caffe reads them. A relative entry is looked up next to the
    list first, then in the working directory (where Caffe looks).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise DatasetFormatError(f"{path}: neither an HDF5 file nor a text list of them ({exc})") from exc
    files, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        for entry in line.split():
            candidates = [Path(entry)] if os.path.isabs(entry) else [path.parent / entry, Path.cwd() / entry]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                tried = " or ".join(str(c) for c in candidates)
                raise DatasetFormatError(
                    f"{path}:{number}: HDF5 file {entry!r} not found (looked for {tried})"
                )
            with open(found, "rb") as fh:
                if fh.read(8) != HDF5_SIGNATURE:
                    raise DatasetFormatError(
                        f"{path}:{number}: {entry!r} is not an HDF5 file; is {path.name} an image list? "
                        f"(convert those with `mtldata convert`)"
                    )
            files.append(found)
            lines.append(number)
    if not files:
        raise DatasetFormatError(f"{path}: the list names no HDF5 files")
    return files, lines


def open_hdf5(path: str | Path) -> Hdf5Reader:
    """A reader for an .h5 file, an HDF5Data source list, or a folder holding hdf5_list.txt."""
    path = Path(path)
    if path.is_dir():
        path = path / LIST_NAME
    with open(path, "rb") as fh:
        is_hdf5 = fh.read(8) == HDF5_SIGNATURE
    if is_hdf5:
        return Hdf5Reader([path])
    files, lines = read_hdf5_list(path)
    return Hdf5Reader(files, source=path, lines=lines)
