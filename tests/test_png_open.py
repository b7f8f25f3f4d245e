"""A PNG buffer is opened with Pillow's PNG plugin directly (`image._open_png_bytes`), skipping
Image.open's probing: every buffer, intact or damaged, must give what Image.open's path gives."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from conftest import damage, png_claiming
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from mtldata.storage import image as image_mod
from mtldata.storage.image import ImageDecodeError, decode_bytes


def _png(mode: str, size: tuple[int, int] = (13, 9), seed: int = 0, **save: object) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        pixels = rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16)
        im = Image.fromarray(pixels)
    else:
        bands = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1}[mode]
        pixels = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
        im = Image.fromarray(pixels[..., 0] if bands == 1 else pixels, "L" if mode == "P" else mode)
        if mode == "P":
            im = im.convert("P")
    out = io.BytesIO()
    im.save(out, "PNG", **save)
    return out.getvalue()


def _text_chunk() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a digit")
    return info


CORPUS = (
    _png("L"),
    _png("RGB"),
    _png("RGBA"),
    _png("LA"),
    _png("P"),
    _png("I;16"),
    _png("RGB", optimize=True),
    _png("L", pnginfo=_text_chunk()),  # an ancillary chunk before IDAT
)


def _outcome(data: bytes, gray: bool, direct: bool, monkeypatch, max_pixels: int | None = None) -> tuple:
    """decode_bytes' pixels (bytes, shape) or its one-line refusal, with or without the direct open."""
    if not direct:
        monkeypatch.setattr(image_mod, "_open_png_bytes", lambda *args: None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = decode_bytes(data, gray=gray, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return ("refused", str(exc))
    finally:
        monkeypatch.undo()
    return ("decoded", pixels.tobytes(), pixels.shape, [str(w.message) for w in caught])


@settings(max_examples=300, deadline=None, database=None)
@given(
    index=st.integers(0, len(CORPUS) - 1),
    how=st.integers(0, 3),
    where=st.floats(0, 1),
    value=st.integers(0, 255),
    count=st.integers(1, 12),
    gray=st.booleans(),
)
def test_damaged_pngs_give_what_image_open_gives(monkeypatch_module, index, how, where, value, count, gray):
    data = damage(CORPUS[index], how, where, value, count, keep=8)  # keep the PNG signature
    direct = _outcome(data, gray, True, monkeypatch_module)
    assert direct == _outcome(data, gray, False, monkeypatch_module)


@pytest.mark.parametrize("data", CORPUS, ids=range(len(CORPUS)))
@pytest.mark.parametrize("gray", [False, True])
def test_intact_pngs_are_opened_directly_with_the_same_pixels(monkeypatch, data, gray):
    opened = []
    real = image_mod._open_png_bytes

    def spy(*args):
        im = real(*args)
        opened.append(im is not None)
        return im

    monkeypatch.setattr(image_mod, "_open_png_bytes", spy)
    direct = _outcome(data, gray, True, monkeypatch)  # undoes the spy afterwards
    assert opened == [True]
    assert direct == _outcome(data, gray, False, monkeypatch)
    assert direct[0] == "decoded"


def test_pillows_pixel_limits_still_warn_and_refuse(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warned = _outcome(_png("L", size=(40, 40)), False, True, monkeypatch)  # 1,600 pixels: a warning
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert warned == _outcome(_png("L", size=(40, 40)), False, False, monkeypatch)
    assert warned[0] == "decoded" and any("decompression bomb" in w for w in warned[3])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    refused = _outcome(png_claiming(50, 50), False, True, monkeypatch)  # 2,500 > 2 x 1,000
    assert refused[0] == "refused" and "image too large" in refused[1]


def test_our_pixel_limit_refuses_from_the_header():
    with pytest.raises(ImageDecodeError, match="over the limit of 1,000"):
        decode_bytes(png_claiming(100_000, 100_000), max_pixels=1000)
