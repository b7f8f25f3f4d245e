"""`--gray` on colour PNGs against the system's libpng 1.6 driven with OpenCV's calls (tests/libpng_oracle.py).

OpenCV's IMREAD_GRAYSCALE asks libpng for png_set_rgb_to_gray(0.299, 0.587); libpng converts in
linear light when the file states a gamma (gAMA or sRGB). mtldata must give the same bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from libpng_oracle import libpng_gray, load_libpng
from PIL import Image, PngImagePlugin

from mtldata.storage.image import decode_bytes, load_image, png_file_gamma
from mtldata.storage.png16 import png_sig_bit

LIBPNG = load_libpng()
needs_libpng = pytest.mark.skipif(LIBPNG is None, reason="the system has no libpng16 to compare with")


def write_png(path: Path, pixels: np.ndarray, mode: str, chunks: list[tuple[bytes, bytes]]) -> Path:
    info = PngImagePlugin.PngInfo()
    for kind, data in chunks:
        info.add(kind, data)
    image = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":
        image = Image.fromarray(np.dstack([pixels, pixels[..., :1]]), "RGBA")
    elif mode == "P":
        image = image.quantize(64)
    image.save(path, pnginfo=info)
    return path


def gama(value: int) -> tuple[bytes, bytes]:
    return b"gAMA", struct.pack(">I", value)


SRGB = (b"sRGB", b"\x00")

_chunks = st.one_of(
    st.just([]),
    st.just([SRGB]),
    st.builds(lambda v: [gama(v)], st.integers(16, 400_000)),
    st.builds(lambda v: [gama(v), SRGB], st.integers(16, 400_000)),
    st.builds(lambda v: [SRGB, gama(v)], st.integers(16, 400_000)),
)


@needs_libpng
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pixels=hnp.arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3))),
    mode=st.sampled_from(["RGB", "RGBA", "P"]),
    chunks=_chunks,
    neutral_rows=st.integers(0, 3),
)
def test_gray_png_is_byte_equal_to_libpng_with_opencvs_calls(tmp_path, pixels, mode, chunks, neutral_rows):
    pixels = pixels.copy()
    pixels[:neutral_rows] = pixels[:neutral_rows, :, :1]  # R == G == B pixels take another path
    path = write_png(tmp_path / "x.png", pixels, mode, chunks)
    np.testing.assert_array_equal(load_image(path, gray=True), libpng_gray(LIBPNG, path))


@needs_libpng
def test_srgb_png_in_gray_differs_from_the_plain_formula_as_libpng_does(tmp_path):
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 90, 90]]], np.uint8)
    plain = load_image(write_png(tmp_path / "plain.png", pixels, "RGB", []), gray=True)
    srgb = load_image(write_png(tmp_path / "srgb.png", pixels, "RGB", [SRGB]), gray=True)
    assert plain.tolist() == [[76, 149, 29, 90]]  # (9797 R + 19234 G + 3737 B) >> 15
    assert srgb.tolist() == libpng_gray(LIBPNG, tmp_path / "srgb.png").tolist()
    assert srgb[0, 3] == 90 and (srgb[0, :3] > plain[0, :3] + 20).all()  # linear light lifts colours


def test_png_file_gamma_follows_libpngs_rules():
    assert png_file_gamma({}) is None
    assert png_file_gamma({"gamma": 0.45455}) == 45455
    assert png_file_gamma({"gamma": 1.0, "srgb": 0}) == 45455  # sRGB wins over gAMA
    assert png_file_gamma({"gamma": 0.00001}) is None  # below libpng's 16/100000: ignored
    assert png_file_gamma({"gamma": 7000.0}) is None


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def write_png16(
    path: Path, samples: np.ndarray, filters: list[int], chunks: list[tuple[bytes, bytes]]
) -> Path:
    """A 16-bit RGB or RGBA PNG written byte by byte, each row with the given filter type (0-4)."""
    height, width, channels = samples.shape
    bpp = 2 * channels
    rows = samples.astype(">u2").reshape(height, -1).view(np.uint8).astype(np.int32)
    body = []
    for y in range(height):
        raw = rows[y]
        prior = rows[y - 1] if y else np.zeros_like(raw)
        left = np.concatenate([np.zeros(bpp, np.int32), raw[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
        kind = filters[y % len(filters)]
        pred = [0, left, prior, (left + prior) >> 1, _paeth(left, prior, up_left)][kind]
        body.append(bytes([kind]) + ((raw - pred) & 0xFF).astype(np.uint8).tobytes())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour = 2 if channels == 3 else 6
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    extra = b"".join(chunk(kind, data) for kind, data in chunks)
    idat = chunk(b"IDAT", zlib.compress(b"".join(body)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + idat + chunk(b"IEND", b""))
    return path


_chunks16 = st.one_of(
    _chunks,
    st.builds(
        lambda v, s: [gama(v), (b"sBIT", bytes([s, s, s]))], st.integers(30_000, 80_000), st.integers(1, 16)
    ),
)


@needs_libpng
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    samples=hnp.arrays(np.uint16, st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([3, 4]))),
    filters=st.lists(st.integers(0, 4), min_size=1, max_size=5),
    chunks=_chunks16,
    neutral_rows=st.integers(0, 2),
)
def test_16bit_colour_png_in_gray_is_byte_equal_to_libpng(tmp_path, samples, filters, chunks, neutral_rows):
    samples = samples.copy()
    samples[:neutral_rows, :, 1:3] = samples[:neutral_rows, :, :1]
    if samples.shape[2] == 4 and chunks and chunks[-1][0] == b"sBIT":
        chunks = [*chunks[:-1], (b"sBIT", chunks[-1][1] + b"\x10")]  # RGBA's sBIT has 4 bytes
    path = write_png16(tmp_path / "x16.png", samples, filters, chunks)
    want = libpng_gray(LIBPNG, path)
    np.testing.assert_array_equal(load_image(path, gray=True), want)
    np.testing.assert_array_equal(decode_bytes(path.read_bytes(), gray=True), want)


def test_png_sig_bit_reads_the_sbit_chunk_before_the_image_data(tmp_path):
    samples = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3) * 3000
    plain = write_png16(tmp_path / "plain.png", samples, [0], [gama(45455)]).read_bytes()
    ten = write_png16(tmp_path / "ten.png", samples, [0], [(b"sBIT", bytes([10, 9, 10]))]).read_bytes()
    bad = write_png16(tmp_path / "bad.png", samples, [0], [(b"sBIT", bytes([0, 9, 10]))]).read_bytes()
    assert [png_sig_bit(io.BytesIO(d)) for d in (plain, ten, bad, b"not a png", plain[:20])] == [
        0,
        10,
        0,
        0,
        0,
    ]


def test_16bit_gray_without_gamma_keeps_the_high_byte_of_the_16bit_luma(tmp_path):
    samples = np.array(
        [[[0x12FF, 0x3401, 0x5680], [0xFFFF, 0xFFFF, 0xFFFF], [0x0101, 0x0101, 0x0101]]], np.uint16
    )
    path = write_png16(tmp_path / "x.png", samples, [0], [])
    luma = (9797 * 0x12FF + 19234 * 0x3401 + 3737 * 0x5680 + 16384) >> 15
    assert load_image(path, gray=True).tolist() == [[luma >> 8, 255, 1]]
