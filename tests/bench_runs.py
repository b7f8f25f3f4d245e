"""Running a benchmark tool under tools/ as a user would, for the tests that check its output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def quick_run(tool: str, *args: object, timeout: float = 300) -> str:
    """`python tools/TOOL --quick ARGS` from the project root; its stdout, once it exited 0."""
    result = subprocess.run(
        [sys.executable, str(TOOLS / tool), "--quick", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TOOLS.parent,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
