"""The benchmark tools run end to end on tiny inputs (their numbers are not checked here)."""

from __future__ import annotations

import sys

from bench_runs import TOOLS, quick_run


def test_bench_load_quick_runs(tmp_path):
    out = quick_run("bench_load.py", "--dir", tmp_path, timeout=120)
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


def test_bench_convert_quick_prints_every_row_with_its_range_and_the_bounds(tmp_path):
    out = quick_run("bench_convert.py", "--dir", tmp_path)
    header = next(line for line in out.splitlines() if line.startswith("run "))
    assert "img/s" in header and "all runs" in header and "CPU ms/img" in header
    for row in (
        "baseline",
        "decode limit",
        "byte copy",
        "write floor",
        "mtldata raw",
        "mtldata encoded",
        "mtldata encoded, --validate header",
        "hdf5 write floor",
        "mtldata hdf5 raw",
        "mtldata hdf5 uint8",
    ):
        line = next((x for x in out.splitlines() if x.startswith(row + " ")), None)
        assert line is not None, (row, out)
        low, high = (float(v) for v in line[36:].split()[1].split("-"))
        assert 0 < low <= float(line[36:].split()[0]) <= high, line  # the median lies in its range
    assert "mtldata raw: decode" in out and "mtldata hdf5 raw: decode" in out  # the bounds
    uint8 = next(x for x in out.splitlines() if x.startswith("mtldata hdf5 uint8 "))
    assert "x baseline (no target)" in uint8  # compared with the baseline, not judged
    # the long list: every mtldata row against its target, the write floors beside them without one
    scaled = {line.split(" at 96 lines:")[0]: line for line in out.splitlines() if " at 96 lines:" in line}
    for row in ("mtldata raw", "mtldata encoded", "mtldata hdf5 raw"):
        assert "target: within 10% and flat" in scaled[row] and "without start-up" in scaled[row]
        assert "(median of 2, " in scaled[row]  # --quick runs the long list twice
    for row in ("write floor", "hdf5 write floor"):
        assert "(no target)" in scaled[row] and "x the throughput" in scaled[row]
    assert "targets met" in out or "targets NOT met" in out


def test_bench_convert_median_run_keeps_the_median_and_the_range_of_all_runs():
    sys.path.insert(0, str(TOOLS))
    try:
        import bench_convert
    finally:
        sys.path.remove(str(TOOLS))
    runs = [{"count": 100, "seconds": s, "cpu": s} for s in (0.5, 0.1, 0.2, 0.4, 0.25)]
    median = bench_convert.median_run(runs)
    assert median["seconds"] == 0.25 and median["cpu"] == 0.25
    assert median["range"] == (200.0, 1000.0)  # 100 samples in 0.5 s and in 0.1 s
