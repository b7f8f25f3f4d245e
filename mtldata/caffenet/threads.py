"""How many CPU threads a Caffe net runs with: the cores this process may use, or fewer if faster.

Small Caffe nets (batch 32 of 64x64 images) do many small ops; torch's intra-op threads then spend
more time synchronising than computing, and on a busy machine 2 threads ran 3x slower than 1. So
unless the user fixed the count, the first iterations are timed at 1 thread and at every core this
process may use, and the rest of the run keeps the faster count. Results do not depend on the count
beyond float rounding in reductions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mtldata.storage.processes import available_cores

__all__ = ["ThreadChooser", "available_cores"]


@dataclass
class ThreadChooser:
    """Called before every training iteration; times `trial` iterations per candidate, then settles.

    `threads` (or OMP_NUM_THREADS) fixes the count; otherwise the candidates are `available_cores()` and 1.
    The first iteration of each trial is not timed (allocation and warm-up); `log` receives one line
    saying what was chosen and why.
    """

    threads: int | None = None
    trial: int = 4
    log: Callable[[str], None] | None = None
    candidates: list[int] = field(default_factory=list)
    timings: dict[int, float] = field(default_factory=dict)
    chosen: int | None = None
    _calls: int = 0
    _start: float | None = None

    def __post_init__(self) -> None:
        cores = available_cores()
        if self.threads is not None:
            self._settle(self.threads, f"{self.threads} (as asked; {cores} cores available)")
        elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
            fixed = torch.get_num_threads()
            self._settle(fixed, f"{fixed} (OMP_NUM_THREADS; {cores} cores available)")
        elif cores == 1:
            self._settle(1, "1 (1 core available)")
        else:
            # One thread first: when many threads win (the usual case on a quiet machine), the
            # trial ends where the run goes on, with one switch, upwards. A switch down leaves
            # OpenMP's idle workers spinning for a while, which slows the next iterations; with
            # this order it happens only when one thread wins, on a busy machine.
            self.candidates = [1, cores]
            torch.set_num_threads(self.candidates[0])

    def _settle(self, threads: int, why: str) -> None:
        self.chosen = threads
        torch.set_num_threads(threads)
        if self.log is not None:
            self.log(f"CPU threads: {why}")

    def __call__(self, iteration: int) -> None:
        if self.chosen is not None:
            return
        now = time.perf_counter()
        per = self.trial + 1  # one untimed warm-up iteration per candidate
        index, position = divmod(self._calls, per)
        if position == 1:
            self._start = now  # the warm-up iteration just ended
        elif position == 0 and index > 0 and self._start is not None:
            self.timings[self.candidates[index - 1]] = (now - self._start) / self.trial
        self._calls += 1
        if index >= len(self.candidates):
            best = min(self.timings, key=lambda t: self.timings[t])
            rates = ", ".join(f"{t} thread{'s' * (t > 1)} {1 / s:.1f} it/s" for t, s in self.timings.items())
            self._settle(best, f"{best} of {available_cores()} cores, the faster in a trial ({rates})")
        elif position == 0:
            torch.set_num_threads(self.candidates[index])
