"""Caffe layer types as torch modules, with Caffe's arithmetic; autograd gives Caffe's backward.

Each layer reads its LayerParameter, creates its blobs (weights) from the first bottoms it sees, as
Caffe's LayerSetUp/Reshape do, and maps bottoms to tops in `forward`. Blobs are kept in Caffe's order
(`blob_names`): the learned ones as parameters, BatchNorm's running statistics as buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtldata.caffe import caffe_pb2
from mtldata.errors import MtlDataError

__all__ = ["LAYERS", "DATA_LAYER_TYPES", "CaffeNetError", "Layer", "fill"]

FLT_MIN = 1.1754943508222875e-38  # std::numeric_limits<float>::min(), SoftmaxWithLoss's floor
FLT_MAX = 3.4028234663852886e38

# Layers whose tops come from outside the net: the runner (or the caller) feeds them.
DATA_LAYER_TYPES = frozenset({"Data", "HDF5Data", "ImageData", "Input", "MemoryData", "WindowData"})


class CaffeNetError(MtlDataError, ValueError):
    """A net Caffe would reject, a layer mtldata cannot build, or blobs that break a layer's rules."""


def _canonical_axis(axis: int, ndim: int, what: str = "axis") -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"{what} {axis} is out of range for a {ndim}-D blob")
    return axis % ndim if ndim else 0


def _count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    return math.prod(shape[start:end])


# --------------------------------------------------------------------------------------------
# Fillers (Caffe's filler.hpp). Random draws use torch's global generator, which the solver seeds
# from random_seed; the values therefore differ from Caffe's (boost) for the same seed.
# --------------------------------------------------------------------------------------------


def fill(filler: caffe_pb2.FillerParameter, shape: Sequence[int]) -> Tensor:
    """A float32 tensor of `shape` filled as Caffe's filler of that type would (same distribution)."""
    shape = tuple(int(d) for d in shape)
    kind = filler.type
    count = _count(shape)
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


# --------------------------------------------------------------------------------------------
# The layer base class
# --------------------------------------------------------------------------------------------


class Layer(nn.Module):
    """One Caffe layer. Subclasses set `type_name`, `blob_names`, and implement `setup`/`forward`."""

    type_name: ClassVar[str] = ""
    blob_names: ClassVar[tuple[str, ...]] = ()  # attributes holding Caffe's blobs, in blob order
    buffer_blobs: ClassVar[bool] = False  # blobs are statistics (buffers), not learned parameters
    min_bottoms: ClassVar[int] = 1
    max_bottoms: ClassVar[int | None] = 1
    min_tops: ClassVar[int] = 1
    max_tops: ClassVar[int | None] = 1

    def __init__(self, param: caffe_pb2.LayerParameter, phase: str) -> None:
        super().__init__()
        self.layer_param = param
        self.layer_name = param.name
        self.phase = phase
        self.is_setup = False
        self.dry_run = False  # set by the net while it infers shapes: no statistics update, no dropout
        nb, nt = len(param.bottom), len(param.top)
        if nb < self.min_bottoms or (self.max_bottoms is not None and nb > self.max_bottoms):
            raise self.error(f"takes {self._arity(self.min_bottoms, self.max_bottoms)} bottom(s), got {nb}")
        if nt < self.min_tops or (self.max_tops is not None and nt > self.max_tops):
            raise self.error(f"takes {self._arity(self.min_tops, self.max_tops)} top(s), got {nt}")
        for name in self.blob_names:
            if self.buffer_blobs:
                self.register_buffer(name, None)
            else:
                self.register_parameter(name, None)

    @staticmethod
    def _arity(lo: int, hi: int | None) -> str:
        if hi is None:
            return f"at least {lo}"
        return str(lo) if lo == hi else f"{lo} to {hi}"

    def error(self, reason: str) -> CaffeNetError:
        return CaffeNetError(f"layer {self.layer_name!r} (type {self.layer_param.type}): {reason}")

    def extra_repr(self) -> str:
        return f"name={self.layer_name!r}"

    def setup(self, bottoms: Sequence[Tensor]) -> None:
        """Create the blobs from the first bottoms (Caffe's LayerSetUp); most layers have none."""

    def set_blob(self, name: str, value: Tensor) -> None:
        """Install a blob as a parameter (or buffer for statistics), replacing any previous one."""
        if self.buffer_blobs:
            if name in self._parameters:
                del self._parameters[name]
            self.register_buffer(name, value)
        else:
            if name in self._buffers:
                del self._buffers[name]
            self.register_parameter(name, value if isinstance(value, nn.Parameter) else nn.Parameter(value))

    def blob_attrs(self) -> list[str]:
        """The attributes holding this layer's blobs, in Caffe's blob order (a missing bias is skipped)."""
        return [n for n in self.blob_names if getattr(self, n) is not None]

    def blobs(self) -> list[Tensor]:
        """Caffe's blobs of this layer, in blob order (empty before setup)."""
        return [getattr(self, n) for n in self.blob_attrs()]

    def run(self, bottoms: Sequence[Tensor]) -> list[Tensor]:
        """Set up on first use, then compute the tops; Caffe's CHECK failures become CaffeNetError."""
        try:
            if not self.is_setup:
                self.setup(bottoms)
                self.is_setup = True
            tops = self(*bottoms)
        except CaffeNetError:
            raise
        except (ValueError, RuntimeError, IndexError) as exc:
            shapes = ", ".join(str(tuple(b.shape)) for b in bottoms)
            raise self.error(f"{exc} (bottom shapes: {shapes or 'none'})") from exc
        return list(tops)


