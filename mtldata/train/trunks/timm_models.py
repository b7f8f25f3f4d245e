"""`timm:NAME`: a timm model created with num_classes=0, i.e. giving pooled features (extra `[timm]`)."""

from __future__ import annotations

import os

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


def build(arg: str, request: TrunkRequest) -> Trunk:
    """The timm model `arg` with random or (from the local cache only) pretrained weights."""
    timm = require("timm", "timm")
    if not timm.list_models(arg) and not timm.is_model(arg):
        raise TrunkError(f"trunk timm:{arg}: timm {timm.__version__} has no model {arg!r}")
    library = request.load_weights and request.pretrained == "default"
    notes = []
    if library:
        saved = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"  # the local cache only: never a download in a training run
        try:
            net = timm.create_model(arg, pretrained=True, num_classes=0)
        except Exception as e:  # noqa: BLE001 - hub and file errors of many kinds
            cache = os.environ.get("HF_HUB_CACHE") or os.path.expanduser("~/.cache/huggingface/hub")
            raise TrunkError(
                f"trunk timm:{arg}: its pretrained weights are not in the local cache ({cache} for Hugging "
                f"Face weights, {hub_dir()} for older ones; {type(e).__name__}); {offline_hint()}"
            ) from None
        finally:
            if saved is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = saved
        notes.append(f"pretrained: timm's weights for {arg} from the local cache")
    else:
        net = timm.create_model(arg, pretrained=False, num_classes=0)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    size = None
    if getattr(getattr(net, "patch_embed", None), "strict_img_size", False):
        size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    expects = InputExpectation(
        "rgb",
        tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        size,
    )
    if request.load_weights and request.pretrained not in ("", "default"):
        notes.append(load_weights_file(net, request.pretrained))
    return Trunk(net, features=int(net.num_features), expects=expects, notes=notes)
