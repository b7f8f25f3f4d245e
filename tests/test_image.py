"""Tests of mtldata.storage.image: decode / resize / encode against real Caffe output and synthetic files."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import CAFFE_FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

import mtldata.storage.image as image_module
from mtldata.caffe.datum import parse_datum
from mtldata.storage.image import (
    ImageDecodeError,
    ImageOptions,
    caffe_resize,
    decode_bytes,
    encode_image,
    load_image,
    prepare_image,
    to_chw,
)

FIXTURES = CAFFE_FIXTURES

# convert_imageset flags of each golden DB (see the fixture README, section 3).
DB_OPTIONS = {
    "raw": ImageOptions(),
    "resized": ImageOptions(resize_width=24, resize_height=24),
    "gray_resized": ImageOptions(gray=True, resize_width=20, resize_height=16),
    "encoded": ImageOptions(encoded=True),
    "encoded_jpg": ImageOptions(encoded=True, encode_type="jpg"),
}


# --------------------------------------------------------------------------------------------------
# helpers


def fixture_dir() -> Path:
    if not (FIXTURES / "lmdb").is_dir():
        pytest.skip(f"Caffe golden fixtures not found at {FIXTURES}")
    return FIXTURES


def golden_records(db: str) -> list[tuple[str, Path, object]]:
    """(key, source image, parsed Datum) for every record of a fixture LMDB, in key order."""
    root = fixture_dir()
    env = lmdb.open(str(root / "lmdb" / db), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            items = [(k.decode(), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()
    assert items, f"{db} is empty"
    return [(key, root / "images" / key.split("_", 1)[1], parse_datum(value)) for key, value in items]


def pixels(payload) -> np.ndarray:
    c, h, w = payload.shape
    return np.frombuffer(payload.data, np.uint8).reshape(c, h, w)


def datum_pixels(d) -> np.ndarray:
    return np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB content (gradients + a sinusoid + a little noise), uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        a, b, f = rng.uniform(-1, 1, 3)
        v = 128 + 60 * (a * x / max(w, 1) + b * y / max(h, 1)) + 40 * np.sin(f * 6 * x / max(w, 1) + c)
        chans.append(v + rng.normal(0, 4, (h, w)))
    return np.clip(np.stack(chans, axis=2), 0, 255).round().astype(np.uint8)


def save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def jpeg_bytes(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=kw.pop("quality", 90), **kw)
    return buf.getvalue()


def reference_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Plain float half-pixel bilinear with edge clamping (no antialiasing), rounded to uint8."""
    a = img.astype(np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    sh, sw = a.shape[:2]

    def taps(dst: int, src: int):
        f = (np.arange(dst) + 0.5) * (src / dst) - 0.5
        i = np.floor(f).astype(int)
        t = f - i
        t[i < 0] = 0
        t[i >= src - 1] = 0
        i = np.clip(i, 0, src - 1)
        return i, np.minimum(i + 1, src - 1), t

    x0, x1, tx = taps(width, sw)
    y0, y1, ty = taps(height, sh)
    rows = a[y0] * (1 - ty)[:, None, None] + a[y1] * ty[:, None, None]
    out = rows[:, x0] * (1 - tx)[None, :, None] + rows[:, x1] * tx[None, :, None]
    out = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out[:, :, 0] if img.ndim == 2 else out


def opencv_linear_loops(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel-by-pixel transcription of OpenCV's 8-bit INTER_LINEAR (slow; small images only)."""
    a = img if img.ndim == 3 else img[:, :, None]
    sh, sw, cn = a.shape
    if (sw, sh) == (width, height):
        return img.copy()
    out = np.zeros((height, width, cn), np.uint8)
    if sw == 2 * width and sh == 2 * height:  # INTER_AREA fast path
        for y in range(height):
            for x in range(width):
                for c in range(cn):
                    s = sum(int(a[2 * y + i, 2 * x + j, c]) for i in (0, 1) for j in (0, 1))
                    out[y, x, c] = (s + 2) >> 2 if cn in (1, 3, 4) else round(s / 4)
        return out if img.ndim == 3 else out[:, :, 0]

    def coef(d: int, dst: int, src: int, clamp_fraction: bool):
        f = np.float32((d + 0.5) * (1.0 / (dst / src)) - 0.5)
        s = math.floor(f)
        f = np.float32(f - np.float32(s))
        if clamp_fraction and (s < 0 or s >= src - 1):
            f = np.float32(0)
        w0 = int(np.rint((np.float32(1) - f) * np.float32(2048)))
        w1 = int(np.rint(f * np.float32(2048)))
        return min(max(s, 0), src - 1), min(max(s + 1, 0), src - 1), w0, w1

    xs = [coef(x, width, sw, True) for x in range(width)]
    for y in range(height):
        r0, r1, b0, b1 = coef(y, height, sh, False)
        for x, (i0, i1, a0, a1) in enumerate(xs):
            for c in range(cn):
                s0 = int(a[r0, i0, c]) * a0 + int(a[r0, i1, c]) * a1
                s1 = int(a[r1, i0, c]) * a0 + int(a[r1, i1, c]) * a1
                v = (((s0 >> 4) * b0) >> 16) + (((s1 >> 4) * b1) >> 16)
                out[y, x, c] = min(255, max(0, (v + 2) >> 2))
    return out if img.ndim == 3 else out[:, :, 0]


# --------------------------------------------------------------------------------------------------
# golden fixtures (real convert_imageset output)


def test_raw_db_is_byte_identical():
    for key, src, d in golden_records("raw"):
        p = prepare_image(src, DB_OPTIONS["raw"])
        assert not p.encoded and p.format == "raw"
        assert p.shape == (d.channels, d.height, d.width), key
        assert p.data == d.data, key


@pytest.mark.parametrize("db", ["resized", "gray_resized"])
def test_resized_dbs_within_one_level(db, record_property):
    exact = total = 0
    for key, src, d in golden_records(db):
        p = prepare_image(src, DB_OPTIONS[db])
        assert p.shape == (d.channels, d.height, d.width), key
        diff = np.abs(pixels(p).astype(int) - datum_pixels(d).astype(int))
        assert diff.max() <= 1, f"{key}: max diff {diff.max()}"
        exact += int((diff == 0).sum())
        total += diff.size
    record_property(f"{db}_exact_pixels", f"{exact}/{total}")
    # The contract is +-1; the implementation reproduces OpenCV bit for bit on these images.
    assert exact == total, f"{db}: only {exact}/{total} pixels exact"


def test_encoded_db_stores_files_verbatim():
    for key, src, d in golden_records("encoded"):
        p = prepare_image(src, DB_OPTIONS["encoded"])
        assert p.encoded and d.encoded
        assert p.data == d.data == src.read_bytes(), key
        assert p.format == ("png" if src.suffix == ".png" else "jpeg")


def test_encoded_jpg_db(record_property):
    reencoded = identical = 0
    for key, src, d in golden_records("encoded_jpg"):
        p = prepare_image(src, DB_OPTIONS["encoded_jpg"])
        assert p.encoded and d.encoded and p.format == "jpeg"
        if src.suffix == ".jpg":
            assert p.data == d.data == src.read_bytes(), key
            continue
        reencoded += 1
        assert p.data[:3] == b"\xff\xd8\xff"
        ours = decode_bytes(p.data).astype(int)
        caffe = decode_bytes(d.data).astype(int)
        assert ours.shape == caffe.shape == (32, 32, 3)
        assert np.abs(ours - caffe).mean() < 0.5, key
        identical += p.data == d.data  # same libjpeg settings as OpenCV: usually the very same bytes
        # and the re-encoded image is close to the (alpha-dropped) source pixels
        assert np.abs(ours - load_image(src).astype(int)).mean() < 8, key
    assert reencoded == 2
    record_property("reencoded_jpeg_bytes_identical", f"{identical}/{reencoded}")


def test_decode_bytes_of_golden_encoded_records_matches_raw():
    raw = {key: datum_pixels(d) for key, _, d in golden_records("raw")}
    for key, _, d in golden_records("encoded"):
        assert np.array_equal(to_chw(decode_bytes(d.data)), raw[key]), key


# --------------------------------------------------------------------------------------------------
# synthetic files: decoding rules


def test_rgba_png_drops_alpha(tmp_path):
    rgb = smooth_rgb(12, 10)
    alpha = np.linspace(0, 255, 10, dtype=np.uint8)[None, :].repeat(12, 0)
    alpha[:, :3] = 0
    path = save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), tmp_path / "a.png")
    assert np.array_equal(load_image(path), rgb[:, :, ::-1])


