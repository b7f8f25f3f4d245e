"""`resnet`: a ResNet-style trunk of basic blocks with a full-resolution 3x3 stem (plain torch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtldata.train.trunks.base import Trunk, TrunkRequest, weights_from_file
from mtldata.train.trunks.small import _conv_bn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetTrunk(nn.Module):
    """A ResNet-style trunk: a 3x3 stem, stages of basic blocks (stride 2 from the second), pooling.

    `blocks=(2, 2, 2, 2)` is ResNet-18's layout; the stem keeps full resolution, which suits the
    small images of multi-attribute datasets better than ImageNet's 7x7/2 stem and max pool.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, width))
        stages = []
        cin = width
        for i, count in enumerate(blocks):
            cout = width * 2**i
            stage = [BasicBlock(cin, cout, 2 if i > 0 else 1)]
            stage += [BasicBlock(cout, cout) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = cin
        for m in self.modules():
            if isinstance(m, BasicBlock):  # each residual branch starts as identity (zero-init last BN)
                nn.init.zeros_(m.bn2.weight)

    @property
    def last_shared(self) -> torch.Tensor:
        return self.stages[-1][-1].conv2.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


def build(arg: str, request: TrunkRequest) -> Trunk:
    """The `resnet` trunk with the request's width and blocks per stage."""
    net = ResNetTrunk(request.input_shape[0], request.width, request.blocks)
    return Trunk(net, notes=weights_from_file(net, request, "resnet"))
