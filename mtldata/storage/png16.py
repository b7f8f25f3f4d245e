"""16-bit colour PNGs in gray as libpng 1.6 gives them to OpenCV's IMREAD_GRAYSCALE.

Pillow hands over only the high bytes of a 16-bit colour PNG, but libpng converts RGB to gray at 16
bits (through 16-bit gamma tables when the file states a gamma) and only then drops the low byte
(OpenCV asks for png_set_strip_16). The image module gets the low bytes from a second Pillow decode
and this module applies libpng's arithmetic to the whole samples.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import BinaryIO

import numpy as np

from mtldata.storage.png_chunks import PNG_SIGNATURE

_RC, _GC = 9797, 19234  # OpenCV's png_set_rgb_to_gray(0.299, 0.587), as libpng stores them
_BC = 32768 - _RC - _GC
_FP_1 = 100000
_MAX_GAMMA_8 = 11  # libpng's PNG_MAX_GAMMA_8: 16-bit gamma tables keep at most 11 bits
_GAMMA_SRGB = 45455  # the file gamma an sRGB chunk implies (PNG_GAMMA_sRGB_INVERSE)
_GAMMA_RANGE = (16, 625_000_000)  # libpng ignores a gAMA outside this (0.00016 to 6250)


def png_file_gamma(stream: BinaryIO) -> int | None:
    """The file gamma libpng 1.6 converts a colour PNG with (x100000; None: none), read from its start.

    libpng reads gAMA and sRGB in file order into one colour space, and the order matters:
    - sRGB sets 0.45455, whatever gAMA said before it;
    - a gAMA after sRGB replaces that only when within 5% of it (else libpng warns and keeps sRGB's);
    - a second gAMA or sRGB, an out-of-range gAMA or an sRGB intent over 3 marks the colour space
      invalid: the gamma so far stays, and every later gAMA and sRGB is ignored;
    - a chunk of the wrong length or with a bad CRC is skipped, and so is one after PLTE or IDAT.
    iCCP profiles are not modelled. Only chunk headers and the 4- or 1-byte bodies of gAMA and sRGB
    are read.
    """
    if stream.read(8) != PNG_SIGNATURE:
        return None
    gamma: int | None = None
    from_srgb = from_gama = invalid = False
    while True:
        header = stream.read(8)
        if len(header) < 8:
            return gamma
        length, kind = struct.unpack(">I", header[:4])[0], header[4:]
        if kind in (b"PLTE", b"IDAT", b"IEND"):
            return gamma
        if (kind, length) not in ((b"gAMA", 4), (b"sRGB", 1)):
            stream.seek(length + 4, 1)  # body and CRC
            continue
        body, crc = stream.read(length), stream.read(4)
        if len(crc) < 4 or zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            continue  # an ancillary chunk with a bad CRC is dropped
        if kind == b"gAMA":
            value = struct.unpack(">I", body)[0]
            if not _GAMMA_RANGE[0] <= value <= _GAMMA_RANGE[1] or from_gama:
                invalid = True
            elif not invalid and (gamma is None or not from_srgb or not _significant(_muldiv(gamma, value))):
                gamma, from_gama = value, True
        elif not invalid:  # sRGB
            if from_srgb or body[0] > 3:
                invalid = True  # "too many profiles" / "invalid sRGB rendering intent"
            else:
                gamma, from_srgb = _GAMMA_SRGB, True


def _muldiv(gamma: int, divisor: int) -> int:
    """png_muldiv(gamma, PNG_FP_1, divisor), floating-point build: 0 (a mismatch) on overflow."""
    result = math.floor(gamma * _FP_1 / divisor + 0.5)
    return result if -(2**31) <= result <= 2**31 - 1 else 0


def png_sig_bit(stream: BinaryIO) -> int:
    """The largest colour value of a colour PNG's sBIT chunk (0: none or invalid), read from its start.

    Only chunk headers are read up to the first IDAT (sBIT must come before it); bodies are skipped.
    """
    if stream.read(8) != PNG_SIGNATURE:
        return 0
    while True:
        header = stream.read(8)
        if len(header) < 8:
            return 0
        length, kind = struct.unpack(">I", header[:4])[0], header[4:]
        if kind in (b"IDAT", b"IEND"):
            return 0
        if kind == b"sBIT" and length in (3, 4):
            bits = stream.read(length)[:3]
            return max(bits) if len(bits) == 3 and 0 < min(bits) and max(bits) <= 16 else 0
        stream.seek(length + 4, 1)  # body and CRC


def libpng_gray16(rgb: np.ndarray, file_gamma: int | None, sig_bit: int = 0) -> np.ndarray:
    """png_do_rgb_to_gray on HxWx3 16-bit samples, then png_do_chop (the high byte): HxW uint8.

    `file_gamma` is libpng's (x100000, None when the file states none); `sig_bit` the sBIT depth.
    """
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    if file_gamma is None or not _significant(file_gamma):
        return (((_RC * r + _GC * g + _BC * b + 16384) >> 15) >> 8).astype(np.uint8)
    shift = 16 - sig_bit if 0 < sig_bit < 16 else 0
    shift = min(max(shift, 16 - _MAX_GAMMA_8), 8)  # the strip to 8 bits allows coarser tables
    screen = _reciprocal(file_gamma)
    to_1 = _table16(shift, _reciprocal(file_gamma))
    from_1 = _table16(shift, _reciprocal(screen))
    same = _table16to8(shift, int(math.floor(file_gamma * 1e-5 * screen + 0.5)))
    gray16 = (_RC * to_1[r >> shift] + _GC * to_1[g >> shift] + _BC * to_1[b >> shift] + 16384) >> 15
    w = np.where((r == g) & (r == b), same[r >> shift], from_1[gray16 >> shift])
    return (w >> 8).astype(np.uint8)


def _significant(gamma: int) -> bool:
    return abs(gamma - _FP_1) > 5000  # png_gamma_significant


def _reciprocal(a: int) -> int:
    return int(math.floor(1e10 / a + 0.5))


def _gamma16_correct(value: int, gamma: int) -> int:
    if 0 < value < 65535:
        return int(math.floor(65535 * math.pow(value / 65535.0, gamma * 0.00001) + 0.5))
    return value


def _table16(shift: int, gamma: int) -> np.ndarray:
    """png_build_16bit_table, flattened: entry v >> shift of a 16-bit value v."""
    size = 1 << (16 - shift)
    top = size - 1
    ig = np.arange(size, dtype=np.float64)
    if _significant(gamma):
        return np.floor(65535.0 * np.power(ig * (1.0 / top), gamma * 0.00001) + 0.5).astype(np.int64)
    ints = np.arange(size, dtype=np.int64)
    return (ints * 65535 + (1 << (15 - shift))) // top if shift else ints


def _table16to8(shift: int, gamma: int) -> np.ndarray:
    """png_build_16to8_table, flattened: the 16-bit value whose high byte is the nearest 8-bit output."""
    size = 1 << (16 - shift)
    top = size - 1
    table = np.full(size, 65535, np.int64)
    last = 0
    for i in range(255):
        out = i * 257
        bound = (_gamma16_correct(out + 128, gamma) * top + 32768) // 65535 + 1
        if bound > last:
            table[last:bound] = out
            last = bound
    return table
