"""Labels against tasks: where a dataset (or a list) meets a tasks.toml, every label is checked once.

A dataset mtldata wrote carries a per-column summary in its manifest (min, max, all-integral, its
few distinct values), which usually proves every label valid without reading one; otherwise (a plain
Caffe LMDB, an HDF5 file, a summary that cannot prove it) the labels are read once, and the first
bad one is named by tasks.toml, task, key and value.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mtldata.errors import TaskSpecError
from mtldata.storage.backends import DatasetReader
from mtldata.tasks import TaskSet

CHUNK_ROWS = 4096
# (reader, tasks) pairs already checked in this process: train and val views of one reader, and
# open_dataset after train's own check, do not read the labels again.
_CHECKED: weakref.WeakKeyDictionary[Any, set[TaskSet]] = weakref.WeakKeyDictionary()


def check_dataset_labels(
    reader: DatasetReader,
    tasks: TaskSet,
    *,
    tasks_file: str | os.PathLike[str] | None = None,
    dataset: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Raise TaskSpecError (naming `tasks_file`, the task, the key and the value) unless every label
    of `reader` fits `tasks`: kind, range, integrality, classes, ignore_label. NaN (missing) passes."""
    try:
        done = _CHECKED.setdefault(reader, set())
    except TypeError:  # a reader type without weak references: checked every time
        done = set()
    if tasks in done:
        return
    manifest = getattr(reader, "manifest", None)
    summary = manifest.get("label_stats") if isinstance(manifest, dict) else None
    if not (isinstance(summary, list) and tasks.summary_allows(summary)):
        _read_and_check(reader, tasks, tasks_file, dataset, progress)
    done.add(tasks)


def _read_and_check(
    reader: DatasetReader,
    tasks: TaskSet,
    tasks_file: Any,
    dataset: Any,
    progress: Callable[[int, int], None] | None,
) -> None:
    n = len(reader)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        rows = np.stack([np.asarray(reader.labels(i), dtype=np.float32).ravel() for i in range(start, stop)])
        try:
            tasks.check_labels(rows)
        except TaskSpecError as exc:
            if exc.sample is None:  # the shape of the rows, not one label
                raise TaskSpecError(exc.reason, file=tasks_file, task=exc.task, field=exc.field) from None
            index = start + exc.sample
            where = f" in {dataset}" if dataset is not None else ""
            raise TaskSpecError(
                exc.reason + where, file=tasks_file, task=exc.task, sample=index, key=reader.key(index)
            ) from None
        if progress is not None:
            progress(stop, n)


def check_list_labels(
    list_file: str | os.PathLike[str], tasks: TaskSet, *, tasks_file: str | os.PathLike[str] | None = None
) -> None:
    """Check the labels of a list file's data lines against `tasks` before converting it.

    Raises TaskSpecError naming `tasks_file`, the task, the list line and the value. Lines that are
    not samples (bad label tokens, wrong counts) are left to the converter, which reports them.
    """
    from mtldata.storage.listfile import ListEntry, iter_list

    for entry in iter_list(Path(list_file), tasks.num_labels):
        if not isinstance(entry, ListEntry):
            continue
        try:
            tasks.check_labels(np.asarray([entry.labels], dtype=np.float64))
        except TaskSpecError as exc:
            raise TaskSpecError(
                f"{exc.reason} (at {list_file}:{entry.line}: {entry.path})",
                file=tasks_file,
                task=exc.task,
                field=exc.field if exc.sample is None else None,
            ) from None
