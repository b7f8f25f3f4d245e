"""The trunk registry: `--trunk` text -> a builder, one module per trunk kind.

`small` and `resnet` are plain torch; `torchvision:NAME` and `timm:NAME` import their package only
when asked; `caffe:NET.prototxt[:LAST_LAYER]` runs a Caffe net's lower layers; `package.module:factory`
calls your function, which returns (nn.Module, feature size). A new kind is one more module here and
one line in `KINDS`.
"""

from __future__ import annotations

import importlib

from mtldata.train.trunks.base import InputExpectation, Trunk, TrunkError, TrunkRequest

__all__ = ["KINDS", "InputExpectation", "Trunk", "TrunkError", "TrunkRequest", "build_trunk", "parse_trunk"]

# kind -> module under mtldata.train.trunks with `build(arg, request) -> Trunk`
KINDS = {
    "small": "small",
    "resnet": "resnet",
    "torchvision": "torchvision_models",
    "timm": "timm_models",
    "caffe": "caffe",
    "factory": "factory",
}
NAMED = ("torchvision", "timm", "caffe")  # kinds written KIND:ARG


def parse_trunk(text: str) -> tuple[str, str]:
    """(kind, argument) of a --trunk value; raises TrunkError for text no kind accepts."""
    if text in ("small", "resnet"):
        return text, ""
    kind, sep, arg = text.partition(":")
    if sep and kind in NAMED:
        if not arg:
            raise TrunkError(f"trunk {text!r}: give a name after '{kind}:'")
        return kind, arg
    if sep and arg and all(part.isidentifier() for part in kind.split(".")) and arg.isidentifier():
        return "factory", text
    raise TrunkError(
        f"trunk {text!r}: expected small, resnet, torchvision:NAME, timm:NAME, "
        "caffe:NET.prototxt[:LAST_LAYER] or package.module:factory"
    )


def build_trunk(text: str, request: TrunkRequest) -> Trunk:
    """Build the trunk a --trunk value names."""
    kind, arg = parse_trunk(text)
    module = importlib.import_module(f"mtldata.train.trunks.{KINDS[kind]}")
    return module.build(arg, request)
