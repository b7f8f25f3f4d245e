"""LMDB backend: an image LMDB plus a float-label LMDB with the same keys (Caffe's multi-label layout).

Each value is a Caffe `Datum`, so the two environments feed two stock Caffe Data layers that stay
aligned because they iterate the same keys in the same byte order.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from mtldata.caffe.datum import datum_labels, image_datum_frame, label_datum, parse_datum, split_datum
from mtldata.errors import DatasetFormatError
from mtldata.storage import record_digests
from mtldata.storage.backends import DatasetReader, WriterOptions, register_writer
from mtldata.storage.processes import current_pid
from mtldata.storage.records import ImagePayload, Sample, missing_stored_as, restore_missing

IMAGES_DIR = "images.lmdb"
LABELS_DIR = "labels.lmdb"
# Sparse on Linux and macOS, so a generous start costs nothing; it still doubles on MDB_MAP_FULL.
DEFAULT_INITIAL_MAP_SIZE = 1 << 30
# File space is reserved ahead of a write transaction in steps of at least this much (see _reserve).
RESERVE_STEP = 16 << 20
# Pages any write transaction may add besides its records' own (branch copies, free-list pages).
TXN_OVERHEAD = 64 << 10


def key_index(key: bytes) -> int | None:
    """The sample index a `%08d_<path>` key starts with, or None for another key shape."""
    head = key.split(b"_", 1)[0]
    return int(head) if head.isdigit() else None


def sniff_format(data: bytes) -> str:
    """The encoded image format of `data` from its magic bytes ("jpeg", "png", ... or "unknown")."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "unknown"


class RecordDigest:
    """sha256 over an LMDB's records in key order: per record, length-prefixed key + sha256(value).

    It depends only on the keys, the values and their order, never on data.mdb's bytes (which
    change with commit timing), so two environments holding the same records give the same digest.
    Hashing each value on its own lets the converter hash values in its decode workers.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.records = 0

    def update(self, key: bytes, value: bytes) -> bytes:
        """Add one record; returns its value's digest."""
        value_sha256 = hashlib.sha256(value).digest()
        self.update_hashed(key, value_sha256)
        return value_sha256

    def update_hashed(self, key: bytes, value_sha256: bytes) -> None:
        self._sha.update(len(key).to_bytes(4, "little") + key + value_sha256)
        self.records += 1

    def result(self) -> dict[str, Any]:
        return {"records": self.records, "sha256": self._sha.hexdigest()}


