"""The benchmark tools run end to end on tiny inputs (their numbers are not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_bench_load_quick_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(TOOLS / "bench_load.py"), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TOOLS.parent,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "samples/s" in out and "per worker" in out
    for row in (
        "(a) bare cursor",
        "(b) ImageFolder-style",
        "(c) bare",
        "(d) bare h5py",
        "open_dataset raw, 0 workers",
    ):
        assert row in out
    assert "open_dataset encoded, 2 workers" in out and "open_dataset raw, 2 workers, reused shm" in out
    assert "targets met" in out or "targets NOT met" in out
