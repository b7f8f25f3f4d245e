"""LMDB backend: an image LMDB plus a float-label LMDB with the same keys (Caffe's multi-label layout).

Each value is a Caffe `Datum`, so the two environments feed two stock Caffe Data layers that stay
aligned because they iterate the same keys in the same byte order.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from google.protobuf.message import DecodeError

from mtldata.caffe.datum import datum_labels, image_datum_frame, label_datum, parse_datum, split_datum
from mtldata.errors import DatasetFormatError, MtlDataError
from mtldata.storage import record_digests
from mtldata.storage.backends import DatasetReader, WriterOptions, register_writer
from mtldata.storage.planes import planar_shape, planes_into
from mtldata.storage.png_chunks import PNG_SIGNATURE
from mtldata.storage.processes import current_pid
from mtldata.storage.records import ImagePayload, Sample, missing_stored_as, restore_missing

IMAGES_DIR = "images.lmdb"
LABELS_DIR = "labels.lmdb"
# Sparse on Linux and macOS, so a generous start costs nothing; it still doubles on MDB_MAP_FULL.
DEFAULT_INITIAL_MAP_SIZE = 1 << 30
# File space is reserved ahead of a write transaction in steps of at least this much (see _reserve),
# or of what the file already holds when that is less: on tmpfs a reservation allocates and zeroes
# its pages, and 16 MB ahead for a small labels database cost milliseconds to make and to cut away.
RESERVE_STEP = 16 << 20
RESERVE_MIN = 256 << 10
# Pages any write transaction may add besides its records' own (branch copies, free-list pages).
TXN_OVERHEAD = 64 << 10
# A reader's pass over every sample drops its maps every this many bytes read (see LmdbReader.__iter__).
ITER_WINDOW = 64 << 20
# An image Datum's fields besides its data: channels, height, width, the data's tag and length,
# label and encoded (varints of at most 10 bytes each, with their tags).
_DATUM_FIELDS_MAX = 80


# LMDB's meta pages (pages 0 and 1 of data.mdb), as LMDB 0.9 lays them out on a 64-bit build: a
# 16-byte page header, then MDB_meta: magic, version, map address, map size, the free and main
# MDB_db records (the free DB's first field holds the page size), the last used page, the txn id.
_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_DATA_VERSION = 1
_META = struct.Struct("=16xIIQQI44xI44xQQ")  # each MDB_db is 48 bytes; only the free DB's md_pad is read
_META_FIELDS = ("magic", "version", "address", "map_size", "page_size", "main_pad", "last_page", "txnid")


def _meta(page: bytes) -> dict[str, int]:
    return dict(zip(_META_FIELDS, _META.unpack_from(page), strict=True))


def check_data_file(env_dir: Path) -> None:
    """Check an LMDB environment's data.mdb against its own meta pages before it is mapped.

    A data.mdb cut short (an interrupted copy) would be mapped whole and kill the process with
    SIGBUS at the first page past its end; a file of zeros or of another format is not LMDB at all.
    Raises DatasetFormatError naming the file.
    """
    data = Path(env_dir) / "data.mdb"
    try:
        size = data.stat().st_size
        with open(data, "rb") as fh:
            head = fh.read(_META.size)
            first = _meta(head) if len(head) == _META.size else None
            psize = first["page_size"] if first else 0
            second = None
            if first and first["magic"] == _LMDB_MAGIC and 512 <= psize <= 65536 and not psize & (psize - 1):
                fh.seek(psize)
                page = fh.read(_META.size)
                second = _meta(page) if len(page) == _META.size else None
    except OSError as exc:
        raise DatasetFormatError(f"{data}: cannot read ({exc.strerror or exc})") from None
    if first is None or first["magic"] != _LMDB_MAGIC:
        what = "empty" if size == 0 else "too short for" if first is None else "not"
        raise DatasetFormatError(f"{data}: {what} an LMDB data file (no LMDB meta page at its start)")
    if first["version"] != _LMDB_DATA_VERSION:
        raise DatasetFormatError(f"{data}: LMDB data format version {first['version']}, expected 1")
    if not (512 <= psize <= 65536 and not psize & (psize - 1)):
        raise DatasetFormatError(f"{data}: damaged LMDB meta page (page size {psize})")
    if second is None or second["magic"] != _LMDB_MAGIC:
        raise DatasetFormatError(
            f"{data}: damaged or cut short: its second LMDB meta page (at byte {psize}) is missing"
        )
    # LMDB uses the meta page of the newer transaction; every page it can reach is <= its last_page.
    meta = max(first, second, key=lambda m: m["txnid"])
    need = (meta["last_page"] + 1) * psize
    if size < need:
        raise DatasetFormatError(
            f"{data}: cut short: {size} bytes, but its LMDB header declares {meta['last_page'] + 1} pages "
            f"of {psize} bytes ({need} bytes); an interrupted copy? copy the dataset again"
        )


def open_readonly(env_dir: Path) -> Any:
    """Open an LMDB environment for reading, after `check_data_file`; LMDB's errors as DatasetFormatError."""
    check_data_file(env_dir)
    try:
        return lmdb.open(str(env_dir), readonly=True, lock=False, readahead=False, subdir=True, max_readers=1)
    except lmdb.Error as exc:
        if "already open" in str(exc):
            raise DatasetFormatError(
                f"{env_dir}: already open in this process by another reader (py-lmdb opens an environment "
                "once per process); close the other dataset, or open it again if it was replaced on disk"
            ) from None
        raise DatasetFormatError(f"{env_dir}: not a readable LMDB environment ({exc})") from None


