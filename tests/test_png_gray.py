"""`--gray` on colour PNGs against the system's libpng 1.6 driven with OpenCV's calls (tests/libpng_oracle.py).

OpenCV's IMREAD_GRAYSCALE asks libpng for png_set_rgb_to_gray(0.299, 0.587); libpng converts in
linear light when the file states a gamma (gAMA or sRGB). mtldata must give the same bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import png_chunk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from libpng_oracle import libpng_gray, load_libpng
from PIL import Image, PngImagePlugin

from mtldata.storage.image import decode_bytes, load_image
from mtldata.storage.png16 import png_file_gamma, png_sig_bit

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


def _gamma_of(chunks: list[tuple[bytes, bytes]]) -> int | None:
    png = write_png16(Path("/dev/null"), np.zeros((1, 1, 3), np.uint16), [0], chunks, write=False)
    return png_file_gamma(io.BytesIO(png))


BAD_CRC = (b"gAMA", struct.pack(">I", 30000), b"\0\0\0\0")  # a third element: the CRC as written


@pytest.mark.parametrize(
    ("chunks", "gamma"),
    [
        # what libpng 1.6 uses for each, seen with tests/libpng_oracle.py
        ([], None),
        ([SRGB], 45455),
        ([gama(30000)], 30000),
        ([gama(200000), SRGB], 45455),  # sRGB wins over a gAMA before it
        ([SRGB, gama(200000)], 45455),  # and over one after it that is more than 5% off
        ([SRGB, gama(43291)], 43291),  # a gAMA after it within 5% replaces it
        ([gama(1), SRGB], None),  # out of range: the colour space is invalid, sRGB then ignored
        ([SRGB, gama(1)], 45455),  # ... which keeps the gamma read before
        ([gama(30000), gama(60000)], 30000),  # a second gAMA: invalid
        ([gama(30000), gama(60000), SRGB], 30000),
        ([gama(30000), SRGB, gama(43291)], 45455),
        ([SRGB, SRGB, gama(43291)], 45455),  # a second sRGB: invalid
        ([SRGB, gama(43291), gama(30000)], 43291),
        ([(b"sRGB", b"\x05")], None),  # rendering intent over 3: invalid
        ([(b"sRGB", b"\x05"), gama(30000)], None),
        ([gama(30000), (b"sRGB", b"\x05")], 30000),
        ([(b"sRGB", b"\0\0"), gama(30000)], 30000),  # wrong lengths: the chunk alone is skipped
        ([(b"gAMA", b"\0\0\x75\x30\0")], None),
        ([BAD_CRC], None),
        ([BAD_CRC, SRGB], 45455),
        ([(b"PLTE", bytes(range(6))), SRGB], None),  # after PLTE: out of place
    ],
)
def test_png_file_gamma_follows_libpngs_colour_space_rules(chunks, gamma):
    assert _gamma_of(chunks) == gamma


def test_png_file_gamma_of_what_is_not_a_png_or_is_cut_short():
    whole = write_png16(Path("/dev/null"), np.zeros((1, 1, 3), np.uint16), [0], [SRGB], write=False)
    assert png_file_gamma(io.BytesIO(b"not a png")) is None
    assert png_file_gamma(io.BytesIO(whole[:46])) == 45455  # signature, IHDR and sRGB: 8 + 25 + 13
    assert png_file_gamma(io.BytesIO(whole[:45])) is None  # the sRGB chunk's CRC is cut


_gamma_values = st.one_of(
    st.integers(0, 700_000_000), st.integers(40_000, 50_000), st.sampled_from([15, 16, 45455, 625_000_001])
)
_chunk = st.one_of(
    st.builds(gama, _gamma_values),
    st.builds(lambda intent: (b"sRGB", bytes([intent])), st.integers(0, 5)),
    st.sampled_from(
        [(b"sRGB", b"\0\0"), (b"gAMA", b"\0\1\0\0\0"), (b"PLTE", bytes(range(6))), (b"tEXt", b"a\0b")]
    ),
)


def _one_plte(chunks: list[tuple[bytes, ...]]) -> list[tuple[bytes, ...]]:
    """A second PLTE is a fatal error to libpng (the oracle would abort the test run)."""
    first = next((i for i, c in enumerate(chunks) if c[0] == b"PLTE"), len(chunks))
    return [c for i, c in enumerate(chunks) if c[0] != b"PLTE" or i == first]


# (Chunks with a bad CRC are left out: libpng drops them, Pillow refuses the file, which mtldata
# reports as an undecodable image.)
@needs_libpng
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(_chunk, max_size=4).map(_one_plte), red=st.integers(0, 65535), green=st.integers(0, 65535)
)
def test_any_order_of_gamma_chunks_converts_to_gray_as_libpng_does(tmp_path, chunks, red, green):
    samples = np.array([[[red, green, 0], [0, red, green], [green, green, green]]], np.uint16)
    path = write_png16(tmp_path / "x.png", samples, [0], chunks)
    np.testing.assert_array_equal(load_image(path, gray=True), libpng_gray(LIBPNG, path))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def write_png16(
    path: Path, samples: np.ndarray, filters: list[int], chunks: list[tuple[bytes, ...]], write: bool = True
) -> Any:
    """A 16-bit RGB or RGBA PNG written byte by byte, each row with the given filter type (0-4), and
    `chunks` (kind, body[, CRC as written]) after IHDR; its path, or its bytes when not `write`."""
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

    colour = 2 if channels == 3 else 6
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    extra = b"".join(png_chunk(*c) for c in chunks)
    idat = png_chunk(b"IDAT", zlib.compress(b"".join(body)))
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + idat + png_chunk(b"IEND", b"")
    if not write:
        return png
    path.write_bytes(png)
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
