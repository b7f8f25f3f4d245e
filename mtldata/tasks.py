"""Multi-task label layout: task specs, tasks.toml, label checks and the Caffe Slice-layer slicer.

A multi-task dataset stores one float label vector of K values per sample (Caffe's label DB keeps it
in a Datum's float_data). A task owns a contiguous block of those columns and a loss kind; Caffe cuts
the vector with a Slice layer and feeds each block to one loss layer with a loss_weight.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtldata.errors import TaskSpecError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    import torch

__all__ = [
    "KINDS",
    "MISSING_CLASS",
    "LabelSlicer",
    "TaskSet",
    "TaskSpec",
    "classes_limit",
    "dump_tasks",
    "load_tasks",
    "tasks_from_dict",
    "tasks_to_dict",
]

# softmax: SoftmaxWithLoss (one column, an integral class index); sigmoid: SigmoidCrossEntropyLoss
# (k binary columns); euclidean: EuclideanLoss (k real columns).
KINDS = ("softmax", "sigmoid", "euclidean")

# A class index is stored as a float32 label, which holds every integer only up to 2**24: a softmax
# task with more classes could never see its higher classes (and its head would not fit in memory).
MAX_CLASSES = 2**24
CLASSES_FLAG = "mtldata --max-classes N"  # how the command line raises the limit (named in the error)
_classes_limit: contextvars.ContextVar[int] = contextvars.ContextVar(
    "mtldata_max_classes", default=MAX_CLASSES
)


@contextlib.contextmanager
def classes_limit(limit: int | None) -> Iterator[int]:
    """Within the block, a softmax task may have up to `limit` classes (None: keep the current limit)."""
    if limit is None:
        yield _classes_limit.get()
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 2:
        raise ValueError(f"max_classes must be an integer >= 2, got {limit!r}")
    token = _classes_limit.set(int(limit))
    try:
        yield int(limit)
    finally:
        _classes_limit.reset(token)


# A missing label is NaN in the float label vector; a softmax target, an int64 class index, holds this
# instead (never a class; torch's cross_entropy takes it as ignore_index).
MISSING_CLASS = -1

# Task names become Caffe top names, HDF5 dataset names and dict keys: keep them plain.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_SLICE_RE = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
_TOP_KEYS = ("num_labels", "slice_points", "allow_overlap", "task")
_TASK_KEYS = (
    "name",
    "slice",
    "columns",
    "kind",
    "classes",
    "ignore_label",
    "loss_weight",
    "label_names",
    "class_names",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _names_tuple(value: Any, task: str, field: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TaskSpecError(f"expected a list of strings, got {value!r}", task=task, field=field)
    if not all(isinstance(v, str) for v in value):
        raise TaskSpecError(f"expected a list of strings, got {list(value)!r}", task=task, field=field)
    return tuple(value)


@dataclass(frozen=True)
class TaskSpec:
    """One task: a block of label columns and the loss kind that reads it.

    `columns` is a `slice(start, stop)` over the label vector (a `(start, stop)` pair is accepted).
    Softmax tasks own exactly one column holding a class index in [0, classes) or `ignore_label`.
    """

    name: str
    columns: slice
    kind: str
    classes: int | None = None
    ignore_label: int | None = None
    loss_weight: float = 1.0  # Caffe's default for loss layers
    label_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise TaskSpecError(
                "a task name is letters, digits, '_', '.' or '-' (not starting with '.' or '-'), "
                f"got {name!r}",
                task=name if isinstance(name, str) else None,
                field="name",
            )
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "columns", _normalise_columns(self.columns, name))
        if self.kind not in KINDS:
            raise TaskSpecError(
                f"expected one of {', '.join(KINDS)}, got {self.kind!r}", task=name, field="kind"
            )
        width = self.width
        if self.classes is not None and not _is_int(self.classes):
            raise TaskSpecError(f"expected an integer, got {self.classes!r}", task=name, field="classes")
        if self.kind == "softmax":
            if width != 1:
                raise TaskSpecError(
                    f"a softmax task owns exactly 1 column (its class index), this one has {width}",
                    task=name,
                    field="columns",
                )
            if self.classes is None:
                raise TaskSpecError("a softmax task needs its number of classes", task=name, field="classes")
            if self.classes < 2:
                raise TaskSpecError(
                    f"expected at least 2 classes, got {self.classes}", task=name, field="classes"
                )
            if self.classes > (limit := _classes_limit.get()):
                why = (
                    f"past what float32 labels can index exactly (at most {MAX_CLASSES}); a typo?"
                    if limit == MAX_CLASSES
                    else f"over the limit of {limit}"
                )
                raise TaskSpecError(
                    f"{self.classes} classes is {why} (`{CLASSES_FLAG}` raises the limit)",
                    task=name,
                    field="classes",
                )
            set_(self, "classes", int(self.classes))
        elif self.classes is not None:
            raise TaskSpecError(
                f"classes applies to softmax tasks only, this one is {self.kind}", task=name, field="classes"
            )
        if self.ignore_label is not None:
            if not _is_int(self.ignore_label):
                raise TaskSpecError(
                    f"expected an integer, got {self.ignore_label!r}", task=name, field="ignore_label"
                )
            if self.kind == "euclidean":
                # Caffe's EuclideanLoss has no ignore_label: it would silently regress towards it.
                raise TaskSpecError(
                    "EuclideanLoss has no ignore_label; only softmax and sigmoid tasks take one",
                    task=name,
                    field="ignore_label",
                )
            set_(self, "ignore_label", int(self.ignore_label))
        weight = self.loss_weight
        if isinstance(weight, (bool, np.bool_)) or not isinstance(
            weight, (int, float, np.integer, np.floating)
        ):
            raise TaskSpecError(f"expected a number, got {weight!r}", task=name, field="loss_weight")
        if not math.isfinite(weight) or weight < 0:
            raise TaskSpecError(
                f"expected a finite number >= 0, got {weight!r}", task=name, field="loss_weight"
            )
        set_(self, "loss_weight", float(weight))
        label_names = _names_tuple(self.label_names, name, "label_names")
        if label_names is not None and len(label_names) != width:
            raise TaskSpecError(
                f"expected one name per column ({width}), got {len(label_names)}",
                task=name,
                field="label_names",
            )
        set_(self, "label_names", label_names)
        class_names = _names_tuple(self.class_names, name, "class_names")
        if class_names is not None:
            if self.kind != "softmax":
                raise TaskSpecError(
                    f"class_names applies to softmax tasks only, this one is {self.kind}",
                    task=name,
                    field="class_names",
                )
            if len(class_names) != self.classes:
                raise TaskSpecError(
                    f"expected one name per class ({self.classes}), got {len(class_names)}",
                    task=name,
                    field="class_names",
                )
        set_(self, "class_names", class_names)

    def __hash__(self) -> int:  # a slice is unhashable before Python 3.12
        return hash((self.name, self.start, self.stop, self.kind, self.classes, self.ignore_label))

    @property
    def start(self) -> int:
        return self.columns.start

    @property
    def stop(self) -> int:
        return self.columns.stop

    @property
    def width(self) -> int:
        """Number of label columns the task owns (k)."""
        return self.columns.stop - self.columns.start


def _normalise_columns(columns: Any, task: str) -> slice:
    if isinstance(columns, slice):
        if columns.step not in (None, 1):
            raise TaskSpecError(
                f"columns must be contiguous, got step {columns.step!r}", task=task, field="columns"
            )
        bounds = (columns.start, columns.stop)
    elif isinstance(columns, (tuple, list)) and len(columns) == 2:
        bounds = tuple(columns)
    else:
        raise TaskSpecError(f"expected slice(start, stop), got {columns!r}", task=task, field="columns")
    start, stop = bounds
    if not (_is_int(start) and _is_int(stop)) or not 0 <= start < stop:
        raise TaskSpecError(
            f"expected integer bounds with 0 <= start < stop, got {start!r}:{stop!r}",
            task=task,
            field="columns",
        )
    return slice(int(start), int(stop))


@dataclass(frozen=True)
class TaskSet:
    """The tasks of a dataset over label vectors of `num_labels` (K) values.

    Columns must lie within K and, unless `allow_overlap`, no column belongs to two tasks. Columns
    no task owns are allowed (they are simply not fed to a loss).
    """

    tasks: tuple[TaskSpec, ...]
    num_labels: int
    allow_overlap: bool = False

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        if not tasks:
            raise TaskSpecError("at least one task is needed", field="task")
        for task in tasks:
            if not isinstance(task, TaskSpec):
                raise TypeError(f"TaskSet.tasks holds TaskSpec objects, got {type(task).__name__}")
        k = self.num_labels
        if not _is_int(k) or k < 1:
            raise TaskSpecError(f"expected a positive integer, got {k!r}", field="num_labels")
        object.__setattr__(self, "num_labels", int(k))
        if not isinstance(self.allow_overlap, bool):
            raise TaskSpecError(f"expected true or false, got {self.allow_overlap!r}", field="allow_overlap")
        seen: set[str] = set()
        for task in tasks:
            if task.name in seen:
                raise TaskSpecError("two tasks have this name", task=task.name, field="name")
            seen.add(task.name)
            if task.stop > k:
                raise TaskSpecError(
                    f"columns {task.start}:{task.stop} reach past num_labels = {k}",
                    task=task.name,
                    field="columns",
                )
        if not self.allow_overlap:
            for i, task in enumerate(tasks):
                for prev in tasks[:i]:
                    if task.start < prev.stop and prev.start < task.stop:
                        raise TaskSpecError(
                            f"columns {task.start}:{task.stop} overlap task {prev.name!r} "
                            f"({prev.start}:{prev.stop}); set allow_overlap = true if that is meant",
                            task=task.name,
                            field="columns",
                        )

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def loss_weights(self) -> dict[str, float]:
        return {t.name: t.loss_weight for t in self.tasks}

    @property
    def slice_points(self) -> tuple[int, ...] | None:
        """Caffe Slice `slice_point`s giving these tasks in order, or None if they do not tile 0..K."""
        position = 0
        for task in self.tasks:
            if task.start != position:
                return None
            position = task.stop
        if position != self.num_labels:
            return None
        return tuple(t.stop for t in self.tasks[:-1])

    def check_labels(self, labels: Any, keys: Sequence[str] | None = None) -> None:
        """Check label rows (N, K) against the tasks; raise TaskSpecError naming the first bad sample.

        NaN means "missing" (`convert --allow-missing`) and is skipped; every other value must be
        finite; a softmax column holds an integer in [0, classes) or the task's ignore_label; a
        sigmoid block holds 0 or 1 (or ignore_label).
        """
        values = _as_rows(_to_numpy(labels), self.num_labels)
        n = values.shape[0]
        if keys is not None and len(keys) != n:
            raise ValueError(f"check_labels got {len(keys)} keys for {n} label rows")

        def fail(task: TaskSpec, rows: np.ndarray, why: str) -> None:
            i, col = (int(v) for v in np.argwhere(rows)[0])
            value = values[i, task.start + col]
            value = (
                str(value) if isinstance(value, np.floating) else repr(value.item())
            )  # 0.42, not 0.4199...
            key = None if keys is None else str(keys[i])
            raise TaskSpecError(
                f"label column {task.start + col} is {value}: {why}", task=task.name, sample=i, key=key
            )

        for task in self.tasks:
            block = values[:, task.columns]
            missing = np.isnan(block)
            bad = np.isinf(block)
            if bad.any():
                fail(task, bad, "labels must be finite (NaN marks a missing label)")
            ignored = missing | (
                block == task.ignore_label if task.ignore_label is not None else np.zeros(block.shape, bool)
            )
            if task.kind == "softmax":
                with np.errstate(invalid="ignore"):
                    valid = (block == np.floor(block)) & (block >= 0) & (block < task.classes)
                bad = ~(valid | ignored)
                if bad.any():
                    allowed = f"an integer in [0, {task.classes})"
                    if task.ignore_label is not None:
                        allowed += f" or the ignore_label {task.ignore_label}"
                    fail(task, bad, f"a softmax class must be {allowed}")
            elif task.kind == "sigmoid":
                bad = ~((block == 0) | (block == 1) | ignored)
                if bad.any():
                    allowed = "0 or 1"
                    if task.ignore_label is not None:
                        allowed += f" or the ignore_label {task.ignore_label}"
                    fail(task, bad, f"a sigmoid target must be {allowed}")

    def summary_allows(self, columns: Sequence[Mapping[str, Any]]) -> bool:
        """Whether a per-column label summary (a manifest's `label_stats`) proves every label valid.

        Each column's summary holds `min`, `max` (of its non-missing values, None when all are
        missing), `integral` and `values` (its distinct values when few, else None). False means
        "not proven" (a summary without these fields, or a value that may break a task): the
        labels themselves must then be read (`check_labels`) to find the sample.
        """
        if len(columns) != self.num_labels:
            return False
        for task in self.tasks:
            for column in columns[task.start : task.stop]:
                if not _column_allows(task, column):
                    return False
        return True


def _column_allows(task: TaskSpec, column: Mapping[str, Any]) -> bool:
    if "integral" not in column:
        return False  # a summary written before mtldata recorded it
    low, high, values = column.get("min"), column.get("max"), column.get("values")
    if low is None and high is None:
        return True  # every value missing
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
        return False
    if values is not None:
        return all(_value_allows(task, float(v)) for v in values if not math.isnan(v))
    if task.kind == "euclidean":
        return True
    top = task.classes - 1 if task.kind == "softmax" else 1
    return bool(column["integral"]) and low >= 0 and high <= top


def _value_allows(task: TaskSpec, value: float) -> bool:
    if not math.isfinite(value):
        return False
    if task.kind == "euclidean":
        return True
    if task.ignore_label is not None and value == task.ignore_label:
        return True
    top = task.classes - 1 if task.kind == "softmax" else 1
    return value == math.floor(value) and 0 <= value <= top


def _to_numpy(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):  # a torch tensor, without importing torch
        return labels.detach().cpu().numpy()
    return np.asarray(labels)


def _as_rows(values: np.ndarray, num_labels: int) -> np.ndarray:
    """(N, K) view of labels given as (N, K) or with trailing 1-sized axes, e.g. Caffe's (N, K, 1, 1)."""
    if values.ndim < 2 or any(d != 1 for d in values.shape[2:]):
        raise TaskSpecError(
            f"labels must be (N, K) or (N, K, 1, 1), got shape {tuple(values.shape)}", field="num_labels"
        )
    if values.shape[1] != num_labels:
        raise TaskSpecError(
            f"labels have {values.shape[1]} columns but the tasks are defined over num_labels = {num_labels}",
            field="num_labels",
        )
    if values.dtype.kind not in "biuf":
        raise TypeError(f"labels must be numeric, got dtype {values.dtype}")
    return values.reshape(values.shape[0], values.shape[1])


