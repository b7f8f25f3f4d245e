"""Caffe's DataTransformer on (C, H, W) uint8 images: crop, mirror, then `(x - mean) * scale`.

The output is bit-identical to Caffe's: pixels stay uint8 through crop and mirror, and the
arithmetic is float32 in Caffe's order (subtract the mean, then multiply by the scale).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mtldata.errors import MtlDataError

__all__ = ["CaffeTransform", "TransformError", "TransformSpec"]

PHASES = ("train", "test")
CHANNEL_ORDERS = ("bgr", "rgb")


class TransformError(MtlDataError, ValueError):
    """A transform_param Caffe would reject, or an image it cannot be applied to."""


def _finite_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TransformSpec:
    """Caffe's TransformationParameter, plus the channel order of the output.

    `mean_values` are per channel in the stored (BGR) order; one value applies to every channel.
    `force_color`/`force_gray` only matter when decoding encoded Datums and are just recorded here.
    `channel_order="rgb"` reverses the channels of the result (after the mean is subtracted).
    """

    scale: float = 1.0
    mirror: bool = False
    crop_size: int = 0
    mean_file: str | None = None
    mean_values: tuple[float, ...] = ()
    force_color: bool = False
    force_gray: bool = False
    channel_order: str = "bgr"

    def __post_init__(self) -> None:
        if not _finite_real(self.scale):
            raise TransformError(f"scale must be a finite number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        crop = self.crop_size
        if isinstance(crop, bool) or not isinstance(crop, numbers.Integral) or crop < 0:
            raise TransformError(f"crop_size must be an integer >= 0, got {crop!r}")
        object.__setattr__(self, "crop_size", int(crop))
        for name in ("mirror", "force_color", "force_gray"):
            if not isinstance(getattr(self, name), bool):
                raise TransformError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.force_color and self.force_gray:
            raise TransformError("cannot set both force_color and force_gray")
        values = tuple(self.mean_values)
        if not all(_finite_real(v) for v in values):
            raise TransformError(f"mean_values must be finite numbers, got {values!r}")
        object.__setattr__(self, "mean_values", tuple(float(v) for v in values))
        if self.mean_file is not None:
            mean_file = os.fspath(self.mean_file)
            if not mean_file:
                raise TransformError("mean_file is an empty path")
            object.__setattr__(self, "mean_file", mean_file)
            if values:
                raise TransformError(
                    "cannot specify mean_file and mean_values at the same time (as in Caffe)"
                )
        if self.channel_order not in CHANNEL_ORDERS:
            raise TransformError(f"channel_order must be 'bgr' or 'rgb', got {self.channel_order!r}")

    @classmethod
    def from_caffe(cls, transform_param: Any, *, channel_order: str = "bgr") -> TransformSpec:
        """The spec of a `caffe_pb2.TransformationParameter` message (e.g. a Data layer's)."""
        from mtldata.caffe import caffe_pb2

        if not isinstance(transform_param, caffe_pb2.TransformationParameter):
            raise TypeError(
                f"expected a TransformationParameter message, got {type(transform_param).__name__}"
            )
        p = transform_param
        return cls(
            scale=p.scale,
            mirror=p.mirror,
            crop_size=p.crop_size,
            mean_file=p.mean_file if p.HasField("mean_file") else None,
            mean_values=tuple(p.mean_value),
            force_color=p.force_color,
            force_gray=p.force_gray,
            channel_order=channel_order,
        )


class CaffeTransform:
    """Apply a TransformSpec as Caffe's DataTransformer does in `phase` ("train" or "test").

    Crop offsets are random in train and centred in test (integer division); mirroring is random in
    both phases when enabled. Random draws come from the given generator, else from torch's global
    RNG, which DataLoader seeds differently in every worker (a generator stored here would be copied
    into every worker with the same state, and all workers would crop alike).
    """

    def __init__(self, spec: TransformSpec, phase: str = "train") -> None:
        if phase not in PHASES:
            raise TransformError(f"phase must be 'train' or 'test', got {phase!r}")
        self.spec = spec
        self.phase = phase
        self._scale = torch.tensor(spec.scale, dtype=torch.float32)
        self._mean_values = torch.tensor(spec.mean_values, dtype=torch.float32) if spec.mean_values else None
        self._mean: torch.Tensor | None = None
        self._mean_on: dict[torch.device, torch.Tensor] = {}  # the mean file, copied once per device
        if spec.mean_file is not None:
            from mtldata.caffe.blob import read_mean_file

            self._mean = torch.from_numpy(
                np.ascontiguousarray(read_mean_file(spec.mean_file), dtype=np.float32)
            )

    def __repr__(self) -> str:
        return f"CaffeTransform({self.spec!r}, phase={self.phase!r})"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the output for an input of (height, width)."""
        crop = self.spec.crop_size
        if crop and (crop > height or crop > width):
            raise TransformError(f"crop_size {crop} is larger than the {height}x{width} image")
        return (crop, crop) if crop else (height, width)

    def crop_params(
        self, n: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row offsets, column offsets (int64) and mirror flags (bool) for n images of height x width.

        Draws in Caffe's order: the mirror coin (only when mirror is on), then, in train with a
        crop, the row and then the column offset, each uniform over every valid position.
        """
        out_h, out_w = self.output_size(height, width)
        if self.spec.mirror:
            mirror = torch.randint(2, (n,), generator=generator).bool()
        else:
            mirror = torch.zeros(n, dtype=torch.bool)
        if self.spec.crop_size and self.phase == "train":
            h_off = torch.randint(height - out_h + 1, (n,), generator=generator)
            w_off = torch.randint(width - out_w + 1, (n,), generator=generator)
        else:
            h_off = torch.full((n,), (height - out_h) // 2, dtype=torch.int64)
            w_off = torch.full((n,), (width - out_w) // 2, dtype=torch.int64)
        return h_off, w_off, mirror

    def __call__(self, img: Any, rng: np.random.Generator | torch.Generator | None = None) -> torch.Tensor:
        """Transform one (C, H, W) uint8 image into a float32 tensor, drawing crop/mirror from `rng`."""
        x = _uint8_tensor(img, 3)
        _, height, width = x.shape
        if isinstance(rng, np.random.Generator):
            out_h, out_w = self.output_size(height, width)
            mirror = bool(rng.integers(2)) if self.spec.mirror else False
            if self.spec.crop_size and self.phase == "train":
                h_off = int(rng.integers(height - out_h + 1))
                w_off = int(rng.integers(width - out_w + 1))
            else:
                h_off, w_off = (height - out_h) // 2, (width - out_w) // 2
        else:
            h_offs, w_offs, mirrors = self.crop_params(1, height, width, rng)
            h_off, w_off, mirror = int(h_offs[0]), int(w_offs[0]), bool(mirrors[0])
        return self.apply(x, h_off, w_off, mirror)

    def apply(self, img: Any, h_off: int = 0, w_off: int = 0, mirror: bool = False) -> torch.Tensor:
        """Transform one (C, H, W) uint8 image with the given crop offsets and mirror flag."""
        x = _uint8_tensor(img, 3)
        channels, height, width = x.shape
        out_h, out_w = self.output_size(height, width)
        if not (0 <= h_off <= height - out_h and 0 <= w_off <= width - out_w):
            raise TransformError(f"crop offset ({h_off}, {w_off}) does not fit a {height}x{width} image")
        x = x[:, h_off : h_off + out_h, w_off : w_off + out_w]
        if mirror:
            x = x.flip(-1)
        out = x.to(torch.float32)
        mean = self._mean_for(channels, height, width, out.device)
        if mean is not None and mean.ndim == 3:  # a mean file: cut and flipped exactly like the pixels
            mean = mean[:, h_off : h_off + out_h, w_off : w_off + out_w]
            if mirror:
                mean = mean.flip(-1)
        return self._finish(out, mean, channel_dim=0)

    def apply_batch(
        self,
        batch: Any,
        generator: torch.Generator | None = None,
        *,
        params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Transform a (N, C, H, W) uint8 batch on its own device; the same arithmetic as `apply`.

        Crop offsets and mirror flags are `params` (as `crop_params` returns them) or drawn by
        `crop_params` from `generator` (a CPU generator is fine for a GPU batch).
        """
        x = _uint8_tensor(batch, 4)
        n, channels, height, width = x.shape
        out_h, out_w = self.output_size(height, width)
        h_off, w_off, mirror = params if params is not None else self.crop_params(n, height, width, generator)
        h_off, w_off, mirror = (torch.as_tensor(t).cpu() for t in (h_off, w_off, mirror))
        if not (h_off.shape == w_off.shape == mirror.shape == (n,)):
            raise TransformError(f"crop params must each hold {n} values, one per image")
        h_off, w_off, mirror = h_off.long(), w_off.long(), mirror.bool()
        if bool(((h_off < 0) | (h_off > height - out_h) | (w_off < 0) | (w_off > width - out_w)).any()):
            raise TransformError(f"a crop offset does not fit the {height}x{width} images")
        mean = self._mean_for(channels, height, width, x.device)

        uniform = n == 0 or (
            not bool(mirror.any()) and bool((h_off == h_off[0]).all()) and bool((w_off == w_off[0]).all())
        )
        if uniform:
            h0, w0 = (int(h_off[0]), int(w_off[0])) if n else (0, 0)
            out = x[:, :, h0 : h0 + out_h, w0 : w0 + out_w].to(torch.float32)
            if mean is not None and mean.ndim == 3:
                mean = mean[None, :, h0 : h0 + out_h, w0 : w0 + out_w]
        else:
            # Per-image crop and mirror as one gather: image i's output column j reads input column
            # w_off[i] + j, or w_off[i] + out_w - 1 - j when mirrored.
            rows = h_off[:, None] + torch.arange(out_h)
            cols = w_off[:, None] + torch.arange(out_w)
            cols = torch.where(mirror[:, None], cols.flip(1), cols)
            rows = rows.to(x.device)[:, None, :, None]
            cols = cols.to(x.device)[:, None, None, :]
            chans = torch.arange(channels, device=x.device)[None, :, None, None]
            out = x[torch.arange(n, device=x.device)[:, None, None, None], chans, rows, cols].to(
                torch.float32
            )
            if mean is not None and mean.ndim == 3:
                mean = mean[chans, rows, cols]
        return self._finish(out, mean, channel_dim=1)

    def _mean_for(self, channels: int, height: int, width: int, device: torch.device) -> torch.Tensor | None:
        """The mean to subtract: the whole (C, H, W) mean file, or per-channel values as (C,)."""
        if self._mean is not None:
            if tuple(self._mean.shape) != (channels, height, width):
                raise TransformError(
                    f"the mean file {self.spec.mean_file} is {tuple(self._mean.shape)} (C, H, W) but the "
                    f"image is {(channels, height, width)}; Caffe needs the mean of the uncropped size"
                )
            if device not in self._mean_on:
                self._mean_on[device] = self._mean.to(device)
            return self._mean_on[device]
        if self._mean_values is not None:
            values = self._mean_values
            if values.numel() == 1:
                return values.expand(channels).to(device)
            if values.numel() != channels:
                raise TransformError(
                    f"give 1 mean_value or as many as channels ({channels}), got {values.numel()}"
                )
            return values.to(device)
        return None

    def _finish(self, out: torch.Tensor, mean: torch.Tensor | None, channel_dim: int) -> torch.Tensor:
        """`(x - mean) * scale` in float32 as Caffe computes it, then the channel order."""
        scale = self._scale.to(out.device)
        if mean is None:
            out = out * scale
        else:
            if mean.ndim == 1:  # per-channel values
                shape = [1] * out.ndim
                shape[channel_dim] = -1
                mean = mean.view(shape)
            out = (out - mean) * scale
        if self.spec.channel_order == "rgb":
            out = out.flip(channel_dim)
        return out.contiguous()


def _uint8_tensor(img: Any, ndim: int) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        x = img
    else:
        array = np.asarray(img)
        if not array.flags.writeable:  # torch.from_numpy warns on read-only buffers (e.g. np.frombuffer)
            array = array.copy()
        x = torch.from_numpy(array)
    layout = "(C, H, W)" if ndim == 3 else "(N, C, H, W)"
    if x.dtype != torch.uint8:
        raise TransformError(f"expected uint8 pixels {layout}, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise TransformError(f"expected a uint8 array {layout}, got shape {tuple(x.shape)}")
    return x
