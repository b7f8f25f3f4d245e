"""The CPU thread count of Caffe-net runs: fixed when asked, otherwise the faster in a timed trial."""

from __future__ import annotations

import time

import pytest
import torch

import mtldata.caffenet.threads as threads_module
from mtldata.caffenet.threads import ThreadChooser, available_cores


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(chooser: ThreadChooser, seconds_at: dict[int, float], iterations: int) -> None:
    for it in range(iterations):
        chooser(it)
        time.sleep(seconds_at[torch.get_num_threads()])


def test_available_cores_is_the_affinity_count() -> None:
    assert 1 <= available_cores() <= (torch.get_num_threads() + 64)


def test_a_fixed_count_is_used_without_a_trial() -> None:
    lines: list[str] = []
    chooser = ThreadChooser(1, log=lines.append)
    assert chooser.chosen == 1 and torch.get_num_threads() == 1
    assert lines and lines[0].startswith("CPU threads: 1 (as asked")


@pytest.mark.parametrize(("slow", "fast"), [(1, 2), (2, 1)])
def test_the_trial_keeps_the_faster_count(monkeypatch: pytest.MonkeyPatch, slow: int, fast: int) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "available_cores", lambda: 2)
    lines: list[str] = []
    chooser = ThreadChooser(None, trial=3, log=lines.append)
    run(chooser, {slow: 0.03, fast: 0.005}, iterations=8)
    assert chooser.chosen is None  # 2 candidates x (1 warm-up + 3 timed) iterations: the last one runs
    run(chooser, {slow: 0.03, fast: 0.005}, iterations=1)
    assert chooser.chosen == fast and torch.get_num_threads() == fast
    assert chooser.timings[slow] > chooser.timings[fast]
    assert len(lines) == 1 and f"CPU threads: {fast} of 2 cores" in lines[0]


def test_omp_num_threads_fixes_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(threads_module, "available_cores", lambda: 2)
    torch.set_num_threads(1)
    lines: list[str] = []
    chooser = ThreadChooser(None, log=lines.append)
    assert chooser.chosen == 1 and "OMP_NUM_THREADS" in lines[0]


def test_one_core_means_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "available_cores", lambda: 1)
    chooser = ThreadChooser(None)
    assert chooser.chosen == 1 and torch.get_num_threads() == 1
