"""Decoded pixels into CxHxW planes: the BGRX path the converter's workers take gives the same bytes as BGR."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mtldata.storage.image import chw_bytes, decode_bytes, to_chw
from mtldata.storage.planes import DecodeBuffer, planar_shape, planes_into

pytest.importorskip("simplejpeg", reason="the BGRX decode path is simplejpeg's")


def _jpeg(pixels: np.ndarray, subsampling: int, quality: int, progressive: bool) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer, "JPEG", quality=quality, subsampling=subsampling, progressive=progressive
    )
    return buffer.getvalue()


def _planes(pixels: np.ndarray) -> np.ndarray:
    out = np.full(planar_shape(pixels), 7, np.uint8)
    planes_into(pixels, out)
    return out


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 48),
    width=st.integers(1, 48),
    seed=st.integers(0, 2**32 - 1),
    subsampling=st.sampled_from([0, 1, 2]),  # 4:4:4, 4:2:2, 4:2:0
    quality=st.integers(30, 100),
    progressive=st.booleans(),
)
def test_bgrx_decode_split_into_planes_equals_the_bgr_transpose(
    height: int, width: int, seed: int, subsampling: int, quality: int, progressive: bool
) -> None:
    rng = np.random.default_rng(seed)
    data = _jpeg(rng.integers(0, 256, (height, width, 3), np.uint8), subsampling, quality, progressive)
    expected = to_chw(decode_bytes(data))
    buffer = DecodeBuffer()
    bgrx = decode_bytes(data, out=buffer)
    assert bgrx.shape == (height, width, 4) and bgrx.flags.c_contiguous  # the fast (cast) path
    assert np.array_equal(_planes(bgrx), expected)
    assert bytes(chw_bytes(bgrx)) == expected.tobytes()


def test_a_reused_buffer_gives_each_image_its_own_pixels() -> None:
    rng = np.random.default_rng(0)
    images = [
        _jpeg(rng.integers(0, 256, shape, np.uint8), 2, 90, False)
        for shape in [(40, 30, 3), (8, 9, 3), (40, 30, 3)]
    ]
    buffer = DecodeBuffer()
    for data in images:
        assert np.array_equal(_planes(decode_bytes(data, out=buffer)), to_chw(decode_bytes(data)))


def test_a_gray_decode_into_the_buffer_is_the_plain_gray_decode() -> None:
    data = _jpeg(np.random.default_rng(1).integers(0, 256, (17, 23, 3), np.uint8), 2, 90, False)
    gray = decode_bytes(data, gray=True, out=DecodeBuffer())
    assert gray.shape == (17, 23)
    assert np.array_equal(_planes(gray), decode_bytes(data, gray=True)[None])


def test_bgrx_splits_alike_wherever_it_lies_in_memory() -> None:
    rng = np.random.default_rng(2)
    bgrx = rng.integers(0, 256, (5, 6, 4), np.uint8)  # owns its memory: nothing after the last pixel
    expected = bgrx[:, :, :3].transpose(2, 0, 1)
    assert np.array_equal(_planes(bgrx), expected)
    offset = np.zeros(3 + bgrx.size, np.uint8)[3:].reshape(5, 6, 4)  # unaligned, not at its base's start
    offset[...] = bgrx
    assert np.array_equal(_planes(offset), expected)
    strided = np.zeros((5, 12, 4), np.uint8)[:, ::2]  # not contiguous: the transpose path
    strided[...] = bgrx
    assert np.array_equal(_planes(strided), expected)
    one = bgrx[:1, :1].copy()  # a single pixel: its G and R come from the last-pixel copy alone
    assert np.array_equal(_planes(one), one[:, :, :3].transpose(2, 0, 1))


def test_bgr_and_gray_arrays_are_transposed() -> None:
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, (4, 7, 3), np.uint8)
    assert np.array_equal(_planes(bgr), bgr.transpose(2, 0, 1))
    gray = rng.integers(0, 256, (4, 7), np.uint8)
    assert np.array_equal(_planes(gray), gray[None])


def test_the_buffer_gives_back_the_memory_of_a_much_larger_image() -> None:
    buffer = DecodeBuffer()
    big = buffer.bgrx(1000, 1000)
    small = buffer.bgrx(10, 10)
    assert big.base.size >= 4 * 1000 * 1000
    assert small.base.size < 4 * 1000 * 1000  # not kept for a hundredth of the size
    assert buffer.bgrx(9, 10).base is small.base  # while a smaller image fits, the memory is reused
