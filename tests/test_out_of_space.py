"""A full disk, a failing writer or a read-only output: one line, exit 1, and a resumable `.partial`.

The tmpfs tests mount a real, small file system (root only; skipped with the reason otherwise). The
fault-injection tests need no mount: the file system call that reserves space fails as a full disk would.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cli_errors import assert_one_line_error, run
from conftest import write_list
from PIL import Image
from train_helpers import make_dataset

import mtldata.convert.pipeline as pipeline
import mtldata.storage.backends.lmdb as lmdb_backend
from mtldata.storage.backends import open_reader

NO_SPACE = "no space left on the device; free space and run the same command with --resume"
# The CLI with commits every ~40 kB instead of every 1,000 samples, so a full disk strikes after some.
SMALL_COMMITS = (
    "import sys, mtldata.convert.pipeline as p; p.COMMIT_BYTES = 40_000; "
    "from mtldata.cli.main import main; sys.exit(main())"
)
# The same, with a file system that claims plenty of space: HDF5's own write then meets the full disk.
SMALL_COMMITS_NO_SPACE_CHECK = SMALL_COMMITS.replace(
    "from mtldata.cli",
    "import os; real = os.statvfs; os.statvfs = lambda p: "
    "type('S', (), {'f_bavail': 1 << 40, 'f_frsize': 1})(); from mtldata.cli",
)


def _noise_images(folder: Path, count: int, size: int = 64) -> Path:
    """`count` PNGs of random noise (incompressible) and their list."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            folder / "img" / f"{i:03d}.png"
        )
        rows.append(f"img/{i:03d}.png {i % 3} {i / 7:.3f}")
    return write_list(folder / "list.txt", rows)


