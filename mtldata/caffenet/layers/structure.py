"""Caffe's blob plumbing layers: joining, splitting, reshaping and combining blobs, and Softmax."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffenet.layers.base import Layer, canonical_axis, prescribed_gradient, register, volume


def _legacy_axis(p, axis_field: str, legacy_field: str) -> int:
    if p.HasField(legacy_field) and not p.HasField(axis_field):
        return getattr(p, legacy_field)
    return getattr(p, axis_field)


class Concat(Layer):
    type_name = "Concat"
    max_bottoms = None

    def forward(self, *bottoms):
        axis = canonical_axis(
            _legacy_axis(self.layer_param.concat_param, "axis", "concat_dim"), bottoms[0].ndim
        )
        return [torch.cat(bottoms, axis) if len(bottoms) > 1 else bottoms[0]]


class Slice(Layer):
    type_name = "Slice"
    max_tops = None

    def forward(self, x):
        p = self.layer_param.slice_param
        axis = canonical_axis(_legacy_axis(p, "axis", "slice_dim"), x.ndim)
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
            if not self.layer_param.eltwise_param.stable_prod_grad:
                # Caffe's unstable gradient: top_diff · top / bottom_i (inf or nan where a bottom is 0)
                top = out.detach()
                out = prescribed_gradient(top, *[(b, top / b.detach()) for b in bottoms])
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
        start = canonical_axis(p.axis, x.ndim, "axis")
        end = canonical_axis(p.end_axis, x.ndim, "end_axis")
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
        total = volume(shape)
        if -1 in self.dims:
            known = volume([d for d in out if d != -1])
            if known == 0 or total % known:
                raise self.error(
                    f"bottom count ({total}) must be divisible by the specified dimensions ({known})"
                )
            out[start + self.dims.index(-1)] = total // known
        if volume(out) != total:
            raise self.error(f"output count {volume(out)} must match input count {total}")
        return out

    def forward(self, x):
        return [x.reshape(self.top_shape(list(x.shape)))]


class Crop(Layer):
    """The first bottom cut to the second's shape on every axis from `axis`, starting at `offset`."""

    type_name = "Crop"
    min_bottoms = 2
    max_bottoms = 2

    def forward(self, x, ref):
        p = self.layer_param.crop_param
        start = canonical_axis(p.axis, x.ndim)
        if ref.ndim != x.ndim:
            raise self.error(f"the bottoms have {x.ndim} and {ref.ndim} axes; they need as many")
        offsets = list(p.offset)
        if len(offsets) not in (0, 1, x.ndim - start):
            raise self.error(
                f"give 0, 1 or {x.ndim - start} offsets (one per cropped axis), got {len(offsets)}"
            )
        index = []
        for i in range(x.ndim):
            if i < start:
                index.append(slice(None))
                continue
            offset = offsets[0] if len(offsets) == 1 else offsets[i - start] if offsets else 0
            if x.shape[i] - offset < ref.shape[i]:
                raise self.error(
                    f"axis {i}: a crop of {ref.shape[i]} at offset {offset} does not fit in {x.shape[i]}"
                )
            index.append(slice(offset, offset + ref.shape[i]))
        return [x[tuple(index)]]  # the second bottom gives only its shape: no gradient


class Tile(Layer):
    """The bottom repeated `tiles` times along `axis` (the whole block, not element by element)."""

    type_name = "Tile"

    def forward(self, x):
        p = self.layer_param.tile_param
        if p.tiles <= 0:
            raise self.error("tile_param.tiles must be > 0")
        axis = canonical_axis(p.axis, x.ndim)
        reps = [1] * x.ndim
        reps[axis] = p.tiles
        return [x.repeat(reps)]


class Reduction(Layer):
    """SUM, ASUM, SUMSQ or MEAN over every axis from `axis` on, times `coeff`; the top keeps the axes before."""

    type_name = "Reduction"

    def forward(self, x):
        p = self.layer_param.reduction_param
        axis = canonical_axis(p.axis, x.ndim)
        op = caffe_pb2.ReductionParameter.ReductionOp.Name(p.operation)
        flat = x.reshape(*x.shape[:axis], -1)
        if op == "ASUM":
            y = flat.abs().sum(-1)
        elif op == "SUMSQ":
            y = (flat * flat).sum(-1)
        elif op == "MEAN":
            y = flat.sum(-1) / max(volume(x.shape, axis), 1)
        else:
            y = flat.sum(-1)
        return [y * p.coeff if p.coeff != 1 else y]


class ArgMax(Layer):
    """The top_k largest entries: per item over all its values (indices, then values with out_max_val)
    into (N, 1|2, top_k, 1...), or along `axis` (indices, or values with out_max_val). Forward only."""

    type_name = "ArgMax"

    def forward(self, x):
        p = self.layer_param.argmax_param
        k = p.top_k
        with torch.no_grad():
            if p.HasField("axis"):
                axis = canonical_axis(p.axis, x.ndim)
                values, index = _ranked(x.detach(), axis, k)
                if k > x.shape[axis]:
                    raise self.error(f"top_k ({k}) must be at most the axis size ({x.shape[axis]})")
                return [values if p.out_max_val else index.to(x.dtype)]
            flat = x.detach().reshape(x.shape[0], -1)
            if k > flat.shape[1]:
                raise self.error(f"top_k ({k}) must be at most the item size ({flat.shape[1]})")
            values, index = _ranked(flat, 1, k)
            parts = [index.to(x.dtype)] + ([values] if p.out_max_val else [])
            shape = [x.shape[0], len(parts), k] + [1] * (max(x.ndim, 3) - 3)
            return [torch.stack(parts, 1).reshape(shape)]


def _ranked(x: Tensor, axis: int, k: int) -> tuple[Tensor, Tensor]:
    """The k largest values along `axis` and their indices, best first; ties rank the larger index
    first (Caffe sorts (value, index) pairs in descending order)."""
    size = x.shape[axis]
    values, index = torch.sort(x.flip(axis), dim=axis, descending=True, stable=True)
    return values.narrow(axis, 0, k), (size - 1 - index).narrow(axis, 0, k)


class Filter(Layer):
    """The items (axis 0) of each bottom whose selector (the last bottom) is nonzero; the gradient goes
    back to those items only, never to the selector."""

    type_name = "Filter"
    min_bottoms = 2
    max_bottoms = None
    max_tops = None

    def __init__(self, param, phase):
        super().__init__(param, phase)
        if len(param.top) != len(param.bottom) - 1:
            raise self.error("needs one top per bottom, the selector (last bottom) excluded")

    def forward(self, *bottoms):
        *data, selector = bottoms
        if selector.numel() != selector.shape[0]:
            raise self.error(f"the selector must hold one value per item, got shape {tuple(selector.shape)}")
        keep = torch.nonzero(selector.detach().reshape(-1) != 0).reshape(-1)
        if self.dry_run:  # the net's setup pass: every item, as Caffe's first Reshape keeps the batch
            keep = torch.arange(selector.shape[0], device=selector.device)
        for x in data:
            if x.shape[0] != selector.shape[0]:
                raise self.error(f"a bottom of {x.shape[0]} items for a selector of {selector.shape[0]}")
        return [x.index_select(0, keep) for x in data]


class BatchReindex(Layer):
    """The items of the first bottom in the order the second lists (indices may repeat; the gradient of a
    repeated item accumulates)."""

    type_name = "BatchReindex"
    min_bottoms = 2
    max_bottoms = 2

    def forward(self, x, order):
        if order.ndim != 1:
            raise self.error(f"the index bottom must be 1-D, got shape {tuple(order.shape)}")
        index = order.detach().long()  # static_cast<int>
        if bool(((index < 0) | (index >= x.shape[0])).any()):
            raise self.error(f"indices must be in [0, {x.shape[0]})")
        return [x.index_select(0, index)]


class Parameter(Layer):
    """A learned blob of `parameter_param.shape` as its only top (Caffe leaves it zero until loaded)."""

    type_name = "Parameter"
    blob_names = ("blob",)
    min_bottoms = 0
    max_bottoms = 0

    def setup(self, bottoms):
        self.set_blob("blob", torch.zeros([int(d) for d in self.layer_param.parameter_param.shape.dim]))

    def forward(self):
        return [self.blob]


class Softmax(Layer):
    type_name = "Softmax"

    def forward(self, x):
        return [torch.softmax(x, canonical_axis(self.layer_param.softmax_param.axis, x.ndim))]


LAYERS = register(
    Concat,
    Slice,
    Split,
    Silence,
    Eltwise,
    Flatten,
    Reshape,
    Softmax,
    Crop,
    Tile,
    Reduction,
    ArgMax,
    Parameter,
    Filter,
    BatchReindex,
)
