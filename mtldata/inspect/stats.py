"""Label figures per task: class balance, positive rates, value histograms, ignored and missing counts.

The figures are plain data, so `mtldata stats` prints them as a table and `mtldata.inspect.viz.plot_stats`
draws the same numbers. Without a tasks file each label column is described on its own: as classes
when it holds few distinct integers, as a histogram otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtldata.errors import DatasetFormatError, TaskSpecError
from mtldata.storage.backends import open_reader, read_manifest
from mtldata.tasks import TaskSet, TaskSpec, load_tasks


@dataclass(frozen=True)
class ColumnStats:
    """The figures of one label column.

    Categorical columns (softmax, sigmoid, few-valued labels) fill `classes` and `class_counts`;
    continuous ones fill the histogram `bin_edges` (one more than `bin_counts`).
    """

    name: str
    column: int
    total: int
    ignore_label: int | None = None
    ignored: int = 0  # equal to ignore_label
    missing: int = 0  # not a finite number (NaN, inf)
    invalid: int = 0  # finite, but not a value the task's kind allows (a class out of range, a 0.5 target)
    classes: tuple[str, ...] = ()
    class_counts: tuple[int, ...] = ()
    bin_edges: tuple[float, ...] = ()
    bin_counts: tuple[int, ...] = ()
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None

    @property
    def categorical(self) -> bool:
        return bool(self.classes)


@dataclass(frozen=True)
class TaskStats:
    """The columns of one task; `kind` is the task's loss kind, or "label" for a column without a task."""

    name: str
    kind: str
    columns: tuple[ColumnStats, ...]


