"""A PNG's chunks as libpng reads them, so that a PNG decodes here exactly when OpenCV (and so Caffe)
can decode it.

Pillow checks no CRC after the header chunks and needs no IEND, and it refuses a file whose ancillary
chunk before the image data has a bad CRC. libpng 1.2 and 1.6 both read every chunk up to IEND and:
- drop an ancillary chunk (first letter lower-case) whose CRC does not match, with a warning;
- stop with an error at a critical chunk (IHDR, PLTE, IDAT, IEND) whose CRC does not match, at a
  critical chunk they do not know, at a chunk type that is not four letters, and where the data ends
  before IEND ("Read Error"). What follows IEND is never read.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the 8 bytes every PNG starts with
_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})
_MAX_LENGTH = 2**31 - 1  # PNG_UINT_31_MAX: a larger chunk length is an error
_HEADER = struct.Struct(">I4s")  # a chunk's length and type
_CRC = struct.Struct(">I")


class PngChunkError(ValueError):
    """libpng would stop reading this PNG; the message says why."""


def libpng_chunks(data: bytes) -> bytes:
    """`data` (a PNG, signature included) with the ancillary chunks libpng drops for a bad CRC left
    out: `data` itself when there are none. Raises PngChunkError where libpng stops with an error.

    Reads only within `data`: every length is checked against what is left before it is used.
    Runs on every PNG decode, so it is kept to a few calls a chunk (7 us for a 28 px digit).
    """
    if data[:8] != PNG_SIGNATURE:
        raise PngChunkError("not a PNG file (no PNG signature)")
    view = memoryview(data)
    kept: list[memoryview] = []
    start, pos = 0, 8  # the run of bytes kept since the last dropped chunk starts at `start`
    end_of_data = len(data)
    while True:
        if pos + 8 > end_of_data:
            raise PngChunkError("truncated PNG: the data ends before its IEND chunk")
        length, kind = _HEADER.unpack_from(data, pos)
        if not kind.isalpha():  # bytes.isalpha: ASCII letters only, as libpng's check
            raise PngChunkError(f"corrupt PNG: invalid chunk type {kind.decode('latin-1')!r} at byte {pos}")
        if length > _MAX_LENGTH:
            raise PngChunkError(
                f"corrupt PNG: the {kind.decode()} chunk's length ({length:,}) is out of range"
            )
        end = pos + 12 + length
        if end > end_of_data:
            raise PngChunkError(f"truncated PNG: the data ends inside its {kind.decode()} chunk")
        if zlib.crc32(view[pos + 4 : end - 4]) != _CRC.unpack_from(data, end - 4)[0]:
            if not kind[0] & 0x20:
                raise PngChunkError(f"corrupt PNG: the {kind.decode()} chunk's CRC does not match its data")
            kept.append(view[start:pos])  # an ancillary chunk: libpng warns and drops it
            start = end
        elif not kind[0] & 0x20 and kind not in _CRITICAL:
            raise PngChunkError(f"corrupt PNG: unknown critical chunk {kind.decode()!r}")
        if kind == b"IEND":
            break
        pos = end
    if not kept:
        return data
    kept.append(view[start:end])
    return b"".join(kept)
