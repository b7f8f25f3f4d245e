"""`small`: Conv-BN-ReLU stages doubling the channels, global average pooling (plain torch)."""

from __future__ import annotations

import torch
from torch import nn

from mtldata.train.trunks.base import Trunk, TrunkRequest, weights_from_file


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages doubling the channels, max pooling between them, global average pooling."""

    def __init__(self, in_channels: int = 3, width: int = 32, stages: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(stages):
            cout = width * 2**i
            layers += _conv_bn(cin, cout)
            if i < stages - 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = cin

    @property
    def last_shared(self) -> torch.Tensor:
        """The last shared weight (where GradNorm measures gradient norms)."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        return convs[-1].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def build(arg: str, request: TrunkRequest) -> Trunk:
    """The `small` trunk for the request's channels and width."""
    net = SmallCNN(request.input_shape[0], request.width)
    return Trunk(net, notes=weights_from_file(net, request, "small"))
