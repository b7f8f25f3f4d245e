"""Networks for multi-task training: a shared trunk (see `trunks/`) and one head per task.

Heads take the trunk's pooled features: a linear layer, or (`head_hidden`) a hidden layer with ReLU
and dropout first; a softmax task gets one output per class, a sigmoid or euclidean task one per
label column. An input stage turns the Caffe transform's output into what the trunk expects.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtldata.tasks import TaskSet
from mtldata.train.trunks import Trunk, TrunkError, TrunkRequest, build_trunk
from mtldata.train.trunks.resnet import BasicBlock, ResNetTrunk
from mtldata.train.trunks.small import SmallCNN

__all__ = [
    "TRUNKS",
    "BasicBlock",
    "InputStage",
    "MultiTaskNet",
    "ResNetTrunk",
    "SmallCNN",
    "build_model",
    "freeze",
]

TRUNKS = ("small", "resnet")  # the built-in ones; `trunks.parse_trunk` lists every kind


class InputStage(nn.Module):
    """y[c] = a[c] * x[source[c]] + b[c], then a resize when the trunk takes one size only."""

    def __init__(
        self, source: list[int], a: list[float], b: list[float], size: tuple[int, int] | None
    ) -> None:
        super().__init__()
        self.source = list(source)
        self.register_buffer("a", torch.tensor(a, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("b", torch.tensor(b, dtype=torch.float32).view(1, -1, 1, 1))
        self.size = tuple(size) if size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.source != list(range(x.shape[1])):
            x = x[:, self.source]
        x = x * self.a + self.b
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


def _head(features: int, outputs: int, hidden: int, dropout: float) -> nn.Module:
    if not hidden and not dropout:
        return nn.Linear(features, outputs)  # the plain head keeps the state_dict names of earlier runs
    if not hidden:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(features, outputs))
    return nn.Sequential(
        nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, outputs)
    )


class MultiTaskNet(nn.Module):
    """A trunk shared by every task and a head per task; forward gives {task: output}."""

    def __init__(
        self,
        trunk: nn.Module,
        tasks: TaskSet,
        *,
        features: int | None = None,
        hidden: int = 0,
        dropout: float = 0.0,
        input_stage: InputStage | None = None,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        if input_stage is not None:
            self.input = input_stage
        features = int(trunk.out_features) if features is None else int(features)
        self.heads = nn.ModuleDict()
        self.head_keys: dict[str, str] = {}  # task name -> module name (module names cannot hold '.')
        for i, task in enumerate(tasks):
            key = task.name.replace(".", "_")
            if key in self.heads:
                key = f"{key}_{i}"
            self.head_keys[task.name] = key
            outputs = task.classes if task.kind == "softmax" else task.width
            self.heads[key] = _head(features, int(outputs), hidden, dropout)
        self.frozen_norms: list[nn.Module] = []  # batch norms of a frozen part: kept in eval mode

    def shared_parameter(self) -> torch.Tensor:
        """The last shared weight that trains (where GradNorm measures gradient norms).

        A method, not a property: torch.jit.trace reads every property of a module it exports, and
        a frozen trunk makes this one raise."""
        last = getattr(self.trunk, "last_shared", None)
        if isinstance(last, torch.Tensor) and last.requires_grad:
            return last
        weights = [p for p in self.trunk.parameters() if p.requires_grad and p.dim() > 1]
        if not weights:
            raise TrunkError("weighting gradnorm needs a trunk weight that trains")
        return weights[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's pooled features: (N, F); maps (N, C, H, W) are averaged over H and W."""
        if hasattr(self, "input"):
            x = self.input(x)
        z = self.trunk(x)
        if z.dim() == 4:
            z = z.mean(dim=(2, 3))
        return torch.flatten(z, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.features(x)
        return {name: self.heads[key](z) for name, key in self.head_keys.items()}

    def train(self, mode: bool = True) -> MultiTaskNet:
        super().train(mode)
        for module in self.frozen_norms:
            module.eval()
        sync = getattr(self.trunk, "sync_phase", None)
        if sync is not None:
            sync()
        return self


def _layer_modules(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    named = getattr(trunk, "layer_modules", None)
    if named is not None:
        return named()
    return [(name, m) for name, m in trunk.named_modules() if name]


def freeze(model: MultiTaskNet, *, trunk: bool = False, until: str = "") -> tuple[int, int]:
    """Freeze the whole trunk, or its modules up to and including `until` (by name, in order).

    Batch norms in the frozen part stay in eval mode from now on. Returns (trainable, frozen)
    parameter counts of the whole model.
    """
    frozen_modules: list[nn.Module] = []
    if trunk:
        frozen_modules = [model.trunk, *model.trunk.modules()]
    elif until:
        layers = _layer_modules(model.trunk)
        names = [n for n, _ in layers]
        if until not in names:
            top = [n for n in names if "." not in n]
            raise TrunkError(f"freeze_until: the trunk has no layer {until!r} (its layers: {', '.join(top)})")
        target = dict(layers)[until]
        inside = {id(m) for m in target.modules()}
        last = max(i for i, (_, m) in enumerate(layers) if id(m) in inside)
        frozen_modules = [m for _, m in layers[: last + 1]]
    for module in frozen_modules:
        module.requires_grad_(False)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module).__name__ == "BatchNorm":
            model.frozen_norms.append(module)
    model.train(model.training)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def _input_stage(cfg: Any, trunk: Trunk, channels: int, channel_order: str) -> tuple[InputStage | None, str]:
    """The input stage from the Caffe transform's output to the trunk's expected input, and a log note."""
    expects = trunk.expects
    if expects is None:
        return None, ""
    want = len(expects.mean)
    if channels == 1:
        source = [0] * want
        order_note = "gray input repeated to 3 channels"
    elif channel_order != expects.channel_order and channels == want:
        source = list(reversed(range(channels)))
        order_note = f"the dataset is {channel_order.upper()} (Caffe), the trunk expects {expects.channel_order.upper()}: channels flipped"
    else:
        source = list(range(channels))
        order_note = f"channels in {channel_order.upper()} order as the trunk expects"
    if cfg.mean_values or cfg.mean_file or cfg.scale != type(cfg)().scale:
        # the transform was given: the trunk gets its output as it is (only the channel order changes)
        return InputStage(
            source, [1.0] * want, [0.0] * want, expects.size
        ), f"input: {order_note}; the given transform is used as it is"
    # the default transform gives pixel * scale; the trunk wants (pixel / 255 - mean) / std
    a = [1.0 / (255.0 * cfg.scale * s) for s in expects.std]
    b = [-m / s for m, s in zip(expects.mean, expects.std, strict=True)]
    size = f", resized to {expects.size[0]}x{expects.size[1]}" if expects.size else ""
    note = f"input: {order_note}; normalised with the trunk's mean {list(expects.mean)} and std {list(expects.std)}{size}"
    return InputStage(source, a, b, expects.size), note


def build_model(
    cfg: Any,
    tasks: TaskSet,
    input_shape: tuple[int, int, int] | None = None,
    *,
    channel_order: str = "bgr",
    load_weights: bool = False,
    notes: list[str] | None = None,
) -> MultiTaskNet:
    """The MultiTaskNet a TrainConfig describes: its trunk, input stage and heads.

    `input_shape` is the network input (C, H, W) (default: 3 channels, crop_size or 32 square);
    `load_weights` loads --pretrained/--init's caffemodel (training does; rebuilding a checkpoint need
    not). `notes` collects what the log should say (weights loaded, channel flips).
    """
    if input_shape is None:
        side = cfg.crop_size or 32
        input_shape = (3, side, side)
    request = TrunkRequest(
        input_shape=tuple(int(d) for d in input_shape),
        width=cfg.width,
        blocks=tuple(cfg.resnet_blocks),
        pretrained=cfg.pretrained,
        init=cfg.init if cfg.init.endswith(".caffemodel") else "",
        load_weights=load_weights,
    )
    trunk = build_trunk(cfg.trunk, request)
    stage, note = _input_stage(cfg, trunk, int(input_shape[0]), channel_order)
    features = trunk.features
    if features is None:
        features = getattr(trunk.module, "out_features", None)
    if features is None:
        features = _measure(trunk.module, stage, input_shape)
    if notes is not None:
        notes.extend(trunk.notes + ([note] if note else []))
    return MultiTaskNet(
        trunk.module,
        tasks,
        features=features,
        hidden=cfg.head_hidden,
        dropout=cfg.head_dropout,
        input_stage=stage,
    )


@torch.no_grad()
def _measure(module: nn.Module, stage: InputStage | None, input_shape: tuple[int, int, int]) -> int:
    """The feature size, from one forward of a zero batch (in eval mode, so BatchNorm is untouched)."""
    was = module.training
    module.eval()
    x = torch.zeros(2, *input_shape)
    if stage is not None:
        x = stage(x)
    try:
        z = module(x)
    finally:
        module.train(was)
    return int(z.shape[1]) if z.dim() >= 2 else 1
