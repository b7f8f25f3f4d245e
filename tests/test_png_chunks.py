"""A PNG decodes exactly when libpng (OpenCV's, so Caffe's) decodes it: bad CRCs, missing IEND,
unknown critical chunks (`mtldata.storage.png_chunks`), compared with the system's libpng 1.6.

libpng aborts the process on an error here (the oracle makes no setjmp), so each oracle decode runs
in a child process: an abort is libpng's refusal.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import png_chunk
from hypothesis import given, settings
from hypothesis import strategies as st
from libpng_oracle import load_libpng
from PIL import Image

from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.storage.image import ImageDecodeError, ImageOptions, decode_bytes
from mtldata.storage.png_chunks import PngChunkError, libpng_chunks

TESTS = Path(__file__).resolve().parent
needs_libpng = pytest.mark.skipif(load_libpng() is None, reason="the system has no libpng16 to compare with")

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, body: bytes, bad_crc: bool = False) -> bytes:
    return png_chunk(kind, body, struct.pack(">I", zlib.crc32(kind + body) ^ 0x5A) if bad_crc else None)


def pixels() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (9, 13, 3), dtype=np.uint8)


def chunk_list() -> list[tuple[bytes, bytes]]:
    """An RGB PNG's chunks, with ancillary ones before and after the image data and two IDATs."""
    out = io.BytesIO()
    Image.fromarray(pixels()).save(out, "PNG")
    data, pos, chunks = out.getvalue(), 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    (ihdr, ihdr_body), *middle, (iend, _) = chunks
    idat = b"".join(body for kind, body in middle if kind == b"IDAT")
    half = len(idat) // 2
    return [
        (ihdr, ihdr_body),
        (b"gAMA", struct.pack(">I", 45455)),
        (b"tEXt", b"Comment\x00before"),
        (b"IDAT", idat[:half]),
        (b"IDAT", idat[half:]),
        (b"tEXt", b"Comment\x00after"),
        (iend, b""),
    ]


CHUNKS = chunk_list()


def build(chunks: list[tuple[bytes, bytes]], bad: set[int] = frozenset(), tail: bytes = b"") -> bytes:
    return SIGNATURE + b"".join(chunk(k, b, i in bad) for i, (k, b) in enumerate(chunks)) + tail


_ORACLE = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from libpng_oracle import libpng_gray, load_libpng
np.save(sys.argv[3], libpng_gray(load_libpng(), Path(sys.argv[2])))
"""


def libpng_outcome(data: bytes, tmp: Path) -> tuple:
    """("decoded", gray pixels) as OpenCV's IMREAD_GRAYSCALE gets them from libpng, or ("refused",)."""
    path, out = tmp / "oracle.png", tmp / "oracle.npy"
    path.write_bytes(data)
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", _ORACLE, str(TESTS), str(path), str(out)], capture_output=True, timeout=60
    )
    if done.returncode != 0:
        assert b"libpng error" in done.stderr, done.stderr  # an abort by libpng, nothing else
        return ("refused",)
    return ("decoded", np.load(out).tobytes())


def our_outcome(data: bytes) -> tuple:
    try:
        return ("decoded", decode_bytes(data, gray=True).tobytes())
    except ImageDecodeError:
        return ("refused",)


ANCILLARY = {1, 2, 5}
# name: (the file, what libpng does with it)
CASES = {
    **{
        f"bad CRC in chunk {i} ({kind.decode()})": (
            build(CHUNKS, {i}),
            "decoded" if i in ANCILLARY else "refused",
        )
        for i, (kind, _) in enumerate(CHUNKS)
    },
    "bad CRCs in every ancillary chunk": (build(CHUNKS, ANCILLARY), "decoded"),
    "no IEND": (build(CHUNKS[:-1]), "refused"),
    "cut inside the last IDAT": (build(CHUNKS)[:-40], "refused"),
    "bytes after IEND": (build(CHUNKS, tail=b"trailing junk"), "decoded"),
    "a bad CRC after IEND": (build(CHUNKS, tail=chunk(b"tEXt", b"x\x00y", True)), "decoded"),
    "unknown critical chunk": (build([*CHUNKS[:2], (b"ZZZZ", b"12"), *CHUNKS[2:]]), "refused"),
    "unknown ancillary chunk": (build([*CHUNKS[:2], (b"zzZZ", b"12"), *CHUNKS[2:]]), "decoded"),
    "intact": (build(CHUNKS), "decoded"),
}