def _shown(key: bytes) -> str:
    """A record key as an error message shows it: text when it is UTF-8, shortened when long."""
    text = key.decode("utf-8", errors="backslashreplace")
    return repr(text if len(text) <= 200 else text[:200] + "...")


def key_index(key: bytes) -> int | None:
    """The sample index a `%08d_<path>` key starts with, or None for another key shape."""
    head = key.split(b"_", 1)[0]
    return int(head) if head.isdigit() else None


def sniff_format(data: bytes) -> str:
    """The encoded image format of `data` from its magic bytes ("jpeg", "png", ... or "unknown")."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == PNG_SIGNATURE:
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "unknown"


class RecordDigest:
    """sha256 over an LMDB's records in key order: per record, length-prefixed key + its digest.

    It depends only on the keys, the values and their order, never on data.mdb's bytes (which
    change with commit timing), so two environments holding the same records give the same digest.
    Each value is digested on its own (`algorithm`, see record_digests), which lets the converter
    do it in its decode workers.
    """

    def __init__(self, algorithm: str = record_digests.ALGORITHM) -> None:
        self._sha = hashlib.sha256()
        self._digest = record_digests.hasher(algorithm)
        self.records = 0

    def update(self, key: bytes, value: bytes) -> bytes:
        """Add one record; returns its value's digest."""
        value_digest = self._digest(value)
        self.update_hashed(key, value_digest)
        return value_digest

    def update_hashed(self, key: bytes, value_digest: bytes) -> None:
        self._sha.update(len(key).to_bytes(4, "little") + key + value_digest)
        self.records += 1

    def result(self) -> dict[str, Any]:
        return {"records": self.records, "sha256": self._sha.hexdigest()}


def database_digest(
    path: Path, window_bytes: int = 64 << 20, algorithm: str = record_digests.ALGORITHM
) -> dict[str, Any]:
    """The RecordDigest of the LMDB environment at `path`: {"records": n, "sha256": hex}.

    Reads through a map that is dropped every `window_bytes` of values: pages read through a
    map stay resident in this process, so one long pass would grow the RSS to the DB's size.
    """
    digest = RecordDigest(algorithm)
    last_key: bytes | None = None
    while True:
        env = open_readonly(path)
        try:
            with env.begin(buffers=True) as txn:
                cursor = txn.cursor()
                if last_key is None:
                    more = cursor.first()
                else:
                    more = cursor.set_range(last_key) and (bytes(cursor.key()) != last_key or cursor.next())
                window = 0
                while more and window < window_bytes:
                    key, value = bytes(cursor.key()), cursor.value()
                    digest.update(key, value)
                    window += len(value)
                    last_key = key
                    more = cursor.next()
        except lmdb.Error as exc:
            raise DatasetFormatError(f"{path}: damaged LMDB environment ({exc})") from None
        finally:
            env.close()
        if not more:
            return digest.result()