# ---------------------------------------------------------------------------------------------------
# tasks.toml


def load_tasks(
    source: str | os.PathLike[str], *, num_labels: int | None = None, max_classes: int | None = None
) -> TaskSet:
    """Read a TaskSet from a tasks.toml file (a path) or from TOML text.

    A `str` holding a newline or '=' is TOML text; any other str or PathLike is a file path.
    `num_labels`, when given (the dataset's K), must agree with the file's own `num_labels`; it also
    supplies K to files that split by `slice_points` or equally without stating it. `max_classes`
    raises (or lowers) the most classes a softmax task may have (default MAX_CLASSES, 2**24).
    """
    if isinstance(source, str) and ("\n" in source or "=" in source):
        origin, text = "<tasks text>", source
    else:
        origin = os.fspath(source)
        try:
            text = Path(origin).read_text(encoding="utf-8")
        except OSError as e:
            raise TaskSpecError(f"cannot read the tasks file: {e.strerror or e}", file=origin) from None
        except UnicodeDecodeError as e:
            raise TaskSpecError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=origin) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TaskSpecError(f"not valid TOML: {e}", file=origin) from None
    try:
        with classes_limit(max_classes):
            return _taskset_from_doc(doc, num_labels)
    except TaskSpecError as e:
        if e.file is not None:
            raise
        raise TaskSpecError(e.reason, file=origin, task=e.task, field=e.field) from None


