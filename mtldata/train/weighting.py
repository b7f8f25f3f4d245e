"""Task weighting: fixed loss_weight, uncertainty (Kendall et al. 2018), DWA (Liu et al. 2019), GradNorm.

Every method keeps each task's `loss_weight` as a fixed prior factor and multiplies it by a weight of
its own; a task with loss_weight 0 stays out of the weighting. The state (learned parameters, loss
history) lives in the module's state_dict, so it goes into checkpoints with the model. Under DDP the
weights stay equal on every rank: learned parameters get their gradients averaged across ranks
(`sync_grads`), and DWA averages its epoch losses across ranks before computing new weights.

A task absent from a batch (every label of it missing) has a zero loss there; `present` tells each method
so, and none learns from it: no uncertainty or GradNorm gradient, no DWA loss sample, no GradNorm L(0).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.distributed as dist
from torch import nn

from mtldata.tasks import TaskSet
from mtldata.train.losses import ObjectiveOutput

__all__ = [
    "METHODS",
    "DWA",
    "FixedWeighting",
    "GradNorm",
    "UncertaintyWeighting",
    "Weighting",
    "make_weighting",
]

METHODS = ("fixed", "uncertainty", "dwa", "gradnorm")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Weighting(nn.Module, ABC):
    """Turns per-task losses into the training objective. Subclasses say how the weights move."""

    method = ""

    def __init__(self, tasks: TaskSet) -> None:
        super().__init__()
        self.names = tasks.names
        self.register_buffer("prior", torch.tensor([t.loss_weight for t in tasks], dtype=torch.float32))
        self.register_buffer("active", self.prior > 0)

    @abstractmethod
    def multipliers(self) -> torch.Tensor:
        """The weight each task's loss is multiplied by now (prior included), shape (T,)."""

    def forward(
        self,
        losses: dict[str, torch.Tensor],
        shared: torch.Tensor | None = None,
        grad_scale: float = 1.0,
        present: torch.Tensor | None = None,
    ) -> ObjectiveOutput:
        """Combine the per-task losses; `present` (T,) bool marks the tasks labelled in this batch."""
        stacked = torch.stack([losses[n] for n in self.names])
        if present is None:
            present = torch.ones(len(self.names), dtype=torch.bool, device=stacked.device)
        total = self.objective(stacked, shared, grad_scale, present.to(stacked.device))
        weights = self.multipliers().detach()
        weighted = (weights.to(stacked.device) * stacked.detach()).sum()
        return ObjectiveOutput(total, weighted, losses, dict(zip(self.names, weights.unbind(), strict=True)))

    def objective(
        self, losses: torch.Tensor, shared: torch.Tensor | None, grad_scale: float, present: torch.Tensor
    ) -> torch.Tensor:
        """The scalar to backpropagate for the stacked (T,) losses."""
        return (self.multipliers().detach().to(losses.device) * losses).sum()

    def weights(self) -> dict[str, float]:
        """The current multipliers by task, as Python floats (for logs and metrics)."""
        return dict(zip(self.names, self.multipliers().detach().cpu().tolist(), strict=True))

    def sync_grads(self) -> None:
        """Average the gradients of learned weights across DDP ranks (DDP only syncs the model's)."""
        if not _distributed():
            return
        world = dist.get_world_size()
        for p in self.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)

    def broadcast(self) -> None:
        """Make every rank hold rank 0's state (after construction or a resume)."""
        if not _distributed():
            return
        for t in [*self.parameters(), *self.buffers()]:
            dist.broadcast(t.data, src=0)

    def after_step(self) -> None:
        """Called after each optimizer step."""

    def consolidate(self) -> None:
        """Under DDP, before a checkpoint inside an epoch: spread per-rank running state evenly over the
        ranks, so that every rank resuming from rank 0's copy still sums to the same epoch totals."""

    def epoch_end(self) -> None:
        """Called once at the end of each training epoch, on every rank."""


class FixedWeighting(Weighting):
    """Caffe's behaviour: total = sum(loss_weight * loss)."""

    method = "fixed"

    def multipliers(self) -> torch.Tensor:
        return self.prior