def _os_error(exc: Exception, path: Path) -> OSError:
    """An lmdb.Error from a failed system call as the OSError it stands for (errno from its text)."""
    text = str(exc)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EFBIG):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code), str(path))
    return OSError(errno.EIO, text, str(path))


class _GrowingEnv:
    """A writable LMDB environment whose map doubles whenever a batch does not fit."""

    def __init__(self, path: Path, initial_map_size: int) -> None:
        self.path = path
        self.env = self._open(initial_map_size)
        self._map_size = int(self.env.info()["map_size"])  # may exceed the request (an existing env)
        self._txn: Any = None
        # The digest journal: (key, digest(value)) of every committed record, in put order, so
        # the manifest's checksum needs no second read of the whole database at the end.
        self.journal_path = path.with_name(path.name + record_digests.SUFFIX)
        self._journal = open(self.journal_path, "ab")  # noqa: SIM115 - open for the writer's life
        self._journal_batch = bytearray()
        self._journal_records = 0  # in _journal_batch
        # The journal's RecordDigest kept as commits append to it: while that covers the whole
        # journal (a new one), `digest` reads nothing back; a resumed or cut one is read back.
        self._journal_sha: Any = hashlib.sha256()
        self._journal_hashed = (0, 0)  # (bytes, records) that _journal_sha covers
        self._allocated = 0  # bytes of data.mdb known to have disk blocks behind them
        self._txn_base = 0  # where the open transaction's new pages can start (bytes)
        self._txn_need = 0  # what its puts can add at most (bytes)

    def _reserve(self, nbytes: int) -> None:
        """Make room in the map and on disk for every page the open transaction can write.

        A put can add at most its overflow pages plus a page-split path; twice the bytes plus a
        page per put bounds it. The map grows before a put could fill it, so LMDB never fails
        with MDB_MAP_FULL and a transaction never has to be replayed (nor its values kept).

        Disk blocks are allocated ahead with posix_fallocate, so that a full disk or quota is an
        OSError (ENOSPC) here, before the transaction, not a failed write inside LMDB's commit
        (which LMDB reports as EIO when the disk fills part-way through a write: a wrong line).
        Skipping it on tmpfs, where it zeroes pages the commit then overwrites, saved 3% of a raw
        conversion's CPU and gave that wrong line (tests/test_out_of_space.py); it stays.
        """
        self._txn_need += 2 * nbytes + 4096
        needed = self._txn_base + self._txn_need
        if needed > self._map_size:
            self._grow(needed, nbytes)
            needed = self._txn_base + self._txn_need
        if needed <= self._allocated:
            return
        data = self.path / "data.mdb"
        fd = os.open(data, os.O_RDWR)
        try:
            # A step ahead where the disk has room (fewer calls), else just what this transaction needs.
            step = min(RESERVE_STEP, max(RESERVE_MIN, self._allocated))
            for target in (min(needed + step, self._map_size), needed):
                try:
                    os.posix_fallocate(fd, self._allocated, target - self._allocated)
                    self._allocated = target
                    return
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or target == needed:
                        raise OSError(exc.errno, exc.strerror, str(data)) from None
        finally:
            os.close(fd)

    def _grow(self, needed: int, nbytes: int) -> None:
        """Double the map until the open transaction and a put of `nbytes` fit.

        The map can only change with no transaction open: the open one is committed first. That
        commit is not one the converter asked for, which is harmless: its progress.json still
        names the last one it did, and a resume cuts the database back to that.
        """
        if self._txn is not None:
            self._commit_txn()
        size = self._map_size
        while size < needed + TXN_OVERHEAD + 2 * nbytes + 4096:
            size *= 2
        try:
            self.env.set_mapsize(size)
        except lmdb.Error as exc:
            raise _os_error(exc, self.path) from None
        self._map_size = int(self.env.info()["map_size"])
        self._begin(0)
        self._txn_need += 2 * nbytes + 4096

    def _begin(self, nbytes: int) -> None:
        """Start a write transaction with map and file space for `nbytes`."""
        self._txn_base = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        self._txn_need = TXN_OVERHEAD
        self._txn = self.env.begin(write=True)
        self._reserve(nbytes)

    def _open(self, map_size: int) -> Any:
        # Not MDB_WRITEMAP, on any file system: a put into a shared map faults in every fresh page
        # through the file system (on ext4 about 0.3 ms of CPU for a 196 KB image, against 0.15 ms
        # for a copy to the heap and one write() at commit). On tmpfs it saved the commit's copy on
        # one VM (+3.5%), made no difference on another and cost 7-9% more CPU on a third, for
        # issue 15; and a full file system inside a map is SIGBUS, not an error.
        # sync=False (MDB_NOSYNC): a commit writes without waiting for the disk; `sync` then makes
        # it durable, on another thread (see convert/write_stage.py), while the next batch is put.
        try:
            return lmdb.open(str(self.path), map_size=map_size, subdir=True, max_dbs=0, sync=False)
        except lmdb.Error as exc:
            raise _os_error(exc, self.path) from None

    def put_many(self, records: list[tuple[bytes, bytes | memoryview, bytes]]) -> None:
        """Put each (key, value, value digest), in order, into the open write transaction (started
        on demand), with one reservation for them all; durable only after commit.

        A value may be a view of memory its owner reuses once this returns: LMDB has copied it.
        """
        if not records:
            return
        nbytes = sum(len(key) + len(value) for key, value, _ in records)
        if self._txn is None:
            self._begin(0)
        # _reserve's bound per put is twice its bytes plus a page: the same for the batch
        self._reserve(nbytes + 4096 * (len(records) - 1) // 2)
        entry = record_digests.entry
        self._journal_batch += b"".join(entry(key, digest) for key, _, digest in records)
        self._journal_records += len(records)
        put = self._txn.put
        try:
            for key, value, _ in records:
                # Keys arrive in increasing order (`%08d_` numbers): MDB_APPEND fills pages to the
                # brim and skips the tree search. A key out of order (a hand-made call) is refused
                # by LMDB and put the ordinary way.
                if not put(key, value, append=True):
                    put(key, value)
        except lmdb.MapFullError:
            raise self._map_full() from None
        except lmdb.Error as exc:
            raise _os_error(exc, self.path) from None

    def _map_full(self) -> MtlDataError:
        # Cannot happen while _reserve's bound holds; if it does, what was committed is kept.
        with contextlib.suppress(Exception):
            self._txn.abort()
        self._txn = None
        return MtlDataError(
            f"{self.path}: LMDB's map filled up although space was reserved for this transaction; "
            "run the same command with --resume"
        )

    def _commit_txn(self) -> None:
        try:
            self._txn.commit()
        except lmdb.MapFullError:
            raise self._map_full() from None
        except lmdb.Error as exc:
            raise _os_error(exc, self.path) from None
        finally:
            self._txn = None

    def commit(self) -> None:
        """Commit the open transaction: atomic at once (a killed process keeps it), durable only
        after `sync` (a machine that stops before may lose it)."""
        if self._txn is None:
            return
        self._commit_txn()
        self._journal.write(self._journal_batch)
        self._journal.flush()
        if self._journal_sha is not None:
            self._journal_sha.update(self._journal_batch)
            size, records = self._journal_hashed
            self._journal_hashed = (size + len(self._journal_batch), records + self._journal_records)
        self._journal_batch.clear()
        self._journal_records = 0

    def remap(self) -> None:
        """Close and reopen the environment (no transaction open, no sync running): LMDB reads the
        tree's pages through its map, and each page stays resident in this process until it is
        unmapped, so the RSS would grow with the dataset."""
        self.env.close()
        self.env = self._open(self._map_size)

    def sync(self) -> None:
        """Make every commit so far durable: data.mdb and the digest journal reach the disk.

        Safe beside a write transaction on another thread: LMDB's sync is an fdatasync.
        """
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise _os_error(exc, self.path) from None
        os.fsync(self._journal.fileno())

    def delete_from(self, index: int) -> int:
        self._journal_sha = None  # the journal is cut: `digest` reads it back
        self._journal_batch.clear()
        self._journal_records = 0
        self._journal.flush()
        journal = self.journal_path.read_bytes()
        keep = 0
        for _, end, key, _ in record_digests.entries(journal):
            found = key_index(key)
            if found is not None and found >= index:
                break
            keep = end
        self._journal.truncate(keep)
        self._journal.seek(keep)
        doomed: list[bytes] = []
        with self.env.begin() as txn:
            for key in txn.cursor().iternext(values=False):
                found = key_index(key)
                if found is not None and found >= index:
                    doomed.append(bytes(key))
        if doomed:
            self._begin(nbytes=256 * len(doomed))  # deletes copy pages too
            try:
                for key in doomed:
                    self._txn.delete(key)
                self._txn.commit()
            except BaseException:
                self._txn.abort()
                raise
            finally:
                self._txn = None
        return len(doomed)

    def abandon(self) -> None:
        """Drop the open transaction and close the files after a failure; what was committed stays."""
        with contextlib.suppress(Exception):
            if self._txn is not None:
                self._txn.abort()
        self._txn = None
        for close in (self.env.close, self._journal.close):
            with contextlib.suppress(Exception):
                close()

    def digest(self) -> dict[str, Any]:
        """The RecordDigest of what has been committed, from the journal (call after the last commit)."""
        self._journal.flush()
        size, records = self._journal_hashed
        if self._journal_sha is not None and size == os.fstat(self._journal.fileno()).st_size:
            return {"records": records, "sha256": self._journal_sha.hexdigest()}
        # RecordDigest hashes each record's journal entry, in order: the same as hashing the
        # journal's whole entries as they lie (a fifth of the time, where the workers wait), a
        # megabyte at a time (the journal of 100,000 records is 5 MB: memory stays flat).
        sha, records, left = hashlib.sha256(), 0, b""
        with open(self.journal_path, "rb") as fh:
            while block := fh.read(1 << 20):
                data = left + block
                count, end = record_digests.whole_entries(data)
                sha.update(memoryview(data)[:end])
                records, left = records + count, data[end:]
        return {"records": records, "sha256": sha.hexdigest()}

    def close(self) -> None:
        self.commit()
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._journal.close()  # kept: the dataset's per-record digests
        used = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        # Space reserved ahead (posix_fallocate) past last_pgno is never read: cut the file to
        # what is used, what convert_imageset's environment looks like, then make it durable.
        data = self.path / "data.mdb"
        if data.stat().st_size > used:
            os.truncate(data, used)
        self.env.sync(True)
        self.env.close()
        data = self.path / "data.mdb"
        if data.stat().st_size > used:
            os.truncate(data, used)


@register_writer("lmdb")
class LmdbWriter:
    """Writes images.lmdb and labels.lmdb in the staging directory, batch by batch."""

    def __init__(self, staging: Path, options: WriterOptions) -> None:
        extra = options.extra or {}
        map_size = int(extra.get("initial_map_size", DEFAULT_INITIAL_MAP_SIZE))
        self.images = _GrowingEnv(staging / IMAGES_DIR, map_size)
        self.labels = _GrowingEnv(staging / LABELS_DIR, map_size)
        self.num_labels = options.num_labels

    @staticmethod
    def encode_payload(image: ImagePayload, labels: np.ndarray) -> ImagePayload:
        """Serialise and hash the image Datum; the converter runs this in its decode workers."""
        pixels = image.data
        size = pixels.size if isinstance(pixels, np.ndarray) else len(pixels)
        record = bytearray(size + _DATUM_FIELDS_MAX)
        placed = LmdbWriter.encode_payload_into(image, labels, memoryview(record))
        assert placed is not None  # the fields around the pixels always fit in _DATUM_FIELDS_MAX
        described, length = placed
        del record[length:]
        return described.with_data(record, stored=True, stored_digest=described.stored_digest)

    @staticmethod
    def encode_payload_into(
        image: ImagePayload, labels: np.ndarray, buffer: memoryview
    ) -> tuple[ImagePayload, int] | None:
        """encode_payload, written at the start of `buffer` (shared memory) instead of new bytes:
        raw HxWxC (or BGRX) pixels are split into CHW planes in place there, with no copy between.
        Returns the payload's description (its digest, no data) and the record's length; None when
        it does not fit.
        """
        # Caffe's convert_multilabel: the int part of the first label (-1 when it is missing)
        first = float(labels[0])  # a Python float: numpy scalar arithmetic costs microseconds
        label = int(first) if math.isfinite(first) else -1
        pixels = image.data
        if isinstance(pixels, np.ndarray):
            c, h, w = planar_shape(pixels)
            size = c * h * w
        else:
            size = len(pixels)
        if not image.encoded and size != image.shape[0] * image.shape[1] * image.shape[2]:
            raise ValueError(f"raw image data holds {size} bytes, its shape is {image.shape}")
        head, tail = image_datum_frame(size, label, None if image.encoded else image.shape)
        end = len(head) + size
        length = end + len(tail)
        if length > len(buffer):
            return None
        buffer[: len(head)] = head
        if isinstance(pixels, np.ndarray):
            planes = np.frombuffer(buffer, np.uint8, count=size, offset=len(head)).reshape(image.shape)
            planes_into(pixels, planes)
        else:
            buffer[len(head) : end] = pixels
        buffer[end:length] = tail
        digest = record_digests.digest(buffer[:length])
        return image.with_data(b"", stored=True, stored_digest=digest), length

    def put_many(self, samples: list[Sample]) -> None:
        """`put` of each sample, with one call per environment (LMDB stores any sample: never
        raises SampleRejectedError, so the converter may hand it whole batches)."""
        images, labels = [], []
        digest = record_digests.hasher()
        for sample in samples:
            key = sample.key.encode("utf-8")
            image = sample.image if sample.image.stored else self.encode_payload(sample.image, sample.labels)
            stored = image.stored_digest if image.stored_digest is not None else digest(image.data)
            images.append((key, image.data, stored))
            record = label_datum(sample.labels)
            labels.append((key, record, digest(record)))
        self.images.put_many(images)
        self.labels.put_many(labels)

    def put(self, sample: Sample) -> None:
        self.put_many([sample])

    def commit(self) -> None:
        # Images first: a crash between the two commits leaves extra image records, which resume
        # removes with truncate_from; never a label without its image.
        self.images.commit()
        self.labels.commit()

    def sync(self) -> None:
        """Make every commit so far durable (may run on another thread than puts and commits)."""
        self.images.sync()
        self.labels.sync()

    def remap(self) -> None:
        """Drop the pages read through the maps (between commits, with no sync running)."""
        self.images.remap()
        self.labels.remap()

    def abandon(self) -> None:
        self.images.abandon()
        self.labels.abandon()

    def truncate_from(self, index: int) -> None:
        self.images.delete_from(index)
        self.labels.delete_from(index)

    def close(self) -> dict[str, Any]:
        self.commit()
        self.checksums = {
            name: {
                **env.digest(),
                "record_digest": record_digests.ALGORITHM,
                "record_digests": env.journal_path.name,
            }
            for name, env in ((IMAGES_DIR, self.images), (LABELS_DIR, self.labels))
        }
        self.images.close()
        self.labels.close()
        return {"images": IMAGES_DIR, "labels": LABELS_DIR}


class LmdbReader(DatasetReader):
    """Reads an image LMDB, optionally with a float-label LMDB keyed the same way.

    Environments are opened lazily and reopened in a new process: an LMDB handle inherited
    across fork() must never be used (py-lmdb and LMDB both forbid it), so a DataLoader worker
    always gets its own.
    """

    def __init__(self, images: Path, labels: Path | None, manifest: dict[str, Any] | None = None) -> None:
        self.images_path = Path(images)
        self.labels_path = Path(labels) if labels is not None else None
        self.manifest = manifest
        self._stored_as = missing_stored_as(manifest)  # ignore values that stand for missing labels
        for path in (self.images_path, self.labels_path):
            if path is not None and not (path / "data.mdb").is_file():
                raise DatasetFormatError(f"{path}: not an LMDB environment (no data.mdb)")
        self._pid: int | None = None
        self._keys: list[bytes] | None = None
        self._img_txn: Any = None
        self._lbl_txn: Any = None
        self._envs: list[Any] = []
        self._num_labels: int | None = None  # K, checked on every label record read
        self._shape = (
            tuple(manifest["image"]["shape"]) if manifest and manifest["image"].get("shape") else None
        )

    @classmethod
    def from_manifest(cls, root: Path, manifest: dict[str, Any]) -> LmdbReader:
        files = manifest.get("files", {})
        return cls(root / files.get("images", IMAGES_DIR), root / files.get("labels", LABELS_DIR), manifest)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _img_txn=None, _lbl_txn=None, _envs=[])
        return state

    def _open(self) -> None:
        if self._pid == current_pid():
            return
        # In a forked child the parent's handles are never used. They must be closed, though:
        # py-lmdb (>= 3) refuses to open an environment this process already has open, and the
        # child inherited the parent's. With readonly + lock=False there is no lock file and no
        # reader table, so closing releases only the child's copy of the mapping and descriptors.
        if self._pid is not None:
            self._img_txn = self._lbl_txn = None
            for env in self._envs:
                env.close()
        self._envs = []
        opened = []
        for path in (self.images_path, self.labels_path):
            if path is None:
                opened.append(None)
                continue
            env = open_readonly(path)
            self._envs.append(env)
            # buffers=True: get() returns a view of the mapped pages, valid while this read
            # transaction lives; `sample` copies the record out at once, `sample_view` does not.
            opened.append(env.begin(buffers=True))
        self._img_txn, self._lbl_txn = opened
        self._pid = current_pid()

    def _load_keys(self) -> list[bytes]:
        if self._keys is None:
            self._open()
            try:
                self._keys = [bytes(k) for k in self._img_txn.cursor().iternext(values=False)]
                n_labels = self._lbl_txn.stat()["entries"] if self._lbl_txn is not None else None
            except lmdb.Error as exc:
                raise DatasetFormatError(f"{self.images_path}: damaged LMDB environment ({exc})") from None
            if self._lbl_txn is not None:
                if n_labels != len(self._keys):
                    raise DatasetFormatError(
                        f"{self.images_path} holds {len(self._keys)} records but {self.labels_path} "
                        f"holds {n_labels}: the two DBs are not aligned"
                    )
        return self._keys

    def __len__(self) -> int:
        return len(self._load_keys())

    def key(self, i: int) -> str:
        return self._load_keys()[i].decode("utf-8", errors="replace")

    def _get(self, txn: Any, key: bytes, where: Path) -> Any:
        try:
            value = txn.get(key)
        except lmdb.Error as exc:
            raise DatasetFormatError(f"{where}: record {_shown(key)}: damaged LMDB page ({exc})") from None
        if value is None:
            raise DatasetFormatError(f"{where}: no record for key {_shown(key)}")
        return value

    def _label_value(self, key: bytes) -> np.ndarray:
        value = self._get(self._lbl_txn, key, self.labels_path)
        try:
            datum = parse_datum(value)
        except DecodeError as exc:
            raise DatasetFormatError(
                f"{self.labels_path}: record {_shown(key)} is not a Caffe Datum ({exc})"
            ) from None
        return self._checked_labels(
            key, restore_missing(datum_labels(datum), self._stored_as), self.labels_path
        )

    def _checked_labels(self, key: bytes, labels: np.ndarray, where: Path | None) -> np.ndarray:
        """`labels`, after checking it holds K values (the manifest's K, else record 0's)."""
        if self._num_labels is None:
            k = (self.manifest or {}).get("num_labels")
            if not isinstance(k, int):
                first = self._load_keys()[0]
                k = labels.size if key == first else self.labels(0).size
            self._num_labels = k
        if labels.size != self._num_labels:
            origin = "the manifest's num_labels" if self.manifest else "as record 0 does"
            raise DatasetFormatError(
                f"{where or self.images_path}: record {_shown(key)} holds {labels.size} label value(s), "
                f"expected {self._num_labels} ({origin})"
            )
        return labels

    def labels(self, i: int) -> np.ndarray:
        keys = self._load_keys()
        self._open()
        if self._lbl_txn is not None:
            return self._label_value(keys[i])
        value = self._get(self._img_txn, keys[i], self.images_path)
        try:
            datum = parse_datum(value)
        except DecodeError as exc:
            raise DatasetFormatError(
                f"{self.images_path}: record {_shown(keys[i])} is not a Caffe Datum ({exc})"
            ) from None
        return self._checked_labels(keys[i], datum_labels(datum), None)

    def sample(self, i: int) -> Sample:
        return self._read(i, view=False)

    def sample_view(self, i: int) -> Sample:
        """`sample(i)`, but raw pixels are a view of the mapped LMDB pages, not a copy: valid only
        until this reader is closed, so copy out what you keep (the loader copies each image into
        its batch at once, saving one copy of every image)."""
        return self._read(i, view=True)

    def _read(self, i: int, view: bool) -> Sample:
        keys = self._load_keys()
        self._open()
        key = keys[i]
        value = self._get(self._img_txn, key, self.images_path)
        if not view:
            value = bytes(value)  # the one copy out of the map; the pixels stay a view of it
        try:
            datum, data = split_datum(value)
        except Exception as exc:  # protobuf raises DecodeError, among others
            raise DatasetFormatError(
                f"{self.images_path}: record {_shown(key)} is not a Caffe Datum ({exc})"
            ) from None
        if datum.encoded:
            shape = self._shape or (0, 0, 0)
            data = bytes(data)  # a few KB, handed to decoders that want bytes
            payload = ImagePayload(data, True, shape, sniff_format(data))
        else:
            shape = (datum.channels, datum.height, datum.width)
            if len(data) != shape[0] * shape[1] * shape[2]:
                raise DatasetFormatError(
                    f"{self.images_path}: record {_shown(key)} holds {len(data)} bytes, "
                    f"its shape {shape} needs {shape[0] * shape[1] * shape[2]}"
                )
            payload = ImagePayload(data, False, shape)
        if self._lbl_txn is not None:
            labels = self._label_value(key)
        else:
            labels = self._checked_labels(key, datum_labels(datum), None)
        return Sample(index=i, key=key.decode("utf-8", errors="replace"), image=payload, labels=labels)

    def __iter__(self) -> Iterator[Sample]:
        """Every sample in key order, each a copy: the environments' maps are dropped every
        ITER_WINDOW bytes read, since every page read through a map stays resident in this process
        (a whole pass would grow the RSS to the database's size, as in `mtldata merge`)."""
        read = 0
        for i in range(len(self)):
            sample = self.sample(i)
            read += len(sample.image.data)
            if read >= ITER_WINDOW:
                self._unmap()
                read = 0
            yield sample

    def _unmap(self) -> None:
        """Close the environments (the next read opens them again); the keys read are kept."""
        if self._pid == current_pid():
            for env in self._envs:
                env.close()
        self._envs = []
        self._img_txn = self._lbl_txn = None
        self._pid = None

    def describe(self) -> dict[str, Any]:
        if self.manifest is not None:
            layout = "mtldata"
        elif self.labels_path is not None:
            layout = "caffe multi-label (image LMDB + float-label LMDB)"
        else:
            layout = "caffe convert_imageset (int label)"
        return {
            "backend": "lmdb",
            "layout": layout,
            "images": str(self.images_path),
            "labels": str(self.labels_path) if self.labels_path else None,
        }

    def close(self) -> None:
        self._unmap()
        self._keys = self._num_labels = None  # a reopen reads what is there then
