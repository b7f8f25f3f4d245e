"""The conversion pipeline: list file -> parallel decode -> backend writer, atomic and resumable.

Work happens in `<out>.partial/`. Every commit of the writer is followed by a `progress.json`
that records how far the list has been processed, so `resume=True` continues from the last commit
(anything written after it is truncated first). On success the manifest is written last and the
directory is renamed to `<out>`; a reader never mistakes a partial dataset for a complete one.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from mtldata.convert.write_stage import WriteStage
from mtldata.durable import fsync_path, write_json_atomic
from mtldata.errors import (
    DatasetStateError,
    InputError,
    MtlDataError,
    OutputError,
    SampleRejectedError,
    shorten,
)
from mtldata.storage import record_digests
from mtldata.storage.backends import WriterOptions, check_writer_options, make_writer
from mtldata.storage.image import FILE_NOT_FOUND, ImageDecodeError, ImageOptions, chw_bytes, prepare_image
from mtldata.storage.label_sources import LabelInput, open_labels
from mtldata.storage.listfile import ListEntry, ListLineError
from mtldata.storage.manifest import LabelStats, Manifest, dataset_checksums, plain_copy, write_manifest
from mtldata.storage.output_guard import (
    STAGING_MARKER,
    WriterLock,
    check_output_path,
    lock_staging,
    staging_owner,
)
from mtldata.storage.planes import DecodeBuffer
from mtldata.storage.processes import available_cores
from mtldata.storage.records import ImagePayload, Sample
from mtldata.version import __version__

PROGRESS_NAME = "progress.json"
ERRORS_NAME = "errors.tsv"
PARTIAL_SUFFIX = ".partial"  # the staging folder: storage.output_guard.staging_path
# Images go to the workers in chunks (fewer, larger messages), sized from the images seen so far
# to about CHUNK_BYTES each, so that the window of chunks in flight bounds memory for any image size.
CHUNK_BYTES = 8 << 20  # 256 px raw: 42 images a chunk (4 MB chunks cost 0.03 CPU ms an image more)
MAX_CHUNK = 64
# Commit every `commit_every` samples (convert_imageset: 1,000) or this many image bytes, whichever
# comes first: what a transaction holds stays in memory until it commits.
COMMIT_BYTES = 64 << 20
# A writer with `remap` is remapped every this many commits, so that its RSS stays flat.
REMAP_EVERY = 8
# Label statistics are taken this many rows at a time (each call costs about a millisecond of
# array operations, whatever its size), and at every commit.
STATS_ROWS = 1024
MANIFEST_ERRORS = 20  # the manifest quotes this many skipped samples; errors.tsv lists them all

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ConvertSpec:
    """Everything `convert` needs; the CLI builds one from its options."""

    list_file: Path
    output: Path
    root: Path | None = None
    num_labels: int | None = None
    label_names: tuple[str, ...] = ()
    backend: str = "lmdb"
    image: ImageOptions = field(default_factory=ImageOptions)
    check_size: bool = False
    shuffle: bool = False
    seed: int = 0
    workers: int = 0  # 0: one per core this process may run on
    strict: bool = False
    resume: bool = False
    overwrite: bool = False
    commit_every: int = 1000
    backend_options: dict[str, Any] = field(default_factory=dict)
    # Part `shard_index` of `num_shards`: a contiguous range of the (shuffled) positions, keyed as
    # in a single run, so `mtldata merge` of all parts reproduces it record for record.
    num_shards: int = 1
    shard_index: int = 0
    # More label sources joined with list_file on the image path (see storage/label_sources.py).
    labels_from: tuple[Path, ...] = ()
    allow_missing: bool = False  # nan / NA / empty cells become NaN labels instead of errors
    path_column: str | None = None  # CSV: the column holding the image path (default: the first)
    columns: tuple[str, ...] = ()  # label columns to keep, by name, in this order (default: all)
    # Caffe (--emit-prototxt): label column -> the ignore_label stored in place of a missing value,
    # and label column -> the (euclidean) task that cannot have missing values.
    missing_stored_as: dict[int, float] = field(default_factory=dict)
    missing_forbidden: dict[int, str] = field(default_factory=dict)

    @property
    def sources(self) -> tuple[Path, ...]:
        return (self.list_file, *self.labels_from)

    def resolved_root(self) -> Path:
        return self.root if self.root is not None else self.list_file.parent

    def shard_range(self, num_lines: int) -> tuple[int, int]:
        """The positions [start, stop) this part converts out of `num_lines` data lines."""
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise MtlDataError(
                f"--shard-index must be in 0..{self.num_shards - 1} for --num-shards {self.num_shards}, "
                f"got {self.shard_index}"
                if self.num_shards >= 1
                else f"--num-shards must be at least 1, got {self.num_shards}"
            )
        i, s = self.shard_index, self.num_shards
        return i * num_lines // s, (i + 1) * num_lines // s

    def fingerprint(self, list_sha256: str) -> dict[str, Any]:
        """What must not change between an interrupted run and its resume."""
        return {
            "list_sha256": list_sha256,
            # the digests already written must be of the kind the rest will be (an older mtldata's
            # partial output, with sha256 digests, is started over)
            "record_digest": record_digests.ALGORITHM,
            "root": str(self.resolved_root().resolve()),
            "num_labels": self.num_labels,
            "backend": self.backend,
            "image": asdict(self.image),
            "check_size": self.check_size,
            "shuffle": self.shuffle,
            "seed": self.seed if self.shuffle else None,
            "backend_options": {k: v for k, v in self.backend_options.items() if k != "initial_map_size"},
            # only when used, so that a resume started by an older mtldata still matches
            **({"labels_from": [str(p) for p in self.labels_from]} if self.labels_from else {}),
            **({"allow_missing": True} if self.allow_missing else {}),
            **({"path_column": self.path_column} if self.path_column else {}),
            **({"columns": list(self.columns)} if self.columns else {}),
            **(
                {"missing_stored_as": {str(c): v for c, v in self.missing_stored_as.items()}}
                if self.missing_stored_as
                else {}
            ),
        }


@dataclass(frozen=True)
class SampleError:
    """One skipped sample: where it came from and why."""

    line: int
    path: str
    reason: str


@dataclass
class ConvertResult:
    output: Path
    count: int
    skipped: int
    errors: list[SampleError]
    seconds: float  # this run's (a resumed one's: since the resume)
    manifest: dict[str, Any]
    resumed: int = 0  # of `count`, the samples an interrupted run had written before this one

    @property
    def rate(self) -> float:
        """Images this run wrote per second (a resumed run's own, not the ones before)."""
        return (self.count - self.resumed) / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class _State:
    """Resume point: what has been committed. Saved as progress.json after each commit."""

    fingerprint: dict[str, Any]
    next_position: int = 0
    written: int = 0
    error_count: int = 0
    errors_bytes: int = 0
    first_shape: list[int] | None = None
    shapes: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    stats: LabelStats = field(default_factory=LabelStats)
    # The machine's boot when this state was saved: commits are synced after they are made, so
    # after a system crash the LMDB files may hold a commit whose pages never reached the disk.
    boot_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return plain_copy(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _State:
        data = dict(data)
        data["stats"] = LabelStats(**data.get("stats", {}))
        return cls(**data)


def _worker_init(parent_pid: int) -> None:
    # Ctrl-C is the parent's to handle: it stops feeding work and leaves a resumable dataset.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _MAPPED.clear()  # a forked worker maps the arena's pages itself
    # A parent killed with SIGKILL cannot shut the pool down, and idle workers would wait on
    # their queue forever: each worker leaves on its own once the parent is gone.
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    # Compare parent pids rather than probing the parent with kill(pid, 0): a dead parent stays a
    # zombie until reaped and still answers, while its children are re-parented at once.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


PayloadEncoder = Callable[[ImagePayload, np.ndarray], ImagePayload]
# Writes the stored record into a buffer: (the payload's description, the record's length), or None
PayloadEncoderInto = Callable[[ImagePayload, np.ndarray, memoryview], "tuple[ImagePayload, int] | None"]
# A chunk of work: the image paths (None for a list error) and their stored labels, one row each
WorkChunk = tuple[list[str | None], np.ndarray]


# A worker's result whose bytes wait in the shared arena: (offset, length, encoded, shape, format,
# stored, stored_digest) of its ImagePayload. A plain tuple: it crosses the pipe per image, and a
# tuple pickles in a fraction of a dataclass's time.
_InArena = tuple


def _in_arena(payload: ImagePayload, offset: int, length: int) -> _InArena:
    return (
        offset,
        length,
        payload.encoded,
        payload.shape,
        payload.format,
        payload.stored,
        payload.stored_digest,
    )


# The shared arena: an anonymous MAP_SHARED mapping made before the pool forks its workers, so they
# inherit it. Passing decoded images through it instead of pickling them through a pipe saves about
# 0.4 ms of CPU per 256 px image (three copies and the syscalls), a third of the whole conversion.
_ARENA: mmap.mmap | None = None
ARENA_SLOT_BYTES = 2 * CHUNK_BYTES
_MADV_POPULATE_READ, _MADV_POPULATE_WRITE = 22, 23  # Linux 5.14+
_MAPPED: dict[int, int] = {}  # slot -> how many of its bytes (from its start) this process has mapped
PREFAULT_STEP = 1 << 20


def _prefault(arena: mmap.mmap, slot: int, upto: int, write: bool) -> None:
    """Map the first `upto` bytes of a slot into this process, a megabyte at a time, with madvise.

    Page by page, the first touches of the arena's pages cost each process about 40,000 page
    faults in a 2,000-image raw conversion, a tenth of its time; one madvise a megabyte does the
    same for a fraction of the cost. Only what a chunk uses is mapped (a chunk of small encoded
    images uses a megabyte of its slot). A kernel without MADV_POPULATE_* faults pages in as before.
    """
    done = _MAPPED.get(slot, 0)
    if upto <= done:
        return
    end = min(ARENA_SLOT_BYTES, -(-upto // PREFAULT_STEP) * PREFAULT_STEP)
    _MAPPED[slot] = end
    with contextlib.suppress(OSError, ValueError, AttributeError):
        arena.madvise(
            _MADV_POPULATE_WRITE if write else _MADV_POPULATE_READ, slot * ARENA_SLOT_BYTES + done, end - done
        )


_LOCAL = threading.local()


def _decode_buffer() -> DecodeBuffer:
    """This thread's decode buffer (a worker decodes every image into one, see DecodeBuffer)."""
    buffer = getattr(_LOCAL, "buffer", None)
    if buffer is None:
        buffer = _LOCAL.buffer = DecodeBuffer()
    return buffer


def _decode_chunk(
    work: WorkChunk,
    options: ImageOptions,
    encoder: PayloadEncoder | None,
    slot: int | None = None,
    encoder_into: PayloadEncoderInto | None = None,
) -> list[ImagePayload | _InArena | str | None]:
    """Worker: decode each image, then let the backend encode it (None entries pass through).

    With a `slot`, payload bytes go into that slot of the shared arena while they fit; a backend's
    `encoder_into` writes its record there itself (raw pixels transposed straight into place).
    """
    out: list[ImagePayload | _InArena | str | None] = []
    offset = end = 0
    arena = None
    if slot is not None and _ARENA is not None:
        start = offset = slot * ARENA_SLOT_BYTES
        end = start + ARENA_SLOT_BYTES
        arena = memoryview(_ARENA)
    into = encoder_into if arena is not None else None
    buffer = _decode_buffer() if into is not None else None  # what each image decodes into
    paths, all_labels = work
    try:
        for path, labels in zip(paths, all_labels, strict=True):
            if path is None:
                out.append(None)
                continue
            try:
                payload = prepare_image(path, options, planar=into is None, out=buffer)
            except ImageDecodeError as exc:
                out.append(str(exc))
                continue
            if arena is not None:  # map what this record may use of the slot
                data = payload.data  # raw pixels (maybe BGRX) take payload.shape's C*H*W bytes
                size = math.prod(payload.shape) if isinstance(data, np.ndarray) else len(data)
                _prefault(_ARENA, slot, offset - start + size + 4096, write=True)  # its bytes, and a header
            if into is not None:
                placed = into(payload, labels, arena[offset:end])  # type: ignore[index]
                if placed is not None:
                    described, size = placed
                    out.append(_in_arena(described, offset, size))
                    offset += size
                    continue
                if isinstance(payload.data, np.ndarray):  # too large for what is left of the slot
                    payload = payload.with_data(chw_bytes(payload.data))
            if encoder is not None:
                payload = encoder(payload, labels)
            size = len(payload.data)
            if arena is not None and offset + size <= end:
                arena[offset : offset + size] = payload.data
                out.append(_in_arena(payload, offset, size))
                offset += size
            else:
                out.append(payload)
    finally:
        if arena is not None:
            arena.release()
    return out


def _mp_context() -> multiprocessing.context.BaseContext:
    # Linux: fork. Workers start in milliseconds and a caller's script needs no __main__ guard;
    # ProcessPoolExecutor forks all its workers at the first submit, before its own thread starts.
    # Elsewhere (macOS, Windows) fork is unsafe or missing: spawn. Not forkserver: its server
    # outlives a parent killed with SIGKILL, holding the parent's stdout and stderr open.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


class _DecodePool:
    """Decode chunks in parallel, yielding results in submission order with a bounded window.

    With fork, results come back through the shared arena, and a chunk's payloads are views of
    its arena slot, not copies: the slot is reused only after `release(slot)`, which the caller
    calls once it has stored them (the write stage does, after its puts). The arena stays mapped
    until the pool is closed, so close it only after the last put.
    """

    def __init__(
        self,
        options: ImageOptions,
        workers: int,
        encoder: PayloadEncoder | None,
        encoder_into: PayloadEncoderInto | None,
        held: int,
    ) -> None:
        self.options, self.workers, self.encoder, self.encoder_into = options, workers, encoder, encoder_into
        # Two chunks a worker (one decoding, one queued) keep every worker busy. Each chunk in
        # flight holds an arena slot whose pages every process maps on first use: with six in
        # flight instead of four, a 2,000-image raw conversion ran 7% slower.
        self.window = 2 * workers
        # Slots for the chunks in flight, plus those the caller may hold (`held`) before releasing.
        self.slots = self.window + held + 1
        # Last freed, first reused: the slots in use stay few and their pages mapped (see _prefault).
        self._free: queue.LifoQueue[int] = queue.LifoQueue()
        self.arena: mmap.mmap | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._exiting: threading.Thread | None = None

    def __enter__(self) -> _DecodePool:
        global _ARENA
        if self.workers <= 1:
            return self
        context = _mp_context()
        if context.get_start_method() == "fork":
            # Forked workers inherit what this process imported: the JPEG decoder once here, not
            # once in every worker (0.1 to 0.3 s each, a tenth of a 2,000-image conversion).
            with contextlib.suppress(ImportError):
                import simplejpeg  # noqa: F401
        # Only with fork (the workers must inherit the mapping), and one conversion at a time per
        # process: another thread's conversion already using the arena falls back to pickled results.
        if context.get_start_method() == "fork" and _ARENA is None:
            self.arena = _ARENA = mmap.mmap(-1, self.slots * ARENA_SLOT_BYTES)
            _MAPPED.clear()  # a new arena (the workers fork after this, with nothing mapped)
            for slot in range(self.slots):
                self._free.put(slot)
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)
        )
        return self

    def let_workers_exit(self) -> None:
        """Every result is in: the workers exit (about 10 ms) while the caller writes its last
        records and closes its files; __exit__ still waits for them, so none outlives the pool."""
        if self._pool is not None and self._exiting is None:
            self._exiting = threading.Thread(
                target=self._pool.shutdown, kwargs={"wait": True}, name="mtldata-pool-exit", daemon=True
            )
            self._exiting.start()

    def __exit__(self, *exc: object) -> None:
        global _ARENA
        if self._exiting is not None:
            self._exiting.join()
        elif self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self.arena is not None:
            _ARENA = None
            # A view still referenced somewhere (a traceback's frame) keeps the map alive; it is
            # unmapped when the last one goes.
            with contextlib.suppress(BufferError):
                self.arena.close()

    def release(self, slot: int | None) -> None:
        """The caller is done with the payloads of the chunk that used `slot`."""
        if slot is not None:
            self._free.put(slot)

    def _take_slot(self) -> int:
        while True:
            try:
                return self._free.get(timeout=0.5)  # a timeout, so that Ctrl-C gets through
            except queue.Empty:
                continue

    def results(
        self, chunks: Iterator[WorkChunk]
    ) -> Iterator[tuple[list[ImagePayload | str | None], int | None]]:
        """(results, slot) per chunk, in order; pass `slot` to `release` when done with them."""
        if self._pool is None:
            for chunk in chunks:
                yield _decode_chunk(chunk, self.options, self.encoder), None  # type: ignore[misc]
            return
        pending: deque[tuple[Future, int | None]] = deque()
        try:
            for chunk in chunks:
                slot = self._take_slot() if self.arena is not None else None
                future = self._pool.submit(
                    _decode_chunk, chunk, self.options, self.encoder, slot, self.encoder_into
                )
                pending.append((future, slot))
                if len(pending) >= self.window:
                    done, slot = pending.popleft()
                    yield self._payloads(done.result(), slot), slot
            while pending:
                done, slot = pending.popleft()
                yield self._payloads(done.result(), slot), slot
        finally:
            for future, _ in pending:
                future.cancel()

    def _payloads(
        self, results: list[ImagePayload | _InArena | str | None], slot: int | None
    ) -> list[ImagePayload | str | None]:
        if self.arena is None or slot is None:
            return results  # type: ignore[return-value]
        used = max((r[0] + r[1] for r in results if isinstance(r, tuple)), default=0)
        if used:
            _prefault(self.arena, slot, used - slot * ARENA_SLOT_BYTES, write=False)
        view = memoryview(self.arena)
        return [
            ImagePayload(view[r[0] : r[0] + r[1]], *r[2:]) if isinstance(r, tuple) else r  # type: ignore[misc]
            for r in results
        ]


def _label_input(spec: ConvertSpec) -> LabelInput:
    """The spec's label sources, read as storage/label_sources.py says."""
    root = spec.resolved_root()

    def exists(path: str) -> bool:
        return (root / path).is_file()

    return open_labels(
        spec.sources,
        num_labels=spec.num_labels,
        allow_missing=spec.allow_missing,
        path_column=spec.path_column,
        columns=spec.columns,
        path_exists=exists,
    )


def current_boot_id() -> str | None:
    """This boot of the machine (Linux), to tell a resume after a system crash; None elsewhere."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _check_forbidden_missing(spec: ConvertSpec, labels: LabelInput) -> None:
    """Refuse, before anything is written, a missing value in a column Caffe cannot skip."""
    if not spec.missing_forbidden:
        return
    for item in labels.entries():
        if isinstance(item, ListEntry):
            for column, task in spec.missing_forbidden.items():
                if np.isnan(item.labels[column]):
                    raise InputError(
                        spec.list_file,
                        item.line,
                        f"{item.path}: task {task!r} is euclidean and its label is missing; Caffe's "
                        "EuclideanLoss cannot skip missing values (fill them, or drop --emit-prototxt)",
                    )


def _work_items(spec: ConvertSpec, labels: LabelInput) -> Iterator[ListEntry | ListLineError]:
    """List items in output order: the file's order, or a seeded shuffle of it."""
    items = labels.entries()
    if not spec.shuffle:
        yield from items
        return
    everything = list(items)
    order = np.random.default_rng(spec.seed).permutation(len(everything))
    for i in order:
        yield everything[i]


def _prepare_staging(
    spec: ConvertSpec, fingerprint: dict[str, Any]
) -> tuple[Path, _State | None, WriterLock]:
    """Lock the staging folder (one writer per output) and make it ready: fresh, cleared or resumed."""
    staging, existed, lock = lock_staging(spec.output, spec.overwrite, "convert", "a conversion")
    try:
        if not existed:
            return staging, None, lock
        command = staging_owner(staging).get("command", "convert")
        if spec.resume:
            progress = staging / PROGRESS_NAME
            if progress.is_file():
                state = _State.from_dict(json.loads(progress.read_text(encoding="utf-8")))
                if state.boot_id is not None and state.boot_id != current_boot_id():
                    raise DatasetStateError(
                        f"cannot resume {staging}: the machine restarted while it was being written, "
                        "and its last commits may not have reached the disk; use --overwrite to start over"
                    )
                if state.fingerprint != fingerprint:
                    changed = sorted(k for k in fingerprint if fingerprint[k] != state.fingerprint.get(k))
                    raise DatasetStateError(
                        f"cannot resume {staging}: it was started with different input or options "
                        f"({', '.join(changed)} changed); use --overwrite to start over"
                    )
                return staging, state, lock
            # Interrupted before its first commit (or a merge's leftover): nothing worth keeping.
            lock.clear()
        elif spec.overwrite:
            lock.clear()
        elif command == "merge":
            raise DatasetStateError(
                f"{staging}: holds an interrupted merge; run `mtldata merge` again with --overwrite"
            )
        else:
            raise DatasetStateError(
                f"{staging}: holds an interrupted conversion; pass --resume to continue it "
                f"or --overwrite to start over"
            )
    except BaseException:
        lock.release()
        raise
    return staging, None, lock


def convert(spec: ConvertSpec, progress: ProgressCallback | None = None) -> ConvertResult:
    """Convert an image list into a dataset directory, as described by `spec`."""
    started = time.monotonic()
    _check_inputs(spec)
    try:
        labels_in = _label_input(spec)
    except OSError as exc:
        raise MtlDataError(f"{shorten(str(spec.list_file))}: cannot read the list ({exc.strerror})") from None
    summary = labels_in.summary
    k = summary.num_labels
    if spec.label_names and len(spec.label_names) != k:
        raise MtlDataError(f"--label-names gives {len(spec.label_names)} names but the list has {k} labels")
    if not spec.label_names and labels_in.names:
        spec = replace(spec, label_names=labels_in.names)  # the header's names
    _check_forbidden_missing(spec, labels_in)
    fingerprint = spec.fingerprint(summary.sha256)
    fingerprint["num_labels"] = k
    spec.shard_range(summary.num_lines)  # a bad --shard-index fails before any work
    if spec.num_shards > 1:
        fingerprint["shard"] = [spec.shard_index, spec.num_shards]
    writer_options = WriterOptions(
        num_labels=k,
        label_names=spec.label_names,
        extra=spec.backend_options,
        encoded_images=spec.image.stores_encoded,
        destination=spec.output,
    )
    check_writer_options(spec.backend, writer_options)  # before anything is written
    staging, state, lock = _prepare_staging(spec, fingerprint)
    try:
        return _convert_locked(
            spec, labels_in, fingerprint, writer_options, staging, state, progress, started
        )
    except OSError as exc:
        # Out of space, quota, I/O error, read-only or permission denied: what was committed stays
        # in the staging folder, and a resume continues from there once the cause is fixed.
        resumable = (staging / PROGRESS_NAME).is_file()
        raise OutputError.from_os_error(exc, staging, resumable=resumable) from None
    finally:
        lock.release()


def _check_inputs(spec: ConvertSpec) -> None:
    """Errors the whole run would meet, found before any work: the list, --root, the output path."""
    list_file, root = spec.list_file, spec.resolved_root()
    if "\0" in str(list_file) or "\0" in str(root):
        raise MtlDataError(f"{shorten(repr(str(list_file)))}: a path with a NUL byte names no file")
    if not list_file.is_file():
        kind = "is not a regular file" if list_file.exists() else "no such list file"
        raise MtlDataError(f"{shorten(str(list_file))}: {kind}")
    if not root.is_dir():
        raise MtlDataError(
            f"{shorten(str(root))}: --root is not a folder (no such directory); every path in the "
            f"list is relative to it"
        )
    check_output_path(spec.output, [*spec.sources, root])


def _convert_locked(
    spec: ConvertSpec,
    labels_in: LabelInput,
    fingerprint: dict[str, Any],
    writer_options: WriterOptions,
    staging: Path,
    state: _State | None,
    progress: ProgressCallback | None,
    started: float,
) -> ConvertResult:
    """The conversion proper, in a locked staging folder."""
    summary = labels_in.summary
    k = summary.num_labels
    shard_start, shard_stop = spec.shard_range(summary.num_lines)
    writer = make_writer(spec.backend, staging, writer_options)
    if state is None:
        state = _State(fingerprint=fingerprint, next_position=shard_start)
    else:
        writer.truncate_from(state.next_position)
    errors_path = staging / ERRORS_NAME
    with open(errors_path, "a+b") as fh:
        fh.truncate(state.errors_bytes)
    errors_file = open(errors_path, "ab")  # noqa: SIM115 - kept open across the whole loop
    root = spec.resolved_root()
    root_name = str(root)  # os.path.join: a twentieth of pathlib's cost per line
    workers = spec.workers or available_cores()
    since_commit = since_commit_bytes = 0

    def save_state() -> None:
        errors_file.flush()
        os.fsync(errors_file.fileno())
        state.errors_bytes = errors_file.tell()
        write_json_atomic(staging / PROGRESS_NAME, state.to_dict())

    def record_error(line: int, path: str, reason: str) -> None:
        if spec.strict:
            raise InputError(spec.list_file, line, f"{shorten(path)}: {reason}" if path else reason)
        row = f"{line}\t{path}\t{reason}\n".replace("\r", " ")
        errors_file.write(row.encode("utf-8", errors="replace"))
        state.error_count += 1

    # A writer whose commits are not durable by themselves offers `sync` (see commit_and_save).
    sync = getattr(writer, "sync", None)
    remap = getattr(writer, "remap", None)  # drops pages read through a map, which would stay resident
    state.boot_id = current_boot_id() if sync is not None else None
    save_state()  # from the start, a resume checks that the input and options are the same
    items = _work_items(spec, labels_in)
    skip = state.next_position
    resumed = state.written  # written by the run this one resumes
    for _ in range(skip):
        next(items)
    items = islice(items, shard_stop - skip)  # this part's positions only (all of them if unsharded)

    chunk_size = 4  # until the first results tell how large an image is

    def chunks() -> Iterator[WorkChunk]:
        while True:
            chunk = [next(items, None) for _ in range(chunk_size)]
            chunk = [item for item in chunk if item is not None]
            if not chunk:
                return
            labels = np.full((len(chunk), k), np.nan, np.float32)
            for j, item in enumerate(chunk):
                if isinstance(item, ListEntry):
                    labels[j] = item.labels
            # the labels as written: a missing value of a mapped column becomes its ignore_label
            for column, value in stored_as.items():
                labels[np.isnan(labels[:, column]), column] = value
            paths = [os.path.join(root_name, i.path) if isinstance(i, ListEntry) else None for i in chunk]
            pending_items.append((chunk, labels))  # the stored labels, for the writer too
            yield paths, labels

    # The writer's puts and commits run on a thread of their own (see write_stage.py): this thread
    # keeps the books (errors, stats, the state a commit saves) and hands it whole batches.
    stage = WriteStage(max_pending=2 * workers + 2)
    sync_stage = WriteStage(max_pending=2)

    # A writer that never rejects a sample may take a batch in one call (fewer calls per image).
    put_many = getattr(writer, "put_many", None)

    def put_batch(batch: list[tuple[Sample, ListEntry]]) -> None:
        if put_many is not None:
            put_many([sample for sample, _ in batch])
            return
        for sample, item in batch:
            try:
                writer.put(sample)
            except SampleRejectedError as exc:  # the backend cannot store it: stop here
                raise InputError(spec.list_file, item.line, f"{shorten(item.path)}: {exc}") from exc

    saved: list[dict[str, Any]] = []  # the last state saved

    def sync_and_save(snapshot: dict[str, Any]) -> None:
        if sync is not None:
            sync()
        os.fsync(errors_file.fileno())
        write_json_atomic(staging / PROGRESS_NAME, snapshot)
        saved[:] = [snapshot]

    def mark_synced() -> None:
        # Everything is on disk: a resume after a restart of the machine is safe again.
        if saved and saved[0].get("boot_id") is not None:
            write_json_atomic(staging / PROGRESS_NAME, {**saved[0], "boot_id": None})

    commits = [0]

    def commit_and_save(snapshot: dict[str, Any]) -> None:
        writer.commit()
        if sync is None:
            sync_and_save(snapshot)
            return
        # The commit is durable only once synced: progress.json names it after that, on a
        # thread of its own, while this one puts the next batch (the disk works meanwhile).
        sync_stage.submit(partial(sync_and_save, snapshot))
        commits[0] += 1
        if remap is not None and commits[0] % REMAP_EVERY == 0:
            sync_stage.drain()  # the environment may close only while no sync runs
            remap()

    def count_labels() -> None:
        if new_labels:
            state.stats.add_rows(np.stack(new_labels))
            new_labels.clear()

    submitted: list[dict[str, Any]] = []  # the state of the last commit handed to the stage

    def commit() -> None:
        # The state as of the last sample handed over; it is saved once that sample is committed.
        nonlocal since_commit, since_commit_bytes, batch
        count_labels()
        errors_file.flush()
        state.errors_bytes = errors_file.tell()
        snapshot = state.to_dict()
        if not batch and submitted and submitted[0] == snapshot:
            return  # nothing since the last commit (the list ended right after it): no second one
        if batch:
            stage.submit(partial(put_batch, batch))
            batch = []
        stage.submit(partial(commit_and_save, snapshot))
        submitted[:] = [snapshot]
        since_commit = since_commit_bytes = 0

    pending_items: deque[tuple[list[ListEntry | ListLineError], np.ndarray]] = deque()
    stored_as = spec.missing_stored_as
    position = skip
    batch: list[tuple[Sample, ListEntry]] = []
    new_labels: list[np.ndarray] = []  # label rows not yet in state.stats (added a chunk at a time)
    # A backend may offer an encoder (a picklable function) that turns a decoded payload into
    # its stored form, so that serialisation runs in the decode workers, not here.
    encoder = getattr(writer, "encode_payload", None)
    encoder_into = getattr(writer, "encode_payload_into", None)
    decoder = _DecodePool(spec.image, workers, encoder, encoder_into, held=stage.max_pending)
    try:
        with decoder:  # closed (arena unmapped) only once the stage has stopped
            try:
                for results, slot in decoder.results(chunks()):
                    sizes = [len(r.data) for r in results if isinstance(r, ImagePayload)]
                    if sizes:
                        chunk_size = max(1, min(MAX_CHUNK, CHUNK_BYTES * len(sizes) // max(1, sum(sizes))))
                    chunk, stored_rows = pending_items.popleft()
                    for item, result, stored in zip(chunk, results, stored_rows, strict=True):
                        if isinstance(item, ListLineError):
                            record_error(item.line, "", item.reason)
                        elif isinstance(result, str):
                            record_error(item.line, item.path, _quoted_path_hint(item.path, result))
                        elif (reason := _size_mismatch(spec, state, result)) is not None:
                            record_error(item.line, item.path, reason)
                        else:
                            labels = np.asarray(item.labels, dtype=np.float32)
                            key = f"{position:08d}_{item.path}"
                            batch.append((Sample(position, key, result, stored), item))
                            state.written += 1
                            new_labels.append(labels)
                            shape_key = "x".join(map(str, result.shape))
                            state.shapes[shape_key] = state.shapes.get(shape_key, 0) + 1
                            state.formats[result.format] = state.formats.get(result.format, 0) + 1
                            since_commit += 1
                            since_commit_bytes += len(result.data)
                        position += 1
                        state.next_position = position
                        if since_commit >= spec.commit_every or since_commit_bytes >= COMMIT_BYTES:
                            commit()
                        if progress is not None:
                            progress(position - shard_start, shard_stop - shard_start)
                    if len(new_labels) >= STATS_ROWS:
                        count_labels()
                    if batch:
                        stage.submit(partial(put_batch, batch))
                        batch = []
                    # the chunk's payloads are views of its arena slot: free it once they are stored
                    stage.submit(partial(decoder.release, slot), always=True)
                decoder.let_workers_exit()
                commit()
                stage.finish()
                sync_stage.finish()
            except InputError:
                stage.abandon()
                sync_stage.abandon()
                raise
            except OSError:
                stage.abandon()
                sync_stage.abandon()
                raise
            except BaseException:
                # Ctrl-C: what was handed to the write stage is still written, committed and synced,
                # as it was before the stage had threads of its own (a second Ctrl-C stops the wait).
                with contextlib.suppress(Exception):
                    stage.finish()
                    sync_stage.finish()
                    mark_synced()
                raise
            finally:
                batch = []
        files = writer.close()
    except InputError:
        # --strict: the first bad sample stops the run and no dataset is left behind.
        errors_file.close()
        writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError:
        # A full disk or an I/O error: release the files (the caller may resume in this process).
        abandon = getattr(writer, "abandon", None)
        if abandon is not None:
            abandon()
        raise
    finally:
        errors_file.close()

    errors = read_errors(staging / ERRORS_NAME)
    manifest = _build_manifest(spec, summary, state, files, k, errors)
    if spec.allow_missing:
        manifest.missing_labels = missing_labels_entry(state.stats, spec.missing_stored_as)
    if spec.labels_from or labels_in.sources != (str(spec.list_file),):
        manifest.source["sources"] = list(labels_in.sources)
    # Checksums the writer kept while writing (LMDB's digest journal), else read back from disk.
    manifest.checksums = dataset_checksums(staging, files, getattr(writer, "checksums", None))
    write_manifest(staging, manifest)
    (staging / PROGRESS_NAME).unlink()
    fsync_path(staging)
    _publish(staging, spec.output)
    return ConvertResult(
        output=spec.output,
        count=state.written,
        skipped=state.error_count,
        errors=errors,
        seconds=time.monotonic() - started,
        manifest=manifest.to_dict(),
        resumed=resumed,
    )


def missing_labels_entry(stats: LabelStats, stored_as: dict[int, float]) -> dict[str, Any]:
    """The manifest's `missing_labels`: how many values are missing, and how a Caffe-bound dataset stores them."""
    return {
        "count": int(sum(stats.missing)),
        "by_column": list(stats.missing),
        # column -> the ignore_label written in place of NaN; mtldata's readers turn it back into NaN
        "stored_as": {str(c): float(v) for c, v in sorted(stored_as.items())},
    }


def _quoted_path_hint(path: str, reason: str) -> str:
    """`reason`, with a hint when a missing file's path is quoted: a list file's path is everything
    before its labels, quotes included (as convert_imageset reads it), and may hold spaces as it is."""
    if reason == FILE_NOT_FOUND and len(path) > 1 and path[0] == path[-1] and path[0] in "\"'":
        return f"{reason} (the quotes are read as part of the path: write it without them, spaces and all)"
    return reason


def _size_mismatch(spec: ConvertSpec, state: _State, payload: ImagePayload) -> str | None:
    """convert_imageset's --check_size: every image must have the first image's size."""
    if not spec.check_size:
        return None
    if state.first_shape is None:
        state.first_shape = list(payload.shape)
        return None
    if list(payload.shape) == state.first_shape:
        return None
    got, want = ("x".join(map(str, s)) for s in (payload.shape, state.first_shape))
    return f"image is {got} (CxHxW) but --check-size expects {want}, the size of the first image"


def read_errors(path: Path) -> list[SampleError]:
    """The skipped samples recorded in an errors.tsv."""
    if not path.is_file():
        return []
    out = []
    for row in path.read_text(encoding="utf-8").splitlines():
        line, sample_path, reason = row.split("\t", 2)
        out.append(SampleError(int(line), sample_path, reason))
    return out


def _publish(staging: Path, out: Path) -> None:
    """Move the finished dataset into place; an old one (with --overwrite) goes only afterwards."""
    (staging / STAGING_MARKER).unlink(missing_ok=True)  # a published dataset is no staging folder
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(staging, out)
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def _build_manifest(
    spec: ConvertSpec,
    summary: Any,
    state: _State,
    files: dict[str, Any],
    k: int,
    errors: list[SampleError],
) -> Manifest:
    names = list(spec.label_names) or [f"label_{j}" for j in range(k)]
    shapes = {tuple(int(x) for x in s.split("x")): n for s, n in state.shapes.items()}
    single = next(iter(shapes)) if len(shapes) == 1 else None
    image: dict[str, Any] = {
        "shape": list(single) if single else None,
        "shapes": {"x".join(map(str, s)): n for s, n in sorted(shapes.items())},
        "channels": sorted({s[0] for s in shapes}),
        "layout": "CHW",
        "dtype": "uint8",
        "color_order": "gray" if spec.image.gray else "BGR",
        "encoded": spec.image.encoded or bool(spec.image.encode_type),
        "formats": dict(sorted(state.formats.items())),
    }
    if shapes:
        image["min_hw"] = [min(s[1] for s in shapes), min(s[2] for s in shapes)]
        image["max_hw"] = [max(s[1] for s in shapes), max(s[2] for s in shapes)]
    options = {
        "gray": spec.image.gray,
        "resize_width": spec.image.resize_width,
        "resize_height": spec.image.resize_height,
        "resize_mode": spec.image.resize_mode,
        "encoded": spec.image.encoded,
        "encode_type": spec.image.encode_type,
        "validate": spec.image.validate,
        "check_size": spec.check_size,
        "shuffle": spec.shuffle,
        "seed": spec.seed if spec.shuffle else None,
        "strict": spec.strict,
        **{k_: v for k_, v in spec.backend_options.items() if k_ != "initial_map_size"},
    }
    return Manifest(
        backend=spec.backend,
        count=state.written,
        num_labels=k,
        label_names=names,
        image=image,
        files={**files, "errors": ERRORS_NAME},
        source={
            "list_file": str(spec.list_file),
            "list_sha256": summary.sha256,
            "root": str(spec.resolved_root()),
            "data_lines": summary.num_lines,
            "num_labels_inferred": summary.inferred,
        },
        options=options,
        errors={
            "count": state.error_count,
            "file": ERRORS_NAME,
            "first": [asdict(e) for e in errors[:MANIFEST_ERRORS]],
        },
        label_stats=state.stats.summary(names),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        mtldata_version=__version__,
        shard=(
            {
                "index": spec.shard_index,
                "count": spec.num_shards,
                "positions": list(spec.shard_range(summary.num_lines)),
            }
            if spec.num_shards > 1
            else None
        ),
    )
