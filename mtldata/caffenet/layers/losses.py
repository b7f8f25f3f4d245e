"""Caffe's loss and metric layers. Loss tops are unweighted scalars; the net applies loss_weight."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffenet.layers.base import FLT_MIN, Layer, canonical_axis, register, volume

_Norm = caffe_pb2.LossParameter


def _normalization(param: caffe_pb2.LayerParameter, default: int) -> int:
    lp = param.loss_param
    if lp.HasField("normalization"):
        return lp.normalization
    if lp.HasField("normalize"):
        return _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
    return default


def _normalizer(mode: int, outer: int, inner: int, valid: Tensor | int) -> Tensor | float:
    """Caffe's LossLayer::GetNormalizer, floored at 1 (an all-ignored batch gives 0, not NaN)."""
    if mode == _Norm.FULL:
        return float(max(outer * inner, 1))
    if mode == _Norm.VALID:
        return torch.clamp(torch.as_tensor(valid, dtype=torch.float32), min=1.0)
    if mode == _Norm.BATCH_SIZE:
        return float(max(outer, 1))
    return 1.0


class _Loss(Layer):
    min_bottoms = 2
    max_bottoms = 2

    def ignore_label(self) -> int | None:
        lp = self.layer_param.loss_param
        return lp.ignore_label if lp.HasField("ignore_label") else None


class SoftmaxWithLoss(_Loss):
    """Mean of -log softmax(x)[label] over the non-ignored positions (normalization VALID by default)."""

    type_name = "SoftmaxWithLoss"
    max_tops = 2

    def forward(self, x, label):
        axis = canonical_axis(self.layer_param.softmax_param.axis, x.ndim)
        outer, classes, inner = volume(x.shape, 0, axis), x.shape[axis], volume(x.shape, axis + 1)
        if label.numel() != outer * inner:
            raise self.error(
                f"number of labels must match number of predictions: {label.numel()} labels for "
                f"{outer * inner} predictions of shape {tuple(x.shape)} (softmax axis {axis})"
            )
        logp = torch.log_softmax(x.reshape(outer, classes, inner), 1)
        target = label.reshape(outer, inner).to(torch.float32).trunc().long()  # static_cast<int>
        ignore = self.ignore_label()
        valid = torch.ones_like(target, dtype=torch.bool) if ignore is None else target != ignore
        bad = valid & ((target < 0) | (target >= classes))
        if bool(bad.any()):
            raise self.error(f"label {int(target[bad][0])} is outside [0, {classes}) and is not ignore_label")
        picked = logp.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
        picked = torch.clamp(picked, min=math.log(FLT_MIN))  # Caffe: log(max(prob, FLT_MIN))
        total = -(picked * valid.to(picked.dtype)).sum()
        loss = total / _normalizer(_normalization(self.layer_param, _Norm.VALID), outer, inner, valid.sum())
        tops = [loss]
        if len(self.layer_param.top) > 1:
            tops.append(torch.softmax(x, axis))
        return tops


class SigmoidCrossEntropyLoss(_Loss):
    """Sum of binary cross-entropy on logits, divided by the batch size N by default (not by N*K)."""

    type_name = "SigmoidCrossEntropyLoss"

    def forward(self, x, target):
        if x.numel() != target.numel():
            raise self.error(
                f"needs as many targets as predictions: {target.numel()} vs {x.numel()} "
                f"(shapes {tuple(target.shape)} and {tuple(x.shape)})"
            )
        t = target.reshape(x.shape).to(x.dtype)
        per = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        ignore = self.ignore_label()
        if ignore is None:
            total, valid = per.sum(), x.numel()
        else:
            keep = t.trunc() != ignore  # static_cast<int>(target) == ignore_label
            total, valid = (per * keep.to(per.dtype)).sum(), keep.sum()
        outer = x.shape[0] if x.ndim else 1
        inner = volume(x.shape, 1)
        return [total / _normalizer(_normalization(self.layer_param, _Norm.BATCH_SIZE), outer, inner, valid)]


class EuclideanLoss(_Loss):
    """Sum of squared differences over 2N (N = the first axis): Caffe's, not MSELoss."""

    type_name = "EuclideanLoss"

    def forward(self, a, b):
        if volume(a.shape, 1) != volume(b.shape, 1) or a.shape[0] != b.shape[0]:
            raise self.error(
                f"bottoms must have the same count per item: shapes {tuple(a.shape)} and {tuple(b.shape)}"
            )
        diff = a - b.reshape(a.shape).to(a.dtype)
        return [(diff * diff).sum() / a.shape[0] / 2]


class Accuracy(Layer):
    """Top-k accuracy over non-ignored labels; a second top gives each class's accuracy."""

    type_name = "Accuracy"
    min_bottoms = 2
    max_bottoms = 2
    max_tops = 2

    def forward(self, x, label):
        p = self.layer_param.accuracy_param
        axis = canonical_axis(p.axis, x.ndim)
        outer, classes, inner = volume(x.shape, 0, axis), x.shape[axis], volume(x.shape, axis + 1)
        if label.numel() != outer * inner:
            raise self.error(
                f"{label.numel()} labels for {outer * inner} predictions of shape {tuple(x.shape)}"
            )
        if p.top_k > classes:
            raise self.error(f"top_k ({p.top_k}) must be at most the number of classes ({classes})")
        with torch.no_grad():
            scores = x.detach().reshape(outer, classes, inner)
            target = label.detach().reshape(outer, inner).to(torch.float32).trunc().long()
            valid = (
                target != p.ignore_label
                if p.HasField("ignore_label")
                else torch.ones_like(target, dtype=torch.bool)
            )
            if bool((valid & ((target < 0) | (target >= classes))).any()):
                raise self.error(f"labels must be in [0, {classes})")
            true_score = scores.gather(1, torch.where(valid, target, 0).unsqueeze(1))
            # Correct when fewer than top_k other classes score at least as high as the true class.
            correct = ((scores >= true_score).sum(1) <= p.top_k) & valid
            count = int(valid.sum())
            accuracy = correct.sum().float() / count if count else torch.zeros((), device=x.device)
            tops = [accuracy.reshape(())]
            if len(self.layer_param.top) > 1:
                t = target[valid]
                per_count = torch.bincount(t, minlength=classes).float()
                per_correct = torch.bincount(target[correct], minlength=classes).float()
                tops.append(torch.where(per_count > 0, per_correct / per_count.clamp(min=1), 0.0))
        return tops


LAYERS = register(
    SoftmaxWithLoss,
    SigmoidCrossEntropyLoss,
    EuclideanLoss,
    Accuracy,
)
