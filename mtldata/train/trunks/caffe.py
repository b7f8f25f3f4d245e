"""`caffe:NET.prototxt[:LAST_LAYER]`: a Caffe net's lower layers, run by CaffeNet, as the trunk.

The trunk is LAST_LAYER and the layers it depends on, fed with the net's data top; the default
LAST_LAYER is the last layer that every output and loss of the net depends on (the shared part
before the task heads). Weights come from `--init x.caffemodel` (Caffe's CopyTrainedLayersFrom by
layer name: the heads' layers in the file are ignored).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtldata.caffe import caffe_pb2
from mtldata.caffe.prototxt import read_net
from mtldata.caffenet.layers import DATA_LAYER_TYPES
from mtldata.caffenet.net import CaffeNet, filter_net, load_caffemodel
from mtldata.train.trunks.base import Trunk, TrunkError, TrunkRequest


def split_arg(arg: str) -> tuple[str, str]:
    """(prototxt path, last layer or "") of `NET.prototxt[:LAST_LAYER]`."""
    head, sep, tail = arg.rpartition(":")
    if sep and head.endswith((".prototxt", ".pt.txt", ".txt")) and tail:
        return head, tail
    return arg, ""


def _ancestry(net: caffe_pb2.NetParameter) -> tuple[list[set[int]], dict[str, int], str]:
    """For each layer the set of layers it depends on (itself included), the producers of the net's
    final blobs, and the data top (the first top of the first data layer)."""
    producer: dict[str, int] = {}
    deps: list[set[int]] = []
    consumed: set[str] = set()
    data_top = ""
    for i, layer in enumerate(net.layer):
        mine = {i}
        for blob in layer.bottom:
            if blob in producer:
                mine |= deps[producer[blob]]
            consumed.add(blob)
        deps.append(mine)
        if layer.type in DATA_LAYER_TYPES and layer.top and not data_top:
            data_top = layer.top[0]
        for blob in layer.top:
            producer[blob] = i
            if blob in layer.bottom:
                consumed.discard(blob)  # in place: the new value is not consumed yet
    finals = {
        blob: i for blob, i in producer.items() if blob not in consumed or net.layer[i].type.endswith("Loss")
    }
    return deps, finals, data_top


def default_last_layer(net: caffe_pb2.NetParameter) -> str:
    """The last layer, fed by the data top, that every final blob (outputs and losses) depends on."""
    deps, finals, data_top = _ancestry(net)
    if not data_top:
        raise TrunkError(f"net {net.name!r}: no data layer, so no input for the trunk")
    data_layers = {
        i for i, layer in enumerate(net.layer) if data_top in layer.top and layer.type in DATA_LAYER_TYPES
    }
    common = set.intersection(*(deps[i] for i in set(finals.values()))) if finals else set()
    shared = [i for i in sorted(common) if deps[i] & data_layers and i not in data_layers]
    if not shared:
        raise TrunkError(f"net {net.name!r}: its outputs share no layer after the data; name LAST_LAYER")
    return net.layer[shared[-1]].name


class CaffeTrunk(nn.Module):
    """A CaffeNet over the trunk's layers: forward(x) feeds the data top and returns LAST_LAYER's top."""

    def __init__(self, net: CaffeNet, data_top: str, output: str) -> None:
        super().__init__()
        self.net = net
        self.data_top = data_top
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net({self.data_top: x})[self.output]

    def layer_modules(self) -> list[tuple[str, nn.Module]]:
        """The executed layers by their Caffe names, in net order (what --freeze-until names)."""
        return [(m.layer_name, m) for m in self.net.layers()]

    def sync_phase(self) -> None:
        """Caffe layers act by phase: TRAIN while a layer is in training mode, else TEST."""
        for module in self.net.layers():
            module.phase = "train" if module.training else "test"
            if module.layer_param.type == "BatchNorm" and not module.layer_param.batch_norm_param.HasField(
                "use_global_stats"
            ):
                module.use_global_stats = not module.training

    def train(self, mode: bool = True) -> CaffeTrunk:
        super().train(mode)
        self.sync_phase()
        return self


def build(arg: str, request: TrunkRequest) -> Trunk:
    """The trunk part of the prototxt, set up for the request's input shape, with --init's weights."""
    path, last = split_arg(arg)
    if not Path(path).is_file():
        raise TrunkError(f"{path}: no such prototxt (trunk caffe:{arg})")
    net = filter_net(read_net(path), "train")
    last = last or default_last_layer(net)
    names = [layer.name for layer in net.layer]
    if last not in names:
        raise TrunkError(f"{path}: no layer {last!r} in the TRAIN net (layers: {', '.join(names)})")
    deps, _, data_top = _ancestry(net)
    keep = sorted(deps[names.index(last)])
    trunk_param = caffe_pb2.NetParameter()
    trunk_param.name = f"{net.name} trunk"
    trunk_param.input.append(data_top)
    trunk_param.input_shape.add().dim.extend([1, *request.input_shape])
    for i in keep:
        layer = net.layer[i]
        if layer.type in DATA_LAYER_TYPES:
            continue
        if any(b != data_top and b not in {t for j in keep for t in net.layer[j].top} for b in layer.bottom):
            raise TrunkError(f"{path}: layer {layer.name!r} needs a blob the trunk does not make")
        trunk_param.layer.add().CopyFrom(layer)
    output = net.layer[names.index(last)].top[0]
    try:
        caffe_net = CaffeNet(trunk_param, "train")
    except (ValueError, RuntimeError) as e:
        raise TrunkError(
            f"{path}: the trunk up to {last!r} cannot take inputs of shape {request.input_shape}: {e}"
        ) from None
    notes = [f"caffe trunk: {len(trunk_param.layer)} layers of {path} up to {last!r} (input {data_top!r})"]
    if request.load_weights and request.init:
        report = load_caffemodel(caffe_net, request.init)
        notes.append(
            f"init: {len(report.copied)} layers from {request.init}"
            + (
                f", {len(report.not_in_file)} not in it ({', '.join(report.not_in_file)})"
                if report.not_in_file
                else ""
            )
        )
    if request.load_weights and request.pretrained:
        raise TrunkError("a Caffe trunk takes its weights from --init x.caffemodel, not --pretrained")
    return Trunk(CaffeTrunk(caffe_net, data_top, output), notes=notes)
