"""MultiLeNet's shared part (Sener & Koltun 2018) for `mtldata train --trunk multilenet:multilenet`."""

from __future__ import annotations

from torch import nn


def multilenet() -> tuple[nn.Module, int]:
    """Two 5x5 conv + max-pool + ReLU stages and a 50-d layer, on 3x28x28 inputs: (module, 50)."""
    net = nn.Sequential(
        nn.Conv2d(3, 10, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(10, 20, 5),
        nn.Dropout2d(0.5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(320, 50),
        nn.ReLU(),
    )
    return net, 50
