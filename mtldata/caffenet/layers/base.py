"""What every Caffe layer module shares: the Layer base class, its error, and Caffe's axis rules.

Each layer reads its LayerParameter, creates its blobs (weights) from the first bottoms it sees, as
Caffe's LayerSetUp/Reshape do, and maps bottoms to tops in `forward`. Blobs are kept in Caffe's order
(`blob_names`): the learned ones as parameters, BatchNorm's running statistics as buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from mtldata.caffe import caffe_pb2
from mtldata.errors import MtlDataError

FLT_MIN = 1.1754943508222875e-38  # std::numeric_limits<float>::min(), SoftmaxWithLoss's floor
FLT_MAX = 3.4028234663852886e38


class CaffeNetError(MtlDataError, ValueError):
    """A net Caffe would reject, a layer mtldata cannot build, or blobs that break a layer's rules."""


def canonical_axis(axis: int, ndim: int, what: str = "axis") -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"{what} {axis} is out of range for a {ndim}-D blob")
    return axis % ndim if ndim else 0


def volume(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    return math.prod(shape[start:end])


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
        self.search_dirs: list[Path] = []  # where relative file names resolve (set by the net)
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

    def find_file(self, name: str, what: str) -> Path:
        """A file the layer reads: as given, else in the first of `search_dirs` that has it."""
        path = Path(name)
        candidates = [path] if path.is_absolute() else [d / path for d in self.search_dirs] or [path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise self.error(f"{what}: {name!r} not found (looked for {' and '.join(map(str, candidates))})")

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


def filler_or(param, field: str, value: float) -> caffe_pb2.FillerParameter:
    if param.HasField(field):
        return getattr(param, field)
    filler = caffe_pb2.FillerParameter()
    filler.type = "constant"
    filler.value = value
    return filler


def spatial_values(
    values, h_name: str, w_name: str, param, n: int, default: int | None, what: str
) -> list[int]:
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


def broadcast_shape(x: Tensor, axis: int, shape: Sequence[int]) -> list[int]:
    return [1] * axis + list(shape) + [1] * (x.ndim - axis - len(shape))


LayerFactory = Callable[[caffe_pb2.LayerParameter, str], Layer]


def register(*classes: type[Layer]) -> dict[str, LayerFactory]:
    """A family's registry entries: each class under its Caffe type name."""
    return {cls.type_name: cls for cls in classes}


class _Prescribed(torch.autograd.Function):
    """A value whose gradient w.r.t. each input is given (Caffe's Backward where it is no derivative)."""

    @staticmethod
    def forward(ctx, value, *pairs):
        ctx.save_for_backward(*pairs[1::2])
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        out: list[Tensor | None] = [None]
        for local in ctx.saved_tensors:
            out += [grad * local, None]
        return tuple(out)


def prescribed_gradient(value: Tensor, *pairs: tuple[Tensor, Tensor]) -> Tensor:
    """`value` (computed without autograd) whose gradient w.r.t. each `input` is grad_output · `local`.

    `local` has the input's shape; `value` has it too (elementwise layers) or is a scalar (losses).
    """
    flat = [t for x, local in pairs for t in (x, local.detach())]
    return _Prescribed.apply(value.detach(), *flat)
