"""Evaluate a trained run on a dataset: per-task metrics over the labelled entries only.

An entry is labelled when it is a finite number other than the task's ignore_label (NaN marks a
missing label). softmax: accuracy and a confusion matrix; sigmoid: mean error and F1 (as in training),
and per label the accuracy, the balanced accuracy (TPR + TNR) / 2 and the ROC AUC, with mA, the mean
balanced accuracy over labels, and the mean AUC; euclidean: MAE and RMSE. A sigmoid output counts
as positive when its logit is > 0 (probability > 0.5), as in training.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtldata.durable import write_bytes_atomic
from mtldata.errors import MtlDataError
from mtldata.tasks import TaskSpec
from mtldata.train.metrics import METRIC_NAMES
from mtldata.train.run_io import LoadedModel, iter_dataset, load_run, open_for_model

__all__ = ["EvaluationReport", "average_ranks", "evaluate_run", "format_report", "rank_auc"]

# The table's metric columns per kind: training's metrics, then the attribute-recognition ones.
TABLE_METRICS = {**METRIC_NAMES, "sigmoid": (*METRIC_NAMES["sigmoid"], "mA", "auc")}


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` in ascending order, tied values sharing the mean of their ranks."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic: the chance that a positive outscores a negative, ties
    counting one half. None when either class is absent."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


class _TaskAccumulator:
    """One task's running counts (and, for sigmoid tasks, the scores AUC needs)."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        width = task.width
        if task.kind == "softmax":
            self.confusion = np.zeros((task.classes, task.classes), dtype=np.int64)
        elif task.kind == "sigmoid":
            self.scores: list[list[np.ndarray]] = [[] for _ in range(width)]
            self.truths: list[list[np.ndarray]] = [[] for _ in range(width)]
        else:
            self.count = np.zeros(width, dtype=np.int64)
            self.abs = np.zeros(width, dtype=np.float64)
            self.sq = np.zeros(width, dtype=np.float64)

    def labelled(self, block: np.ndarray) -> np.ndarray:
        keep = np.isfinite(block)
        if self.task.ignore_label is not None:
            keep &= block != self.task.ignore_label
        return keep

    def update(self, output: np.ndarray, block: np.ndarray, keys: list[str], source: str) -> None:
        task = self.task
        keep = self.labelled(block)
        if task.kind == "softmax":
            truth, keep = block[:, 0], keep[:, 0]
            bad = keep & ((truth != np.floor(truth)) | (truth < 0) | (truth >= task.classes))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise MtlDataError(
                    f"{source}:{keys[i]}: task {task.name!r}: label {truth[i]:g} is not a class in "
                    f"[0, {task.classes})"
                )
            predicted = output.argmax(1)
            np.add.at(self.confusion, (truth[keep].astype(np.int64), predicted[keep]), 1)
        elif task.kind == "sigmoid":
            for j in range(task.width):
                rows = keep[:, j]
                self.scores[j].append(output[rows, j].astype(np.float64))
                self.truths[j].append(block[rows, j] > 0.5)
        else:
            diff = np.where(keep, output.astype(np.float64) - block, 0.0)
            self.count += keep.sum(0)
            self.abs += np.abs(diff).sum(0)
            self.sq += (diff * diff).sum(0)

    def result(self, column_names: tuple[str, ...], class_names: tuple[str, ...]) -> dict[str, Any]:
        task = self.task
        out: dict[str, Any] = {"kind": task.kind}
        if task.kind == "softmax":
            total = int(self.confusion.sum())
            out["labelled"] = total
            out["accuracy"] = _ratio(float(np.trace(self.confusion)), total)
            out["classes"] = list(class_names)
            out["confusion"] = self.confusion.tolist()  # rows: true class, columns: predicted class
        elif task.kind == "sigmoid":
            labels, wrong, tp, fp, fn, count = {}, 0, 0, 0, 0, 0
            for j, name in enumerate(column_names):
                scores = np.concatenate(self.scores[j]) if self.scores[j] else np.zeros(0)
                truth = np.concatenate(self.truths[j]) if self.truths[j] else np.zeros(0, bool)
                pred = scores > 0
                pos, neg = int(truth.sum()), int((~truth).sum())
                tp_j, tn_j = int((pred & truth).sum()), int((~pred & ~truth).sum())
                tpr, tnr = _ratio(tp_j, pos), _ratio(tn_j, neg)
                labels[name] = {
                    "labelled": int(truth.size),
                    "positives": pos,
                    "accuracy": _ratio(tp_j + tn_j, truth.size),
                    # needs both classes; a label seen with one class only is left out of mA
                    "balanced_accuracy": None if tpr is None or tnr is None else (tpr + tnr) / 2,
                    "auc": rank_auc(scores, truth),
                }
                count += truth.size
                wrong += truth.size - tp_j - tn_j
                tp, fp, fn = tp + tp_j, fp + int((pred & ~truth).sum()), fn + int((~pred & truth).sum())
            out["labelled"] = count
            out["mean_error"] = _ratio(wrong, count)
            out["f1"] = _ratio(2 * tp, 2 * tp + fp + fn)
            out["mA"] = _mean([v["balanced_accuracy"] for v in labels.values()])
            out["auc"] = _mean([v["auc"] for v in labels.values()])
            out["labels"] = labels
        else:
            count = int(self.count.sum())
            out["labelled"] = count
            out["mae"] = _ratio(float(self.abs.sum()), count)
            mse = _ratio(float(self.sq.sum()), count)
            out["rmse"] = None if mse is None else math.sqrt(mse)
        return out


