"""Checkpoints: atomic writes (temp file, fsync, os.replace) and the RNG states a resume restores."""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtldata.durable import replace_atomically
from mtldata.errors import MtlDataError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "mtldata-train"
CHECKPOINT_VERSION = 1


class CheckpointError(MtlDataError):
    """A checkpoint that cannot be read or does not fit the run."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write `state` to `path` so that a reader sees the old file or the whole new one, never a torn one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    return replace_atomically(target, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors only: loaded with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CheckpointError(f"{path}: not a mtldata checkpoint ({_load_failure(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a mtldata checkpoint (it holds a {type(state).__name__})")
    return state


def _load_failure(error: Exception) -> str:
    """Why torch.load(weights_only=True) failed, in a few words (torch's own text suggests
    weights_only=False, which would run whatever code the file carries)."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(error, pickle.UnpicklingError) and found:
        return f"it holds Python objects ({found[1]}) that are not loaded: only tensors and plain values are"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    first = detail[1] if detail else (text.strip().splitlines() or [""])[0]
    if len(first) > 100:
        first = first[:97] + "..."
    return f"not a torch file that loads: {type(error).__name__}" + (f": {first}" if first else "")


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states, in types torch.load(weights_only) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (CUDA states only where this process has the same GPUs)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
