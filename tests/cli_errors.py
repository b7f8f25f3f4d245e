"""How a failure must look to a user: exit code 1, one `mtldata: error: <file>[:<line>]: <what>` line."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from mtldata.cli.main import main


def run(*args: object, env: dict[str, str] | None = None):
    """The command in-process; an exception the CLI does not turn into a message fails the test."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


def assert_one_line_error(output: str, code: int, *fragments: str, exit_code: int = 1) -> str:
    """The output holds exactly one error line, of the documented shape, holding each fragment."""
    assert code == exit_code, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("mtldata: error: ")]
    assert len(errors) == 1, output
    line = errors[0]
    assert re.match(r"mtldata: error: \S.*?(:\d+)?: \S", line), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to compare before and after a refused command."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(text: str, *needles: str) -> str:
    """The single `mtldata: error:` line of `text` (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("mtldata: error: ")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]