def _filler_or(param, field: str, value: float) -> caffe_pb2.FillerParameter:
    if param.HasField(field):
        return getattr(param, field)
    filler = caffe_pb2.FillerParameter()
    filler.type = "constant"
    filler.value = value
    return filler


def _spatial(values, h_name: str, w_name: str, param, n: int, default: int | None, what: str) -> list[int]:
    """Caffe's per-spatial-axis values: `x_h`/`x_w` (2-D only), else one value for all axes or one each."""
    has_h = bool(h_name) and param.HasField(h_name)
    has_w = bool(w_name) and param.HasField(w_name)
    if has_h or has_w:
        if not (has_h and has_w):
            raise ValueError(f"{what}: give both {h_name} and {w_name}")
        if len(values):
            raise ValueError(f"{what}: give either {what} or {h_name}/{w_name}, not both")
        if n != 2:
            raise ValueError(f"{what}: {h_name}/{w_name} are for 2-D spatial blobs only")
        return [getattr(param, h_name), getattr(param, w_name)]
    if len(values) == 0:
        if default is None:
            raise ValueError(f"{what} is required")
        return [default] * n
    if len(values) not in (1, n):
        raise ValueError(f"{what} must have 1 or {n} values, got {len(values)}")
    return [int(values[0])] * n if len(values) == 1 else [int(v) for v in values]


# --------------------------------------------------------------------------------------------
# Vision layers
# --------------------------------------------------------------------------------------------


