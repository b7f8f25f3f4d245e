"""`--validate header`: the light check of files stored verbatim (header and end marker, and a
PNG's chunk CRCs; a JPEG's end marker: test_jpeg_markers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import db_items, write_image, write_list

from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.errors import InputError
from mtldata.storage.image import ImageDecodeError, ImageOptions, header_shape, prepare_image

HEADER = ImageOptions(encoded=True, validate="header")
DECODE = ImageOptions(encoded=True)


@pytest.mark.parametrize("name", ["a.jpg", "b.png", "c.png"])
@pytest.mark.parametrize("gray", [False, True])
def test_good_files_get_the_shape_a_decode_gives(tmp_path, name, gray):
    path = write_image(tmp_path / name, size=(31, 17), mode="L" if name == "c.png" else "RGB")
    light = prepare_image(path, ImageOptions(encoded=True, validate="header", gray=gray))
    full = prepare_image(path, ImageOptions(encoded=True, gray=gray))
    assert light == full  # the same stored bytes, shape and format


@pytest.mark.parametrize("name", ["a.jpg", "b.png"])
def test_a_truncated_file_is_rejected(tmp_path, name):
    path = write_image(tmp_path / name, size=(40, 30))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageDecodeError, match="truncated"):
        prepare_image(path, HEADER)


def test_a_file_that_is_not_an_image_or_has_a_broken_header_is_rejected(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_bytes(b"hello, not an image")
    with pytest.raises(ImageDecodeError):
        prepare_image(text, HEADER)
    png = write_image(tmp_path / "x.png")
    data = bytearray(png.read_bytes())
    data[12:16] = b"XXXX"  # IHDR's chunk type
    png.write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError, match="IHDR"):
        prepare_image(png, HEADER)


def _damaged_in_the_middle(path: Path, fill: bytes) -> bytes:
    """A 64x48 image written to `path`, then 40 bytes in the middle of the file overwritten."""
    write_image(path, size=(64, 48))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 40] = fill * 40
    path.write_bytes(bytes(data))
    return bytes(data)


def test_a_corrupt_middle_passes_the_header_check_of_a_jpeg_but_not_a_decode(tmp_path):
    # The documented limit of --validate header: in a JPEG, damage between header and end goes unseen.
    data = _damaged_in_the_middle(tmp_path / "a.jpg", b"\xff")
    assert header_shape(data, gray=False) == (3, 48, 64)
    assert prepare_image(tmp_path / "a.jpg", HEADER).data == data
    with pytest.raises(ImageDecodeError):
        prepare_image(tmp_path / "a.jpg", DECODE)


def test_a_corrupt_middle_of_a_png_fails_the_header_check_by_its_crc(tmp_path):
    _damaged_in_the_middle(tmp_path / "b.png", b"\x00")
    with pytest.raises(ImageDecodeError, match="corrupt PNG: the IDAT chunk's CRC does not match its data"):
        prepare_image(tmp_path / "b.png", HEADER)
    with pytest.raises(ImageDecodeError):
        prepare_image(tmp_path / "b.png", DECODE)


def test_a_png_is_read_up_to_its_iend_as_libpng_reads_it(tmp_path):
    png = write_image(tmp_path / "c.png", size=(16, 8)).read_bytes()
    (tmp_path / "c.png").write_bytes(png + b"bytes after IEND, which libpng never reads")
    assert prepare_image(tmp_path / "c.png", HEADER).shape == prepare_image(tmp_path / "c.png", DECODE).shape
    (tmp_path / "c.png").write_bytes(png[:-12])  # no IEND
    for options in (HEADER, DECODE):
        with pytest.raises(ImageDecodeError, match="truncated PNG: the data ends before its IEND chunk"):
            prepare_image(tmp_path / "c.png", options)


def test_an_exif_rotated_jpeg_falls_back_to_a_decode(tmp_path):
    from PIL import Image

    path = write_image(tmp_path / "r.jpg", size=(40, 20))
    with Image.open(path) as im:
        exif = im.getexif()
        exif[0x0112] = 6  # rotate 90: the stored 40x20 decodes to 20x40
        im.save(path, exif=exif, quality=90)
    assert header_shape(path.read_bytes(), gray=False) is None
    assert prepare_image(path, HEADER).shape == (3, 40, 20) == prepare_image(path, DECODE).shape


def test_a_conversion_with_the_header_check_writes_the_same_records(image_set, tmp_path):
    list_file, _ = image_set
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "full", workers=1, image=DECODE))
    result = convert(ConvertSpec(list_file=list_file, output=tmp_path / "light", workers=2, image=HEADER))
    assert result.manifest["options"]["validate"] == "header"
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "light" / db) == db_items(tmp_path / "full" / db)


def test_a_truncated_file_is_skipped_and_named_in_a_conversion(tmp_path):
    good = write_image(tmp_path / "good.jpg")
    bad = write_image(tmp_path / "bad.jpg", seed=1)
    bad.write_bytes(bad.read_bytes()[:200])
    list_file = write_list(tmp_path / "list.txt", ["good.jpg 1", "bad.jpg 2"])
    result = convert(ConvertSpec(list_file=list_file, output=tmp_path / "ds", workers=1, image=HEADER))
    assert result.count == 1 and good.exists()
    assert [(e.line, e.path) for e in result.errors] == [(2, "bad.jpg")]
    assert "truncated" in result.errors[0].reason
    with pytest.raises(InputError, match="bad.jpg"):
        convert(
            ConvertSpec(list_file=list_file, output=tmp_path / "ds2", workers=1, image=HEADER, strict=True)
        )
