"""Caffe's six update rules and the ApplyUpdate around them, in Caffe's order and in float32.

Per iteration (SGDSolver::ApplyUpdate): clip the whole gradient to clip_gradients (L2 norm), then
for each learnable param divide by iter_size, add weight_decay·decay_mult·W (L1: sign(W)), compute
the rule's update with rate·lr_mult, and W ← W − update. The rules keep their history blobs in
Caffe's layout (one per param, AdaDelta and Adam a second set after the first), which is what a
.solverstate holds.

These are not torch.optim's rules: SGD's momentum buffer holds lr·g (so lr changes act at once),
AdaGrad/RMSProp add delta after the square root, Adam adds delta to sqrt(v) before the bias
correction factor, and AdaDelta multiplies its step by base_lr·lr_mult.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffe.blob import array_to_blob, blob_to_array
from mtldata.caffenet.layers import CaffeNetError
from mtldata.caffenet.net import LearnableParam

__all__ = ["SOLVER_TYPES", "CaffeUpdate", "SolverError", "UpdateRule", "solver_type"]


class SolverError(CaffeNetError):
    """A solver prototxt Caffe would reject, or one asking for what mtldata does not implement."""


def _f32(value: float) -> float:
    # Caffe reads every solver setting as float32 (1 − momentum2 is 1 − float32(0.999), not 1e-3).
    return float(np.float32(value))


class UpdateRule:
    """One solver type's ComputeUpdateValue: the update from a regularized gradient and the history."""

    history_sets = 1  # history blobs per learnable param

    def __init__(self, param: caffe_pb2.SolverParameter) -> None:
        self.momentum = _f32(param.momentum)
        self.delta = _f32(param.delta)

    def update(self, g: Tensor, history: list[Tensor], local_rate: float, it: int) -> Tensor:
        raise NotImplementedError


class SGDRule(UpdateRule):
    def update(self, g: Tensor, history: list[Tensor], local_rate: float, it: int) -> Tensor:
        (h,) = history
        h.mul_(self.momentum).add_(g, alpha=local_rate)
        return h.clone()


class NesterovRule(UpdateRule):
    def update(self, g: Tensor, history: list[Tensor], local_rate: float, it: int) -> Tensor:
        (h,) = history
        previous = h.clone()
        h.mul_(self.momentum).add_(g, alpha=local_rate)
        # Step back by the old momentum, then over-step by the new one.
        return h * _f32(1 + self.momentum) - previous * self.momentum


class AdaGradRule(UpdateRule):
    def __init__(self, param: caffe_pb2.SolverParameter) -> None:
        super().__init__(param)
        if self.momentum != 0:
            raise SolverError("momentum cannot be used with AdaGrad (Caffe requires momentum: 0)")

    def update(self, g: Tensor, history: list[Tensor], local_rate: float, it: int) -> Tensor:
        (h,) = history
        h.add_(g * g)
        return g / (h.sqrt() + self.delta) * local_rate


class RMSPropRule(UpdateRule):
    def __init__(self, param: caffe_pb2.SolverParameter) -> None:
        super().__init__(param)
        if self.momentum != 0:
            raise SolverError("momentum cannot be used with RMSProp (Caffe requires momentum: 0)")
        self.rms_decay = _f32(param.rms_decay)

    def update(self, g: Tensor, history: list[Tensor], local_rate: float, it: int) -> Tensor:
        (h,) = history
        h.mul_(self.rms_decay).add_(g * g, alpha=_f32(1 - self.rms_decay))
        return g / (h.sqrt() + self.delta) * local_rate


class AdaDeltaRule(UpdateRule):
    history_sets = 2  # mean squared gradient, then mean squared update

    def update(self, g: Tensor, history: list[Tensor], local_rate: float, it: int) -> Tensor:
        h, h2 = history
        rest = _f32(1 - self.momentum)
        h.mul_(self.momentum).add_(g * g, alpha=rest)
        u = g * ((h2 + self.delta) / (h + self.delta)).sqrt()
        h2.mul_(self.momentum).add_(u * u, alpha=rest)
        return u * local_rate


class AdamRule(UpdateRule):
    history_sets = 2  # m, then v

    def __init__(self, param: caffe_pb2.SolverParameter) -> None:
        super().__init__(param)
        self.beta2 = _f32(param.momentum2)

    def update(self, g: Tensor, history: list[Tensor], local_rate: float, it: int) -> Tensor:
        m, v = history
        beta1, beta2 = self.momentum, self.beta2
        m.mul_(beta1).add_(g, alpha=_f32(1 - beta1))
        v.mul_(beta2).add_(g * g, alpha=_f32(1 - beta2))
        t = it + 1
        correction = _f32(np.sqrt(1 - np.float32(beta2) ** t) / (1 - np.float32(beta1) ** t))
        return m / (v.sqrt() + self.delta) * _f32(local_rate * correction)