@needs_libpng
@pytest.mark.parametrize("name", CASES)
def test_decodes_exactly_what_libpng_decodes(tmp_path, name):
    data, libpng_does = CASES[name]
    expected = libpng_outcome(data, tmp_path)
    assert expected[0] == libpng_does
    assert our_outcome(data) == expected


def test_a_dropped_ancillary_chunk_leaves_the_colour_pixels_as_without_it():
    damaged = decode_bytes(build(CHUNKS, {2, 5}))
    assert np.array_equal(damaged, decode_bytes(build([c for i, c in enumerate(CHUNKS) if i not in (2, 5)])))
    assert np.array_equal(damaged, pixels()[:, :, ::-1])


def test_an_intact_png_is_returned_as_it_is():
    data = build(CHUNKS)
    assert libpng_chunks(data) is data
    assert libpng_chunks(build(CHUNKS, {2})) == build([c for i, c in enumerate(CHUNKS) if i != 2])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (build(CHUNKS, {3}), "corrupt PNG: the IDAT chunk's CRC does not match its data"),
        (build(CHUNKS[:-1]), "truncated PNG: the data ends before its IEND chunk"),
        (build(CHUNKS)[:-40], "truncated PNG: the data ends inside its IDAT chunk"),
        (build([*CHUNKS[:2], (b"ZZZZ", b"")]), "corrupt PNG: unknown critical chunk 'ZZZZ'"),
        (build([*CHUNKS[:2], (b"g1MA", b"")]), "corrupt PNG: invalid chunk type 'g1MA' at byte 49"),
    ],
    ids=["bad IDAT CRC", "no IEND", "cut short", "unknown critical", "invalid type"],
)
def test_refusals_say_what_is_wrong(data, reason):
    with pytest.raises(ImageDecodeError) as caught:
        decode_bytes(data)
    assert str(caught.value) == reason


def test_converter_skips_a_png_caffe_cannot_read_and_keeps_one_it_can(tmp_path):
    (tmp_path / "bad_idat.png").write_bytes(build(CHUNKS, {3}))
    (tmp_path / "bad_text.png").write_bytes(build(CHUNKS, {2}))
    (tmp_path / "list.txt").write_text("bad_idat.png 0\nbad_text.png 1\n")
    for options in (
        ImageOptions(),
        ImageOptions(encoded=True),
        ImageOptions(encoded=True, validate="header"),
    ):
        result = convert(
            ConvertSpec(
                list_file=tmp_path / "list.txt", output=tmp_path / "out", image=options, overwrite=True
            )
        )
        assert result.count == 1
        assert [(e.line, e.reason) for e in result.errors] == [
            (1, "corrupt PNG: the IDAT chunk's CRC does not match its data")
        ]


@settings(max_examples=400, deadline=None, database=None)
@given(
    where=st.integers(0, 400),
    cut=st.booleans(),
    noise=st.binary(min_size=1, max_size=8),
)
def test_any_damage_gives_a_png_or_one_reason(where, cut, noise):
    data = build(CHUNKS, {2})
    at = 8 + where % (len(data) - 8)
    damaged = data[:at] if cut else data[:at] + noise + data[at + len(noise) :]
    try:
        kept = libpng_chunks(damaged)
    except PngChunkError as exc:
        assert str(exc).startswith(("corrupt PNG: ", "truncated PNG: "))
        return
    assert kept.startswith(SIGNATURE) and len(kept) <= len(damaged)
    assert kept.endswith(chunk(b"IEND", b""))