def database_digest(path: Path, window_bytes: int = 64 << 20) -> dict[str, Any]:
    """The RecordDigest of the LMDB environment at `path`: {"records": n, "sha256": hex}.

    Reads through a map that is dropped every `window_bytes` of values: pages read through a
    map stay resident in this process, so one long pass would grow the RSS to the DB's size.
    """
    digest = RecordDigest()
    last_key: bytes | None = None
    while True:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True, max_readers=1)
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
        self._txn: Any = None
        self._batch: list[tuple[bytes, bytes]] = []  # what the open transaction holds, for a replay
        # The digest journal: (key, sha256(value)) of every committed record, in put order, so
        # the manifest's checksum needs no second read of the whole database at the end.
        self.journal_path = path.with_name(path.name + record_digests.SUFFIX)
        self._journal = open(self.journal_path, "ab")  # noqa: SIM115 - open for the writer's life
        self._journal_batch = bytearray()
        self._allocated = 0  # bytes of data.mdb known to have disk blocks behind them
        self._txn_base = 0  # where the open transaction's new pages can start (bytes)
        self._txn_need = 0  # what its puts can add at most (bytes)

    def _reserve(self, nbytes: int) -> None:
        """Give data.mdb real disk blocks for every page the open transaction can write.

        With writemap, LMDB writes pages straight into the mapped data.mdb, a sparse file: a page
        the file system cannot back (a full disk or quota) kills the process with SIGBUS. Allocating
        ahead with posix_fallocate turns that into an ordinary OSError (ENOSPC), raised here. A put
        can add at most its overflow pages plus a page-split path; twice the bytes plus a page per
        put bounds it.
        """
        self._txn_need += 2 * nbytes + 4096
        needed = self._txn_base + self._txn_need
        if needed <= self._allocated:
            return
        map_size = self.env.info()["map_size"]
        needed = min(needed, map_size)
        if needed <= self._allocated:
            return  # the map is full: the put fails with MapFullError, the map grows, _begin reserves
        data = self.path / "data.mdb"
        fd = os.open(data, os.O_RDWR)
        try:
            # A step ahead where the disk has room (fewer calls), else just what this transaction needs.
            for target in (min(needed + RESERVE_STEP, map_size), needed):
                try:
                    os.posix_fallocate(fd, self._allocated, target - self._allocated)
                    self._allocated = target
                    return
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or target == needed:
                        raise OSError(exc.errno, exc.strerror, str(data)) from None
        finally:
            os.close(fd)

    def _begin(self, nbytes: int | None = None) -> None:
        """Start a write transaction with file space for `nbytes` (default: the batch to replay)."""
        self._txn_base = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        self._txn_need = TXN_OVERHEAD
        self._reserve(sum(len(k) + len(v) for k, v in self._batch) if nbytes is None else nbytes)
        self._txn = self.env.begin(write=True)

    def _open(self, map_size: int) -> Any:
        # writemap: pages are written in place in the shared map instead of being copied out
        # with write(); about 4x faster commits of image-sized values, still synced per commit.
        try:
            return lmdb.open(str(self.path), map_size=map_size, subdir=True, max_dbs=0, writemap=True)
        except lmdb.Error as exc:
            raise _os_error(exc, self.path) from None

    def put(self, key: bytes, value: bytes, value_sha256: bytes | None = None) -> None:
        """Put into the open write transaction (started on demand); durable only after commit."""
        digest = value_sha256 if value_sha256 is not None else hashlib.sha256(value).digest()
        self._journal_batch += record_digests.entry(key, digest)
        self._batch.append((key, value))
        if self._txn is None:
            self._begin()
        else:
            self._reserve(len(key) + len(value))
        try:
            # Keys arrive in increasing order (`%08d_` numbers): MDB_APPEND fills pages to the
            # brim and skips the tree search. A key out of order (a hand-made call) is refused
            # by LMDB and put the ordinary way.
            if not self._txn.put(key, value, append=True):
                self._txn.put(key, value)
        except lmdb.MapFullError:
            self._grow_and_replay()
        except lmdb.Error as exc:
            raise _os_error(exc, self.path) from None

    def _grow_and_replay(self) -> None:
        while True:
            self._txn.abort()
            self._txn = None
            self.env.set_mapsize(self.env.info()["map_size"] * 2)
            self._begin()
            try:
                for key, value in self._batch:
                    self._txn.put(key, value)
                return
            except lmdb.MapFullError:
                continue

    def commit(self) -> None:
        if self._txn is None:
            return
        try:
            self._txn.commit()
        except lmdb.MapFullError:
            self._grow_and_replay()
            self._txn.commit()
        except lmdb.Error as exc:
            raise _os_error(exc, self.path) from None
        self._txn = None
        self._batch.clear()
        self._journal.write(self._journal_batch)
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._journal_batch.clear()
        # Every page written through the map stays resident in this process (as shared file
        # pages) until it is unmapped, so the RSS would grow with the dataset: remap after each
        # commit, which costs well under a millisecond.
        map_size = self.env.info()["map_size"]
        self.env.close()
        self.env = self._open(map_size)

    def write_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        """Put and commit `items` in one transaction."""
        for key, value in items:
            self.put(key, value)
        self.commit()

    def delete_from(self, index: int) -> int:
        self._journal_batch.clear()
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
            self._begin(nbytes=256 * len(doomed))  # deletes copy pages too (writemap: in the map)
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
        digest = RecordDigest()
        for _, _, key, value_sha256 in record_digests.entries(self.journal_path.read_bytes()):
            digest.update_hashed(key, value_sha256)
        return digest.result()

    def close(self) -> None:
        self.commit()
        self._journal.close()  # kept: the dataset's per-record digests
        self.env.sync(True)
        used = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        self.env.close()
        # With writemap LMDB sizes data.mdb to the whole map. Pages past last_pgno are never
        # read, so cut the file to what is used: what a non-writemap environment looks like.
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
        # Caffe's convert_multilabel: the int part of the first label (-1 when it is missing)
        label = int(labels[0]) if np.isfinite(labels[0]) else -1
        head, tail = image_datum_frame(len(image.data), label, None if image.encoded else image.shape)
        if not image.encoded and len(image.data) != image.shape[0] * image.shape[1] * image.shape[2]:
            raise ValueError(f"raw image data holds {len(image.data)} bytes, its shape is {image.shape}")
        value = b"".join((head, image.data, tail))
        return image.with_data(value, stored=True, stored_sha256=hashlib.sha256(value).digest())

    def put(self, sample: Sample) -> None:
        key = sample.key.encode("utf-8")
        image = sample.image if sample.image.stored else self.encode_payload(sample.image, sample.labels)
        self.images.put(key, image.data, image.stored_sha256)
        self.labels.put(key, label_datum(sample.labels))

    def commit(self) -> None:
        # Images first: a crash between the two commits leaves extra image records, which resume
        # removes with truncate_from; never a label without its image.
        self.images.commit()
        self.labels.commit()

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
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True, max_readers=1)
            self._envs.append(env)
            # buffers=True: get() returns a view of the mapped pages, valid while this read
            # transaction lives; `sample` copies the record out at once, `sample_view` does not.
            opened.append(env.begin(buffers=True))
        self._img_txn, self._lbl_txn = opened
        self._pid = current_pid()

    def _load_keys(self) -> list[bytes]:
        if self._keys is None:
            self._open()
            self._keys = [bytes(k) for k in self._img_txn.cursor().iternext(values=False)]
            if self._lbl_txn is not None:
                n_labels = self._lbl_txn.stat()["entries"]
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

    def _label_value(self, key: bytes) -> np.ndarray:
        value = self._lbl_txn.get(key)
        if value is None:
            raise DatasetFormatError(f"{self.labels_path}: no label record for key {key!r}")
        return restore_missing(datum_labels(parse_datum(value)), self._stored_as)

    def labels(self, i: int) -> np.ndarray:
        keys = self._load_keys()
        self._open()
        if self._lbl_txn is not None:
            return self._label_value(keys[i])
        return datum_labels(parse_datum(self._img_txn.get(keys[i])))

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
        value = self._img_txn.get(key)
        if value is None:
            raise DatasetFormatError(f"{self.images_path}: record {key!r} vanished")
        if not view:
            value = bytes(value)  # the one copy out of the map; the pixels stay a view of it
        try:
            datum, data = split_datum(value)
        except Exception as exc:  # protobuf raises DecodeError, among others
            raise DatasetFormatError(f"{self.images_path}: record {key!r} is not a Datum ({exc})") from exc
        if datum.encoded:
            shape = self._shape or (0, 0, 0)
            data = bytes(data)  # a few KB, handed to decoders that want bytes
            payload = ImagePayload(data, True, shape, sniff_format(data))
        else:
            shape = (datum.channels, datum.height, datum.width)
            if len(data) != shape[0] * shape[1] * shape[2]:
                raise DatasetFormatError(
                    f"{self.images_path}: record {key!r} holds {len(data)} bytes, "
                    f"its shape {shape} needs {shape[0] * shape[1] * shape[2]}"
                )
            payload = ImagePayload(data, False, shape)
        labels = self._label_value(key) if self._lbl_txn is not None else datum_labels(datum)
        return Sample(index=i, key=key.decode("utf-8", errors="replace"), image=payload, labels=labels)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.sample(i)

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
        if self._pid == current_pid():
            for env in self._envs:
                env.close()
        self._envs = []
        self._img_txn = self._lbl_txn = None
        self._pid = None