# Caffe's type names; the deprecated solver_type enum names map onto them.
UPDATE_RULES: dict[str, type[UpdateRule]] = {
    "SGD": SGDRule,
    "Nesterov": NesterovRule,
    "AdaGrad": AdaGradRule,
    "RMSProp": RMSPropRule,
    "AdaDelta": AdaDeltaRule,
    "Adam": AdamRule,
}
SOLVER_TYPES = tuple(UPDATE_RULES)
_ENUM_NAMES = {name.upper(): name for name in UPDATE_RULES}


def solver_type(param: caffe_pb2.SolverParameter) -> str:
    """The solver type, from `type` or the deprecated `solver_type` enum (as Caffe's upgrade does)."""
    if param.HasField("type"):
        kind = param.type
    elif param.HasField("solver_type"):
        kind = _ENUM_NAMES[caffe_pb2.SolverParameter.SolverType.Name(param.solver_type)]
    else:
        kind = "SGD"
    if kind not in UPDATE_RULES:
        raise SolverError(f"unknown solver type {kind!r}; Caffe's are {', '.join(SOLVER_TYPES)}")
    return str(kind)


class CaffeUpdate:
    """ApplyUpdate over a net's learnable params with one solver type's rule and its history."""

    def __init__(self, params: Sequence[LearnableParam], param: caffe_pb2.SolverParameter) -> None:
        self.params = list(params)
        self.kind = solver_type(param)
        self.rule = UPDATE_RULES[self.kind](param)
        self.weight_decay = np.float32(param.weight_decay)
        self.regularization = param.regularization_type
        if self.regularization not in ("L1", "L2"):
            raise SolverError(f"unknown regularization_type {self.regularization!r} (L1 or L2)")
        self.clip = param.clip_gradients
        if param.iter_size < 1:
            raise SolverError(f"iter_size must be >= 1, got {param.iter_size}")
        self.iter_size = param.iter_size
        self.history = [
            torch.zeros_like(p.tensor, dtype=torch.float32)
            for _ in range(self.rule.history_sets)
            for p in self.params
        ]
        self.last_clip: tuple[float, float] | None = None  # (l2 norm, scale) when the last update clipped

    def zero_grad(self) -> None:
        for p in self.params:
            p.tensor.grad = None

    def _histories(self, index: int) -> list[Tensor]:
        n = len(self.params)
        return [self.history[s * n + index] for s in range(self.rule.history_sets)]

    @torch.no_grad()
    def apply_update(self, rate: float, it: int = 0) -> list[Tensor]:
        """One update at iteration `it` with learning rate `rate`, from the gradients in `.grad`.

        Returns what was subtracted from each param (what Caffe leaves in the param's diff).
        """
        grads = [
            p.tensor.grad if p.tensor.grad is not None else torch.zeros_like(p.tensor) for p in self.params
        ]
        self.last_clip = None
        if self.clip >= 0:
            norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
            if norm > self.clip:
                factor = np.float32(self.clip / norm)
                grads = [g * float(factor) for g in grads]
                self.last_clip = (norm, float(factor))
        if self.iter_size > 1:
            grads = [g * float(np.float32(1.0) / np.float32(self.iter_size)) for g in grads]
        updates = []
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            local_rate = float(np.float32(rate) * np.float32(p.lr_mult))
            local_decay = float(self.weight_decay * np.float32(p.decay_mult))
            w = p.tensor
            if local_decay:
                g = g + local_decay * (w if self.regularization == "L2" else torch.sign(w))
            update = self.rule.update(g, self._histories(i), local_rate, it)
            w.sub_(update)
            updates.append(update)
        return updates

    def state_proto(self, it: int, current_step: int, learned_net: str) -> caffe_pb2.SolverState:
        """The .solverstate Caffe writes: iter, learned_net, every history blob, current_step."""
        state = caffe_pb2.SolverState()
        state.iter = it
        state.learned_net = learned_net
        state.current_step = current_step
        for h in self.history:
            state.history.append(array_to_blob(h.numpy()))
        return state

    def load_history(self, state: caffe_pb2.SolverState) -> None:
        if len(state.history) != len(self.history):
            raise SolverError(
                f"the solver state holds {len(state.history)} history blobs; a {self.kind} solver over "
                f"this net keeps {len(self.history)} ({self.rule.history_sets} per learnable param)"
            )
        for h, blob in zip(self.history, state.history, strict=True):
            values = torch.from_numpy(np.ascontiguousarray(blob_to_array(blob)))
            if values.numel() != h.numel():
                raise SolverError("a history blob of the solver state does not match its parameter's size")
            h.copy_(values.reshape(h.shape))
