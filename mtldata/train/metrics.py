"""Per-task evaluation metrics, accumulated over batches and summed across DDP ranks.

softmax: accuracy over non-ignored samples; sigmoid: mean error (the share of wrong bits) and F1
(micro-averaged over the task's columns), ignored elements left out; euclidean: MAE and RMSE over
every value. Each task also reports its mean Caffe loss. Missing labels (NaN, MISSING_CLASS) are left
out of every count; `labelled` is how many entries were labelled (samples for softmax, values else),
and a batch's loss weighs in by its labelled share of samples.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from mtldata.tasks import MISSING_CLASS, TaskSet

__all__ = ["METRIC_NAMES", "TaskMetrics", "format_table"]

METRIC_NAMES = {"softmax": ("accuracy",), "sigmoid": ("mean_error", "f1"), "euclidean": ("mae", "rmse")}
# Slots of each task's accumulator: loss sum, sample count and labelled entries first, then the kind's own.
_SLOTS = {
    "softmax": ("loss", "samples", "labelled", "correct", "valid"),
    "sigmoid": ("loss", "samples", "labelled", "wrong", "valid", "tp", "fp", "fn"),
    "euclidean": ("loss", "samples", "labelled", "abs", "sq", "values"),
}


class TaskMetrics:
    """Accumulates predictions against targets; `compute()` gives {task: {metric: value}}."""

    def __init__(self, tasks: TaskSet, device: torch.device | str = "cpu") -> None:
        self.tasks = tasks
        self.sums = {
            t.name: torch.zeros(len(_SLOTS[t.kind]), dtype=torch.float64, device=device) for t in tasks
        }

    @torch.no_grad()
    def update(
        self,
        outputs: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
        losses: dict[str, torch.Tensor],
    ) -> None:
        for task in self.tasks:
            out = outputs[task.name].float()
            target = targets[task.name]
            n = out.shape[0]
            if task.kind == "softmax":
                labelled = target.reshape(-1) != MISSING_CLASS
            else:
                labelled = ~torch.isnan(target.float().reshape(n, -1))
            # a batch counts for its labelled share of samples (n when nothing is missing)
            share = n * labelled.sum().double() / max(labelled.numel(), 1)
            parts = [losses[task.name].double() * share, share, labelled.sum()]
            if task.kind == "softmax":
                target = target.reshape(-1).long()
                keep = labelled & (target != task.ignore_label) if task.ignore_label is not None else labelled
                correct = (out.argmax(1) == target) & keep
                parts += [correct.sum(), keep.sum()]
            elif task.kind == "sigmoid":
                target = target.float().reshape(n, -1)
                keep = labelled & (target != task.ignore_label) if task.ignore_label is not None else labelled
                pred = out.reshape(n, -1) > 0
                truth = target > 0.5
                parts += [
                    ((pred != truth) & keep).sum(),
                    keep.sum(),
                    (pred & truth & keep).sum(),
                    (pred & ~truth & keep).sum(),
                    (~pred & truth & keep).sum(),
                ]
            else:
                target = target.float().reshape(n, -1)
                diff = out.reshape(n, -1) - torch.where(labelled, target, torch.zeros_like(target))
                diff = torch.where(labelled, diff, torch.zeros_like(diff))
                parts += [diff.abs().sum(), (diff * diff).sum(), labelled.sum()]
            self.sums[task.name] += torch.stack([p.double() for p in parts])

    def all_reduce(self) -> None:
        """Sum the accumulators over DDP ranks (call on every rank)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        names = list(self.sums)
        packed = torch.cat([self.sums[n] for n in names])
        if dist.get_backend() == "nccl" and packed.device.type != "cuda":
            packed = packed.cuda()
        dist.all_reduce(packed)
        packed = packed.to(self.sums[names[0]].device)
        offset = 0
        for n in names:
            size = self.sums[n].numel()
            self.sums[n] = packed[offset : offset + size].clone()
            offset += size

    def compute(self) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for task in self.tasks:
            v = dict(zip(_SLOTS[task.kind], self.sums[task.name].tolist(), strict=True))
            m: dict[str, float | None] = {
                "loss": _ratio(v["loss"], v["samples"]),
                "labelled": int(v["labelled"]),
            }
            if task.kind == "softmax":
                m["accuracy"] = _ratio(v["correct"], v["valid"])
            elif task.kind == "sigmoid":
                m["mean_error"] = _ratio(v["wrong"], v["valid"])
                m["f1"] = _ratio(2 * v["tp"], 2 * v["tp"] + v["fp"] + v["fn"])
            else:
                m["mae"] = _ratio(v["abs"], v["values"])
                mse = _ratio(v["sq"], v["values"])
                m["rmse"] = None if mse is None else math.sqrt(mse)
            out[task.name] = m
        return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(record: dict[str, Any], tasks: TaskSet) -> str:
    """A per-task text table of one epoch's record (train loss, weight, validation metrics)."""
    train = record.get("train", {}).get("losses", {})
    weights = record.get("weights", {})
    val = record.get("val") or {}
    metric_cols = []
    for task in tasks:
        for name in METRIC_NAMES[task.kind]:
            if name not in metric_cols:
                metric_cols.append(name)
    header = ["task", "kind", "weight", "train loss"] + (
        ["val loss", *metric_cols, "labelled"] if val else []
    )
    rows = []
    for task in tasks:
        row = [task.name, task.kind, _fmt(weights.get(task.name)), _fmt(train.get(task.name))]
        if val:
            metrics = val.get(task.name, {})
            row.append(_fmt(metrics.get("loss")))
            row += [_fmt(metrics.get(c)) if c in METRIC_NAMES[task.kind] else "" for c in metric_cols]
            row.append(_fmt(metrics.get("labelled")))
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
