"""Caffe's neuron layers: elementwise activations and Dropout.

Where Caffe's Backward is not the derivative autograd would take (a kink, a clamp, a formula in the
top), the layer states Caffe's local gradient through `prescribed_gradient`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtldata.caffenet.layers.base import Layer, filler_or, prescribed_gradient, register
from mtldata.caffenet.layers.fillers import fill


class ReLU(Layer):
    type_name = "ReLU"

    def forward(self, x):
        slope = self.layer_param.relu_param.negative_slope
        # Caffe's gradient at 0 is the negative slope: leaky_relu's, not relu's (whose is 0 too for slope 0).
        return [F.relu(x) if slope == 0 else F.leaky_relu(x, slope)]


def caffe_sigmoid(x: Tensor) -> Tensor:
    """Caffe's sigmoid, computed through tanh as its SigmoidLayer does."""
    return 0.5 * torch.tanh(0.5 * x) + 0.5


class Sigmoid(Layer):
    type_name = "Sigmoid"

    def forward(self, x):
        with torch.no_grad():
            y = caffe_sigmoid(x)
        return [prescribed_gradient(y, (x, y * (1 - y)))]


class TanH(Layer):
    type_name = "TanH"

    def forward(self, x):
        return [torch.tanh(x)]


class Dropout(Layer):
    """In TRAIN, zero each value with probability p and scale the rest by 1/(1-p); identity in TEST."""

    type_name = "Dropout"

    def forward(self, x):
        ratio = self.layer_param.dropout_param.dropout_ratio
        if not 0 <= ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {ratio}")
        if self.phase != "train" or self.dry_run or ratio == 0:
            return [x]
        keep = torch.rand_like(x) >= ratio
        return [x * keep.to(x.dtype) * (1.0 / (1.0 - ratio))]


class PReLU(Layer):
    """ReLU with a learned negative slope per channel (axis 1), or one shared slope (a 0-axis blob)."""

    type_name = "PReLU"
    blob_names = ("weight",)

    def setup(self, bottoms):
        p, x = self.layer_param.prelu_param, bottoms[0]
        if x.ndim < 2:
            raise self.error(f"needs a bottom with at least 2 axes (N, C, ...), got shape {tuple(x.shape)}")
        shape = () if p.channel_shared else (x.shape[1],)
        self.set_blob("weight", fill(filler_or(p, "filler", 0.25), shape))

    def forward(self, x):
        slope = self.weight
        if slope.ndim and x.shape[1] != slope.shape[0]:
            raise self.error(f"{slope.shape[0]} slopes for {x.shape[1]} channels")
        if x.dtype == slope.dtype:
            # torch's kernel, one pass each way, has Caffe's gradients: the slope's at x = 0, and a
            # slope gradient summing x over x <= 0.
            return [F.prelu(x, slope.reshape(-1))]
        if slope.ndim:
            slope = slope.reshape([1, -1] + [1] * (x.ndim - 2))
        return [torch.where(x > 0, x, slope * x)]


class ELU(Layer):
    type_name = "ELU"

    def forward(self, x):
        return [F.elu(x, self.layer_param.elu_param.alpha)]


class AbsVal(Layer):
    type_name = "AbsVal"

    def forward(self, x):
        return [prescribed_gradient(x.detach().abs(), (x, torch.sign(x.detach())))]  # 0 at 0


class BNLL(Layer):
    """log(1 + e^x), computed as Caffe does for either sign; its gradient uses exp(min(x, 50))."""

    type_name = "BNLL"

    def forward(self, x):
        with torch.no_grad():
            y = torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))
            e = torch.exp(torch.clamp(x, max=50.0))
            local = e / (e + 1)
        return [prescribed_gradient(y, (x, local))]


class Power(Layer):
    """(shift + scale·x)^power, with Caffe's special cases and its gradient formulas."""

    type_name = "Power"

    def forward(self, x):
        p = self.layer_param.power_param
        power, scale, shift = p.power, p.scale, p.shift
        diff_scale = power * scale
        if diff_scale == 0:  # constant: 1 for power 0, shift^power for scale 0; zero gradient
            # float32 pow as Caffe's (nan for a negative shift to a fractional power, inf for 0^-1)
            value = 1.0 if power == 0 else float(torch.tensor(shift, dtype=torch.float32).pow(power))
            return [prescribed_gradient(torch.full_like(x, value), (x, torch.zeros_like(x)))]
        with torch.no_grad():
            base = x * scale + shift
            y = base if power == 1 else torch.pow(base, power)
            if power == 1:
                local = torch.full_like(x, diff_scale)
            elif power == 2:
                local = diff_scale * scale * x + diff_scale * shift
            elif shift == 0:
                local = power * (y / x)
            else:
                local = diff_scale * (y / base)
        return [prescribed_gradient(y, (x, local))]


def _log_base(base: float) -> float:
    """ln(base); Caffe's base -1 means e. A base that is not > 0 is Caffe's CHECK failure."""
    if base == -1:
        return 1.0
    if base <= 0:
        raise ValueError(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


class Exp(Layer):
    """base^(shift + scale·x), as Caffe computes it: base^shift · exp(ln(base)·scale·x)."""

    type_name = "Exp"

    def forward(self, x):
        p = self.layer_param.exp_param
        log_base = _log_base(p.base)
        inner = log_base * p.scale
        outer = 1.0 if p.shift == 0 else math.exp(log_base * p.shift)
        with torch.no_grad():
            y = torch.exp(inner * x) if inner != 1 else torch.exp(x)
            if outer != 1:
                y = y * outer
        return [prescribed_gradient(y, (x, y * inner))]


class Log(Layer):
    """log_base(shift + scale·x); base -1 is e."""

    type_name = "Log"

    def forward(self, x):
        p = self.layer_param.log_param
        base_scale = 1.0 / _log_base(p.base)
        with torch.no_grad():
            inner = x * p.scale + p.shift if (p.scale != 1 or p.shift != 0) else x
            y = torch.log(inner)
            if base_scale != 1:
                y = y * base_scale
            local = (p.scale * base_scale) / inner
        return [prescribed_gradient(y, (x, local))]


class Threshold(Layer):
    """1 where x > threshold (strictly), else 0. Caffe has no backward for it: no gradient flows."""

    type_name = "Threshold"

    def forward(self, x):
        return [(x.detach() > self.layer_param.threshold_param.threshold).to(x.dtype)]


class Clip(Layer):
    """x clamped to [min, max]; the gradient passes where min <= x <= max (both bounds included)."""

    type_name = "Clip"

    def forward(self, x):
        p = self.layer_param.clip_param
        if p.min > p.max:
            raise self.error(f"clip_param.min ({p.min}) must be <= max ({p.max})")
        inside = ((x.detach() >= p.min) & (x.detach() <= p.max)).to(x.dtype)
        return [prescribed_gradient(torch.clamp(x.detach(), p.min, p.max), (x, inside))]


class Swish(Layer):
    """x · sigmoid(beta·x) with Caffe's sigmoid and its gradient beta·y + s·(1 − beta·y)."""

    type_name = "Swish"

    def forward(self, x):
        beta = self.layer_param.swish_param.beta
        with torch.no_grad():
            s = caffe_sigmoid(beta * x)
            y = x * s
            local = beta * y + s * (1 - beta * y)
        return [prescribed_gradient(y, (x, local))]


LAYERS = register(
    ReLU,
    PReLU,
    ELU,
    Sigmoid,
    TanH,
    AbsVal,
    Power,
    Exp,
    Log,
    BNLL,
    Threshold,
    Clip,
    Swish,
    Dropout,
)
