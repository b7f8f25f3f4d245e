"""An encoded conversion validates a JPEG it stores verbatim by decoding it at 1/8 scale
(`image.jpeg_decodes`): it must accept and refuse exactly the files a full decode does."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import damage
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mtldata.storage import image as image_mod
from mtldata.storage.image import ImageDecodeError, ImageOptions, prepare_image

pytest.importorskip("simplejpeg", reason="the 1/8-scale check needs simplejpeg (a core dependency)")


def _jpeg(kind: str, size: tuple[int, int] = (40, 24), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    pixels = np.clip(ramp + rng.normal(0, 30, ramp.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels)
    out = io.BytesIO()
    if kind == "gray":
        im.convert("L").save(out, "JPEG", quality=80)
    elif kind == "progressive":
        im.save(out, "JPEG", quality=85, progressive=True)
    elif kind == "444":
        im.save(out, "JPEG", quality=90, subsampling=0)
    else:
        im.save(out, "JPEG", quality=75)
    return out.getvalue()


KINDS = ("420", "444", "progressive", "gray")
CORPUS = {kind: _jpeg(kind) for kind in KINDS}


def _outcome(path, gray: bool, fast: bool, monkeypatch) -> tuple:
    """What prepare_image makes of `path` in an encoded conversion: the payload, or the refusal."""
    if not fast:
        monkeypatch.setattr(image_mod, "jpeg_decodes", lambda *args, **kwargs: None)
    try:
        payload = prepare_image(path, ImageOptions(encoded=True, gray=gray))
    except ImageDecodeError:
        return ("refused",)
    finally:
        monkeypatch.undo()
    return ("stored", bytes(payload.data), payload.shape, payload.format, payload.encoded)


@settings(max_examples=300, deadline=None, database=None)
@given(
    kind=st.sampled_from(KINDS),
    how=st.integers(0, 3),
    where=st.floats(0, 1),
    value=st.integers(0, 255),
    count=st.integers(1, 12),
    gray=st.booleans(),
)
def test_scaled_check_accepts_exactly_what_a_full_decode_accepts(
    tmp_path_factory, monkeypatch_module, kind, how, where, value, count, gray
):
    data = damage(CORPUS[kind], how, where, value, count)
    path = tmp_path_factory.mktemp("v") / "damaged.jpg"
    path.write_bytes(data)
    fast = _outcome(path, gray, True, monkeypatch_module)
    full = _outcome(path, gray, False, monkeypatch_module)
    assert fast == full


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gray", [False, True])
def test_intact_jpegs_are_stored_verbatim_with_their_decoded_shape(tmp_path, kind, gray):
    path = tmp_path / "ok.jpg"
    path.write_bytes(CORPUS[kind])
    payload = prepare_image(path, ImageOptions(encoded=True, gray=gray))
    assert bytes(payload.data) == CORPUS[kind]
    assert payload.shape == (1 if gray else 3, 24, 40)


def test_scaled_check_refuses_a_jpeg_whose_scan_is_damaged():
    data = bytearray(CORPUS["420"])
    scan = data.index(b"\xff\xda")
    data[scan + 40 : scan + 60] = b"\xff\xd0" * 10  # restart markers where entropy data belongs
    assert image_mod.jpeg_decodes(bytes(data), gray=False) is None
    assert image_mod.jpeg_decodes(CORPUS["420"], gray=False) == (3, 24, 40)


def test_scaled_check_leaves_exif_files_to_the_full_decode():
    im = Image.open(io.BytesIO(CORPUS["420"]))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the decoded shape is W x H
    out = io.BytesIO()
    im.save(out, "JPEG", exif=exif.tobytes())
    assert image_mod.jpeg_decodes(out.getvalue(), gray=False) is None
