"""Decoded pixels into Caffe's planar CxHxW layout, and the reusable buffer a decode worker decodes into.

The converter stores raw images as planes (all B, then all G, then all R). Turning interleaved
decoder output into planes is the largest cost after the decode itself, so colour JPEGs are decoded
as BGRX (4 bytes a pixel), which splits into planes with one contiguous cast per plane.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BGRX_SLACK", "DecodeBuffer", "planar_shape", "planes_into", "with_slack"]


BGRX_SLACK = 4  # bytes a DecodeBuffer keeps after its last BGRX pixel (planes_into reads 2 of them)


class DecodeBuffer:
    """A decode worker's reusable pixel memory, passed as `out` to prepare_image or decode_bytes.

    Colour JPEGs decode into it as BGRX (4 bytes a pixel; X is padding) rather than BGR: libjpeg-turbo
    writes BGRX at least as fast, and `planes_into` then splits it into B, G and R planes with three
    contiguous casts, where a strided HWC -> CHW transpose costs three times as much (issue 15).
    Not thread-safe: one per thread.
    """

    def __init__(self) -> None:
        self._raw = np.empty(0, np.uint8)

    def _memory(self, size: int) -> np.ndarray:
        # Kept while the next image fits and is not much smaller (a huge image's memory is returned).
        if not size <= self._raw.size <= 2 * size + 4096:
            self._raw = np.empty(size, np.uint8)
        return self._raw

    def bgrx(self, height: int, width: int) -> np.ndarray:
        """An HxWx4 array at the start of the buffer, with BGRX_SLACK bytes after it."""
        size = 4 * height * width
        return self._memory(size + BGRX_SLACK)[:size].reshape(height, width, 4)

    def array(self, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous uint8 array of `shape` at the start of the buffer."""
        return self._memory(int(np.prod(shape)))[: int(np.prod(shape))].reshape(shape)


def planar_shape(pixels: np.ndarray) -> tuple[int, int, int]:
    """(C, H, W) of HxW, HxWxC or HxWx4 BGRX (C = 3) decoded pixels."""
    if pixels.ndim == 2:
        return (1, pixels.shape[0], pixels.shape[1])
    return (3 if pixels.shape[2] == 4 else pixels.shape[2], pixels.shape[0], pixels.shape[1])


def with_slack(pixels: np.ndarray) -> np.ndarray | None:
    """The 1-D buffer that HxWx4 `pixels` start and that runs at least 2 bytes past them (as a
    DecodeBuffer's BGRX does), else None: what the fast split in planes_into needs."""
    base = pixels.base
    if (
        pixels.ndim == 3
        and pixels.shape[2] == 4
        and pixels.flags.c_contiguous
        and isinstance(base, np.ndarray)
        and base.dtype == np.uint8
        and base.ndim == 1
        and base.size >= pixels.size + 2
        and base.__array_interface__["data"][0] == pixels.__array_interface__["data"][0]
    ):
        return base
    return None


def planes_into(pixels: np.ndarray, planes: np.ndarray) -> None:
    """Write decoded HxW, HxWxC or HxWx4 BGRX uint8 pixels into `planes`, a CxHxW uint8 array."""
    if pixels.ndim == 2:
        np.copyto(planes[0], pixels)
        return
    if pixels.shape[2] == 4:
        base = with_slack(pixels)
        if base is not None and planes.flags.c_contiguous:
            # Byte k of pixel i is the low byte of the little-endian uint32 read at 4i + k, and a
            # cast to uint8 keeps just that byte: each plane is one contiguous (SIMD) cast. The
            # reads at k = 1, 2 run up to 2 bytes past the last pixel, into the buffer's slack.
            n = pixels.shape[0] * pixels.shape[1]
            flat = planes.reshape(3, n)
            for k in range(3):
                np.copyto(flat[k], np.frombuffer(base, "<u4", count=n, offset=k), casting="unsafe")
            return
        pixels = pixels[:, :, :3]
    np.copyto(planes, pixels.transpose(2, 0, 1))
