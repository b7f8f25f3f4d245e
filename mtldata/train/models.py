"""Networks for multi-task training: a shared trunk (small CNN or ResNet-style) and one head per task.

Plain torch, no torchvision. Heads are linear layers on the trunk's pooled features; a softmax task
gets one output per class, a sigmoid or euclidean task one per label column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtldata.tasks import TaskSet

__all__ = ["TRUNKS", "MultiTaskNet", "ResNetTrunk", "SmallCNN", "build_model"]

TRUNKS = ("small", "resnet")


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


class MultiTaskNet(nn.Module):
    """A trunk shared by every task and a linear head per task; forward gives {task: output}."""

    def __init__(self, trunk: nn.Module, tasks: TaskSet) -> None:
        super().__init__()
        self.trunk = trunk
        features = int(trunk.out_features)
        self.heads = nn.ModuleDict()
        self.head_keys: dict[str, str] = {}  # task name -> module name (module names cannot hold '.')
        for i, task in enumerate(tasks):
            key = task.name.replace(".", "_")
            if key in self.heads:
                key = f"{key}_{i}"
            self.head_keys[task.name] = key
            outputs = task.classes if task.kind == "softmax" else task.width
            self.heads[key] = nn.Linear(features, int(outputs))

    @property
    def shared_parameter(self) -> torch.Tensor:
        return self.trunk.last_shared

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {name: self.heads[key](z) for name, key in self.head_keys.items()}


def build_model(
    trunk: str, tasks: TaskSet, in_channels: int = 3, width: int = 32, blocks: Sequence[int] = (2, 2, 2, 2)
) -> MultiTaskNet:
    """A MultiTaskNet with the named trunk ("small" or "resnet")."""
    if trunk == "small":
        body: nn.Module = SmallCNN(in_channels, width)
    elif trunk == "resnet":
        body = ResNetTrunk(in_channels, width, blocks)
    else:
        raise ValueError(f"trunk must be one of {', '.join(TRUNKS)}, got {trunk!r}")
    return MultiTaskNet(body, tasks)
