"""One writer per output: a second convert or merge is refused while the first runs (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_errors import assert_one_line_error, run
from conftest import db_items

from mtldata.errors import DatasetFormatError
from mtldata.storage.backends import open_reader
from mtldata.storage.output_guard import WriterLock

# A writer that stalls after its third sample, holding the staging folder, until it is killed.
STALLING_WRITER = """
import sys, time
from pathlib import Path
from mtldata.convert import ConvertSpec, convert
from mtldata.convert.merge import merge

flag = Path(sys.argv[2])
def stall(done, total):
    if done >= 3:
        flag.write_text("stalled")
        time.sleep(600)

if sys.argv[1] == "convert":
    convert(ConvertSpec(list_file=Path(sys.argv[3]), output=Path(sys.argv[4]), workers=1, commit_every=2), stall)
else:
    merge(sys.argv[4:], sys.argv[3], progress=stall, commit_every=2)
"""


def _cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtldata", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _start_stalled(tmp_path: Path, *args: object) -> subprocess.Popen:
    flag = tmp_path / "stalled.flag"
    proc = subprocess.Popen([sys.executable, "-c", STALLING_WRITER, args[0], flag, *map(str, args[1:])])
    deadline = time.monotonic() + 60
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the first writer did not start (exit {proc.poll()})")
        time.sleep(0.05)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_second_conversion_is_refused_while_the_first_runs_and_resumes_after_it_dies(image_set, tmp_path):
    list_file, _ = image_set
    out = tmp_path / "ds"
    first = _start_stalled(tmp_path, "convert", list_file, out)
    try:
        for extra in (["--resume"], ["--overwrite"], []):
            second = _cli("convert", list_file, "-o", out, "-q", "-j", "1", *extra, cwd=tmp_path)
            line = assert_one_line_error(
                second.stderr, second.returncode, "ds.partial", "another convert is running"
            )
            assert f"(pid {first.pid})" in line
        info = _cli("info", out.with_name("ds.partial"), cwd=tmp_path)
        assert_one_line_error(info.stderr, info.returncode, f"a convert is running (pid {first.pid})")
        with pytest.raises(
            DatasetFormatError, match=rf"not there yet: a convert is running \(pid {first.pid}\)"
        ):
            open_reader(out)
    finally:
        _kill(first)
    info = _cli("info", out.with_name("ds.partial"), cwd=tmp_path)
    assert_one_line_error(info.stderr, info.returncode, "an interrupted conversion", "with --resume")
    resumed = _cli("convert", list_file, "-o", out, "-q", "-j", "1", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    reference = _cli("convert", list_file, "-o", tmp_path / "ref", "-q", "-j", "1", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(out / db) == db_items(tmp_path / "ref" / db)


def test_a_killed_merge_is_reported_as_a_merge_to_run_again(image_set, tmp_path):
    list_file, _ = image_set
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, part in enumerate(parts):
        made = _cli(
            "convert",
            list_file,
            "-o",
            part,
            "--num-shards",
            2,
            "--shard-index",
            i,
            "-q",
            "-j",
            1,
            cwd=tmp_path,
        )
        assert made.returncode == 0, made.stderr
    out = tmp_path / "merged"
    first = _start_stalled(tmp_path, "merge", out, *parts)
    try:
        second = _cli("merge", *parts, "-o", out, "--overwrite", "-q", cwd=tmp_path)
        assert_one_line_error(second.stderr, second.returncode, f"another merge is running (pid {first.pid})")
        resume = _cli("convert", list_file, "-o", out, "--resume", "-q", "-j", 1, cwd=tmp_path)
        assert_one_line_error(resume.stderr, resume.returncode, "another merge is running")
    finally:
        _kill(first)
    info = _cli("info", tmp_path / "merged.partial", cwd=tmp_path)
    line = assert_one_line_error(info.stderr, info.returncode, "an interrupted merge", "`mtldata merge`")
    assert "convert" not in line
    again = _cli("merge", *parts, "-o", out, "--overwrite", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "merged.partial").exists()


def _reading_commands(out: Path, tmp_path: Path) -> list[list[object]]:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[[task]]\nname = "a"\nslice = "0:4"\nkind = "euclidean"\n')
    return [
        ["info", out],
        ["verify", "-q", out],
        ["show", out, "-o", tmp_path / "grid.png"],
        ["stats", "-q", out],
        ["train", out, "--tasks", tasks, "-o", tmp_path / "run", "-q"],
        ["merge", out, "-o", tmp_path / "merged"],
    ]


def test_reading_an_output_while_its_conversion_runs_says_so_and_after_a_kill_how_to_finish(
    image_set, tmp_path
):
    list_file, _ = image_set
    out = tmp_path / "ds"
    first = _start_stalled(tmp_path, "convert", list_file, out)
    try:
        for args in _reading_commands(out, tmp_path):
            result = run(*args)
            line = assert_one_line_error(
                result.output,
                result.exit_code,
                f"{out}: not there yet: a convert is running (pid {first.pid})",
            )
            assert f"in {out}.partial" in line and "does not exist" not in result.output
    finally:
        _kill(first)
    for args in _reading_commands(out, tmp_path):
        result = run(*args)
        assert_one_line_error(
            result.output,
            result.exit_code,
            f"{out}: not there yet: an interrupted conversion in {out}.partial",
            "`mtldata convert` command with --resume",
        )
    assert not (tmp_path / "run").exists() and not (tmp_path / "merged").exists()
    resumed = _cli("convert", list_file, "-o", out, "-q", "-j", "1", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    result = run("info", out)
    assert result.exit_code == 0 and "samples:   12" in result.output, result.output


def test_an_output_whose_merge_was_interrupted_says_to_run_merge_again(tmp_path):
    out = tmp_path / "merged"
    lock = WriterLock.acquire(out.with_name("merged.partial"), "merge")  # the real lock API
    try:
        result = run("info", out)
        assert_one_line_error(
            result.output, result.exit_code, f"a merge is running (pid {os.getpid()}) in {out}.partial"
        )
    finally:
        lock.release()  # as a killed merge leaves it: the marker, no lock
    result = run("verify", out)
    line = assert_one_line_error(
        result.output, result.exit_code, "an interrupted merge in", "`mtldata merge`"
    )
    assert "convert" not in line
    with pytest.raises(DatasetFormatError, match="not there yet: an interrupted merge"):
        open_reader(out)


def test_a_missing_output_beside_a_folder_mtldata_did_not_stage_is_just_missing(tmp_path):
    foreign = tmp_path / "ds.partial"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = run("info", tmp_path / "ds")
    assert result.exit_code == 2 and "does not exist" in result.output
