"""Every path a list names must be a regular file, read within limits: anything else is a bad sample."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cli_errors import assert_one_line_error, run
from conftest import png_claiming, write_image, write_list
from PIL import Image

from mtldata.cli.report import EXIT_SKIPPED
from mtldata.storage.backends import open_reader


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 frame size rewritten to width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _convert_in_subprocess(list_file: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in its own process with a timeout: a hang fails the test instead of stalling the suite."""
    return subprocess.run(
        [sys.executable, "-m", "mtldata", "convert", str(list_file), "-o", str(out), "-q", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_fifos_directories_devices_and_sockets_in_a_list_are_bad_samples(tmp_path, workers):
    write_image(tmp_path / "good.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.jpg"))
    try:
        rows = ["good.jpg 1", "pipe.jpg 2", "folder.jpg 3", "/dev/zero 4", "sock.jpg 5", "good.jpg 6"]
        list_file = write_list(tmp_path / "list.txt", rows)
        done = _convert_in_subprocess(list_file, tmp_path / "ds", "-j", workers)
    finally:
        server.close()
    assert done.returncode == EXIT_SKIPPED and "Traceback" not in done.stderr, done.stderr
    for line, reason in (
        (2, "pipe.jpg: is a FIFO (named pipe), not a regular file"),
        (3, "folder.jpg: is a directory, not an image file"),
        (4, "/dev/zero: is a character device, not a regular file"),
        (5, "sock.jpg: is a socket, not a regular file"),
    ):
        assert f"list.txt:{line}: {reason}" in done.stderr, done.stderr
    reader = open_reader(tmp_path / "ds")
    assert len(reader) == 2
    reader.close()
    errors = (tmp_path / "ds" / "errors.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in errors] == ["2", "3", "4", "5"]


def test_a_fifo_under_strict_is_one_error_line_without_a_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    list_file = write_list(tmp_path / "list.txt", ["pipe.jpg 1"])
    done = _convert_in_subprocess(list_file, tmp_path / "ds", "-j", "1", "--strict")
    assert_one_line_error(done.stderr, done.returncode, "list.txt:1:", "FIFO")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()


def test_files_past_the_size_limit_are_bad_samples_until_the_limit_is_raised(tmp_path):
    write_image(tmp_path / "small.png", size=(8, 8))
    big = write_image(tmp_path / "big.png", size=(16, 16))
    with open(big, "ab") as fh:  # PNG readers ignore bytes after IEND: still a valid image
        fh.write(b"\0" * (2 << 20))
    list_file = write_list(tmp_path / "list.txt", ["small.png 1", "big.png 2"])
    result = run("convert", list_file, "-o", tmp_path / "ds", "-q", "-j", "1", "--max-file-mb", "1")
    assert result.exit_code == EXIT_SKIPPED, result.output
    assert (
        "list.txt:2: big.png: file is 2,097," in result.output
        and "raise it with --max-file-mb" in result.output
    )
    result = run("convert", list_file, "-o", tmp_path / "ds3", "-q", "-j", "1", "--max-file-mb", "3")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_images_past_the_pixel_limit_are_refused_from_their_header(tmp_path, kind):
    bomb = png_claiming(100_000, 100_000) if kind == "png" else _jpeg_claiming(60_000, 60_000)
    (tmp_path / f"bomb.{kind}").write_bytes(bomb)
    write_image(tmp_path / "ok.png", size=(8, 8))
    list_file = write_list(tmp_path / "list.txt", ["ok.png 0", f"bomb.{kind} 1"])
    done = _convert_in_subprocess(list_file, tmp_path / "ds", "-j", "1")
    assert done.returncode == EXIT_SKIPPED and "Traceback" not in done.stderr, done.stderr
    assert (
        f"list.txt:2: bomb.{kind}: image is " in done.stderr
        and "over the limit of 100,000,000" in done.stderr
    )
    assert "Warning" not in done.stderr


def test_the_pixel_limit_can_be_lowered_and_raised(tmp_path):
    write_image(tmp_path / "a.png", size=(40, 30))
    list_file = write_list(tmp_path / "list.txt", ["a.png 1"])
    result = run(
        "convert", list_file, "-o", tmp_path / "ds", "-q", "-j", "1", "--max-pixels", "1000", "--strict"
    )
    assert_one_line_error(
        result.output, result.exit_code, "list.txt:1:", "40x30 = 1,200 pixels", "--max-pixels"
    )
    result = run("convert", list_file, "-o", tmp_path / "ds", "-q", "-j", "1", "--max-pixels", "1200")
    assert result.exit_code == 0, result.output
