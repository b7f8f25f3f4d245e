"""`torchvision:NAME`: a torchvision classification model without its classifier (extra `[vision]`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mtldata.train.trunks.base import (
    InputExpectation,
    Trunk,
    TrunkError,
    TrunkRequest,
    hub_dir,
    load_weights_file,
    offline_hint,
    require,
)

CLASSIFIERS = ("fc", "classifier", "head", "heads")


def drop_classifier(net: nn.Module) -> None:
    """Replace the final Linear of the model's classifier by Identity, so forward gives pooled features."""
    for name in CLASSIFIERS:
        head = getattr(net, name, None)
        if isinstance(head, nn.Linear):
            setattr(net, name, nn.Identity())
            return
        if isinstance(head, nn.Sequential):
            for i in reversed(range(len(head))):
                if isinstance(head[i], nn.Linear):
                    head[i] = nn.Identity()
                    return
    raise TrunkError(f"trunk: cannot find the classifier of {type(net).__name__} ({', '.join(CLASSIFIERS)})")


def build(arg: str, request: TrunkRequest) -> Trunk:
    """The torchvision model `arg` with random or pretrained weights, its classifier dropped."""
    tv = require("torchvision", "vision")
    models = tv.models
    try:
        net = models.get_model(arg, weights=None)
    except ValueError:
        raise TrunkError(
            f"trunk torchvision:{arg}: torchvision {tv.__version__} has no model {arg!r} "
            "(torchvision.models.list_models() names them)"
        ) from None
    try:
        weights = models.get_model_weights(arg).DEFAULT
    except (ValueError, AttributeError):
        weights = None
    expects = InputExpectation()
    if weights is not None:
        preset = weights.transforms()
        mean, std = getattr(preset, "mean", None), getattr(preset, "std", None)
        if mean and std:
            expects = InputExpectation("rgb", tuple(mean), tuple(std))
    if hasattr(net, "image_size"):  # vision transformers take one input size only
        expects = InputExpectation(expects.channel_order, expects.mean, expects.std, (net.image_size,) * 2)
    notes = []
    if request.load_weights and request.pretrained == "default":
        if weights is None:
            raise TrunkError(f"trunk torchvision:{arg}: torchvision has no pretrained weights for it")
        file = Path(hub_dir()) / os.path.basename(weights.url)
        if not file.is_file():
            raise TrunkError(
                f"{file}: the pretrained weights of torchvision:{arg} ({weights}) are not in torch hub's "
                f"cache; {offline_hint()} (from {weights.url})"
            )
        net.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        notes.append(f"pretrained: torchvision's {weights} from {file}")
    drop_classifier(net)
    if request.load_weights and request.pretrained not in ("", "default"):
        notes.append(load_weights_file(net, request.pretrained))
    return Trunk(net, expects=expects, notes=notes)
