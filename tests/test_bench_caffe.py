"""tools/bench_caffe.py runs end to end on a tiny setting (its numbers are not checked here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_runs import quick_run


def test_bench_caffe_quick_prints_the_side_by_side_table(caffe_fixtures: Path) -> None:
    if not (caffe_fixtures / "solvers" / "net.prototxt").is_file():
        pytest.skip("the solver fixture net is not there")
    out = quick_run("bench_caffe.py")
    for row in (
        "mtldata, 1 thread",
        "mtldata, 2 threads",
        "mtldata, default (trial)",
        "plain torch, 1 thread",
    ):
        assert row in out
    assert "default vs the faster fixed count" in out and "CPU threads:" in out