def test_la_png_drops_alpha(tmp_path):
    g = smooth_rgb(8, 9)[:, :, 0]
    path = save(Image.fromarray(np.dstack([g, 255 - g]), "LA"), tmp_path / "la.png")
    assert np.array_equal(load_image(path), np.repeat(g[:, :, None], 3, 2))
    assert np.array_equal(load_image(path, gray=True), g)


def test_palette_png(tmp_path):
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (9, 11), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette.ravel().tolist())
    path = save(im, tmp_path / "p.png")
    rgb = palette[idx]
    assert np.array_equal(load_image(path), rgb[:, :, ::-1])
    # gray: libpng's rgb_to_gray on the expanded palette
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    expect = (9797 * r + 19234 * g + 3737 * b) >> 15
    assert np.array_equal(load_image(path, gray=True), expect.astype(np.uint8))


def test_rgb_png_gray_uses_libpng_formula(tmp_path):
    rgb = smooth_rgb(10, 13, seed=4)
    rgb[0, 0] = (77, 77, 77)  # gray pixels keep their value
    path = save(Image.fromarray(rgb), tmp_path / "c.png")
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    expect = ((9797 * r + 19234 * g + 3737 * b) >> 15).astype(np.uint8)
    got = load_image(path, gray=True)
    assert got.shape == (10, 13) and got.dtype == np.uint8
    assert np.array_equal(got, expect)
    assert got[0, 0] == 77


