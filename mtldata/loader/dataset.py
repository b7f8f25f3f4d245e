"""A PyTorch map-style dataset over any dataset the readers open: `(image, {task: target})` per sample.

Images come out as Caffe's Data layer sees them: planar (C, H, W) in the stored channel order (BGR),
transformed by Caffe's DataTransformer rules (`TransformSpec`), or as untouched uint8 for a transform
done later on the whole batch (`output="uint8"`, then `CaffeTransform.apply_batch` on the GPU).
Targets are the label vector cut per task as a Caffe Slice layer does (`LabelSlicer`).

Fork safety: the dataset holds a reader whose LMDB environments / HDF5 files open lazily in the
process that first reads, and reopen in any other process (a forked DataLoader worker never uses its
parent's handles); pickling (the spawn start method) carries paths, never handles.

Batches: `__getitems__` reads a whole DataLoader batch at once and writes the pixels straight into
one (N, C, H, W) tensor (in shared memory inside a worker, so sending it to the main process copies
nothing); `collate_uint8` hands that tensor on as it is. Any other collate function still sees the
usual list of `(image, targets)` pairs. Batch memory is recycled once nothing views it any more
(in the main process always; in workers whenever the batch went through a `MultiTaskCollate`, such
as `collate_uint8`), since touching fresh memory can cost more than loading the batch. Decoded
(encoded-record) uint8 batches are laid out channels_last (the decoder's HxWxC order, so no
transpose on the loading core); their values and shape are the same, and `.contiguous()` gives
NCHW strides. Transformed float batches are contiguous.
"""

from __future__ import annotations

import io
import math
import os
import weakref
from collections.abc import Callable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler, default_collate, get_worker_info

from mtldata.errors import DatasetFormatError, MtlDataError, WorkerDataError
from mtldata.loader.transforms import CaffeTransform, TransformError, TransformSpec
from mtldata.storage.backends import DatasetReader, open_reader
from mtldata.storage.image import ImageDecodeError, decode_bytes
from mtldata.storage.label_check import check_dataset_labels
from mtldata.storage.processes import current_pid
from mtldata.storage.records import Sample
from mtldata.tasks import LabelSlicer, TaskSet, TaskSpec, load_tasks

__all__ = [
    "MultiTaskCollate",
    "MultiTaskDataset",
    "ShardedSequentialSampler",
    "collate_uint8",
    "open_dataset",
]

PHASES = ("train", "test")
OUTPUTS = ("float", "uint8")
LAYOUTS = ("strided", "contiguous")
LABEL_TASK = "label"  # the single target's name when no tasks are given

Targets = dict[str, torch.Tensor]
Transform = CaffeTransform | Callable[[torch.Tensor], torch.Tensor]