@dataclass(frozen=True)
class DatasetStats:
    path: str
    count: int
    num_labels: int
    tasks: tuple[TaskStats, ...]
    # With tasks: the first label that breaks them (task, key, value), which the figures count as
    # invalid or missing; `mtldata stats` prints the figures, then this as its error.
    label_problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_stats(
    path: str | Path,
    tasks: TaskSet | str | Path | None = None,
    labels: str | Path | None = None,
    *,
    bins: int = 20,
    max_classes: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetStats:
    """Read every label vector of a dataset and describe it per task (or per column without tasks)."""
    path = Path(path)
    manifest = read_manifest(path) if path.is_dir() and labels is None else None
    reader = open_reader(path, labels)
    try:
        n = len(reader)
        rows = []
        for i in range(n):
            rows.append(reader.labels(i))
            if len(rows[-1]) != len(rows[0]):
                raise DatasetFormatError(
                    f"{path}: record {reader.key(i)!r} holds {len(rows[-1])} labels, "
                    f"the first record {len(rows[0])}"
                )
            if progress is not None:
                progress(i + 1, n)
        k = len(rows[0]) if rows else int((manifest or {}).get("num_labels") or 0)
        values = np.stack(rows).astype(np.float64) if rows else np.empty((0, k))
        tasks_file = tasks if isinstance(tasks, (str, Path)) else None
        if tasks is not None and not isinstance(tasks, TaskSet):
            tasks = load_tasks(tasks, num_labels=k)
        problem = _check(values, tasks, tasks_file, path, reader) if tasks is not None else None
    finally:
        reader.close()
    names = list((manifest or {}).get("label_names") or [])
    if len(names) != k:
        names = [f"label_{j}" for j in range(k)]
    figures = label_stats(values, tasks, names, bins=bins, max_classes=max_classes)
    return DatasetStats(path=str(path), count=n, num_labels=k, tasks=figures, label_problem=problem)


def _check(values: np.ndarray, tasks: TaskSet, tasks_file: Any, path: Path, reader: Any) -> str | None:
    """The first label that breaks the tasks (NaN is missing), named by task, key and value; or None."""
    if tasks.num_labels != values.shape[1]:
        return None  # label_stats refuses these tasks with its own message
    try:
        tasks.check_labels(values)
    except TaskSpecError as exc:
        key = reader.key(exc.sample) if exc.sample is not None else None
        error = TaskSpecError(
            f"{exc.reason} in {path}", file=tasks_file, task=exc.task, sample=exc.sample, key=key
        )
        return str(error)
    return None


def label_stats(
    values: np.ndarray,
    tasks: TaskSet | None,
    names: Sequence[str],
    *,
    bins: int = 20,
    max_classes: int = 20,
) -> tuple[TaskStats, ...]:
    """Figures for label rows (N, K): one TaskStats per task, or per column when `tasks` is None."""
    if tasks is None:
        return tuple(
            TaskStats(names[j], "label", (_auto_column(values[:, j], names[j], j, bins, max_classes),))
            for j in range(values.shape[1])
        )
    if tasks.num_labels != values.shape[1]:
        raise DatasetFormatError(
            f"the tasks are defined over {tasks.num_labels} labels but the dataset has {values.shape[1]}"
        )
    return tuple(_task_stats(task, values, names, bins) for task in tasks)


def _task_stats(task: TaskSpec, values: np.ndarray, names: Sequence[str], bins: int) -> TaskStats:
    columns = []
    for offset, j in enumerate(range(task.start, task.stop)):
        name = task.label_names[offset] if task.label_names else names[j]
        col = values[:, j]
        if task.kind == "softmax":
            classes = task.class_names or tuple(str(c) for c in range(task.classes))
            columns.append(_categorical(col, name, j, classes, task.ignore_label))
        elif task.kind == "sigmoid":
            columns.append(_categorical(col, name, j, ("0", "1"), task.ignore_label))
        else:
            columns.append(_histogram(col, name, j, bins))
    return TaskStats(task.name, task.kind, tuple(columns))


def _summary(col: np.ndarray) -> dict[str, Any]:
    finite = col[np.isfinite(col)]
    if not finite.size:
        return {"missing": int(col.size)}
    return {
        "missing": int(col.size - finite.size),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
    }


def _categorical(
    col: np.ndarray, name: str, j: int, classes: Sequence[str], ignore_label: int | None
) -> ColumnStats:
    """Counts of the class indices 0..len(classes)-1 in `col`, plus ignored and invalid values."""
    finite = np.isfinite(col)
    ignored = finite & (col == ignore_label) if ignore_label is not None else np.zeros(col.shape, bool)
    valid = finite & ~ignored & (col == np.floor(col)) & (col >= 0) & (col < len(classes))
    counts = np.bincount(col[valid].astype(np.int64), minlength=len(classes))
    return ColumnStats(
        name=name,
        column=j,
        total=int(col.size),
        ignore_label=ignore_label,
        ignored=int(ignored.sum()),
        invalid=int((finite & ~ignored & ~valid).sum()),
        classes=tuple(classes),
        class_counts=tuple(int(c) for c in counts),
        **_summary(col),
    )


def _histogram(col: np.ndarray, name: str, j: int, bins: int) -> ColumnStats:
    finite = col[np.isfinite(col)]
    counts, edges = np.histogram(finite, bins=bins) if finite.size else (np.zeros(0), np.zeros(0))
    return ColumnStats(
        name=name,
        column=j,
        total=int(col.size),
        bin_edges=tuple(float(e) for e in edges),
        bin_counts=tuple(int(c) for c in counts),
        **_summary(col),
    )


def _auto_column(col: np.ndarray, name: str, j: int, bins: int, max_classes: int) -> ColumnStats:
    """A column without a task: its distinct values as classes when they are few integers."""
    finite = col[np.isfinite(col)]
    distinct = np.unique(finite)
    if finite.size and distinct.size <= max_classes and np.all(distinct == np.floor(distinct)):
        counts = [int((finite == v).sum()) for v in distinct]
        return ColumnStats(
            name=name,
            column=j,
            total=int(col.size),
            classes=tuple(f"{v:g}" for v in distinct),
            class_counts=tuple(counts),
            **_summary(col),
        )
    return _histogram(col, name, j, bins)


def format_stats(stats: DatasetStats) -> str:
    """The table `mtldata stats` prints: the numbers the plot shows, task by task."""
    lines = [f"dataset: {stats.path} ({stats.count} samples, {stats.num_labels} labels)"]
    for task in stats.tasks:
        lines += ["", f"{task.name} ({task.kind})"]
        if task.kind == "sigmoid":
            lines += _rates_table(task.columns)
            continue
        for col in task.columns:
            if task.kind != "label":  # a plain column's task is named after it already
                lines.append(f"  {col.name} (column {col.column})")
            lines += _classes_table(col) if col.categorical else _histogram_table(col)
    return "\n".join(lines)


def _share(count: int, total: int) -> str:
    return f"{100.0 * count / total:5.1f}%" if total else "    -"


def _rest(col: ColumnStats) -> list[tuple[str, int]]:
    """Rows after the classes: ignored (when the task has an ignore_label), missing, invalid (if any)."""
    rows = [] if col.ignore_label is None else [(f"ignored ({col.ignore_label})", col.ignored)]
    rows.append(("missing", col.missing))
    return rows + [("invalid", col.invalid)] if col.invalid else rows


def _classes_table(col: ColumnStats) -> list[str]:
    rows = list(zip(col.classes, col.class_counts, strict=True)) + _rest(col)
    width = max(8, *(len(label) for label, _ in rows))
    lines = [f"    {'class':<{width}}  {'count':>9}  {'share':>6}"]
    lines += [f"    {label:<{width}}  {n:>9}  {_share(n, col.total)}" for label, n in rows]
    return lines


def _histogram_table(col: ColumnStats) -> list[str]:
    if col.mean is None:
        return [f"    no finite values ({col.missing} missing)"]
    lines = [
        f"    min {col.min:.4g}  max {col.max:.4g}  mean {col.mean:.4g}  std {col.std:.4g}"
        + f"  missing {col.missing}"
    ]
    lines.append(f"    {'from':>11}  {'to':>11}  {'count':>9}")
    for lo, hi, n in zip(col.bin_edges[:-1], col.bin_edges[1:], col.bin_counts, strict=True):
        lines.append(f"    {lo:>11.4g}  {hi:>11.4g}  {n:>9}")
    return lines


def _rates_table(columns: Sequence[ColumnStats]) -> list[str]:
    width = max(8, *(len(c.name) for c in columns))
    head = ("positive", "negative", "rate", "ignored", "missing", "invalid")
    lines = ["  " + f"{'label':<{width}}" + "".join(f"  {h:>9}" for h in head)]
    for col in columns:
        neg, pos = col.class_counts
        cells = (pos, neg, _share(pos, pos + neg), col.ignored, col.missing, col.invalid)
        lines.append("  " + f"{col.name:<{width}}" + "".join(f"  {c:>9}" for c in cells))
    return lines
