"""What a trunk builder receives and returns, and the pieces every builder shares.

A builder turns the text after the kind (`torchvision:resnet18` -> "resnet18") and a `TrunkRequest`
into a `Trunk`: the module (its forward gives (N, F) features, or (N, C, H, W) maps that the model
pools), the feature size, and what input the trunk expects (channel order, mean/std, a fixed size).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtldata.train.config import ConfigError

__all__ = ["InputExpectation", "Trunk", "TrunkError", "TrunkRequest", "load_weights_file", "require"]


class TrunkError(ConfigError):
    """A trunk that cannot be built: unknown name, missing package or weights, wrong feature size."""


@dataclass(frozen=True)
class TrunkRequest:
    """What the model needs from the trunk: input shape (C, H, W), sizes, and which weights to load."""

    input_shape: tuple[int, int, int] = (3, 32, 32)
    width: int = 32
    blocks: Sequence[int] = (2, 2, 2, 2)
    pretrained: str = ""  # "": none, "default": the library's own weights, else a file
    init: str = ""  # a .caffemodel for a Caffe trunk
    load_weights: bool = True  # False: the architecture only (a checkpoint's weights come next)


@dataclass(frozen=True)
class InputExpectation:
    """The input a trunk was made for: RGB or BGR, per-channel mean/std of [0, 1] pixels, a fixed size."""

    channel_order: str = "rgb"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet's, in `channel_order`
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    size: tuple[int, int] | None = None  # (H, W) when the architecture accepts no other


@dataclass
class Trunk:
    """A built trunk: the module, its feature size (None: measured by a dry run), its input, notes."""

    module: nn.Module
    features: int | None = None
    expects: InputExpectation | None = None  # None: the Caffe transform's output as it is
    notes: list[str] = field(default_factory=list)  # what was loaded from where, for the run's log


def require(package: str, extra: str) -> Any:
    """Import an optional package, or fail with one line naming the extra that installs it."""
    try:
        return importlib.import_module(package)
    except Exception as e:  # noqa: BLE001 - a broken install fails with other errors than ImportError
        raise TrunkError(
            f"trunk: this trunk needs {package}, which does not import ({type(e).__name__}: {e}); "
            f"install it with pip install 'mtldata[{extra}]'"
        ) from None


def load_weights_file(module: nn.Module, path: str) -> str:
    """Copy the tensors of a state_dict or checkpoint file whose names and shapes fit `module`.

    Names may carry an mtldata checkpoint's `trunk.` prefix; a classifier the trunk dropped is
    ignored. Returns a note for the log; no fitting tensor is an error.
    """
    file = Path(path)
    if not file.is_file():
        raise TrunkError(f"{path}: no such weights file (--pretrained)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged or unsafe file
        raise TrunkError(f"{path}: not a readable state_dict or checkpoint ({type(e).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TrunkError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    if any(str(k).startswith("trunk.") for k in state):
        state = {k[len("trunk.") :]: v for k, v in state.items() if str(k).startswith("trunk.")}
    own = module.state_dict()
    fit = {
        k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
    }
    if not fit:
        raise TrunkError(f"{path}: no tensor fits this trunk (another architecture?)")
    module.load_state_dict(fit, strict=False)
    left = len(own) - len(fit)
    return f"pretrained: {len(fit)} tensors from {path}" + (f", {left} left as initialised" if left else "")


def weights_from_file(module: nn.Module, request: TrunkRequest, name: str) -> list[str]:
    """--pretrained for a trunk without a library's weights (mtldata's own, your factory's): a FILE's
    tensors (the notes for the log), nothing without --pretrained, and an error for the bare flag,
    which would otherwise train from random weights without a word."""
    if not (request.load_weights and request.pretrained):
        return []
    if request.pretrained == "default":
        raise TrunkError(
            f"trunk {name}: has no published weights to start from; give --pretrained FILE (a state_dict "
            "or checkpoint), or a torchvision:NAME or timm:NAME trunk"
        )
    return [load_weights_file(module, request.pretrained)]


def offline_hint() -> str:
    return (
        "runs are offline here: download the file once elsewhere and copy it there, or give --pretrained FILE"
    )


def hub_dir() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")