def tasks_from_dict(
    doc: Mapping[str, Any], origin: str = "<tasks dict>", *, max_classes: int | None = None
) -> TaskSet:
    """A TaskSet from the dict form of a tasks.toml (what `tasks_to_dict` gives; checkpoints hold it)."""
    if not isinstance(doc, Mapping):
        raise TaskSpecError(f"expected a table of tasks, got {type(doc).__name__}", file=origin)
    try:
        with classes_limit(max_classes):
            return _taskset_from_doc(doc, None)
    except TaskSpecError as e:
        raise TaskSpecError(e.reason, file=origin, task=e.task, field=e.field) from None


def tasks_to_dict(taskset: TaskSet) -> dict[str, Any]:
    """The tasks.toml document of `taskset` as plain dicts, lists and scalars (`tasks_from_dict` reads it)."""
    return tomllib.loads(dump_tasks(taskset))


def _taskset_from_doc(doc: Mapping[str, Any], dataset_k: int | None) -> TaskSet:
    unknown = sorted(set(doc) - set(_TOP_KEYS))
    if unknown:
        raise TaskSpecError(
            f"unknown top-level key(s) {unknown}; expected {list(_TOP_KEYS)}", field=unknown[0]
        )
    entries = doc.get("task")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise TaskSpecError("expected one or more [[task]] tables", field="task")

    file_k = doc.get("num_labels")
    if file_k is not None and (not _is_int(file_k) or file_k < 1):
        raise TaskSpecError(f"expected a positive integer, got {file_k!r}", field="num_labels")
    if file_k is not None and dataset_k is not None and file_k != dataset_k:
        raise TaskSpecError(
            f"the file says {file_k} but the dataset has {dataset_k} labels", field="num_labels"
        )
    k = file_k if file_k is not None else dataset_k

    labels = [_entry_label(entry, i) for i, entry in enumerate(entries)]
    for entry, label in zip(entries, labels, strict=True):
        unknown = sorted(set(entry) - set(_TASK_KEYS))
        if unknown:
            raise TaskSpecError(
                f"unknown key(s) {unknown}; expected {list(_TASK_KEYS)}", task=label, field=unknown[0]
            )
        if "slice" in entry and "columns" in entry:
            raise TaskSpecError("give either slice or columns, not both", task=label, field="columns")

    has_columns = ["slice" in e or "columns" in e for e in entries]
    slice_points = doc.get("slice_points")
    if any(has_columns):
        if slice_points is not None:
            raise TaskSpecError(
                "give either slice_points or a slice per task, not both", field="slice_points"
            )
        missing = has_columns.index(False) if not all(has_columns) else None
        if missing is not None:
            raise TaskSpecError(
                "every task needs a slice (or columns) once any task has one",
                task=labels[missing],
                field="slice",
            )
        bounds = [_entry_columns(e, label) for e, label in zip(entries, labels, strict=True)]
        if k is None:
            k = max(stop for _, stop in bounds)
    elif slice_points is not None:
        if k is None:
            raise TaskSpecError(
                "slice_points needs num_labels (in the file, or the dataset's)", field="num_labels"
            )
        points = _check_slice_points(slice_points, len(entries), k)
        edges = [0, *points, k]
        bounds = list(pairwise(edges))
    else:
        if k is None:
            raise TaskSpecError(
                "without slices or slice_points the tasks split the labels equally, which needs num_labels",
                field="num_labels",
            )
        n = len(entries)
        if k % n:
            raise TaskSpecError(
                f"{n} tasks cannot split {k} labels equally (as Caffe's Slice without slice_point)",
                field="num_labels",
            )
        size = k // n
        bounds = [(i * size, (i + 1) * size) for i in range(n)]

    tasks = []
    for entry, label, (start, stop) in zip(entries, labels, bounds, strict=True):
        if "kind" not in entry:
            raise TaskSpecError(f"missing; expected one of {', '.join(KINDS)}", task=label, field="kind")
        loss_weight = entry.get("loss_weight", 1.0)
        tasks.append(
            TaskSpec(
                name=entry.get("name"),
                columns=slice(start, stop),
                kind=entry["kind"],
                classes=entry.get("classes"),
                ignore_label=entry.get("ignore_label"),
                loss_weight=loss_weight,
                label_names=entry.get("label_names"),
                class_names=entry.get("class_names"),
            )
        )
    return TaskSet(tasks, num_labels=k, allow_overlap=doc.get("allow_overlap", False))


