"""`mtldata demo` with its short training run, and the training benchmark's quick mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from click.testing import CliRunner

from mtldata.cli import main

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_demo_converts_trains_and_prints_per_task_metrics(tmp_path):
    args = ["demo", "-d", str(tmp_path / "demo"), "-n", "40", "--epochs", "3", "-q"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("per-task metrics after 3 epochs") :]
    for word in ("shape", "attributes", "size", "accuracy", "mean_error", "f1", "mae", "rmse"):
        assert word in table
    run = tmp_path / "demo" / "run"
    assert (run / "last.pt").is_file() and (run / "metrics.jsonl").is_file()
    assert (tmp_path / "demo" / "tasks.toml").is_file()
    # a second demo in the same folder replaces the run; --no-train stops after the summary
    again = CliRunner().invoke(main, ["demo", "-d", str(tmp_path / "demo"), "-n", "40", "-q", "--no-train"])
    assert again.exit_code == 0 and "samples:   40" in again.output and "accuracy" not in again.output


def test_bench_train_quick(capsys):
    spec = importlib.util.spec_from_file_location("bench_train", TOOLS / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["results"]
    assert row["steps_per_s"] > 0 and 0 <= row["data_wait_share"] < 1
    assert report["meta"]["device"] in ("cpu", "cuda:0")
