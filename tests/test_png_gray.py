"""`--gray` on colour PNGs against the system's libpng 1.6 driven with OpenCV's calls (tests/libpng_oracle.py).

OpenCV's IMREAD_GRAYSCALE asks libpng for png_set_rgb_to_gray(0.299, 0.587); libpng converts in
linear light when the file states a gamma (gAMA or sRGB). mtldata must give the same bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from libpng_oracle import libpng_gray, load_libpng
from PIL import Image, PngImagePlugin

from mtldata.storage.image import load_image, png_file_gamma

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