@dataclass
class EvaluationReport:
    """Per-task metrics of a run on a dataset, and where the confusion matrices went."""

    checkpoint: Path
    dataset: str
    samples: int
    tasks: dict[str, dict[str, Any]]
    confusion_files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "dataset": self.dataset,
            "samples": self.samples,
            "tasks": self.tasks,
            "confusion_files": {k: str(v) for k, v in self.confusion_files.items()},
        }


def evaluate_run(
    run: str | os.PathLike[str] | LoadedModel,
    dataset: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    confusion_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationReport:
    """Run a trained model over `dataset` and measure each task on its labelled entries.

    `confusion_dir`: write each softmax task's confusion matrix there as
    `<dataset name>_confusion_<task>.csv` (rows: true class, columns: predicted; class names as headers).
    """
    loaded = run if isinstance(run, LoadedModel) else load_run(run)
    ds = open_for_model(loaded, dataset, labels)
    accumulators = {task.name: _TaskAccumulator(task) for task in loaded.tasks}
    done = 0
    try:
        for keys, outputs, rows in iter_dataset(loaded, ds, batch_size, str(dataset)):
            values = rows.numpy().astype(np.float64)
            for task in loaded.tasks:
                accumulators[task.name].update(
                    outputs[task.name].numpy(), values[:, task.columns], keys, str(dataset)
                )
            done += len(keys)
            if progress is not None:
                progress(done, len(ds))
    finally:
        ds.close()
    results = {}
    for task in loaded.tasks:
        classes = task.class_names or tuple(str(c) for c in range(task.classes or 0))
        results[task.name] = accumulators[task.name].result(loaded.column_names(task.name), classes)
    report = EvaluationReport(loaded.checkpoint, str(dataset), done, results)
    if confusion_dir is not None:
        folder = Path(confusion_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stem = Path(os.path.abspath(dataset)).name
        for name, result in results.items():
            if result["kind"] == "softmax":
                path = folder / f"{stem}_confusion_{name}.csv"
                write_bytes_atomic(path, _confusion_csv(result).encode("utf-8"))
                report.confusion_files[name] = path
    return report


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


def _confusion_csv(result: dict[str, Any]) -> str:
    names = [_csv_field(n) for n in result["classes"]]
    lines = [",".join(["true\\predicted", *names])]
    lines += [",".join([name, *map(str, row)]) for name, row in zip(names, result["confusion"], strict=True)]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns under a dashed rule, as training's per-epoch table."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return [line.rstrip() for line in lines]


def format_report(report: EvaluationReport) -> str:
    """The per-task table (labelled entries counted), then a per-label table for each sigmoid task."""
    columns: list[str] = []
    for result in report.tasks.values():
        for name in TABLE_METRICS[result["kind"]]:
            if name not in columns:
                columns.append(name)
    header = ["task", "kind", "labelled", *columns]
    rows = []
    for name, result in report.tasks.items():
        own = TABLE_METRICS[result["kind"]]
        rows.append(
            [name, result["kind"], str(result["labelled"])]
            + [_cell(result.get(c)) if c in own else "" for c in columns]
        )
    lines = [f"{report.dataset}: {report.samples} samples, model {report.checkpoint}", *_table(header, rows)]
    for name, result in report.tasks.items():
        if result["kind"] != "sigmoid":
            continue
        lines += ["", f"{name} per label:"]
        label_rows = [
            [label, str(v["labelled"]), str(v["positives"])]
            + [_cell(v[m]) for m in ("accuracy", "balanced_accuracy", "auc")]
            for label, v in result["labels"].items()
        ]
        lines += _table(["label", "labelled", "positives", "accuracy", "balanced_acc", "auc"], label_rows)
    for name, path in report.confusion_files.items():
        lines.append(f"confusion matrix of {name}: {path}")
    return "\n".join(lines)
