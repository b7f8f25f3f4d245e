"""Caffe's loss and metric layers. Loss tops are unweighted scalars; the net applies loss_weight."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffenet.layers.base import (
    FLT_MIN,
    Layer,
    canonical_axis,
    prescribed_gradient,
    register,
    volume,
)

_Norm = caffe_pb2.LossParameter
LOG_THRESHOLD = 1e-20  # kLOG_THRESHOLD: the probability floor of the logistic and infogain losses


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


def _floored(log_p: Tensor, floor: float) -> Tensor:
    """max(log p, floor) in the forward only: Caffe's backward ignores its log floor (p − 1 stays)."""
    return log_p + (torch.clamp(log_p.detach(), min=floor) - log_p.detach())


def _int_labels(label: Tensor) -> Tensor:
    """Caffe's static_cast<int> of float labels."""
    return label.detach().to(torch.float32).trunc().long()


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
        picked = _floored(picked, math.log(FLT_MIN))  # Caffe: log(max(prob, FLT_MIN))
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


class HingeLoss(_Loss):
    """Σ max(0, 1 − t·x) (L1) or its square (L2) over every class, t = +1 for the label and −1 else, over N."""

    type_name = "HingeLoss"

    def forward(self, x, label):
        num = x.shape[0] if x.ndim else 1
        scores = x.reshape(num, -1)
        target = _int_labels(label).reshape(-1)
        if target.numel() != num:
            raise self.error(f"needs one label per item: {target.numel()} labels for {num} items")
        if bool(((target < 0) | (target >= scores.shape[1])).any()):
            raise self.error(f"labels must be in [0, {scores.shape[1]})")
        sign = torch.ones_like(scores)
        sign[torch.arange(num), target] = -1.0
        margin = torch.relu(1 + sign * scores)
        if self.layer_param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            margin = margin * margin
        return [margin.sum() / num]


class MultinomialLogisticLoss(_Loss):
    """−Σ log(max(p[label], 1e-20)) / N over probabilities; Caffe's gradient −1/max(p, 1e-20) even at p = 0."""

    type_name = "MultinomialLogisticLoss"

    def forward(self, p, label):
        num = p.shape[0] if p.ndim else 1
        probs = p.reshape(num, -1)
        target = _int_labels(label).reshape(-1)
        if target.numel() != num:
            raise self.error(f"needs one label per item: {target.numel()} labels for {num} items")
        if bool(((target < 0) | (target >= probs.shape[1])).any()):
            raise self.error(f"labels must be in [0, {probs.shape[1]})")
        with torch.no_grad():
            floored = torch.clamp(probs.gather(1, target[:, None]), min=LOG_THRESHOLD)
            loss = -torch.log(floored).sum() / num
            local = torch.zeros_like(probs).scatter_(1, target[:, None], -1.0 / floored / num)
        return [prescribed_gradient(loss, (p, local.reshape(p.shape)))]


class InfogainLoss(_Loss):
    """−Σ_l H[label, l]·log(max(softmax(x)_l, 1e-20)) / normalizer; H from `source` or a third bottom."""

    type_name = "InfogainLoss"
    max_bottoms = 3
    max_tops = 2

    def setup(self, bottoms):
        self.matrix: Tensor | None = None
        if len(bottoms) < 3:
            source = self.layer_param.infogain_loss_param.source
            if not source:
                raise self.error("give the infogain matrix H as infogain_loss_param.source or a third bottom")
            from mtldata.caffe.blob import read_blob_proto

            self.matrix = torch.from_numpy(
                read_blob_proto(self.find_file(source, "infogain_loss_param.source"))
            )

    def forward(self, x, label, *given):
        axis = canonical_axis(self.layer_param.infogain_loss_param.axis, x.ndim)
        outer, classes, inner = volume(x.shape, 0, axis), x.shape[axis], volume(x.shape, axis + 1)
        h = (given[0] if given else self.matrix).detach()  # Caffe cannot backpropagate to H
        if h.numel() != classes * classes:
            raise self.error(f"H has {h.numel()} values; {classes} classes need {classes}x{classes}")
        if label.numel() != outer * inner:
            raise self.error(
                f"{label.numel()} labels for {outer * inner} predictions of shape {tuple(x.shape)}"
            )
        logp = _floored(torch.log_softmax(x.reshape(outer, classes, inner), 1), math.log(LOG_THRESHOLD))
        target = _int_labels(label).reshape(outer, inner)
        ignore = self.ignore_label()
        valid = torch.ones_like(target, dtype=torch.bool) if ignore is None else target != ignore
        if bool((valid & ((target < 0) | (target >= classes))).any()):
            raise self.error(f"labels must be in [0, {classes}) or be ignore_label")
        weights = h.reshape(classes, classes).to(x.dtype)[torch.where(valid, target, 0)]  # H[label]
        total = -(weights.permute(0, 2, 1) * logp * valid[:, None, :].to(x.dtype)).sum()
        tops = [total / _normalizer(_normalization(self.layer_param, _Norm.VALID), outer, inner, valid.sum())]
        if len(self.layer_param.top) > 1:
            tops.append(torch.softmax(x, axis))
        return tops


class ContrastiveLoss(Layer):
    """DeepID2's verification loss over pairs (a, b, similar): d² for similar pairs, max(m − d, 0)² for
    dissimilar ones (max(m − d², 0) with legacy_version), over 2N; Caffe's gradient divides by d + 1e-4."""

    type_name = "ContrastiveLoss"
    min_bottoms = 3
    max_bottoms = 3

    def forward(self, a, b, similar):
        p = self.layer_param.contrastive_loss_param
        num = a.shape[0]
        if a.shape != b.shape or similar.numel() != num:
            raise self.error(
                f"needs two bottoms of one shape and one similarity per pair: {tuple(a.shape)}, "
                f"{tuple(b.shape)}, {tuple(similar.shape)}"
            )
        with torch.no_grad():
            diff = (a - b).reshape(num, -1)
            dist_sq = (diff * diff).sum(1)
            same = _int_labels(similar).reshape(-1) != 0
            if p.legacy_version:
                apart = torch.clamp(p.margin - dist_sq, min=0.0)
                # gradient of max(m − d², 0)/2N w.r.t. a: −diff/N where the margin is not reached
                factor = torch.where(apart > 0, -1.0, 0.0)
            else:
                dist = torch.sqrt(dist_sq)
                gap = p.margin - dist
                apart = torch.clamp(gap, min=0.0) ** 2
                factor = torch.where(gap > 0, -gap / (dist + 1e-4), 0.0)
            loss = torch.where(same, dist_sq, apart).sum() / (2 * num)
            local = (torch.where(same, 1.0, factor)[:, None] * diff / num).reshape(a.shape)
        return [prescribed_gradient(loss, (a, local), (b, -local))]


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
    HingeLoss,
    MultinomialLogisticLoss,
    InfogainLoss,
    ContrastiveLoss,
    Accuracy,
)
