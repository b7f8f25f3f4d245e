"""Caffe's fillers (filler.hpp): the initial values of a layer's blobs.

Random draws use torch's global generator, which the solver seeds from random_seed; the values
therefore differ from Caffe's (boost) for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffenet.layers.base import volume


def fill(filler: caffe_pb2.FillerParameter, shape: Sequence[int]) -> Tensor:
    """A float32 tensor of `shape` filled as Caffe's filler of that type would (same distribution)."""
    shape = tuple(int(d) for d in shape)
    kind = filler.type
    count = volume(shape)
    if kind == "constant":
        return torch.full(shape, filler.value, dtype=torch.float32)
    if kind == "uniform":
        return torch.empty(shape).uniform_(filler.min, filler.max)
    if kind == "gaussian":
        out = torch.empty(shape).normal_(filler.mean, filler.std)
        if filler.sparse >= 0:
            # Each weight is kept with probability sparse / num_outputs (num_outputs = shape[0]).
            keep = torch.bernoulli(torch.full(shape, filler.sparse / shape[0]))
            out = out * keep
        return out
    if kind in ("xavier", "msra"):
        fan_in = count // shape[0] if shape and shape[0] else count
        fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
        norm = filler.variance_norm
        if norm == caffe_pb2.FillerParameter.AVERAGE:
            n = (fan_in + fan_out) / 2.0
        elif norm == caffe_pb2.FillerParameter.FAN_OUT:
            n = fan_out
        else:
            n = fan_in
        if kind == "xavier":
            scale = math.sqrt(3.0 / n)
            return torch.empty(shape).uniform_(-scale, scale)
        return torch.empty(shape).normal_(0.0, math.sqrt(2.0 / n))
    if kind == "positive_unitball":
        out = torch.rand(shape)
        rows = out.reshape(shape[0], -1) if shape else out.reshape(1, -1)
        return (rows / rows.sum(1, keepdim=True)).reshape(shape)
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ValueError(f"the bilinear filler needs a 4-D blob with square kernels, got {shape}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        axis = 1 - (torch.arange(k, dtype=torch.float64) / f - c).abs()
        return (axis[:, None] * axis[None, :]).to(torch.float32).expand(shape).contiguous()
    raise ValueError(
        f"unknown filler type {kind!r} (constant, uniform, gaussian, xavier, msra, positive_unitball, bilinear)"
    )