def _records(path: Path) -> list[tuple[str, bytes, list[float]]]:
    reader = open_reader(path)
    try:
        return [(s.key, bytes(s.image.data), s.labels.tolist()) for s in reader]
    finally:
        reader.close()


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, readonly: bool = False) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _remount(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def _cli(code: str, *args: object) -> subprocess.CompletedProcess:
    """The CLI in its own process: a SIGBUS or segfault shows as a negative return code, not a dead suite."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("backend", "size", "images", "code"),
    [
        # 120 kB records: the reservation (posix_fallocate) or LMDB's commit meets the full tmpfs
        ("lmdb", "3m", (30, 200), SMALL_COMMITS),
        ("hdf5", "2m", (120, 64), SMALL_COMMITS),
        ("hdf5", "2m", (120, 64), SMALL_COMMITS_NO_SPACE_CHECK),
    ],
    ids=["lmdb", "hdf5", "hdf5-without-space-check"],
)
def test_a_full_tmpfs_gives_one_line_and_a_resumable_partial(tmp_path, backend, size, images, code):
    count, side = images
    list_file = _noise_images(tmp_path / "src", count, side)
    args = ["--backend", backend, "-q", "-j", "1"] + (["--shard-size", "16"] if backend == "hdf5" else [])
    reference = _cli(code, "convert", list_file, "-o", tmp_path / "ref", *args)
    assert reference.returncode == 0, reference.stderr
    with _tmpfs(tmp_path / "fs", size) as fs:
        failed = _cli(code, "convert", list_file, "-o", fs / "ds", *args)
        assert failed.returncode == 1, (
            f"exit {failed.returncode} (a negative one is a signal): {failed.stderr}"
        )
        assert_one_line_error(failed.stderr, failed.returncode, "ds.partial", NO_SPACE)
        progress = json.loads((fs / "ds.partial" / "progress.json").read_text())
        assert 0 < progress["next_position"] < count  # some commits held; the rest is to do
        _remount(fs, "64m")  # "free space"
        resumed = _cli(code, "convert", list_file, "-o", fs / "ds", "--resume", *args)
        assert resumed.returncode == 0, resumed.stderr
        assert _records(fs / "ds") == _records(tmp_path / "ref")


@pytest.mark.parametrize("backend", ["lmdb", "hdf5"])
def test_a_writer_failing_for_lack_of_space_leaves_a_resumable_partial(
    image_set, tmp_path, monkeypatch, backend
):
    """Fault injection, no mount: space reservation (LMDB: posix_fallocate of data.mdb; HDF5: the
    free-space check before a shard) fails after a few commits as on a full disk."""
    list_file, _ = image_set
    args = ["--backend", backend, "-q", "-j", "1"] + (["--shard-size", "3"] if backend == "hdf5" else [])
    assert run("convert", list_file, "-o", tmp_path / "ref", *args).exit_code == 0
    monkeypatch.setattr(pipeline, "COMMIT_BYTES", 1)  # commit after every sample
    monkeypatch.setattr(lmdb_backend, "RESERVE_STEP", 4096)
    calls = {"n": 0}
    real_fallocate, real_statvfs = os.posix_fallocate, os.statvfs

    def full_after_a_few(*a):
        calls["n"] += 1
        if calls["n"] > 8:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fallocate(*a)

    def statvfs_full_after_two(path):
        calls["n"] += 1
        real = real_statvfs(path)
        return real if calls["n"] <= 2 else os.statvfs_result((real.f_bsize, real.f_frsize, *[0] * 8))

    if backend == "lmdb":
        monkeypatch.setattr(os, "posix_fallocate", full_after_a_few)
    else:
        monkeypatch.setattr(os, "statvfs", statvfs_full_after_two)
    failed = run("convert", list_file, "-o", tmp_path / "ds", *args)
    assert_one_line_error(failed.output, failed.exit_code, "ds.partial", NO_SPACE)
    assert json.loads((tmp_path / "ds.partial" / "progress.json").read_text())["next_position"] > 0
    monkeypatch.setattr(os, "posix_fallocate", real_fallocate)
    monkeypatch.setattr(os, "statvfs", real_statvfs)
    resumed = run("convert", list_file, "-o", tmp_path / "ds", "--resume", *args)
    assert resumed.exit_code == 0, resumed.output
    assert _records(tmp_path / "ds") == _records(tmp_path / "ref")


@pytest.fixture(params=["read-only", "full"])
def unwritable(request, tmp_path: Path) -> Iterator[Path]:
    """A folder nothing can be written into: a read-only tmpfs as root (a mode-555 folder otherwise),
    or a tmpfs filled to its last byte."""
    if request.param == "full":
        with _tmpfs(tmp_path / "ro", "256k") as where:
            with contextlib.suppress(OSError), open(where / ".filler", "wb", buffering=0) as fh:
                while True:
                    fh.write(b"\0" * 4096)
            yield where
    elif os.geteuid() == 0:
        with _tmpfs(tmp_path / "ro", "1m", readonly=True) as where:
            yield where
    else:
        where = tmp_path / "ro"
        where.mkdir(mode=0o555)
        yield where


def test_every_writing_command_fails_in_one_line_on_an_unwritable_output(
    image_set, tmp_path, unwritable, monkeypatch
):
    list_file, _ = image_set
    full = (unwritable / ".filler").exists()
    expect = ("no space left on the device; free space",) if full else ("read-only", "permission denied")

    def check(result, where: str) -> None:
        line = assert_one_line_error(result.output, result.exit_code, where)
        assert any(e in line for e in expect), line

    for backend in ("lmdb", "hdf5"):
        check(
            run("convert", list_file, "-o", unwritable / "ds", "--backend", backend, "-q", "-j", "1"), "ro/ds"
        )
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, part in enumerate(parts):
        assert (
            run(
                "convert", list_file, "-o", part, "--num-shards", "2", "--shard-index", str(i), "-q"
            ).exit_code
            == 0
        )
    check(run("merge", *parts, "-o", unwritable / "merged", "-q"), "ro/merged")
    dataset, tasks = make_dataset(tmp_path / "data", count=12)
    check(
        run(
            "train", dataset, "--tasks", tasks, "-o", unwritable / "run", "--max-steps", "1", "-q", "-j", "0"
        ),
        "ro",
    )
    prototxt = tmp_path / "train.prototxt"
    from test_caffenet_runner import NET, SOLVER  # a small Caffe setup on a converted dataset

    prototxt.write_text(NET)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    assert run("convert", list_file, "-o", tmp_path / "ds", "-q").exit_code == 0
    monkeypatch.chdir(tmp_path)
    check(run("train", "--solver", "solver.prototxt", "--workdir", unwritable, "-q"), "ro")
    check(run("tasks", "--from-prototxt", prototxt, "-k", "4", "-o", unwritable / "tasks.toml"), "ro")
    check(run("demo", "-d", unwritable / "demo", "-n", "4", "-q", "--no-train"), "ro")
    assert full or not any(unwritable.iterdir())
