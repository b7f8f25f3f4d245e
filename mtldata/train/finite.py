"""The guard against a training loss that became NaN or inf: stop with the step and the task, or skip."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from mtldata.errors import MtlDataError


class NonFiniteLossError(MtlDataError):
    """A training loss became NaN or inf; the message names the step and the task."""


def finite_losses(out: Any, names: Sequence[str], step: int, *, ddp: bool, skip: bool) -> bool:
    """Whether this micro-batch's losses (`out.losses`, `out.total`) are finite on every rank.

    A non-finite one raises NonFiniteLossError naming `step` and the first such task, unless `skip`
    (then False: the caller drops the step). Under DDP the ranks agree first (one all-reduce), so that
    every rank stops or skips together instead of waiting for each other.
    """
    bad = [(n, out.losses[n]) for n in names if not bool(torch.isfinite(out.losses[n].detach()).all())]
    if not bad and not bool(torch.isfinite(out.total.detach()).all()):
        bad = [("(weighted total)", out.total)]
    any_bad = bool(bad)
    if ddp:
        flag = torch.tensor([1.0 if bad else 0.0], device=out.total.device)
        dist.all_reduce(flag)
        any_bad = flag.item() > 0
    if not any_bad or skip:
        return not any_bad
    if not bad:
        raise NonFiniteLossError(f"step {step}: a loss became non-finite on another rank; see its message")
    name, value = bad[0]
    shown = float(value.detach().float().reshape(-1)[0])
    text = "NaN" if math.isnan(shown) else str(shown)
    raise NonFiniteLossError(
        f"step {step}: the loss of task {name!r} became {text}; lower the learning rate, set clip_grad, "
        "check the labels, or pass --skip-nonfinite to skip such steps"
    )
