"""`--validate header`'s JPEG end check (jpeg_markers.py): an EOI after the first scan, so that data
appended after the image passes and a file cut anywhere does not."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import write_image, write_list
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.convert.pipeline import read_errors as errors_of
from mtldata.storage.image import ImageDecodeError, ImageOptions, decode_bytes, prepare_image
from mtldata.storage.jpeg_markers import has_end_marker

HEADER = ImageOptions(encoded=True, validate="header")
DECODE = ImageOptions(encoded=True)


def jpeg(size=(40, 24), seed=0, **save) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85, **save)
    return out.getvalue()


def with_thumbnail(main: bytes) -> bytes:
    """`main` with an APP1 (EXIF-like) segment right after SOI holding a whole thumbnail JPEG."""
    payload = b"Exif\x00\x00" + jpeg((8, 8), seed=5)
    return main[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + main[2:]


KINDS = {
    "baseline": jpeg(),
    "progressive": jpeg(progressive=True),
    "restart markers": jpeg(restart_marker_blocks=2),
    "gray": jpeg(size=(33, 17)),
    "exif thumbnail": with_thumbnail(jpeg()),
    # fill bytes before a marker, and stray bytes after APP0 where a marker belongs (libjpeg skips both)
    "fill and stray bytes": jpeg()[:2] + b"\xff\xff" + jpeg()[2:20] + b"\x12\x34" + jpeg()[20:],
}
TRAILERS = {
    "a motion photo's video": b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4,
    "a second JPEG": jpeg((16, 16), seed=3),
    "bytes holding 0xFF 0xD9": b"maker trailer \xff\xd9 end",
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_whole_jpeg_has_its_end_marker(kind):
    data = KINDS[kind]
    decode_bytes(data)  # libjpeg reads it
    assert has_end_marker(data)


@pytest.mark.parametrize("kind", KINDS)
def test_a_jpeg_cut_anywhere_has_none(kind):
    data = KINDS[kind]
    assert not any(has_end_marker(data[:k]) for k in range(2, len(data)))


def test_a_cut_right_after_an_exif_thumbnail_is_seen_though_the_file_ends_with_an_eoi():
    data = KINDS["exif thumbnail"]
    thumbnail_end = data.index(b"\xff\xd9") + 2
    cut = data[:thumbnail_end]
    assert cut.endswith(b"\xff\xd9") and not has_end_marker(cut)


@pytest.mark.parametrize("kind", ["baseline", "progressive", "exif thumbnail"])
@pytest.mark.parametrize("trailer", TRAILERS)
def test_data_after_the_image_passes_as_libjpeg_reads_past_it(tmp_path, kind, trailer):
    data = KINDS[kind] + TRAILERS[trailer]
    path = tmp_path / "motion.jpg"
    path.write_bytes(data)
    stored = prepare_image(path, HEADER)
    assert stored == prepare_image(path, DECODE)  # a decode (libjpeg) accepts it too
    assert stored.data == data
    # cut inside the image, the trailer goes with it
    path.write_bytes(KINDS[kind][:-200])
    with pytest.raises(ImageDecodeError, match="no JPEG end-of-image marker after its scan"):
        prepare_image(path, HEADER)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    start=st.integers(0, 4000),
    size=st.integers(0, 64),
    fill=st.binary(min_size=0, max_size=64),
)
def test_damaged_jpegs_give_a_plain_answer(kind, start, size, fill):
    data = KINDS[kind]
    start = min(start, len(data))
    damaged = data[:start] + fill + data[start + size :]
    if damaged[:2] == b"\xff\xd8":
        assert has_end_marker(damaged) in (True, False)
        if start >= len(data) - 1:  # only bytes after (or in) the EOI changed
            assert has_end_marker(damaged) == (b"\xff\xd9" in damaged[len(data) - 400 :])


def test_a_header_conversion_keeps_a_motion_photo_and_skips_a_cut_jpeg(tmp_path):
    whole = write_image(tmp_path / "a.jpg", size=(30, 20)).read_bytes()
    (tmp_path / "motion.jpg").write_bytes(whole + TRAILERS["a motion photo's video"])
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    list_file = write_list(tmp_path / "list.txt", ["a.jpg 1", "motion.jpg 2", "cut.jpg 3"])
    result = convert(ConvertSpec(list_file=list_file, output=tmp_path / "out", image=HEADER, workers=1))
    assert result.count == 2
    [error] = errors_of(tmp_path / "out" / "errors.tsv")
    assert error.line == 3 and "no JPEG end-of-image marker after its scan" in error.reason