# Pillow modes OpenCV's imdecode(IMREAD_UNCHANGED) returns with one channel.
_GRAY_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def open_dataset(
    path: str | os.PathLike[str] | DatasetReader,
    *,
    tasks: TaskSet | Sequence[TaskSpec] | str | os.PathLike[str] | None = None,
    transform: TransformSpec | Transform | None = None,
    phase: str = "train",
    labels: str | os.PathLike[str] | None = None,
    output: str = "float",
    seed: int = 0,
    check_labels: bool = True,
    max_sample_bytes: int | None = None,
    max_classes: int | None = None,
) -> MultiTaskDataset:
    """Open a dataset for PyTorch: an mtldata dataset, a plain Caffe LMDB, an image LMDB plus its
    float-label LMDB (`labels`), an HDF5 dataset, or a reader already open.

    `tasks` is a TaskSet, a list of TaskSpec, or a tasks.toml path; without it each sample has one
    target "label", the whole label vector (float32). `transform` is a TransformSpec (Caffe's
    DataTransformer in `phase`), a CaffeTransform, or any callable taking the (C, H, W) tensor. `output="uint8"`
    returns pixels untransformed and keeps the transform on `dataset.transform` for the batch.
    `seed` seeds the random crops and mirrors (mixed with torch's worker seed inside workers).
    With `tasks`, every label is checked against them first (from the manifest's summary when it
    proves them valid, else by reading the labels once); `check_labels=False` skips that.
    `max_sample_bytes` (default 1 GiB) and `max_classes` (default 2**24, for a tasks.toml path) raise
    the limits past which a stored sample or a softmax task is refused before any allocation.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if isinstance(path, (str, os.PathLike)):
        reader = _shared_reader(Path(path), None if labels is None else Path(labels), max_sample_bytes)
    elif labels is not None:
        raise ValueError("labels applies to a path; pass an open reader with its labels already attached")
    elif isinstance(path, DatasetReader):
        reader = path
    else:
        raise TypeError(f"path must be a dataset path or a DatasetReader, got {type(path).__name__}")

    num_labels = _num_labels(reader)
    taskset = _resolve_tasks(tasks, num_labels, max_classes)
    if taskset is not None and check_labels:
        check_dataset_labels(
            reader,
            taskset,
            tasks_file=tasks if isinstance(tasks, (str, os.PathLike)) else None,
            dataset=path if isinstance(path, (str, os.PathLike)) else None,
        )
    if isinstance(transform, TransformSpec):
        transform = CaffeTransform(transform, phase)
    elif transform is not None and not callable(transform):
        raise TypeError(f"transform must be a TransformSpec or a callable, got {type(transform).__name__}")
    return MultiTaskDataset(
        reader, tasks=taskset, transform=transform, phase=phase, output=output, seed=int(seed)
    )


# py-lmdb refuses to open an environment twice in one process, so datasets opened on the same files
# (say a "train" and a "test" view of one LMDB) share one reader; it opens lazily and is stateless.
_READERS: weakref.WeakValueDictionary[tuple[str, str | None], DatasetReader] = weakref.WeakValueDictionary()


def _shared_reader(path: Path, labels: Path | None, max_sample_bytes: int | None = None) -> DatasetReader:
    key = (_identity(path), None if labels is None else _identity(labels))
    reader = _READERS.get(key)
    if reader is None:
        paths = (key[0][0], None if key[1] is None else key[1][0])
        stale = _LATEST.get(paths)
        if stale is not None:
            # The files were replaced: the old reader lets go of them (py-lmdb may take a new file
            # that reuses an old inode for the old, still open one); it reopens what is there on use.
            stale.close()
        reader = open_reader(path, labels, max_sample_bytes=max_sample_bytes)
        try:
            _READERS[key] = reader
            _LATEST[paths] = reader
        except TypeError:  # a reader type without weak references: not shared
            pass
    return reader


# The newest reader of each path, to be closed when its files are replaced.
_LATEST: weakref.WeakValueDictionary[tuple[str, str | None], DatasetReader] = weakref.WeakValueDictionary()


def _identity(path: Path) -> tuple[Any, ...]:
    """What names a dataset's current files: its real path plus the inode and mtime of the files
    that say what it holds, so a dataset replaced on disk (renamed over, copied anew) gets a new
    reader instead of the cached one of the old files. An LMDB whose data.mdb keeps its inode is the
    same environment to py-lmdb (which refuses a second open of it), hence the same reader."""
    real = os.path.realpath(path)
    stamps: list[tuple[str, int, int, int]] = []
    files = ("",) if os.path.isfile(real) else _IDENTITY_FILES
    for name in files:
        try:
            st = os.stat(os.path.join(real, name))
        except OSError:
            continue
        lmdb_file = name.endswith("data.mdb")  # py-lmdb's own identity of an environment
        stamps.append((name, st.st_dev, st.st_ino, 0 if lmdb_file else st.st_mtime_ns))
    return (real, *stamps)


_IDENTITY_FILES = (
    "manifest.json",
    "data.mdb",
    "images.lmdb/data.mdb",
    "labels.lmdb/data.mdb",
    "hdf5_list.txt",
)


def _num_labels(reader: DatasetReader) -> int | None:
    """K, the label vector length: from the manifest, else from the first record (None if empty)."""
    manifest = getattr(reader, "manifest", None)
    if isinstance(manifest, dict) and isinstance(manifest.get("num_labels"), int):
        return manifest["num_labels"]
    if len(reader) == 0:
        return None
    return int(np.asarray(reader.labels(0)).size)


def _resolve_tasks(tasks: Any, num_labels: int | None, max_classes: int | None = None) -> TaskSet | None:
    if tasks is None:
        return None
    if isinstance(tasks, (str, os.PathLike)):
        # Passed as a Path: load_tasks takes a str holding '=' or a newline for TOML text.
        return load_tasks(Path(tasks), num_labels=num_labels, max_classes=max_classes)
    if isinstance(tasks, TaskSet):
        taskset = tasks
    elif isinstance(tasks, Sequence) and all(isinstance(t, TaskSpec) for t in tasks):
        if num_labels is None:
            raise ValueError("an empty dataset has no label length; pass a TaskSet with num_labels")
        taskset = TaskSet(tuple(tasks), num_labels=num_labels)
    else:
        raise TypeError(f"tasks must be a TaskSet, a list of TaskSpec or a tasks.toml path, got {tasks!r}")
    if num_labels is not None and taskset.num_labels != num_labels:
        raise ValueError(
            f"the tasks are defined over num_labels = {taskset.num_labels} but the dataset's label "
            f"vectors hold {num_labels} values"
        )
    return taskset


class _Batch(list):
    """The `(image, targets)` pairs of one batch, plus the batch already stacked (for collate_uint8)."""

    images: torch.Tensor | None
    targets: Targets


class MultiTaskDataset(Dataset):
    """Map-style dataset: `ds[i]` is `(image (C, H, W) tensor, {task name: target tensor})`.

    Targets follow `LabelSlicer.from_tasks`: softmax -> int64 scalar, sigmoid/euclidean -> float32 (k,);
    without tasks, "label" -> float32 (K,). Build it with `open_dataset`.
    """

    def __init__(
        self,
        reader: DatasetReader,
        *,
        tasks: TaskSet | None,
        transform: Transform | None,
        phase: str,
        output: str,
        seed: int,
    ) -> None:
        self.reader = reader
        self.tasks = tasks
        self.slicer = LabelSlicer.from_tasks(tasks) if tasks is not None else None
        self.transform = transform
        self.phase = phase
        self.output = output
        self.seed = seed
        self._decode_mode = _decode_mode(reader, transform)
        self._generator: torch.Generator | None = None
        self._generator_owner: tuple[int, int | None] | None = None

    def __repr__(self) -> str:
        tasks = ", ".join(self.tasks.names) if self.tasks is not None else LABEL_TASK
        return (
            f"MultiTaskDataset({len(self)} samples, tasks=[{tasks}], transform={self.transform!r}, "
            f"phase={self.phase!r}, output={self.output!r})"
        )

    def __len__(self) -> int:
        return len(self.reader)

    def key(self, i: int) -> str:
        """The stored key of sample `i` (Caffe's `%08d_<path>`)."""
        return self.reader.key(self._check_index(i))

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.tasks.names if self.tasks is not None else (LABEL_TASK,)

    def close(self) -> None:
        """Close the reader's handles (shared by datasets on the same files; they reopen on use)."""
        self.reader.close()

    def __enter__(self) -> MultiTaskDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_generator=None, _generator_owner=None)  # every process seeds its own
        return state

    def _check_index(self, i: int) -> int:
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"sample indices are integers, got {i!r}")
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"sample index {i} is out of range for a dataset of {n}")
        return j

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Targets]:
        """One sample, read on its own (a user's own Dataset wrapper calls this per index): the same
        tensors `__getitems__` gives for it, without a batch's set-up (one image's own memory, its
        targets cut from one label row), which dominates for small images."""
        j = self._check_index(i)
        # a view of the record where the reader offers one: copied (once) before the next read
        sample = (getattr(self.reader, "sample_view", None) or self.reader.sample)(j)
        try:
            pixels, _ = self._pixels(sample, _NO_SLOT)
        except ImageDecodeError as exc:
            raise _undecodable(self.reader, sample.key, exc) from None
        if pixels.flags.writeable:  # a decoder's fresh array: the tensor takes it over
            image = torch.from_numpy(pixels)
        else:  # a view of the record: one copy into memory of its own
            image = torch.from_numpy(np.array(pixels))
        row = np.asarray(sample.labels).ravel()
        if self.slicer is None:
            targets = {LABEL_TASK: torch.from_numpy(row.astype(np.float32))}  # (K,), a copy of its own
        else:
            targets = {name: t[0] for name, t in self._targets([row], [sample.key]).items()}
        return self._finish([image])[0], targets

    def __getitems__(self, indices: Sequence[int]) -> _Batch:
        """Read the samples of one batch; DataLoader calls this instead of one `ds[i]` per index."""
        try:
            return self._read_batch(indices)
        except MtlDataError as exc:
            if get_worker_info() is None:
                raise
            # torch would wrap it in the worker's traceback; this type keeps it to its one line
            raise WorkerDataError(str(exc)) from None

    def _read_batch(self, indices: Sequence[int]) -> _Batch:
        positions = [self._check_index(i) for i in indices]
        rows: list[np.ndarray] = []
        keys: list[str] = []
        stack = _BatchBuilder(len(positions))
        # A reader's `sample_view` hands out pixels without copying them out of its storage, valid
        # until its next read or close: each image is copied into the batch before the next read.
        read = getattr(self.reader, "sample_view", None) or self.reader.sample
        for i in positions:
            # One record at a time, copied into the batch at once: holding a whole batch of record
            # bytes would make every batch touch fresh memory (page faults cost more than the copy).
            sample = read(i)
            rows.append(np.asarray(sample.labels).ravel())
            keys.append(sample.key)
            try:
                stack.add(*self._pixels(sample, stack))
            except ImageDecodeError as exc:
                raise _undecodable(self.reader, sample.key, exc) from None
            del sample
        targets = self._targets(rows, keys)
        images = self._finish(stack.result())
        per_image = images.unbind(0) if isinstance(images, torch.Tensor) else images
        per_task = {name: t.unbind(0) for name, t in targets.items()}
        batch = _Batch(
            (per_image[j], {name: v[j] for name, v in per_task.items()}) for j in range(len(positions))
        )
        batch.images = images if isinstance(images, torch.Tensor) else None
        batch.targets = targets
        return batch

    # ---------------------------------------------------------------------------------------------
    # Targets

    def _targets(self, rows: list[np.ndarray], keys: list[str]) -> Targets:
        if not rows:
            labels = np.zeros((0, self.tasks.num_labels if self.tasks is not None else 0), np.float32)
        elif len({r.size for r in rows}) != 1:
            lengths = sorted({r.size for r in rows})
            raise DatasetFormatError(
                f"label vectors of different lengths {lengths} in one batch (keys {keys[0]!r} ... {keys[-1]!r})"
            )
        else:
            labels = np.stack(rows)
        if self.slicer is None:
            return {LABEL_TASK: torch.from_numpy(labels.astype(np.float32, copy=False))}
        return self.slicer(labels)

    # ---------------------------------------------------------------------------------------------
    # Images

    def _finish(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Apply the output mode and transform to a stacked batch, or image by image to a list."""
        floating = (
            images.dtype if isinstance(images, torch.Tensor) else _list_dtype(images)
        ).is_floating_point
        if floating:
            if self.output == "uint8":
                raise TransformError("this dataset holds float images; output='uint8' needs uint8 pixels")
            if isinstance(self.transform, CaffeTransform):
                raise TransformError(
                    "this dataset holds float images (HDF5): Caffe's HDF5Data layer takes no "
                    "transform_param, so a TransformSpec cannot apply; pass a callable instead"
                )
        if isinstance(images, torch.Tensor):
            return self._finish_batch(images)
        # Images of different sizes: each stays its own tensor (a crop_size can even them out).
        return [self._finish_one(img) for img in images]

    def _pixels(self, sample: Sample, stack: _BatchBuilder) -> tuple[np.ndarray, bool]:
        """(C, H, W) pixels of a sample: a view of the record's bytes, or of the decoder's HxWxC
        array; and whether they were decoded straight into the batch's next image (`stack`)."""
        payload = sample.image
        data = payload.data
        if not payload.encoded:
            # "raw": uint8 pixels; "float32": float data (an HDF5 file of already-transformed inputs)
            dtype = np.float32 if payload.format == "float32" else np.uint8
            return np.frombuffer(data, dtype).reshape(payload.shape), False
        gray = self._decode_mode == "gray" or (self._decode_mode == "native" and _is_gray(data))
        slot = stack.next_slot()
        decoded = decode_bytes(data, gray=gray, out=slot)
        placed = decoded is slot
        return (decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1)), placed

    def _finish_batch(self, batch: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.output == "uint8" or (self.transform is None and batch.dtype == torch.float32):
            return batch
        if self.transform is None:
            return _empty(tuple(batch.shape), torch.float32).copy_(batch)
        if isinstance(self.transform, CaffeTransform):
            return self.transform.apply_batch(batch, self._rng())
        outs = [self.transform(img) for img in batch]
        if outs and all(isinstance(o, torch.Tensor) and o.shape == outs[0].shape for o in outs):
            return _stack(outs)
        return outs

    def _finish_one(self, img: torch.Tensor) -> torch.Tensor:
        if self.output == "uint8" or self.transform is None:
            return (
                img
                if self.output == "uint8"
                else img.to(torch.float32, memory_format=torch.contiguous_format)
            )
        if isinstance(self.transform, CaffeTransform):
            return self.transform(img, self._rng())
        return self.transform(img)

    def _rng(self) -> torch.Generator:
        """This process's generator for crops and mirrors: `seed` in the main process, mixed with
        torch's per-worker seed in a DataLoader worker (so runs repeat under torch.manual_seed)."""
        info = get_worker_info()
        owner = (current_pid(), None if info is None else info.seed)
        if self._generator is None or self._generator_owner != owner:
            seed = self.seed % 2**64
            if info is not None:
                seed = (info.seed ^ (seed * 0x9E3779B97F4A7C15 + 1)) % 2**64
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_owner = owner
        return self._generator


def _undecodable(reader: DatasetReader, key: str, exc: Exception) -> DatasetFormatError:
    """The one-line error for a stored image that does not decode, naming the dataset and the key."""
    return DatasetFormatError(
        f"{_reader_name(reader)}: record {key!r}: the stored image does not decode ({exc})"
    )


def _reader_name(reader: DatasetReader) -> str:
    """The file a reader reads, for messages: an LMDB's folder, an HDF5 list or first file."""
    for name in ("images_path", "source"):
        if getattr(reader, name, None) is not None:
            return str(getattr(reader, name))
    files = getattr(reader, "files", None)
    return str(files[0]) if files else type(reader).__name__


def _decode_mode(reader: DatasetReader, transform: Any) -> str:
    """How encoded records decode: "gray", "color", or "native" (as the file is, like Caffe)."""
    spec = transform.spec if isinstance(transform, CaffeTransform) else None
    if spec is not None and spec.force_gray:
        return "gray"
    if spec is not None and spec.force_color:
        return "color"
    manifest = getattr(reader, "manifest", None)
    if isinstance(manifest, dict):
        order = (manifest.get("image") or {}).get("color_order")
        return "gray" if order == "gray" else "color"
    # A Caffe LMDB: its DataTransformer decodes with imdecode(-1), keeping the file's channels.
    return "native"


def _is_gray(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.mode in _GRAY_MODES
    except Exception:  # noqa: BLE001 - decode_bytes reports the real error
        return False


def _empty(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
    """An uninitialised tensor for a batch; (N, C, H, W) ones optionally in channels_last format.

    Fresh memory is expensive here: its page faults can cost more than filling the batch. In the
    main process the memory comes from a pool this process refills only once no tensor views it
    any more; inside a DataLoader worker the batch lives in shared memory, as default_collate does,
    so that sending it to the main process copies nothing (from the worker's pool once a
    `MultiTaskCollate` turned it on).
    """
    layout = (shape[0], shape[2], shape[3], shape[1]) if channels_last else tuple(shape)
    nbytes = math.prod(layout) * torch.empty((), dtype=dtype).element_size()
    if get_worker_info() is not None:
        storage = _enable_worker_pool(0).new_buffer(nbytes)
        out = torch.empty(0, dtype=dtype).set_(storage, 0, layout)
    else:
        out = _LOCAL_POOL.tensor(nbytes, dtype, layout)
    return out.permute(0, 3, 1, 2) if channels_last else out


class _LocalPool:
    """Batch memory of this process, handed out again once every tensor viewing it is gone.

    The memory is a numpy array the pool owns (numpy also asks Linux for huge pages on large
    arrays); each batch gets a new torch storage over it, and a finalizer on that storage (torch
    keeps one Python object per storage while it lives) returns the memory when the storage dies.
    Memory that leaves the process (`share_memory_`, a worker queue) is copied by torch first.
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self.free: list[np.ndarray] = []
        self.pid = current_pid()

    def tensor(self, nbytes: int, dtype: torch.dtype, layout: tuple[int, ...]) -> torch.Tensor:
        if self.pid != current_pid():  # a forked child: start its own pool
            self.free, self.pid = [], current_pid()
        memory = None
        for k, candidate in enumerate(self.free):
            if nbytes <= candidate.nbytes <= 2 * nbytes:
                memory = self.free.pop(k)
                break
        if memory is None:
            memory = np.empty(max(nbytes, 1), np.uint8)
        view = memory[:nbytes]
        out = torch.from_numpy(view).view(dtype).view(layout) if nbytes else torch.empty(layout, dtype=dtype)
        weakref.finalize(out.untyped_storage(), self._give_back, memory, self.pid)
        return out

    def _give_back(self, memory: np.ndarray, pid: int) -> None:
        if pid == self.pid and len(self.free) < self.keep:
            self.free.append(memory)


_LOCAL_POOL = _LocalPool()


class _NoBatch:
    """Where `_pixels` decodes a lone sample: nowhere in particular (the decoder's own array)."""

    @staticmethod
    def next_slot() -> None:
        return None


_NO_SLOT: Any = _NoBatch()


class _BatchBuilder:
    """Copies (C, H, W) arrays into one (N, C, H, W) tensor as they arrive; falls back to a list of
    tensors when their shapes or dtypes differ.

    Decoded colour images arrive as HxWxC seen as (C, H, W); their batch is then allocated in
    channels_last memory format, so each image is one contiguous copy instead of a transpose.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.batch: torch.Tensor | None = None
        self.batch_np: np.ndarray | None = None
        self.singles: list[torch.Tensor] | None = None

    def next_slot(self) -> np.ndarray | None:
        """Where the next image goes in the batch, shaped as a decoder writes it (HxWxC, or HxW for
        one channel), once the batch exists and that place is contiguous; else None. Decoding
        straight into it saves copying every image once more."""
        if self.batch_np is None or self.count >= self.n:
            return None
        slot = self.batch_np[self.count]
        slot = slot[0] if slot.shape[0] == 1 else slot.transpose(1, 2, 0)
        return slot if slot.flags.c_contiguous else None

    def add(self, pixels: np.ndarray, placed: bool = False) -> None:
        """Append one (C, H, W) image; `placed` says it already sits in the slot `next_slot` gave."""
        dtype = torch.uint8 if pixels.dtype == np.uint8 else torch.float32
        j = self.count
        self.count += 1
        if placed:
            return
        if self.singles is None:
            if self.batch is None:
                channels_last = pixels.shape[0] > 1 and pixels.transpose(1, 2, 0).flags.c_contiguous
                self.batch = _empty((self.n, *pixels.shape), dtype, channels_last)
                self.batch_np = self.batch.numpy()
            if tuple(self.batch.shape[1:]) == pixels.shape and self.batch.dtype == dtype:
                np.copyto(self.batch_np[j], pixels, casting="same_kind")
                return
            self.singles = [self.batch[k].contiguous() for k in range(j)]
            self.batch = self.batch_np = None
        self.singles.append(
            torch.from_numpy(np.array(pixels, dtype=np.uint8 if dtype == torch.uint8 else np.float32))
        )

    def result(self) -> torch.Tensor | list[torch.Tensor]:
        if self.singles is not None:
            return self.singles
        return self.batch if self.batch is not None else torch.empty((0, 0, 0, 0), dtype=torch.uint8)


def _list_dtype(images: list[torch.Tensor]) -> torch.dtype:
    return torch.float32 if any(img.is_floating_point() for img in images) else torch.uint8


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    out = _empty((len(tensors), *tensors[0].shape), tensors[0].dtype)
    return torch.stack(list(tensors), 0, out=out)


class MultiTaskCollate:
    """Collate `(image, targets)` pairs into `(images (N, C, H, W), {task: (N, ...)})`.

    Meant for `output="uint8"` (no per-sample float conversion; transform the batch later with
    `dataset.transform.apply_batch`), but stacks float images too. A batch from the dataset's
    `__getitems__` is already stacked and is passed on without a copy. Works with `pin_memory`.

    Each DataLoader worker keeps up to `pool_size` shared-memory batch buffers and refills one only
    once the main process has released every tensor viewing it, instead of mapping fresh shared
    memory per batch (whose page faults can cost more than loading the batch). `prefetch_factor + 2`
    buffers let every batch reuse one (the default covers `prefetch_factor=4`, which keeps both
    workers of a 2-core machine busy where 2 let one idle while the other's batch, due first, was
    late); buffers are made only as batches need them. By default the batch the
    main process gets views the buffer through a storage torch does not count as shared, so
    sending it on to another process (a multiprocessing queue, say) copies it out first, as for
    any ordinary tensor: a batch is never overwritten while anyone can see it, and nothing is
    copied otherwise. The targets travel inside the message (they are small): the images' buffer
    is the only memory a batch shares, which keeps the per-batch cost of the hand-over low.

    `reuse_shared_memory=True` hands out the worker's shared storage itself (the behaviour before
    this became the default, kept for code that relies on `is_shared()`). With it, do not send a
    received batch to yet another process without cloning it, since torch then passes the
    buffer along without a copy and the worker may refill it once this process lets go of it.
    """

    def __init__(self, reuse_shared_memory: bool = False, pool_size: int = 6) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.reuse_shared_memory = reuse_shared_memory
        self.pool_size = pool_size

    def __repr__(self) -> str:
        return f"MultiTaskCollate(reuse_shared_memory={self.reuse_shared_memory}, pool_size={self.pool_size})"

    def __call__(self, batch: Sequence[tuple[torch.Tensor, Targets]]) -> tuple[torch.Tensor, Targets]:
        images, targets = _collate(batch)
        if get_worker_info() is None:
            return images, targets
        storage = images.untyped_storage()
        if not storage.is_shared():
            return images, targets
        pool = _enable_worker_pool(self.pool_size)
        # None when every buffer is still out (or this one is not the pool's): not reused then
        flag = pool.keep(storage, in_buffer=not self.reuse_shared_memory)
        return _SentBatch(images, targets, flag)


def _collate(batch: Sequence[tuple[torch.Tensor, Targets]]) -> tuple[torch.Tensor, Targets]:
    if isinstance(batch, _Batch) and batch.images is not None:
        return batch.images, batch.targets
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [item[0] for item in batch]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(
            f"images in one batch differ in shape {sorted(shapes)}: resize them at conversion "
            "or set a crop_size"
        )
    names = batch[0][1].keys()
    return _stack(images), {name: default_collate([item[1][name] for item in batch]) for name in names}


collate_uint8 = MultiTaskCollate()

# Room after every batch buffer a worker allocates; its last byte is the buffer's flag "held by
# the main process", which the main process clears through its own mapping of the buffer.
_FLAG_ROOM = 64


class _SharedPool:
    """A worker's shared-memory batch buffers, each refilled only once the main process let go of it.

    A buffer is kept (`keep`) when its batch is sent, with a flag the worker sets then and the main
    process clears from a finalizer on the received storage, which runs when the last tensor viewing
    that storage is gone (torch keeps one Python object per storage while it lives). The flag is
    the buffer's own last byte, or (`in_buffer=False`, for batches handed out as shared storage,
    whose finalizer cannot hold a view of them) a slot of the shared `busy` tensor, which then
    travels with every batch. `new_buffer` hands out a released buffer and forgets it, so a batch
    the worker drops without sending (a uint8 batch turned into float, say) simply frees its memory.
    """

    def __init__(self, slots: int) -> None:
        self.held: list[tuple[torch.UntypedStorage, np.ndarray] | None] = [None] * slots
        self.busy: torch.Tensor | None = None
        self.mine: weakref.WeakSet[torch.UntypedStorage] = weakref.WeakSet()

    def new_buffer(self, nbytes: int) -> torch.UntypedStorage:
        """Shared memory for `nbytes` of batch plus its flag room: a released buffer when one is
        large enough, else a new one."""
        for slot, entry in enumerate(self.held):
            if _released(entry):
                self.held[slot] = None
                if entry[0].nbytes() >= nbytes + _FLAG_ROOM:
                    return entry[0]
        storage = torch.UntypedStorage._new_shared(nbytes + _FLAG_ROOM)
        self.mine.add(storage)
        return storage

    def keep(self, storage: torch.UntypedStorage, in_buffer: bool) -> _Flag | None:
        """Hold `storage` until the main process releases it; where its flag is, or None when every
        slot is taken or the storage is not one of this pool's buffers."""
        if storage not in self.mine:
            return None
        free = [slot for slot, entry in enumerate(self.held) if entry is None]
        # else replace a released buffer nobody took (this batch was not allocated from the pool)
        free += [slot for slot, entry in enumerate(self.held) if _released(entry)]
        if not free:
            return None
        slot = free[0]
        if in_buffer:
            offset = storage.nbytes() - 1
            flag = torch.empty(0, dtype=torch.uint8).set_(storage, offset, (1,)).numpy()
            where = _Flag(offset, None, 0)
        else:
            if self.busy is None or len(self.busy) < len(self.held):  # (buffers already held keep theirs)
                self.busy = torch.zeros(len(self.held), dtype=torch.uint8).share_memory_()
            flag = self.busy[slot : slot + 1].numpy()
            where = _Flag(None, self.busy, slot)
        flag[0] = 1
        self.held[slot] = (storage, flag)
        return where


def _released(entry: tuple[torch.UntypedStorage, np.ndarray] | None) -> bool:
    """Whether a held buffer's flag says the main process let go of it."""
    return entry is not None and not entry[1][0]


class _Flag(NamedTuple):
    """Where the main process clears a sent buffer's flag: at `offset` in the buffer, or in
    `busy[slot]`."""

    offset: int | None
    busy: torch.Tensor | None
    slot: int


_POOL: tuple[int, _SharedPool] | None = None  # this worker process's pool, made by its first batch


def _worker_pool() -> _SharedPool | None:
    return _POOL[1] if _POOL is not None and _POOL[0] == current_pid() else None


def _enable_worker_pool(slots: int) -> _SharedPool:
    """This worker's pool, made on first use, with at least `slots` slots (a worker's batches are
    allocated from it before its collate function tells how many buffers to keep; with no
    `MultiTaskCollate` it keeps none)."""
    global _POOL
    pool = _worker_pool()
    if pool is None:
        pool = _SharedPool(slots)
        _POOL = (current_pid(), pool)
    elif len(pool.held) < slots:
        pool.held.extend([None] * (slots - len(pool.held)))
    return pool


class _SentBatch(tuple):
    """`(images, targets)` on its way from a worker: unpickled in the main process as a plain tuple
    whose images' storage, once released there, clears its buffer's flag for the worker's pool
    (unless `flag` is None: a buffer the pool does not keep)."""

    def __new__(cls, images: torch.Tensor, targets: Targets, flag: _Flag | None) -> _SentBatch:
        self = super().__new__(cls, (images, targets))
        self.flag = flag
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        images, targets = self
        if all(isinstance(t, torch.Tensor) and not t.requires_grad for t in targets.values()):
            # as numpy arrays the targets are pickled into the message; as tensors each would be
            # moved to shared memory of its own and handed over through a descriptor of its own
            targets = {name: t.numpy() for name, t in targets.items()}
        return (_receive_batch, (images, targets, self.flag))


def _receive_batch(
    images: torch.Tensor, targets: dict[str, Any], flag: _Flag | None
) -> tuple[torch.Tensor, Targets]:
    targets = {name: torch.from_numpy(t) if isinstance(t, np.ndarray) else t for name, t in targets.items()}
    if flag is None:
        return images, targets
    if flag.offset is not None:
        memory = torch.empty(0, dtype=torch.uint8).set_(images.untyped_storage()).numpy()
        images = _private_view(images, memory)
        weakref.finalize(images.untyped_storage(), _clear_flag, memory[flag.offset : flag.offset + 1])
    else:
        weakref.finalize(images.untyped_storage(), _clear_flag, flag.busy[flag.slot : flag.slot + 1].numpy())
    return images, targets


def _private_view(images: torch.Tensor, memory: np.ndarray) -> torch.Tensor:
    """`images` over a new storage that torch does not take for shared memory (`memory`, a numpy
    view of the worker's buffer, which keeps it mapped), so that sending the batch on to another
    process copies it (torch moves non-shared storages to fresh shared memory first) instead of
    passing the worker's buffer along. Every view of the batch keeps this storage, hence the
    buffer, alive."""
    private = torch.from_numpy(memory).untyped_storage()
    return torch.empty(0, dtype=images.dtype).set_(
        private, images.storage_offset(), images.shape, images.stride()
    )


def _clear_flag(flag: np.ndarray) -> None:
    flag[0] = 0


class ShardedSequentialSampler(Sampler[int]):
    """Sample indices in key order (no shuffling), one rank's share of a distributed job.

    `layout="strided"` (default) gives rank r the samples r, r+R, r+2R, ... as Caffe's multi-GPU Data
    layer does (it keeps record `offset % solver_count == solver_rank`); `"contiguous"` gives each rank
    one block of consecutive keys (the best locality for streaming reads). Like DistributedSampler, an
    uneven split is padded, here by wrapping around to the first samples as Caffe's reader wraps,
    so every rank gets ceil(N / R); with `drop_last` the tail is dropped instead, floor(N / R) each.
    `num_replicas` and `rank` default to the initialised process group, else to 1 and 0.
    """

    def __init__(
        self,
        data_source: Sized | int,
        num_replicas: int | None = None,
        rank: int | None = None,
        *,
        layout: str = "strided",
        drop_last: bool = False,
    ) -> None:
        n = data_source if isinstance(data_source, int) else len(data_source)
        if n < 0:
            raise ValueError(f"dataset length must be >= 0, got {n}")
        group = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if group else 1
        if rank is None:
            rank = dist.get_rank() if group else 0
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.dataset_len = n
        self.num_replicas = num_replicas
        self.rank = rank
        self.layout = layout
        self.drop_last = drop_last
        self.epoch = 0
        self.num_samples = n // num_replicas if drop_last else math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        n, r, size = self.dataset_len, self.rank, self.num_replicas
        if n == 0:
            return iter(())
        # Positions 0 .. total_size-1 of the key order read continuously (past N wraps to 0).
        if self.layout == "strided":
            positions = range(r, self.total_size, size)
        else:
            positions = range(r * self.num_samples, (r + 1) * self.num_samples)
        return (p % n for p in positions)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Accepted for DistributedSampler compatibility; the order is the same in every epoch."""
        self.epoch = epoch
