"""The one error ladder every command's library call runs under (cli/report.py: one_line_failures)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mtldata.cli.report import EXIT_ERROR, EXIT_INTERRUPTED, Progress, one_line_failures
from mtldata.errors import DatasetFormatError


def _exit(capsys, block, **options) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop, one_line_failures(**options):
        block()
    return stop.value.code, capsys.readouterr().err


def _raise(exc: BaseException):
    def block() -> None:
        raise exc

    return block


def test_ctrl_c_exits_130_with_the_commands_line_after_closing_the_bar(capsys):
    bar = Progress(False, "img", "convert")

    def block() -> None:
        bar(3, 10)  # a real tqdm bar on stderr, mid-run
        raise KeyboardInterrupt

    code, err = _exit(capsys, block, interrupted="interrupted; use --resume", closing=bar)
    assert code == EXIT_INTERRUPTED
    assert bar.bar.disable  # tqdm's state once closed
    drawn, line = err.rstrip("\n").rsplit("\n", 1)
    assert "convert:" in drawn and "3/10" in drawn
    assert line == "mtldata: error: interrupted; use --resume"


def test_ctrl_c_passes_through_where_the_command_does_not_catch_it():
    with pytest.raises(KeyboardInterrupt), one_line_failures(interrupted=None):
        raise KeyboardInterrupt


def test_a_library_error_is_its_message_or_the_commands_rewording(capsys):
    code, err = _exit(capsys, _raise(DatasetFormatError("ds/manifest.json: damaged")))
    assert code == EXIT_ERROR and err == "mtldata: error: ds/manifest.json: damaged\n"
    code, err = _exit(capsys, _raise(DatasetFormatError("x: bad")), mtl_error=lambda exc: f"{exc} (reworded)")
    assert err == "mtldata: error: x: bad (reworded)\n"


def test_an_os_error_names_the_output_the_block_worked_out(capsys, tmp_path):
    target: list[Path] = [tmp_path / "given"]

    def block() -> None:
        target[0] = tmp_path / "worked-out"
        raise OSError(errno.ENOSPC, "No space left on device", str(target[0] / "f.bin"))

    code, err = _exit(capsys, block, output=lambda: target[0])
    assert code == EXIT_ERROR and err.startswith("mtldata: error: ") and err.count("\n") == 1
    assert "worked-out" in err and "no space" in err.lower()
    code, err = _exit(
        capsys, _raise(OSError(errno.EACCES, "Permission denied", "/x")), os_error=lambda e: "own"
    )
    assert err == "mtldata: error: own\n"


def test_nothing_raised_means_nothing_printed_and_the_bar_left_open(capsys):
    bar = Progress(False, "img", "convert")
    with one_line_failures(closing=bar):
        bar(1, 2)
    assert not bar.bar.disable and "mtldata: error" not in capsys.readouterr().err
    bar.close()