def _entry_label(entry: Mapping[str, Any], index: int) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise TaskSpecError(
            f"every task needs a name (a string), got {name!r}", task=f"#{index + 1}", field="name"
        )
    return name


def _entry_columns(entry: Mapping[str, Any], task: str) -> tuple[int, int]:
    if "slice" in entry:
        value = entry["slice"]
        match = _SLICE_RE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise TaskSpecError(f'expected "start:stop", e.g. "1:4", got {value!r}', task=task, field="slice")
        start, stop = int(match[1]), int(match[2])
        if stop <= start:
            raise TaskSpecError(f"expected start < stop, got {value!r}", task=task, field="slice")
        return start, stop
    value = entry["columns"]
    if (
        not isinstance(value, list)
        or not value
        or not all(_is_int(v) and v >= 0 for v in value)
        or value != list(range(value[0], value[0] + len(value)))
    ):
        raise TaskSpecError(
            f"expected consecutive ascending column indices, e.g. [1, 2, 3], got {value!r}",
            task=task,
            field="columns",
        )
    return value[0], value[-1] + 1


def _check_slice_points(points: Any, num_tasks: int, k: int) -> list[int]:
    if not isinstance(points, list) or not all(_is_int(p) for p in points):
        raise TaskSpecError(f"expected a list of integers, got {points!r}", field="slice_points")
    if len(points) != num_tasks - 1:
        raise TaskSpecError(
            f"{len(points)} slice points make {len(points) + 1} slices but there are {num_tasks} tasks",
            field="slice_points",
        )
    edges = [0, *points, k]
    if any(b <= a for a, b in pairwise(edges)):
        raise TaskSpecError(
            f"slice points must increase strictly within (0, num_labels = {k}), got {points}",
            field="slice_points",
        )
    return list(points)


