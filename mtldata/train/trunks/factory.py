"""`package.module:factory`: your function returning (nn.Module, feature size), e.g. a paper's network."""

from __future__ import annotations

import importlib
import os
import sys

import torch
from torch import nn

from mtldata.train.trunks.base import Trunk, TrunkError, TrunkRequest, weights_from_file


def build(arg: str, request: TrunkRequest) -> Trunk:
    """Import `package.module` (the working directory is searched too) and call `factory()`."""
    module_name, _, attr = arg.partition(":")
    if os.getcwd() not in sys.path:  # the console script does not put it there, python -m does
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TrunkError(f"trunk {arg}: cannot import {module_name} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TrunkError(f"trunk {arg}: {module_name} has no function {attr!r}")
    made = factory()
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module)):
        raise TrunkError(f"trunk {arg}: the factory must return (nn.Module, feature size)")
    net, features = made
    with torch.no_grad():
        was = net.training
        net.eval()
        z = net(torch.zeros(2, *request.input_shape))
        net.train(was)
    if z.dim() < 2 or int(z.shape[1]) != int(features):
        raise TrunkError(
            f"trunk {arg}: the factory says {features} features, its module gives shape {tuple(z.shape)} "
            f"for inputs of shape {request.input_shape}"
        )
    return Trunk(net, features=int(features), notes=weights_from_file(net, request, arg))
