"""Caffe's loss layers in torch, with Caffe's normalisation, and the multi-task objective.

Caffe divides each loss differently from PyTorch's defaults: SoftmaxWithLoss by the number of
non-ignored labels, SigmoidCrossEntropyLoss by the batch size N (not N*k), EuclideanLoss by 2N.
The tops Caffe logs are these unweighted losses; `loss_weight` only scales the gradient and the total.

Missing labels (NaN in a float block, `MISSING_CLASS` in a softmax target) add nothing: a missing class
is ignored like ignore_label; sigmoid and euclidean divide by the labelled elements / k in place of N,
which is N itself when nothing is missing, so fully labelled batches give Caffe's values exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtldata.tasks import MISSING_CLASS, TaskSet, TaskSpec

__all__ = [
    "NORMALIZATIONS",
    "MultiTaskObjective",
    "ObjectiveOutput",
    "euclidean_loss",
    "labelled_count",
    "sigmoid_cross_entropy_loss",
    "softmax_with_loss",
    "task_loss",
]

# LossParameter.NormalizationMode, by name.
NORMALIZATIONS = ("full", "valid", "batch_size", "none")


def _normalizer(mode: str, n: int, count: int, valid: torch.Tensor) -> torch.Tensor:
    """Caffe's LossLayer::GetNormalizer, floored at 1 so an all-ignored batch gives 0, not NaN."""
    if mode == "full":
        value = torch.tensor(float(count), device=valid.device)
    elif mode == "valid":
        value = valid.to(torch.float32)
    elif mode == "batch_size":
        value = torch.tensor(float(n), device=valid.device)
    elif mode == "none":
        value = torch.tensor(1.0, device=valid.device)
    else:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
    return value.clamp(min=1.0)


def softmax_with_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_label: int | None = None, normalization: str = "valid"
) -> torch.Tensor:
    """SoftmaxWithLoss: cross-entropy of (N, C) logits against (N,) class indices.

    Default normalisation VALID: the sum over non-ignored samples divided by their count (at least 1).
    """
    logits = logits.float().reshape(logits.shape[0], -1)
    target = target.reshape(-1).long()
    # -100 is never a valid class, so it is a safe stand-in when the task ignores nothing.
    ignore = -100 if ignore_label is None else int(ignore_label)
    target = target.masked_fill(target == MISSING_CLASS, ignore)  # a missing class is ignored
    total = F.cross_entropy(logits, target, ignore_index=ignore, reduction="sum")
    valid = (target != ignore).sum()
    return total / _normalizer(normalization, logits.shape[0], target.numel(), valid)


def sigmoid_cross_entropy_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_label: int | None = None,
    normalization: str = "batch_size",
) -> torch.Tensor:
    """SigmoidCrossEntropyLoss: binary cross-entropy on logits, summed and divided by N by default.

    Elements whose target equals `ignore_label` add nothing (Caffe zeroes their loss and gradient).
    Missing (NaN) targets add nothing either, and the batch-size divisor becomes the labelled elements / k.
    """
    n = logits.shape[0]
    logits = logits.float().reshape(n, -1)
    target = target.float().reshape(n, -1)
    if logits.shape != target.shape:
        raise ValueError(
            f"sigmoid loss: logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ"
        )
    labelled = ~torch.isnan(target)
    missing = not bool(labelled.all())
    if ignore_label is None and not missing:
        keep = torch.ones_like(target, dtype=torch.bool)
        elementwise = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    else:
        keep = labelled if ignore_label is None else labelled & (target != ignore_label)
        # The ignored targets are replaced before the loss so that their value never matters.
        safe = torch.where(keep, target, torch.zeros_like(target))
        elementwise = F.binary_cross_entropy_with_logits(logits, safe, reduction="none")
        elementwise = torch.where(keep, elementwise, torch.zeros_like(elementwise))
    if missing and normalization == "batch_size":
        return elementwise.sum() / _labelled_rows(labelled)
    return elementwise.sum() / _normalizer(normalization, n, target.numel(), keep.sum())


def _labelled_rows(labelled: torch.Tensor) -> torch.Tensor:
    """The batch-size divisor over labelled entries: labelled elements / k (N when all are), at least 1."""
    k = labelled.shape[1] if labelled.ndim > 1 else 1
    return (labelled.sum().to(torch.float32) / k).clamp(min=1.0)


def euclidean_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """EuclideanLoss: the sum of squared differences over 2N (not PyTorch's MSE mean).

    Missing (NaN) targets add nothing, and N becomes the labelled elements / k.
    """
    n = pred.shape[0]
    target = target.float().reshape(n, -1)
    labelled = ~torch.isnan(target)
    if not bool(labelled.all()):
        # The missing targets are replaced before the difference so that no NaN reaches the gradient.
        diff = pred.float().reshape(n, -1) - torch.where(labelled, target, torch.zeros_like(target))
        diff = torch.where(labelled, diff, torch.zeros_like(diff))
        return (diff * diff).sum() / (2.0 * _labelled_rows(labelled))
    diff = pred.float().reshape(n, -1) - target
    return (diff * diff).sum() / (2.0 * max(n, 1))


def labelled_count(task: TaskSpec, target: torch.Tensor) -> torch.Tensor:
    """How many of a task's targets in a batch are labelled (not missing): samples for softmax, elements else."""
    if task.kind == "softmax":
        return (target.reshape(-1) != MISSING_CLASS).sum()
    return (~torch.isnan(target.float())).sum()


def task_loss(task: TaskSpec, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Caffe loss of one task (its kind's layer, default normalisation)."""
    if task.kind == "softmax":
        return softmax_with_loss(output, target, task.ignore_label)
    if task.kind == "sigmoid":
        return sigmoid_cross_entropy_loss(output, target, task.ignore_label)
    return euclidean_loss(output, target)


@dataclass
class ObjectiveOutput:
    """What one evaluation of the objective gives.

    `total` is what to backpropagate (with the weighting's own terms, e.g. uncertainty's log-variance
    regulariser); `weighted` is the Caffe-style total `sum(weight * loss)` to log; `losses` are the
    unweighted per-task losses and `weights` the multiplier each task got.
    """

    total: torch.Tensor
    weighted: torch.Tensor
    losses: dict[str, torch.Tensor]
    weights: dict[str, float]


class MultiTaskObjective(nn.Module):
    """Per-task Caffe losses combined by a weighting method; the one place losses and weights meet."""

    def __init__(self, tasks: TaskSet, weighting: nn.Module) -> None:
        super().__init__()
        self.tasks = tasks
        self.weighting = weighting

    def forward(
        self,
        outputs: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
        shared: torch.Tensor | None = None,
        grad_scale: float = 1.0,
    ) -> ObjectiveOutput:
        """Losses of `outputs` (head name -> tensor) against `targets`, combined.

        `shared` is the parameter GradNorm measures gradient norms at, and `grad_scale` the AMP
        loss scale (GradNorm differentiates scaled losses so fp16 gradients do not underflow).
        """
        losses = {t.name: task_loss(t, outputs[t.name], targets[t.name]) for t in self.tasks}
        # A task with no label in this batch (all missing) must not move the weighting's state.
        present = torch.stack([labelled_count(t, targets[t.name]) > 0 for t in self.tasks])
        return self.weighting(losses, shared=shared, grad_scale=grad_scale, present=present)

    @torch.no_grad()
    def evaluate(
        self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Unweighted per-task losses, for validation."""
        return {t.name: task_loss(t, outputs[t.name], targets[t.name]) for t in self.tasks}