def dump_tasks(taskset: TaskSet) -> str:
    """TOML text for `taskset` that load_tasks reads back to an equal TaskSet (explicit slices)."""
    lines = [f"num_labels = {taskset.num_labels}"]
    if taskset.allow_overlap:
        lines.append("allow_overlap = true")
    for task in taskset.tasks:
        lines += ["", "[[task]]", f"name = {_toml_str(task.name)}", f'slice = "{task.start}:{task.stop}"']
        lines.append(f"kind = {_toml_str(task.kind)}")
        if task.classes is not None:
            lines.append(f"classes = {task.classes}")
        if task.ignore_label is not None:
            lines.append(f"ignore_label = {task.ignore_label}")
        lines.append(f"loss_weight = {task.loss_weight!r}")  # repr is the shortest exact float, valid TOML
        for field in ("label_names", "class_names"):
            names = getattr(task, field)
            if names is not None:
                lines.append(f"{field} = [{', '.join(_toml_str(s) for s in names)}]")
    return "\n".join(lines) + "\n"


def _toml_str(text: str) -> str:
    """A TOML basic string: escapes quotes, backslashes and every control character TOML forbids raw."""
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ---------------------------------------------------------------------------------------------------
# Slicing


class LabelSlicer:
    """Cut label blobs into per-task tensors, as Caffe's Slice layer does.

    `LabelSlicer(slice_points, axis)` mirrors a Slice layer: sizes `[p0, p1-p0, ..., D-p_last]`, or
    without slice points an equal split into `len(names)` (or `num_outputs`) parts; the pieces are
    `torch.split` views keeping the input's dtype and shape. `LabelSlicer.from_tasks(taskset)` also
    converts each block for its loss: softmax -> int64 (N,) by truncation, as Caffe's
    `static_cast<int>`, a missing (NaN) class -> MISSING_CLASS; sigmoid and euclidean -> float32 (N, k),
    missing values staying NaN.
    """

    def __init__(
        self,
        slice_points: Sequence[int] | None = None,
        axis: int = 1,
        *,
        names: Sequence[str] | None = None,
        num_outputs: int | None = None,
    ) -> None:
        if not _is_int(axis):
            raise TypeError(f"axis must be an integer, got {axis!r}")
        self.axis = int(axis)
        self._tasks: tuple[TaskSpec, ...] | None = None
        self._num_labels: int | None = None
        if slice_points is not None:
            points = list(slice_points)
            if not all(_is_int(p) for p in points) or any(b <= a for a, b in pairwise([0, *points])):
                raise ValueError(f"slice_points must be strictly increasing positive integers, got {points}")
            count = len(points) + 1
            if num_outputs is not None and num_outputs != count:
                raise ValueError(
                    f"{len(points)} slice_points make {count} outputs, not num_outputs={num_outputs}"
                )
            self.slice_points: tuple[int, ...] | None = tuple(int(p) for p in points)
        else:
            count = len(names) if names is not None else num_outputs
            if count is None or not _is_int(count) or count < 1:
                raise ValueError("without slice_points, give names or num_outputs (the number of Slice tops)")
            if num_outputs is not None and num_outputs != count:
                raise ValueError(f"got {count} names but num_outputs={num_outputs}")
            self.slice_points = None
        names = tuple(names) if names is not None else tuple(f"slice{i}" for i in range(count))
        if len(names) != count:
            raise ValueError(f"got {len(names)} names for {count} outputs")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {list(names)}")
        self.names = names

    @classmethod
    def from_tasks(cls, taskset: TaskSet) -> LabelSlicer:
        """A slicer giving each task its columns, converted for its loss kind."""
        slicer = cls(taskset.slice_points, axis=1, names=taskset.names)
        slicer._tasks = taskset.tasks
        slicer._num_labels = taskset.num_labels
        return slicer

    def __repr__(self) -> str:
        if self._tasks is not None:
            parts = ", ".join(f"{t.name}={t.start}:{t.stop} {t.kind}" for t in self._tasks)
            return f"LabelSlicer.from_tasks({parts}; num_labels={self._num_labels})"
        return f"LabelSlicer(slice_points={self.slice_points}, axis={self.axis}, names={self.names})"

    def sizes(self, dim: int) -> list[int]:
        """The piece sizes for an axis of length `dim`, as Slice::Reshape computes them."""
        if self.slice_points is not None:
            if len(self.names) > dim or (self.slice_points and self.slice_points[-1] >= dim):
                raise TaskSpecError(
                    f"slice_points {list(self.slice_points)} do not fit an axis of {dim} labels",
                    field="slice_points",
                )
            edges = [0, *self.slice_points, dim]
            return [b - a for a, b in pairwise(edges)]
        count = len(self.names)
        if dim % count:
            raise TaskSpecError(
                f"{count} outputs cannot split an axis of {dim} labels equally", field="num_labels"
            )
        return [dim // count] * count

    def __call__(self, labels: Any) -> dict[str, torch.Tensor]:
        import torch

        if isinstance(labels, torch.Tensor):
            blob = labels
        else:
            array = np.asarray(labels)
            if not array.flags.writeable:  # torch.from_numpy warns on read-only buffers (LMDB, frombuffer)
                array = array.copy()
            blob = torch.from_numpy(array)
        if self._tasks is None:
            axis = self.axis + blob.ndim if self.axis < 0 else self.axis
            if not 0 <= axis < blob.ndim:
                raise ValueError(f"axis {self.axis} is out of range for labels of shape {tuple(blob.shape)}")
            pieces = torch.split(blob, self.sizes(blob.shape[axis]), dim=axis)
            return dict(zip(self.names, pieces, strict=True))

        assert self._num_labels is not None
        if blob.ndim < 2 or any(d != 1 for d in blob.shape[2:]):
            raise TaskSpecError(
                f"labels must be (N, K) or (N, K, 1, 1), got shape {tuple(blob.shape)}", field="num_labels"
            )
        if blob.shape[1] != self._num_labels:
            raise TaskSpecError(
                f"labels have {blob.shape[1]} columns but the tasks are defined over "
                f"num_labels = {self._num_labels}",
                field="num_labels",
            )
        # Caffe's label blob is float32 whatever the source held (HDF5 float64 included).
        rows = blob.reshape(blob.shape[0], blob.shape[1]).to(torch.float32)
        out = {}
        for task in self._tasks:
            if task.kind == "softmax":
                # The cast truncates toward zero, as Caffe's static_cast<int> of the float label.
                column = rows[:, task.start]
                out[task.name] = column.nan_to_num(float(MISSING_CLASS)).to(torch.int64)
            else:
                out[task.name] = rows[:, task.columns].contiguous()
        return out