class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty (Kendall, Gal and Cipolla, CVPR 2018).

    A learned s = log(sigma^2) per task: a regression (euclidean) task contributes
    0.5 * exp(-s) * L + 0.5 * s, a classification task exp(-s) * L + 0.5 * s.
    """

    method = "uncertainty"

    def __init__(self, tasks: TaskSet) -> None:
        super().__init__(tasks)
        self.log_var = nn.Parameter(torch.zeros(len(tasks)))
        self.register_buffer(
            "factor",
            torch.tensor([0.5 if t.kind == "euclidean" else 1.0 for t in tasks], dtype=torch.float32),
        )

    def multipliers(self) -> torch.Tensor:
        return self.prior * self.factor * torch.exp(-self.log_var)

    def objective(
        self, losses: torch.Tensor, shared: torch.Tensor | None, grad_scale: float, present: torch.Tensor
    ) -> torch.Tensor:
        s = self.log_var.to(losses.device)
        terms = self.factor * torch.exp(-s) * losses + 0.5 * s
        # an absent task's regulariser 0.5 * s would still pull its s down: leave the task out
        terms = torch.where(present, terms, torch.zeros_like(terms))
        return (self.prior * terms).sum()


class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019).

    w_k = T * softmax(r / temperature)_k with r_k = L_k(t-1) / L_k(t-2), the ratio of the task's mean
    training loss over the last two epochs; w = 1 for the first two epochs.
    """

    method = "dwa"

    def __init__(self, tasks: TaskSet, temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not temperature > 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        t = len(tasks)
        self.register_buffer("dyn", torch.ones(t))
        self.register_buffer("history", torch.zeros(2, t, dtype=torch.float64))  # [t-2, t-1]
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("loss_sum", torch.zeros(t, dtype=torch.float64))
        # batches in which each task was labelled (an absent task's zero loss is not a sample of it)
        self.register_buffer("loss_count", torch.zeros(t, dtype=torch.float64))

    def multipliers(self) -> torch.Tensor:
        return self.prior * self.dyn

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # checkpoints from before per-task counts held one batch count for every task
        count = state_dict.get(prefix + "loss_count")
        if count is not None and count.ndim == 0:
            state_dict[prefix + "loss_count"] = count.expand(len(self.names)).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def objective(
        self, losses: torch.Tensor, shared: torch.Tensor | None, grad_scale: float, present: torch.Tensor
    ) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            mask = present.to(self.loss_sum)
            self.loss_sum += losses.detach().to(self.loss_sum) * mask
            self.loss_count += mask
        return super().objective(losses, shared, grad_scale, present)

    @torch.no_grad()
    def consolidate(self) -> None:
        if _distributed():
            for t in (self.loss_sum, self.loss_count):
                dist.all_reduce(t)
                t /= dist.get_world_size()

    @torch.no_grad()
    def epoch_end(self) -> None:
        sums, count = self.loss_sum.clone(), self.loss_count.clone()
        if _distributed():  # the same averages on every rank give the same weights
            packed = torch.cat([sums, count])
            dist.all_reduce(packed)
            sums, count = packed[: len(sums)], packed[len(sums) :]
        self.loss_sum.zero_()
        self.loss_count.zero_()
        if not bool((count > 0).any()):
            return
        # a task unlabelled all epoch keeps its last mean (ratio 1), or 1 before it has one
        fallback = torch.where(self.epochs_seen > 0, self.history[1], torch.ones_like(sums))
        mean = torch.where(count > 0, sums / count.clamp(min=1), fallback)
        self.history[0] = self.history[1]
        self.history[1] = mean
        self.epochs_seen += 1
        if int(self.epochs_seen) < 2:
            return
        ratio = self.history[1] / self.history[0].clamp(min=1e-12)
        logits = (ratio / self.temperature).masked_fill(~self.active, -math.inf)
        n_active = int(self.active.sum())
        self.dyn.copy_((n_active * torch.softmax(logits, 0)).masked_fill(~self.active, 1.0).to(self.dyn))


class GradNorm(Weighting):
    """GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018).

    Learned weights w (renormalised to sum to the number of tasks after each step) are moved so that
    each task's gradient norm at a shared layer, G_k = ||grad_W w_k L_k||, approaches
    mean(G) * r_k^alpha, where r_k is the task's loss ratio L_k(t)/L_k(0) relative to the mean ratio.
    The weights learn only from that L1 gap; the model learns from sum(w * L) with w held constant.
    """

    method = "gradnorm"

    def __init__(self, tasks: TaskSet, alpha: float = 1.5) -> None:
        super().__init__(tasks)
        self.alpha = float(alpha)
        self.w = nn.Parameter(torch.ones(len(tasks)))
        self.register_buffer("initial", torch.zeros(len(tasks)))
        # L_k(0) is the task's loss in the first batch that labels it
        self.register_buffer("has_initial", torch.zeros(len(tasks), dtype=torch.bool))

    def multipliers(self) -> torch.Tensor:
        return self.prior * self.w

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # checkpoints from before per-task initial losses held one flag for every task
        flag = state_dict.get(prefix + "has_initial")
        if flag is not None and flag.ndim == 0:
            state_dict[prefix + "has_initial"] = flag.expand(len(self.names)).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def objective(
        self, losses: torch.Tensor, shared: torch.Tensor | None, grad_scale: float, present: torch.Tensor
    ) -> torch.Tensor:
        main = (self.multipliers().detach().to(losses.device) * losses).sum()
        if not (self.training and torch.is_grad_enabled() and shared is not None and shared.requires_grad):
            return main
        present = present.to(self.initial.device)
        if not bool(self.has_initial.all()):
            first = losses.detach().float().to(self.initial) * present
            seen = present.to(self.initial)
            if _distributed():  # the mean over the ranks that labelled the task
                packed = torch.cat([first, seen])
                dist.all_reduce(packed)
                first, seen = packed[: len(first)], packed[len(first) :]
            new = ~self.has_initial & (seen > 0)
            self.initial.copy_(torch.where(new, first / seen.clamp(min=1), self.initial))
            self.has_initial |= new
        norms = []
        for k in range(len(self.names)):
            if not bool(self.active[k] & present[k]) or not losses[k].requires_grad:
                norms.append(torch.zeros((), device=losses.device))
                continue
            # w_k is a scalar factor, so ||grad(w_k L_k)|| = w_k ||grad(L_k)||: one plain backward per task
            # through the head and the shared layer, no double backward.
            (grad,) = torch.autograd.grad(
                losses[k] * (self.prior[k] * grad_scale), shared, retain_graph=True, allow_unused=True
            )
            norms.append(
                torch.zeros((), device=losses.device) if grad is None else grad.float().norm() / grad_scale
            )
        g = torch.stack(norms).detach()
        if not torch.isfinite(g).all():  # an fp16 overflow: GradScaler will skip this step anyway
            return main
        active = (self.active & present & self.has_initial).to(losses.device)
        if not bool(active.any()):
            return main
        w = self.w.to(losses.device)
        grad_norms = w * g
        ratios = losses.detach().float() / self.initial.to(losses.device).clamp(min=1e-12)
        ratios = torch.where(active, ratios, torch.ones_like(ratios))
        relative = ratios / ratios[active].mean().clamp(min=1e-12)
        target = (grad_norms[active].mean() * relative.pow(self.alpha)).detach()
        gap = (grad_norms - target).abs()[active].sum()
        return main + gap

    @torch.no_grad()
    def after_step(self) -> None:
        active = self.active
        self.w.clamp_(min=1e-4)
        self.w[active] *= int(active.sum()) / self.w[active].sum()


def make_weighting(
    method: str, tasks: TaskSet, *, dwa_temperature: float = 2.0, gradnorm_alpha: float = 1.5
) -> Weighting:
    """The weighting named `method` (one of METHODS) for `tasks`."""
    if method == "fixed":
        return FixedWeighting(tasks)
    if method == "uncertainty":
        return UncertaintyWeighting(tasks)
    if method == "dwa":
        return DWA(tasks, temperature=dwa_temperature)
    if method == "gradnorm":
        return GradNorm(tasks, alpha=gradnorm_alpha)
    raise ValueError(f"weighting must be one of {', '.join(METHODS)}, got {method!r}")