def test_16bit_gray_png_keeps_high_byte(tmp_path):
    v = np.array([[0, 255, 256, 511], [4095, 32768, 65280, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(v), tmp_path / "g16.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    hi = (v >> 8).astype(np.uint8)
    assert np.array_equal(load_image(path, gray=True), hi)
    assert np.array_equal(load_image(path), np.repeat(hi[:, :, None], 3, 2))


def test_1bit_png_is_0_or_255(tmp_path):
    bits = np.random.default_rng(2).random((7, 6)) > 0.5
    path = save(Image.fromarray(bits), tmp_path / "b.png")
    expect = np.where(bits, 255, 0).astype(np.uint8)
    assert np.array_equal(load_image(path, gray=True), expect)
    assert np.array_equal(load_image(path), np.repeat(expect[:, :, None], 3, 2))


def test_cmyk_jpeg_uses_pillow_rgb_conversion(tmp_path):
    cmyk = np.random.default_rng(3).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    path = save(Image.fromarray(cmyk, "CMYK"), tmp_path / "k.jpg", quality=95)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
        expect = np.asarray(im.convert("RGB"))[:, :, ::-1]
    got = load_image(path)
    assert np.array_equal(got, expect)
    assert np.array_equal(decode_bytes(path.read_bytes()), got)
    assert load_image(path, gray=True).shape == (16, 16)


def test_exif_orientation_is_applied(tmp_path):
    rgb = smooth_rgb(20, 32, seed=5)  # stored 32 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(Image.fromarray(rgb), tmp_path / "rot.jpg", exif=exif, quality=92)
    with Image.open(path) as im:
        expect = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[:, :, ::-1]
    got = load_image(path)
    assert got.shape == (32, 20, 3)
    assert np.array_equal(got, expect)
    assert np.array_equal(decode_bytes(path.read_bytes()), got)
    assert load_image(path, gray=True).shape == (32, 20)
    p = prepare_image(path, ImageOptions(resize_width=10, resize_height=16))
    assert p.shape == (3, 16, 10)


def test_gray_jpeg_is_libjpeg_luma_plane(tmp_path):
    path = tmp_path / "c.jpg"
    path.write_bytes(jpeg_bytes(smooth_rgb(16, 24, seed=6)))
    with Image.open(path) as im:
        im.draft("L", im.size)
        luma = np.asarray(im.convert("L"))
    assert np.array_equal(load_image(path, gray=True), luma)


def test_truncated_jpeg_raises(tmp_path):
    data = jpeg_bytes(smooth_rgb(64, 64, seed=7))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="(?i)truncat|corrupt"):
        load_image(path)
    with pytest.raises(ImageDecodeError):
        prepare_image(path, ImageOptions())
    with pytest.raises(ImageDecodeError):
        decode_bytes(path.read_bytes())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_named_jpg_raises(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        load_image(path)
    with pytest.raises(ImageDecodeError):
        prepare_image(path, ImageOptions(encoded=True))
    with pytest.raises(ImageDecodeError):
        decode_bytes(path.read_bytes())


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="file not found"):
        prepare_image(str(tmp_path / "nope.png"), ImageOptions(encoded=True))


def test_directory_raises(tmp_path):
    with pytest.raises(ImageDecodeError):
        load_image(tmp_path)


# --------------------------------------------------------------------------------------------------
# decode_bytes: simplejpeg and Pillow agree


def _decode_without_simplejpeg(monkeypatch, data: bytes, gray: bool) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "simplejpeg", None)  # makes `import simplejpeg` raise ImportError
        return decode_bytes(data, gray=gray)


@pytest.mark.parametrize("gray", [False, True])
def test_decode_bytes_simplejpeg_equals_pillow(tmp_path, monkeypatch, gray):
    pytest.importorskip("simplejpeg")
    rgb = smooth_rgb(37, 29, seed=8)
    variants = {
        "420.jpg": jpeg_bytes(rgb),
        "444.jpg": jpeg_bytes(rgb, subsampling=0),
        "422.jpg": jpeg_bytes(rgb, subsampling=1),
        "progressive.jpg": jpeg_bytes(rgb, progressive=True),
        "gray.jpg": jpeg_bytes(rgb[:, :, 1]),
    }
    root = FIXTURES / "images"
    if root.is_dir():
        variants.update({p.name: p.read_bytes() for p in sorted(root.rglob("*.jpg"))})
    for name, data in variants.items():
        fast = decode_bytes(data, gray=gray)
        slow = _decode_without_simplejpeg(monkeypatch, data, gray)
        assert fast.dtype == slow.dtype == np.uint8
        assert np.array_equal(fast, slow), name
        path = tmp_path / name
        path.write_bytes(data)
        assert np.array_equal(fast, load_image(path, gray=gray)), name


@pytest.mark.parametrize("gray", [False, True])
def test_decode_bytes_into_out_writes_the_same_pixels_there(gray):
    pytest.importorskip("simplejpeg")
    rgb = smooth_rgb(37, 29, seed=11)
    data = jpeg_bytes(rgb)
    want = decode_bytes(data, gray=gray)
    out = np.zeros(want.shape, np.uint8)
    got = decode_bytes(data, gray=gray, out=out)
    assert got is out and np.array_equal(out, want)
    # a place of another shape, dtype or layout is not used: a new array comes back, out untouched
    for wrong in (np.zeros((29, 37, 3) if not gray else (29, 37), np.uint8), want.astype(np.int16)):
        before = wrong.copy()
        again = decode_bytes(data, gray=gray, out=wrong)
        assert again is not wrong and np.array_equal(again, want) and np.array_equal(wrong, before)
    if not gray:
        strided = np.zeros((37, 29, 6), np.uint8)[:, :, ::2]  # right shape, not contiguous
        assert decode_bytes(data, out=strided) is not strided and not strided.any()


def test_decode_bytes_into_out_falls_back_for_png(tmp_path):
    rgb = smooth_rgb(5, 7, seed=9)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    out = np.zeros((5, 7, 3), np.uint8)
    got = decode_bytes(buf.getvalue(), out=out)
    assert got is not out and np.array_equal(got, rgb[:, :, ::-1])


def test_decode_bytes_png(tmp_path):
    rgb = smooth_rgb(5, 7, seed=9)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    assert np.array_equal(decode_bytes(buf.getvalue()), rgb[:, :, ::-1])
    assert decode_bytes(buf.getvalue(), gray=True).shape == (5, 7)


def test_decode_bytes_truncated_raises_without_simplejpeg(monkeypatch):
    data = jpeg_bytes(smooth_rgb(64, 64, seed=10))
    with pytest.raises(ImageDecodeError):
        _decode_without_simplejpeg(monkeypatch, data[: len(data) // 2], False)


def test_decode_bytes_recoverable_jpeg_warning_matches_load_image(tmp_path):
    data = jpeg_bytes(smooth_rgb(20, 24, seed=16))
    assert data[2:4] == b"\xff\xe0"  # JFIF APP0 segment
    end = 4 + int.from_bytes(data[4:6], "big")
    junk = data[:end] + b"\x12\x34" + data[end:]  # libjpeg: "2 extraneous bytes before marker"
    path = tmp_path / "junk.jpg"
    path.write_bytes(junk)
    expect = load_image(path)
    assert np.array_equal(decode_bytes(junk), expect)
    assert np.array_equal(decode_bytes(junk), decode_bytes(data))


# --------------------------------------------------------------------------------------------------
# caffe_resize


@settings(max_examples=150, deadline=None, database=None)
@given(
    sh=st.integers(1, 40),
    sw=st.integers(1, 40),
    dh=st.integers(1, 40),
    dw=st.integers(1, 40),
    channels=st.sampled_from([0, 1, 3, 4]),
    seed=st.integers(0, 2**32 - 1),
    smooth=st.booleans(),
)
def test_caffe_resize_matches_float_bilinear(sh, sw, dh, dw, channels, seed, smooth):
    rng = np.random.default_rng(seed)
    shape = (sh, sw) if channels == 0 else (sh, sw, channels)
    if smooth:
        img = np.clip(rng.normal(128, 20, shape).cumsum(axis=1) / np.sqrt(sw), 0, 255).astype(np.uint8)
    else:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
    out = caffe_resize(img, dw, dh)
    assert out.dtype == np.uint8
    assert out.shape == ((dh, dw) if channels == 0 else (dh, dw, channels))
    ref = reference_bilinear(img, dw, dh)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    same = caffe_resize(img, sw, sh)
    assert np.array_equal(same, img)


@settings(max_examples=60, deadline=None, database=None)
@given(
    sh=st.integers(1, 9),
    sw=st.integers(1, 9),
    dh=st.integers(1, 12),
    dw=st.integers(1, 12),
    channels=st.sampled_from([0, 1, 2, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_caffe_resize_equals_pixel_loop_transcription(sh, sw, dh, dw, channels, seed):
    shape = (sh, sw) if channels == 0 else (sh, sw, channels)
    img = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(caffe_resize(img, dw, dh), opencv_linear_loops(img, dw, dh))


@settings(max_examples=60, deadline=None, database=None)
@given(
    sh=st.integers(1, 30),
    sw=st.integers(1, 9),
    dh=st.integers(1, 30),
    dw=st.integers(1, 9),
    channels=st.sampled_from([0, 1, 3]),
    block=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_caffe_resize_in_blocks_of_rows_equals_the_pixel_loop_transcription(
    sh, sw, dh, dw, channels, block, seed
):
    # blocks of one output row and up: every block boundary the row taps can meet
    shape = (sh, sw) if channels == 0 else (sh, sw, channels)
    img = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(image_module, "_RESIZE_BLOCK", block)
        assert np.array_equal(caffe_resize(img, dw, dh), opencv_linear_loops(img, dw, dh))


def test_caffe_resize_exact_2x_is_area_average():
    img = np.random.default_rng(11).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    out = caffe_resize(img, 5, 4)
    a = img.astype(int)
    expect = (a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2] + 2) >> 2
    assert np.array_equal(out, expect.astype(np.uint8))


def test_caffe_resize_constant_image_stays_constant():
    img = np.full((13, 17, 3), 201, np.uint8)
    for w, h in [(5, 7), (40, 3), (17, 13), (1, 1), (100, 90)]:
        assert (caffe_resize(img, w, h) == 201).all()


def test_caffe_resize_rejects_bad_input():
    with pytest.raises(ValueError):
        caffe_resize(np.zeros((4, 4), np.float32), 2, 2)
    with pytest.raises(ValueError):
        caffe_resize(np.zeros((4, 4), np.uint8), 0, 2)


def test_caffe_resize_speed():
    import time

    img = np.random.default_rng(12).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    caffe_resize(img, 224, 224)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        caffe_resize(img, 224, 224)
        best = min(best, time.perf_counter() - t)
    assert best < 0.010, f"256x256x3 -> 224x224 took {best * 1e3:.2f} ms"


# --------------------------------------------------------------------------------------------------
# prepare_image rules (convert_imageset's ReadImageToDatum)


@pytest.fixture
def jpg_file(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_bytes(smooth_rgb(30, 40, seed=13)))
    return path


def test_prepare_raw_and_resize_always_applied(jpg_file):
    img = load_image(jpg_file)
    p = prepare_image(jpg_file, ImageOptions())
    assert (p.encoded, p.format, p.shape) == (False, "raw", (3, 30, 40))
    assert p.data == to_chw(img).tobytes()
    same = prepare_image(jpg_file, ImageOptions(resize_width=40, resize_height=30))
    assert same.data == p.data
    r = prepare_image(jpg_file, ImageOptions(resize_width=20, resize_height=10, gray=True))
    assert r.shape == (1, 10, 20)
    assert r.data == caffe_resize(load_image(jpg_file, gray=True), 20, 10).tobytes()


def test_prepare_resize_needs_both_sizes(jpg_file):
    p = prepare_image(jpg_file, ImageOptions(resize_width=20))
    assert p.shape == (3, 30, 40)


def test_prepare_encoded_gray_quirk_stores_colour_file(jpg_file):
    p = prepare_image(jpg_file, ImageOptions(gray=True, encoded=True))
    assert p.encoded and p.format == "jpeg"
    assert p.data == jpg_file.read_bytes()  # verbatim, although it is a colour JPEG
    assert p.shape == (1, 30, 40)


def test_prepare_encoded_reencodes_when_resized(jpg_file):
    p = prepare_image(jpg_file, ImageOptions(encoded=True, resize_width=20, resize_height=15))
    assert p.encoded and p.format == "jpeg" and p.shape == (3, 15, 20)
    assert p.data != jpg_file.read_bytes()
    back = decode_bytes(p.data)
    expect = caffe_resize(load_image(jpg_file), 20, 15)
    assert np.abs(back.astype(int) - expect.astype(int)).mean() < 2


def test_prepare_encoded_only_one_size_is_not_verbatim(jpg_file):
    # Caffe stores the file verbatim only when both sizes are 0 (`!height && !width`).
    p = prepare_image(jpg_file, ImageOptions(encoded=True, resize_height=15))
    assert p.shape == (3, 30, 40)
    assert p.data != jpg_file.read_bytes() and p.data[:3] == b"\xff\xd8\xff"


def test_prepare_encode_type_png_from_jpg_is_lossless(jpg_file):
    p = prepare_image(jpg_file, ImageOptions(encode_type="png"))
    assert p.encoded and p.format == "png"
    assert p.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(decode_bytes(p.data), load_image(jpg_file))


def test_prepare_jpg_jpeg_extension_matching(tmp_path, jpg_file):
    jpeg = tmp_path / "x.JPEG"
    jpeg.write_bytes(jpg_file.read_bytes())
    assert prepare_image(jpeg, ImageOptions(encode_type="jpg")).data == jpeg.read_bytes()
    assert prepare_image(jpeg, ImageOptions(encoded=True)).data == jpeg.read_bytes()
    # Caffe's matchExt only maps encoding "jpg" to extension "jpeg", not the reverse.
    other = prepare_image(jpg_file, ImageOptions(encode_type="jpeg"))
    assert other.format == "jpeg" and other.data != jpg_file.read_bytes()


def test_prepare_encoded_unsupported_reencode_raises(tmp_path, jpg_file):
    with pytest.raises(ImageDecodeError, match="cannot encode"):
        prepare_image(jpg_file, ImageOptions(encode_type="bmp"))


def test_prepare_antialias_mode_uses_draft_and_stays_close(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    calls = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((mode, size, self.size))
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    rgb = smooth_rgb(256, 320, seed=14)
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(rgb, quality=95))

    caffe = prepare_image(path, ImageOptions(resize_width=40, resize_height=32))
    assert calls == []  # caffe mode never lets libjpeg downscale
    opts = ImageOptions(resize_width=40, resize_height=32, resize_mode="antialias")
    p = prepare_image(path, opts)
    assert calls == [("RGB", (80, 64), (320, 256))]
    assert p.shape == caffe.shape == (3, 32, 40)
    full = np.asarray(Image.fromarray(rgb).resize((40, 32), Image.Resampling.BILINEAR))[:, :, ::-1]
    assert np.abs(pixels(p).astype(int) - to_chw(full).astype(int)).mean() < 3
    assert np.abs(pixels(p).astype(int) - pixels(caffe).astype(int)).mean() < 6

    calls.clear()
    g = prepare_image(
        path, ImageOptions(gray=True, resize_width=40, resize_height=32, resize_mode="antialias")
    )
    assert g.shape == (1, 32, 40)
    assert calls == [("L", (80, 64), (320, 256))]
    calls.clear()
    caffe_gray = prepare_image(path, ImageOptions(gray=True, resize_width=40, resize_height=32))
    # caffe gray: the luma plane at full size only; simplejpeg (when installed) decodes it without
    # Pillow's draft, and must give the same pixels as Pillow's luma plane.
    assert calls in ([], [("L", (320, 256), (320, 256))])
    luma = caffe_resize(load_image(path, gray=True), 40, 32)
    assert caffe_gray.data == to_chw(luma).tobytes()


def test_image_options_validation():
    with pytest.raises(ValueError):
        ImageOptions(resize_mode="nearest")
    with pytest.raises(ValueError):
        ImageOptions(resize_width=-1)


# --------------------------------------------------------------------------------------------------
# encode_image / to_chw


def test_encode_image_roundtrips():
    bgr = smooth_rgb(24, 18, seed=15)
    png = encode_image(bgr, "png")
    assert np.array_equal(decode_bytes(png), bgr)
    gray = bgr[:, :, 0].copy()
    assert np.array_equal(decode_bytes(encode_image(gray, "png"), gray=True), gray)
    for fmt in ("jpg", "JPEG", ".jpg"):
        jpg = encode_image(bgr, fmt)
        assert jpg[:3] == b"\xff\xd8\xff"
        assert np.abs(decode_bytes(jpg).astype(int) - bgr.astype(int)).mean() < 3
    with pytest.raises(ValueError):
        encode_image(bgr, "gif")


def test_to_chw():
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    chw = to_chw(img)
    assert chw.shape == (3, 2, 4) and chw.flags.c_contiguous
    assert np.array_equal(chw[1], img[:, :, 1])
    assert to_chw(img[:, :, 0]).shape == (1, 2, 4)


def test_app1_scan_sends_every_exif_or_xmp_jpeg_to_pillow(tmp_path):
    from mtldata.storage.image import _has_app1

    rgb = np.random.default_rng(3).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)

    def saved(**kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "JPEG", **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    assert not _has_app1(saved())
    assert not _has_app1(saved(progressive=True))
    assert _has_app1(saved(exif=exif.tobytes()))
    # An XMP APP1 segment after the JFIF APP0, as Pillow >= 11 writes with xmp= (built by hand here,
    # so the test runs on the Pillow 10 pyproject allows).
    plain = saved()
    app0_end = 4 + int.from_bytes(plain[4:6], "big")
    xmp = b"http://ns.adobe.com/xap/1.0/\x00" + b'<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta>'
    app1 = b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp
    assert _has_app1(plain[:app0_end] + app1 + plain[app0_end:])
    assert _has_app1(saved()[:5])  # a header cut short: unsure, so Pillow decides
    # An EXIF-rotated file decodes rotated through decode_bytes, as through load_image.
    path = tmp_path / "rotated.jpg"
    path.write_bytes(saved(exif=exif.tobytes()))
    np.testing.assert_array_equal(decode_bytes(path.read_bytes()), load_image(path))
    assert decode_bytes(path.read_bytes()).shape == (32, 24, 3)


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize(
    ("size", "target", "reduces"),
    [((320, 256), (100, 80), False), ((320, 256), (81, 65), False), ((320, 256), (80, 64), True)],
)
def test_antialias_decodes_with_simplejpeg_where_the_draft_cannot_shrink_with_the_same_pixels(
    tmp_path, monkeypatch, gray, size, target, reduces
):
    from PIL import JpegImagePlugin

    import mtldata.storage.image as image_module

    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes(smooth_rgb(size[1], size[0], seed=3), quality=90))
    opts = ImageOptions(gray=gray, resize_width=target[0], resize_height=target[1], resize_mode="antialias")
    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, req):
        drafts.append(req)
        return real_draft(self, mode, req)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fast = prepare_image(path, opts)
    assert bool(drafts) == reduces  # Pillow (and its draft) only where the draft may shrink the image
    monkeypatch.setattr(image_module, "_draft_may_reduce", lambda data, draft: True)
    assert prepare_image(path, opts) == fast  # the Pillow-with-draft path: the same bytes
