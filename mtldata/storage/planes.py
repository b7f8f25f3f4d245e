"""Decoded pixels into Caffe's planar CxHxW layout, and the reusable buffer a decode worker decodes into.

The converter stores raw images as planes (all B, then all G, then all R). Turning interleaved
decoder output into planes is the largest cost after the decode itself, so colour JPEGs are decoded
as BGRX (4 bytes a pixel), which splits into planes with one contiguous cast per plane.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DecodeBuffer", "planar_shape", "planes_into"]


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
        """An HxWx4 array at the start of the buffer."""
        size = 4 * height * width
        return self._memory(size)[:size].reshape(height, width, 4)

    def array(self, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous uint8 array of `shape` at the start of the buffer."""
        return self._memory(int(np.prod(shape)))[: int(np.prod(shape))].reshape(shape)


def planar_shape(pixels: np.ndarray) -> tuple[int, int, int]:
    """(C, H, W) of HxW, HxWxC or HxWx4 BGRX (C = 3) decoded pixels."""
    if pixels.ndim == 2:
        return (1, pixels.shape[0], pixels.shape[1])
    return (3 if pixels.shape[2] == 4 else pixels.shape[2], pixels.shape[0], pixels.shape[1])


def planes_into(pixels: np.ndarray, planes: np.ndarray) -> None:
    """Write decoded HxW, HxWxC or HxWx4 BGRX uint8 pixels into `planes`, a CxHxW uint8 array."""
    if pixels.ndim == 2:
        np.copyto(planes[0], pixels)
        return
    if (
        pixels.shape[2] == 4
        and pixels.dtype == np.uint8
        and pixels.flags.c_contiguous
        and planes.flags.c_contiguous
    ):
        # Byte k of pixel i is the low byte of the little-endian uint32 read at 4i + k, and a cast
        # to uint8 keeps just that byte: each plane is one contiguous (SIMD) cast. At k = 1, 2 the
        # last pixel's read would run past the pixels: its G and R are copied on their own.
        n = pixels.shape[0] * pixels.shape[1]
        flat = planes.reshape(3, n)
        for k in range(3):
            count = n - (k > 0)
            words = np.ndarray((count,), "<u4", pixels, k)
            np.copyto(flat[k, :count], words, casting="unsafe")
        flat[1:, n - 1] = pixels[-1, -1, 1:3]
        return
    if pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    np.copyto(planes, pixels.transpose(2, 0, 1))