class Convolution(Layer):
    type_name = "Convolution"
    blob_names = ("weight", "bias")
    max_bottoms = None
    max_tops = None

    def __init__(self, param, phase):
        super().__init__(param, phase)
        if len(param.bottom) != len(param.top):
            raise self.error("needs as many tops as bottoms")
        p = param.convolution_param
        if p.num_output <= 0:
            raise self.error("convolution_param.num_output must be > 0")
        self.p = p

    def setup(self, bottoms):
        p, x = self.p, bottoms[0]
        self.axis = _canonical_axis(p.axis, x.ndim)
        n = x.ndim - self.axis - 1
        if n not in (1, 2, 3):
            raise self.error(f"convolution over {n} spatial axes is not supported (1 to 3)")
        self.kernel = _spatial(p.kernel_size, "kernel_h", "kernel_w", p, n, None, "kernel_size")
        self.stride = _spatial(p.stride, "stride_h", "stride_w", p, n, 1, "stride")
        self.pad = _spatial(p.pad, "pad_h", "pad_w", p, n, 0, "pad")
        self.dilation = _spatial(p.dilation, "", "", p, n, 1, "dilation")
        if min(self.kernel) <= 0 or min(self.stride) <= 0:
            raise self.error("kernel and stride must be > 0")
        channels = x.shape[self.axis]
        if channels % p.group or p.num_output % p.group:
            raise self.error(
                f"channels ({channels}) and num_output ({p.num_output}) must divide by group {p.group}"
            )
        self.set_blob("weight", fill(p.weight_filler, (p.num_output, channels // p.group, *self.kernel)))
        if p.bias_term:
            self.set_blob("bias", fill(_filler_or(p, "bias_filler", 0.0), (p.num_output,)))
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]

    def forward(self, *bottoms):
        tops = []
        for x in bottoms:
            lead = x.shape[: self.axis]
            y = self.conv(
                x.reshape(-1, *x.shape[self.axis :]),
                self.weight,
                self.bias,
                stride=self.stride,
                padding=self.pad,
                dilation=self.dilation,
                groups=self.p.group,
            )
            tops.append(y.reshape(*lead, *y.shape[1:]))
        return tops


def _pool_size(size: int, kernel: int, pad: int, stride: int, ceil: bool) -> int:
    span = size + 2 * pad - kernel
    return (-(-span // stride) if ceil else span // stride) + 1


def caffe_pool2d(
    x: Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    method: str,
    ceil: bool = True,
) -> Tensor:
    """Caffe's MAX/AVE pooling of (N, C, H, W): its output size, windows and AVE divisor.

    The output size rounds up (CEIL, Caffe's default); with padding, a last window that would start
    in the padding is dropped. AVE divides each window's sum by its size clipped to the padded image,
    so padding counts, but the part of a window beyond the right/bottom padding does not.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = x.shape[-2:], kernel, stride, pad
    oh, ow = _pool_size(h, kh, ph, sh, ceil), _pool_size(w, kw, pw, sw, ceil)
    if ph or pw:
        if (oh - 1) * sh >= h + ph:
            oh -= 1
        if (ow - 1) * sw >= w + pw:
            ow -= 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"pooling a {h}x{w} blob with kernel {kh}x{kw} leaves no output")
    # Pad (or crop) so that exactly the oh x ow windows fit, then pool without padding.
    right, bottom = (ow - 1) * sw + kw - w - pw, (oh - 1) * sh + kh - h - ph
    if method == "MAX":
        xp = F.pad(x, (pw, right, ph, bottom), value=-FLT_MAX)
        return F.max_pool2d(xp, (kh, kw), (sh, sw))
    xp = F.pad(x, (pw, right, ph, bottom))
    sums = F.avg_pool2d(xp, (kh, kw), (sh, sw), divisor_override=1)
    starts_h = torch.arange(oh, device=x.device) * sh - ph
    starts_w = torch.arange(ow, device=x.device) * sw - pw
    size_h = torch.clamp(starts_h + kh, max=h + ph) - starts_h
    size_w = torch.clamp(starts_w + kw, max=w + pw) - starts_w
    divisor = (size_h[:, None] * size_w[None, :]).to(x.dtype)
    return sums / divisor


class Pooling(Layer):
    type_name = "Pooling"

    def __init__(self, param, phase):
        super().__init__(param, phase)
        p = param.pooling_param
        self.p = p
        self.method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        if self.method == "STOCHASTIC":
            raise self.error("STOCHASTIC pooling is not supported (MAX and AVE are)")
        if p.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("global_pooling takes no kernel size")
        elif p.HasField("kernel_size") == (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise self.error("give kernel_size, or kernel_h and kernel_w")
        if p.HasField("pad") and (p.HasField("pad_h") or p.HasField("pad_w")):
            raise self.error("give pad, or pad_h and pad_w")
        if p.HasField("stride") and (p.HasField("stride_h") or p.HasField("stride_w")):
            raise self.error("give stride, or stride_h and stride_w")
        self.pad = [p.pad_h, p.pad_w] if p.HasField("pad_h") else [p.pad, p.pad]
        self.stride = [p.stride_h, p.stride_w] if p.HasField("stride_h") else [p.stride, p.stride]
        self.ceil = p.round_mode == caffe_pb2.PoolingParameter.CEIL

    def setup(self, bottoms):
        p, x = self.p, bottoms[0]
        if x.ndim != 4:
            raise self.error(f"needs a 4-D (N, C, H, W) bottom, got shape {tuple(x.shape)}")
        if p.global_pooling:
            if any(self.pad) or any(s != 1 for s in self.stride):
                raise self.error("global_pooling needs pad 0 and stride 1")
        else:
            self.kernel = [p.kernel_h, p.kernel_w] if p.HasField("kernel_h") else [p.kernel_size] * 2
            if min(self.kernel) <= 0:
                raise self.error("the kernel size must be > 0")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise self.error("pad must be smaller than the kernel")

    def forward(self, x):
        kernel = list(x.shape[-2:]) if self.p.global_pooling else self.kernel
        return [caffe_pool2d(x, kernel, self.stride, self.pad, self.method, self.ceil)]


class InnerProduct(Layer):
    type_name = "InnerProduct"
    blob_names = ("weight", "bias")

    def __init__(self, param, phase):
        super().__init__(param, phase)
        self.p = param.inner_product_param
        if self.p.num_output <= 0:
            raise self.error("inner_product_param.num_output must be > 0")

    def setup(self, bottoms):
        p, x = self.p, bottoms[0]
        self.axis = _canonical_axis(p.axis, x.ndim)
        k = _count(x.shape, self.axis)  # every axis from `axis` on is flattened into the input vector
        shape = (k, p.num_output) if p.transpose else (p.num_output, k)
        self.set_blob("weight", fill(p.weight_filler, shape))
        if p.bias_term:
            self.set_blob("bias", fill(_filler_or(p, "bias_filler", 0.0), (p.num_output,)))

    def forward(self, x):
        lead = x.shape[: self.axis]
        flat = x.reshape(_count(lead), -1)
        k = self.weight.shape[0 if self.p.transpose else 1]
        if flat.shape[1] != k:
            raise self.error(f"input size {flat.shape[1]} from axis {self.axis} on, but the weights take {k}")
        if self.p.transpose:
            y = flat @ self.weight
            y = y + self.bias if self.bias is not None else y
        else:
            y = F.linear(flat, self.weight, self.bias)
        return [y.reshape(*lead, self.p.num_output)]


class LRN(Layer):
    type_name = "LRN"

    def __init__(self, param, phase):
        super().__init__(param, phase)
        p = param.lrn_param
        if p.local_size % 2 != 1:
            raise self.error("LRN only supports odd values for local_size")
        self.p = p

    def forward(self, x):
        if x.ndim != 4:
            raise self.error(f"needs a 4-D (N, C, H, W) bottom, got shape {tuple(x.shape)}")
        p, size = self.p, self.p.local_size
        pre = (size - 1) // 2
        sq = x * x
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            # scale = k + alpha/size * sum of squares over `size` neighbouring channels (zero-padded)
            window = F.pad(sq, (0, 0, 0, 0, pre, pre)).unfold(1, size, 1).sum(-1)
            scale = p.k + (p.alpha / size) * window
        else:
            # WITHIN_CHANNEL: 1 + alpha * (AVE pooling of squares, size x size, pad (size-1)/2); k unused
            scale = 1 + p.alpha * caffe_pool2d(sq, [size, size], [1, 1], [pre, pre], "AVE")
        return [x * scale.pow(-p.beta)]


class BatchNorm(Layer):
    """Caffe's BatchNorm: blobs mean, variance (both scaled by blob 2, the moving-average factor)."""

    type_name = "BatchNorm"
    blob_names = ("mean", "variance", "scale_factor")
    buffer_blobs = True

    def __init__(self, param, phase):
        super().__init__(param, phase)
        p = param.batch_norm_param
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else phase == "test"
        self.fraction = p.moving_average_fraction
        self.eps = p.eps
        for i, spec in enumerate(param.param):
            if i < 3 and spec.lr_mult != 0:
                raise self.error("cannot configure batch normalization statistics as layer parameters")

    def setup(self, bottoms):
        channels = 1 if bottoms[0].ndim == 1 else bottoms[0].shape[1]
        self.set_blob("mean", torch.zeros(channels))
        self.set_blob("variance", torch.zeros(channels))
        self.set_blob("scale_factor", torch.zeros(1))

    def forward(self, x):
        shape = [1, -1] + [1] * (x.ndim - 2) if x.ndim > 1 else [-1]
        if self.use_global_stats:
            s = self.scale_factor[0]
            factor = torch.where(s == 0, torch.zeros_like(s), 1 / s)
            mean, var = self.mean * factor, self.variance * factor
        else:
            dims = [d for d in range(x.ndim) if d != 1] if x.ndim > 1 else [0]
            mean = x.mean(dims)
            var = (x - mean.view(shape)).pow(2).mean(dims)
            if not self.dry_run:
                with torch.no_grad():
                    m = x.numel() // mean.numel()
                    correction = m / (m - 1) if m > 1 else 1.0
                    self.scale_factor.mul_(self.fraction).add_(1)
                    self.mean.mul_(self.fraction).add_(mean)
                    self.variance.mul_(self.fraction).add_(var * correction)
        return [(x - mean.view(shape)) / (var + self.eps).sqrt().view(shape)]


def _broadcast_shape(x: Tensor, axis: int, shape: Sequence[int]) -> list[int]:
    return [1] * axis + list(shape) + [1] * (x.ndim - axis - len(shape))


class _AxisParamLayer(Layer):
    """Scale and Bias: a learned blob covering `num_axes` axes of the bottom from `axis` (-1: all)."""

    axis: int

    def _param_shape(self, num_axes: int, x: Tensor) -> tuple[int, ...]:
        end = x.ndim if num_axes == -1 else self.axis + num_axes
        if num_axes < -1 or end > x.ndim:
            raise self.error(f"num_axes {num_axes} does not fit a {x.ndim}-D bottom from axis {self.axis}")
        return tuple(x.shape[self.axis : end])


class Scale(_AxisParamLayer):
    """x * gamma (learned, or the second bottom) broadcast from `axis`, plus an optional learned beta."""

    type_name = "Scale"
    blob_names = ("weight", "bias")
    max_bottoms = 2

    def setup(self, bottoms):
        p, x = self.layer_param.scale_param, bottoms[0]
        self.axis = _canonical_axis(p.axis, x.ndim)
        if len(bottoms) == 1:
            shape = self._param_shape(p.num_axes, x)
            self.set_blob("weight", fill(_filler_or(p, "filler", 1.0), shape))
        else:
            shape = bottoms[1].shape
        if p.bias_term:
            self.set_blob("bias", fill(_filler_or(p, "bias_filler", 0.0), shape))

    def forward(self, x, *scale):
        gamma = scale[0] if scale else self.weight
        axis = 0 if gamma.ndim == 0 else self.axis
        if tuple(x.shape[axis : axis + gamma.ndim]) != tuple(gamma.shape):
            raise self.error(
                f"scale of shape {tuple(gamma.shape)} does not match the bottom from axis {axis}"
            )
        shape = _broadcast_shape(x, axis, gamma.shape)
        y = x * gamma.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return [y]


class Bias(_AxisParamLayer):
    type_name = "Bias"
    blob_names = ("bias",)
    max_bottoms = 2

    def setup(self, bottoms):
        p, x = self.layer_param.bias_param, bottoms[0]
        self.axis = _canonical_axis(p.axis, x.ndim)
        if len(bottoms) == 1:
            self.set_blob("bias", fill(_filler_or(p, "filler", 0.0), self._param_shape(p.num_axes, x)))

    def forward(self, x, *given):
        beta = given[0] if given else self.bias
        axis = 0 if beta.ndim == 0 else self.axis
        if tuple(x.shape[axis : axis + beta.ndim]) != tuple(beta.shape):
            raise self.error(f"bias of shape {tuple(beta.shape)} does not match the bottom from axis {axis}")
        return [x + beta.reshape(_broadcast_shape(x, axis, beta.shape))]


# --------------------------------------------------------------------------------------------
# Neuron layers
# --------------------------------------------------------------------------------------------


class ReLU(Layer):
    type_name = "ReLU"

    def forward(self, x):
        slope = self.layer_param.relu_param.negative_slope
        # Caffe's gradient at 0 is the negative slope: leaky_relu's, not relu's (whose is 0 too for slope 0).
        return [F.relu(x) if slope == 0 else F.leaky_relu(x, slope)]


class Sigmoid(Layer):
    type_name = "Sigmoid"

    def forward(self, x):
        return [torch.sigmoid(x)]


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


# --------------------------------------------------------------------------------------------
# Blob plumbing layers
# --------------------------------------------------------------------------------------------


def _legacy_axis(p, axis_field: str, legacy_field: str) -> int:
    if p.HasField(legacy_field) and not p.HasField(axis_field):
        return getattr(p, legacy_field)
    return getattr(p, axis_field)


class Concat(Layer):
    type_name = "Concat"
    max_bottoms = None

    def forward(self, *bottoms):
        axis = _canonical_axis(
            _legacy_axis(self.layer_param.concat_param, "axis", "concat_dim"), bottoms[0].ndim
        )
        return [torch.cat(bottoms, axis) if len(bottoms) > 1 else bottoms[0]]


class Slice(Layer):
    type_name = "Slice"
    max_tops = None

    def forward(self, x):
        p = self.layer_param.slice_param
        axis = _canonical_axis(_legacy_axis(p, "axis", "slice_dim"), x.ndim)
        n, dim = len(self.layer_param.top), x.shape[axis]
        points = list(p.slice_point)
        if points:
            if len(points) != n - 1:
                raise self.error(f"{n} tops need {n - 1} slice_point values, got {len(points)}")
            edges = [0, *points, dim]
            if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise self.error(f"slice points {points} must increase strictly within (0, {dim})")
            sizes = [b - a for a, b in zip(edges, edges[1:], strict=False)]
        else:
            if dim % n:
                raise self.error(f"axis {axis} has {dim} values, which do not split into {n} equal parts")
            sizes = [dim // n] * n
        return list(torch.split(x, sizes, axis))


class Split(Layer):
    type_name = "Split"
    max_tops = None

    def forward(self, x):
        return [x] * len(self.layer_param.top)


class Silence(Layer):
    type_name = "Silence"
    max_bottoms = None
    min_tops = 0
    max_tops = 0

    def forward(self, *bottoms):
        return []


class Eltwise(Layer):
    type_name = "Eltwise"
    min_bottoms = 2
    max_bottoms = None

    def __init__(self, param, phase):
        super().__init__(param, phase)
        p = param.eltwise_param
        self.op = caffe_pb2.EltwiseParameter.EltwiseOp.Name(p.operation)
        self.coeff = list(p.coeff)
        if self.coeff and (self.op != "SUM" or len(self.coeff) != len(param.bottom)):
            raise self.error("coeff is for SUM only, one value per bottom")

    def forward(self, *bottoms):
        if any(b.shape != bottoms[0].shape for b in bottoms):
            raise self.error(f"bottoms must have one shape, got {[tuple(b.shape) for b in bottoms]}")
        if self.op == "PROD":
            out = bottoms[0]
            for b in bottoms[1:]:
                out = out * b
        elif self.op == "SUM":
            coeff = self.coeff or [1.0] * len(bottoms)
            out = bottoms[0] if coeff[0] == 1 else coeff[0] * bottoms[0]
            for c, b in zip(coeff[1:], bottoms[1:], strict=True):
                out = out + (b if c == 1 else c * b)
        else:
            # Caffe's MAX: a tie between the first two goes to the second, later ties to the earlier;
            # the gradient goes to that one bottom only (torch.where routes it so).
            out = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
            for b in bottoms[2:]:
                out = torch.where(b > out, b, out)
        return [out]


class Flatten(Layer):
    type_name = "Flatten"

    def forward(self, x):
        p = self.layer_param.flatten_param
        start = _canonical_axis(p.axis, x.ndim, "axis")
        end = _canonical_axis(p.end_axis, x.ndim, "end_axis")
        return [x.flatten(start, end) if end >= start else x]


class Reshape(Layer):
    """Caffe's Reshape: dims 0 copy the bottom's, one -1 is inferred, axes [axis, axis+num_axes) replaced."""

    type_name = "Reshape"

    def __init__(self, param, phase):
        super().__init__(param, phase)
        dims = list(param.reshape_param.shape.dim)
        if dims.count(-1) > 1:
            raise self.error("new shape contains multiple -1 dims; at most a single -1 may be given")
        if any(d < -1 for d in dims):
            raise self.error(f"shape dims must be >= -1, got {dims}")
        self.dims = dims

    def top_shape(self, shape: Sequence[int]) -> list[int]:
        p, ndim = self.layer_param.reshape_param, len(shape)
        start = p.axis if p.axis >= 0 else ndim + p.axis + 1
        if not 0 <= start <= ndim:
            raise self.error(f"axis {p.axis} is out of range for a {ndim}-D bottom")
        if p.num_axes < -1:
            raise self.error("num_axes must be >= 0, or -1 for all")
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if end > ndim:
            raise self.error("end_axis = axis + num_axes is out of range")
        new = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= ndim:
                    raise self.error(
                        "new shape contains a 0, but there was no corresponding bottom axis to copy"
                    )
                new.append(shape[start + i])
            else:
                new.append(d)
        out = list(shape[:start]) + new + list(shape[end:])
        total = _count(shape)
        if -1 in self.dims:
            known = _count([d for d in out if d != -1])
            if known == 0 or total % known:
                raise self.error(
                    f"bottom count ({total}) must be divisible by the specified dimensions ({known})"
                )
            out[start + self.dims.index(-1)] = total // known
        if _count(out) != total:
            raise self.error(f"output count {_count(out)} must match input count {total}")
        return out

    def forward(self, x):
        return [x.reshape(self.top_shape(list(x.shape)))]


class Softmax(Layer):
    type_name = "Softmax"

    def forward(self, x):
        return [torch.softmax(x, _canonical_axis(self.layer_param.softmax_param.axis, x.ndim))]


# --------------------------------------------------------------------------------------------
# Loss and metric layers. Loss tops are unweighted scalars; the net applies loss_weight.
# --------------------------------------------------------------------------------------------

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
        axis = _canonical_axis(self.layer_param.softmax_param.axis, x.ndim)
        outer, classes, inner = _count(x.shape, 0, axis), x.shape[axis], _count(x.shape, axis + 1)
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
        inner = _count(x.shape, 1)
        return [total / _normalizer(_normalization(self.layer_param, _Norm.BATCH_SIZE), outer, inner, valid)]


class EuclideanLoss(_Loss):
    """Sum of squared differences over 2N (N = the first axis): Caffe's, not MSELoss."""

    type_name = "EuclideanLoss"

    def forward(self, a, b):
        if _count(a.shape, 1) != _count(b.shape, 1) or a.shape[0] != b.shape[0]:
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
        axis = _canonical_axis(p.axis, x.ndim)
        outer, classes, inner = _count(x.shape, 0, axis), x.shape[axis], _count(x.shape, axis + 1)
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


LayerFactory = Callable[[caffe_pb2.LayerParameter, str], Layer]

LAYERS: dict[str, LayerFactory] = {
    cls.type_name: cls
    for cls in (
        Convolution,
        Pooling,
        InnerProduct,
        LRN,
        BatchNorm,
        Scale,
        Bias,
        ReLU,
        Sigmoid,
        TanH,
        Dropout,
        Concat,
        Slice,
        Split,
        Silence,
        Eltwise,
        Flatten,
        Reshape,
        Softmax,
        SoftmaxWithLoss,
        SigmoidCrossEntropyLoss,
        EuclideanLoss,
        Accuracy,
    )
}
