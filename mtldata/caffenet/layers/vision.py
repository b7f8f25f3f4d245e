"""Caffe's vision layers: Convolution, Deconvolution, Pooling, SPP, InnerProduct, Embed, Im2col."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffenet.layers.base import (
    FLT_MAX,
    Layer,
    canonical_axis,
    filler_or,
    register,
    spatial_values,
    volume,
)
from mtldata.caffenet.layers.fillers import fill


class Convolution(Layer):
    """Caffe's Convolution: weights (out, in/group, *kernel); output sizes round down."""

    type_name = "Convolution"
    transposed: bool = False
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
        self.axis = canonical_axis(p.axis, x.ndim)
        n = x.ndim - self.axis - 1
        if n not in (1, 2, 3):
            raise self.error(f"convolution over {n} spatial axes is not supported (1 to 3)")
        self.kernel = spatial_values(p.kernel_size, "kernel_h", "kernel_w", p, n, None, "kernel_size")
        self.stride = spatial_values(p.stride, "stride_h", "stride_w", p, n, 1, "stride")
        self.pad = spatial_values(p.pad, "pad_h", "pad_w", p, n, 0, "pad")
        self.dilation = spatial_values(p.dilation, "", "", p, n, 1, "dilation")
        if min(self.kernel) <= 0 or min(self.stride) <= 0:
            raise self.error("kernel and stride must be > 0")
        channels = x.shape[self.axis]
        if channels % p.group or p.num_output % p.group:
            raise self.error(
                f"channels ({channels}) and num_output ({p.num_output}) must divide by group {p.group}"
            )
        if self.transposed:  # Deconvolution's weights: (in, out/group, *kernel)
            shape = (channels, p.num_output // p.group, *self.kernel)
            self.conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
        else:
            shape = (p.num_output, channels // p.group, *self.kernel)
            self.conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
        self.set_blob("weight", fill(p.weight_filler, shape))
        if p.bias_term:
            self.set_blob("bias", fill(filler_or(p, "bias_filler", 0.0), (p.num_output,)))

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
            if min(y.shape[2:], default=1) <= 0:
                raise self.error(f"the output of a {tuple(x.shape)} bottom would be empty: {tuple(y.shape)}")
            tops.append(y.reshape(*lead, *y.shape[1:]))
        return tops


class Deconvolution(Convolution):
    """The transpose of Convolution: output size stride·(in−1) + dilation·(kernel−1) + 1 − 2·pad."""

    type_name = "Deconvolution"
    transposed = True


class Im2col(Layer):
    """Caffe's im2col as a layer: (N, C, H, W) to (N, C·kh·kw, out_h, out_w), rows ordered by channel,
    then kernel row, then kernel column (convolution_param's kernel, pad, stride, dilation)."""

    type_name = "Im2col"

    def forward(self, x):
        p = self.layer_param.convolution_param
        if x.ndim != 4 or canonical_axis(p.axis, x.ndim) != 1:
            raise self.error(f"needs a 4-D (N, C, H, W) bottom with channels on axis 1, got {tuple(x.shape)}")
        kernel = spatial_values(p.kernel_size, "kernel_h", "kernel_w", p, 2, None, "kernel_size")
        stride = spatial_values(p.stride, "stride_h", "stride_w", p, 2, 1, "stride")
        pad = spatial_values(p.pad, "pad_h", "pad_w", p, 2, 0, "pad")
        dilation = spatial_values(p.dilation, "", "", p, 2, 1, "dilation")
        out = [
            (x.shape[2 + i] + 2 * pad[i] - (dilation[i] * (kernel[i] - 1) + 1)) // stride[i] + 1
            for i in range(2)
        ]
        if min(out) <= 0:
            raise self.error(f"a {tuple(x.shape)} bottom leaves no output for kernel {kernel}")
        columns = F.unfold(x, kernel, dilation=dilation, padding=pad, stride=stride)
        return [columns.reshape(x.shape[0], -1, *out)]


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
        # No padding (windows that tile the input exactly) needs no padded copy of it either.
        xp = F.pad(x, (pw, right, ph, bottom), value=-FLT_MAX) if pw or right or ph or bottom else x
        return F.max_pool2d(xp, (kh, kw), (sh, sw))
    if method == "MASK":  # where each MAX came from: the flat index h*W + w in the unpadded plane
        xp = F.pad(x.detach(), (pw, right, ph, bottom), value=-FLT_MAX)
        _, where = F.max_pool2d(xp, (kh, kw), (sh, sw), return_indices=True)
        wp = xp.shape[-1]
        return ((where // wp - ph) * w + (where % wp - pw)).to(x.dtype)
    xp = F.pad(x, (pw, right, ph, bottom))
    sums = F.avg_pool2d(xp, (kh, kw), (sh, sw), divisor_override=1)
    starts_h = torch.arange(oh, device=x.device) * sh - ph
    starts_w = torch.arange(ow, device=x.device) * sw - pw
    size_h = torch.clamp(starts_h + kh, max=h + ph) - starts_h
    size_w = torch.clamp(starts_w + kw, max=w + pw) - starts_w
    divisor = (size_h[:, None] * size_w[None, :]).to(x.dtype)
    return sums / divisor


class Pooling(Layer):
    """MAX or AVE pooling of (N, C, H, W); a second top of MAX pooling holds the argmax mask."""

    type_name = "Pooling"
    max_tops = 2

    def __init__(self, param, phase):
        super().__init__(param, phase)
        p = param.pooling_param
        self.p = p
        self.method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        if self.method == "STOCHASTIC":
            raise self.error("STOCHASTIC pooling is not supported (MAX and AVE are)")
        if len(param.top) > 1 and self.method != "MAX":
            raise self.error("only MAX pooling has a second (mask) top")
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
        tops = [caffe_pool2d(x, kernel, self.stride, self.pad, self.method, self.ceil)]
        if len(self.layer_param.top) > 1:
            tops.append(caffe_pool2d(x, kernel, self.stride, self.pad, "MASK", self.ceil))
        return tops


class SPP(Layer):
    """Spatial pyramid pooling: level i pools the whole plane into 2^i x 2^i bins (kernel and stride
    ceil(H / bins), pad (kernel·bins − H + 1) / 2, with Pooling's rules); the levels are flattened to
    (N, C·bins²) and concatenated, except that a one-level pyramid keeps its (N, C, 1, 1) shape."""

    type_name = "SPP"

    def __init__(self, param, phase):
        super().__init__(param, phase)
        p = param.spp_param
        self.method = caffe_pb2.SPPParameter.PoolMethod.Name(p.pool)
        if self.method == "STOCHASTIC":
            raise self.error("STOCHASTIC pooling is not supported (MAX and AVE are)")
        if p.pyramid_height <= 0:
            raise self.error("spp_param.pyramid_height must be > 0")
        self.levels = p.pyramid_height

    def forward(self, x):
        if x.ndim != 4:
            raise self.error(f"needs a 4-D (N, C, H, W) bottom, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        pooled = []
        for level in range(self.levels):
            bins = 2**level
            kernel = [-(-h // bins), -(-w // bins)]
            pad = [(kernel[0] * bins - h + 1) // 2, (kernel[1] * bins - w + 1) // 2]
            if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                raise self.error(f"a {h}x{w} plane is too small for {bins}x{bins} bins")
            pooled.append(caffe_pool2d(x, kernel, kernel, pad, self.method))
        if self.levels == 1:
            return pooled
        return [torch.cat([y.reshape(y.shape[0], -1) for y in pooled], 1)]


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
        self.axis = canonical_axis(p.axis, x.ndim)
        k = volume(x.shape, self.axis)  # every axis from `axis` on is flattened into the input vector
        shape = (k, p.num_output) if p.transpose else (p.num_output, k)
        self.set_blob("weight", fill(p.weight_filler, shape))
        if p.bias_term:
            self.set_blob("bias", fill(filler_or(p, "bias_filler", 0.0), (p.num_output,)))

    def forward(self, x):
        lead = x.shape[: self.axis]
        flat = x.reshape(volume(lead), -1)
        k = self.weight.shape[0 if self.p.transpose else 1]
        if flat.shape[1] != k:
            raise self.error(f"input size {flat.shape[1]} from axis {self.axis} on, but the weights take {k}")
        if self.p.transpose:
            y = flat @ self.weight
            y = y + self.bias if self.bias is not None else y
        else:
            y = F.linear(flat, self.weight, self.bias)
        return [y.reshape(*lead, self.p.num_output)]


class Embed(Layer):
    """A lookup table: each index (a float holding an integer) picks a row of the (input_dim, num_output) weight."""

    type_name = "Embed"
    blob_names = ("weight", "bias")

    def __init__(self, param, phase):
        super().__init__(param, phase)
        self.p = param.embed_param
        if self.p.num_output <= 0 or self.p.input_dim <= 0:
            raise self.error("embed_param.num_output and input_dim must be > 0")

    def setup(self, bottoms):
        p = self.p
        self.set_blob("weight", fill(p.weight_filler, (p.input_dim, p.num_output)))
        if p.bias_term:
            self.set_blob("bias", fill(filler_or(p, "bias_filler", 0.0), (p.num_output,)))

    def forward(self, x):
        index = x.detach()
        rows = index.long()
        if bool((rows.to(index.dtype) != index).any()):
            raise self.error("embed indices must be integers")
        if bool(((rows < 0) | (rows >= self.p.input_dim)).any()):
            raise self.error(f"embed indices must be in [0, input_dim = {self.p.input_dim})")
        y = F.embedding(rows, self.weight)  # no gradient to the indices; rows accumulate theirs
        if self.bias is not None:
            y = y + self.bias
        return [y]


LAYERS = register(
    Convolution,
    Deconvolution,
    Pooling,
    SPP,
    InnerProduct,
    Embed,
    Im2col,
)
