"""Shared test fixtures: the real-Caffe golden data (when present) and small real image sets."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

CAFFE_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "caffe"


@pytest.fixture(scope="session")
def caffe_fixtures() -> Path:
    """The folder of outputs made by real BVLC Caffe; tests needing it skip when it is absent."""
    if not (CAFFE_FIXTURES / "README.md").is_file():
        pytest.skip(f"Caffe golden fixtures not found at {CAFFE_FIXTURES}")
    return CAFFE_FIXTURES


def write_image(path: Path, size: tuple[int, int] = (24, 20), seed: int = 0, mode: str = "RGB") -> Path:
    """A small smooth random image written as a real file (format from the suffix)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
    pixels = np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90) if path.suffix.lower() in (".jpg", ".jpeg") else image.save(path)
    return path


def db_items(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a real LMDB environment, in cursor (key) order."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    env.close()
    return items


def write_list(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def image_set(tmp_path: Path) -> tuple[Path, list[tuple[str, list[float]]]]:
    """Twelve real JPEG/PNG files and a 4-label list over them; returns (list path, rows)."""
    rows = []
    for i in range(12):
        name = f"img{i:02d}.{'png' if i % 4 == 3 else 'jpg'}"
        write_image(tmp_path / "images" / name, seed=i)
        rows.append((f"images/{name}", [i % 3, i % 2, 0.25 * i, -1.5 + i]))
    lines = [p + " " + " ".join(f"{v:g}" for v in labels) for p, labels in rows]
    return write_list(tmp_path / "list.txt", lines), rows


@pytest.fixture(scope="session")
def solvers_dir(caffe_fixtures: Path) -> Path:
    """Real Caffe's six solver runs (fixtures/caffe/solvers) and their expected.json."""
    return caffe_fixtures / "solvers"


@pytest.fixture(scope="session")
def solver_expected(solvers_dir: Path) -> dict:
    return json.loads((solvers_dir / "expected.json").read_text())


def assert_blob_close(mine: np.ndarray, golden: np.ndarray, what: str) -> None:
    """The solver fixtures' rule: max|mine − golden| ≤ 1e-4·max|golden|, exact where golden is all zeros."""
    scale = float(np.abs(golden).max())
    mine = np.asarray(mine, dtype=np.float32).reshape(golden.shape)
    if scale == 0:
        assert np.array_equal(mine, golden), f"{what}: should be exactly zero"
        return
    error = float(np.abs(mine - golden).max())
    assert error <= 1e-4 * scale, f"{what}: max error {error:.3g} > 1e-4 * {scale:.3g}"


# A number as Caffe's logs print it (%g: the exponent always signed)
CAFFE_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?")


def same_caffe_line(mine: str, caffe: str, rel: float, abs: float = 0.0) -> bool:
    """The same words as a line of Caffe's log, each number within `rel` (and `abs`) of Caffe's: Caffe
    prints 6 significant digits, so a sum on a rounding boundary may print its last digit one off."""
    if CAFFE_NUMBER.sub("#", mine) != CAFFE_NUMBER.sub("#", caffe):
        return False
    numbers = zip(CAFFE_NUMBER.findall(mine), CAFFE_NUMBER.findall(caffe), strict=True)
    return all(float(a) == pytest.approx(float(b), rel=rel, abs=abs) for a, b in numbers)


def damage(data: bytes, how: int, where: float, value: int, count: int, keep: int = 0) -> bytes:
    """`data` damaged as files get damaged, for property tests of decoders: cut short (how 0),
    `count` bytes overwritten (1), inserted (2) or removed (3) at the fraction `where` of it. The
    first `keep` bytes stay as they are (a format's signature, to reach the decoder behind it)."""
    out = bytearray(data)
    at = keep + int(where * (len(out) - 1 - keep))
    if how == 0:  # truncated
        del out[max(at, 1) :]
    elif how == 1:  # bytes overwritten
        for i in range(count):
            out[keep + (at - keep + 7 * i) % (len(out) - keep)] = (value + 31 * i) % 256
    elif how == 2:  # bytes inserted
        out[at:at] = bytes((value + i) % 256 for i in range(count))
    else:  # bytes removed
        del out[at : at + count]
    return bytes(out)


@pytest.fixture(scope="module")
def monkeypatch_module():
    """A monkeypatch for hypothesis tests (function-scoped fixtures are not reset between examples):
    each use undoes its patches itself."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def png_chunk(kind: bytes, body: bytes, crc: bytes | None = None) -> bytes:
    """One PNG chunk: length, type, body and CRC (`crc`: the 4 bytes to write instead, e.g. a bad one)."""
    crc = struct.pack(">I", zlib.crc32(kind + body)) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + crc


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb's signature)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )
