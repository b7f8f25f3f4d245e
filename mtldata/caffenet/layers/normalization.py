"""Caffe's normalization layers: LRN, BatchNorm, MVN, and the Scale and Bias that follow BatchNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffenet.layers.base import Layer, broadcast_shape, canonical_axis, filler_or, register
from mtldata.caffenet.layers.fillers import fill
from mtldata.caffenet.layers.vision import caffe_pool2d


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
        y = self._kernel_forward(x)
        if y is not None:
            return [y]
        shape = [1, -1] + [1] * (x.ndim - 2) if x.ndim > 1 else [-1]
        if self.use_global_stats:
            mean, var = self._global_stats()
        else:
            dims = [d for d in range(x.ndim) if d != 1] if x.ndim > 1 else [0]
            mean = x.mean(dims)
            var = (x - mean.view(shape)).pow(2).mean(dims)
            if not self.dry_run:
                with torch.no_grad():
                    m = x.numel() // mean.numel()
                    correction = m / (m - 1) if m > 1 else 1.0
                    self._accumulate(mean, var * correction)
        return [(x - mean.view(shape)) / (var + self.eps).sqrt().view(shape)]

    def forward_scaled(self, x: Tensor, scale: Scale) -> Tensor | None:
        """This BatchNorm and the Scale layer right after it on its top, as one batch_norm kernel
        with the Scale's gamma and beta as its affine: one pass over x each way instead of two (the
        net runs them so when nothing else can see the BatchNorm's own top; see CaffeNet.forward).
        None when the pair must run apart: a dry run, a Scale over other axes than the channels, a
        hook on either layer, or where this layer alone would not take the kernel either."""
        gamma, beta = scale.weight, scale.bias
        if (
            self.dry_run
            or scale.dry_run
            or x.ndim < 2
            or scale.axis != 1
            or gamma is None
            or gamma.ndim != 1
            or gamma.shape[0] != x.shape[1]
            or (beta is not None and beta.shape != gamma.shape)
            or gamma.dtype != x.dtype
            or any(m._forward_hooks or m._forward_pre_hooks for m in (self, scale))
        ):
            return None
        return self._kernel_forward(x, gamma, beta)

    def _global_stats(self) -> tuple[Tensor, Tensor]:
        """The stored mean and variance divided by blob 2 (Caffe reads a zero factor as zero stats)."""
        s = self.scale_factor[0]
        factor = torch.where(s == 0, torch.zeros_like(s), 1 / s)
        return self.mean * factor, self.variance * factor

    def _kernel_forward(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor | None:
        """Normalise in torch's batch_norm kernel (then times `weight` plus `bias`, a following
        Scale's): the formula written out in tensor operations costs a dozen passes over x forward
        and backward, the kernel two or three. With batch statistics and momentum 1, torch leaves
        the batch's mean and its variance times m/(m-1), Caffe's correction, in the buffers it is
        given. None where the formula must run instead: a bottom without a channel axis, another
        dtype than the statistics' (AMP), or batch statistics of one value per channel."""
        if x.ndim < 2 or x.dtype != self.mean.dtype:
            return None
        if self.use_global_stats:
            mean, var = self._global_stats()
            return F.batch_norm(x, mean, var, weight, bias, training=False, eps=self.eps)
        if x.numel() == x.shape[1]:
            return None
        mean = torch.zeros_like(self.mean)
        var = torch.ones_like(self.variance)
        y = F.batch_norm(x, mean, var, weight, bias, training=True, momentum=1.0, eps=self.eps)
        if not self.dry_run:
            with torch.no_grad():
                self._accumulate(mean, var)
        return y

    def _accumulate(self, mean: Tensor, corrected_var: Tensor) -> None:
        # Caffe keeps sums: each blob decays by moving_average_fraction and adds the batch's figure,
        # and blob 2 counts the decayed weight that the test phase divides by.
        self.scale_factor.mul_(self.fraction).add_(1)
        self.mean.mul_(self.fraction).add_(mean)
        self.variance.mul_(self.fraction).add_(corrected_var)


class _MVNFunction(torch.autograd.Function):
    """MVN over the rows of a (rows, dim) matrix, with Caffe's backward.

    Caffe's backward is (g − mean(g) − mean(g·y)·y) / (std + eps): the exact derivative only when eps
    is negligible against std, since eps sits outside the square root.
    """

    @staticmethod
    def forward(ctx, x, normalize_variance: bool, eps: float):
        centered = x - x.mean(1, keepdim=True)
        if not normalize_variance:
            ctx.normalize_variance = False
            return centered
        std = centered.pow(2).mean(1, keepdim=True).sqrt() + eps
        y = centered / std
        ctx.normalize_variance = True
        ctx.save_for_backward(y, std)
        return y

    @staticmethod
    def backward(ctx, g):
        if not ctx.normalize_variance:
            return g - g.mean(1, keepdim=True), None, None
        y, std = ctx.saved_tensors
        dx = g - g.mean(1, keepdim=True) - (g * y).mean(1, keepdim=True) * y
        return dx / std, None, None


class MVN(Layer):
    """(x − mean) / (std + eps) per item and channel, or per item across channels; or x − mean only."""

    type_name = "MVN"

    def forward(self, x):
        p = self.layer_param.mvn_param
        if x.ndim < 2 and not p.across_channels:
            raise self.error(f"needs a bottom with a channel axis, got shape {tuple(x.shape)}")
        rows = x.shape[0] if p.across_channels else x.shape[0] * x.shape[1]
        y = _MVNFunction.apply(x.reshape(rows, -1), p.normalize_variance, p.eps)
        return [y.reshape(x.shape)]


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
        self.axis = canonical_axis(p.axis, x.ndim)
        if len(bottoms) == 1:
            shape = self._param_shape(p.num_axes, x)
            self.set_blob("weight", fill(filler_or(p, "filler", 1.0), shape))
        else:
            shape = bottoms[1].shape
        if p.bias_term:
            self.set_blob("bias", fill(filler_or(p, "bias_filler", 0.0), shape))

    def forward(self, x, *scale):
        gamma = scale[0] if scale else self.weight
        axis = 0 if gamma.ndim == 0 else self.axis
        if tuple(x.shape[axis : axis + gamma.ndim]) != tuple(gamma.shape):
            raise self.error(
                f"scale of shape {tuple(gamma.shape)} does not match the bottom from axis {axis}"
            )
        shape = broadcast_shape(x, axis, gamma.shape)
        if self.bias is not None:
            return [torch.addcmul(self.bias.reshape(shape), x, gamma.reshape(shape))]  # one pass, not two
        return [x * gamma.reshape(shape)]


class Bias(_AxisParamLayer):
    type_name = "Bias"
    blob_names = ("bias",)
    max_bottoms = 2

    def setup(self, bottoms):
        p, x = self.layer_param.bias_param, bottoms[0]
        self.axis = canonical_axis(p.axis, x.ndim)
        if len(bottoms) == 1:
            self.set_blob("bias", fill(filler_or(p, "filler", 0.0), self._param_shape(p.num_axes, x)))

    def forward(self, x, *given):
        beta = given[0] if given else self.bias
        axis = 0 if beta.ndim == 0 else self.axis
        if tuple(x.shape[axis : axis + beta.ndim]) != tuple(beta.shape):
            raise self.error(f"bias of shape {tuple(beta.shape)} does not match the bottom from axis {axis}")
        return [x + beta.reshape(broadcast_shape(x, axis, beta.shape))]


LAYERS = register(
    LRN,
    BatchNorm,
    MVN,
    Scale,
    Bias,
)
