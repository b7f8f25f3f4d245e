"""The training configuration: one dataclass, loadable from TOML, overridable by flags, saved with runs.

`TrainConfig.load(path, **overrides)` reads a flat TOML file whose keys are the field names; flags
override it; the resolved config is written beside the checkpoints (`config.toml`) and inside them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mtldata.errors import MtlDataError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "RUNTIME_FIELDS", "TrainConfig"]

CONFIG_NAME = "config.toml"

# Fields a resumed run may change without changing what is being trained.
RUNTIME_FIELDS = frozenset(
    {
        "device",
        "amp",
        "compile",
        "channels_last",
        "num_workers",
        "max_steps",
        "resume",
        "log_every",
        "tensorboard",
        "out_dir",
        "skip_nonfinite",  # a run stopped by a NaN loss may resume with it
    }
)

_CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "step", "constant"),
    "weighting": ("fixed", "uncertainty", "dwa", "gradnorm"),
    "device": ("auto", "cpu", "cuda"),
}


class ConfigError(MtlDataError):
    """A training configuration value that cannot be used; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on. Paths are strings; "" means "not given"."""

    # data
    dataset: str = ""  # training dataset (mtldata directory, Caffe LMDB, or an image LMDB with `labels`)
    labels: str = ""  # the float-label LMDB paired with an image LMDB (Caffe's multi-label layout)
    tasks: str = ""  # tasks.toml
    prototxt: str = ""  # Caffe train_val.prototxt giving sources, batch sizes, transform and tasks
    val: str = ""  # validation dataset
    val_labels: str = ""
    val_split: float = 0.0  # or hold out this fraction of the training set (chosen by seed)
    # Caffe transform_param of the images
    scale: float = 0.00390625
    mean_values: list[float] = field(default_factory=list)
    mean_file: str = ""
    crop_size: int = 0
    mirror: bool = False
    # model
    trunk: str = "small"  # small, resnet, torchvision:NAME, timm:NAME, caffe:NET.prototxt[:LAYER], pkg.mod:fn
    width: int = 32
    resnet_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    init: str = ""  # start from these weights (an mtldata checkpoint or a state_dict file)
    pretrained: str = ""  # "default": the library's weights (local cache), else a state_dict/checkpoint file
    freeze_trunk: bool = False
    freeze_until: str = ""  # freeze the trunk's layers up to and including this one (by name)
    trunk_lr_mult: float = 1.0
    head_hidden: int = 0  # heads get a hidden layer of this size (0: linear heads)
    head_dropout: float = 0.0
    # optimisation
    epochs: int = 10
    batch_size: int = 32  # per process
    grad_accum: int = 1
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    lr_step_epochs: int = 10  # "step": multiply the lr by lr_gamma every this many epochs
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    clip_grad: float = 0.0  # max gradient norm; 0: no clipping
    max_steps: int = 0  # stop after this many optimizer steps (the schedule still spans `epochs`)
    best_metric: str = "loss"  # best.pt: "loss" (weighted validation loss) or TASK/METRIC, e.g. cls/accuracy
    # task weighting
    weighting: str = "fixed"
    weighting_lr: float = 0.0  # lr of learned task weights; 0: the model's lr
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5
    # runtime
    device: str = "auto"
    amp: bool = True  # on CUDA: bf16 where supported, else fp16 with a GradScaler
    compile: bool = False
    channels_last: bool = True  # on CUDA
    num_workers: int = 2
    seed: int = 0
    out_dir: str = "runs/train"
    resume: bool = False
    log_every: int = 10
    tensorboard: bool = False
    skip_nonfinite: bool = False  # skip a step whose loss is NaN or inf instead of stopping the run

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _check_type(f.name, f.type, value))
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        positive = ("width", "epochs", "batch_size", "grad_accum", "log_every", "lr_step_epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        non_negative = (
            "crop_size",
            "warmup_steps",
            "max_steps",
            "num_workers",
            "lr",
            "momentum",
            "weight_decay",
            "clip_grad",
            "weighting_lr",
            "trunk_lr_mult",
            "lr_gamma",
            "head_hidden",
        )
        for name in non_negative:
            value = getattr(self, name)
            if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"{name}: expected a finite number >= 0, got {value}")
        if not 0 <= self.val_split < 1:
            raise ConfigError(f"val_split: expected a fraction in [0, 1), got {self.val_split}")
        if self.val and self.val_split:
            raise ConfigError("give either val (a validation dataset) or val_split, not both")
        if not self.resnet_blocks or any(b < 1 for b in self.resnet_blocks):
            raise ConfigError(f"resnet_blocks: expected a list of integers >= 1, got {self.resnet_blocks}")
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"head_dropout: expected a probability in [0, 1), got {self.head_dropout}")
        if self.freeze_trunk and self.freeze_until:
            raise ConfigError("give either freeze_trunk or freeze_until, not both")
        if self.best_metric != "loss" and self.best_metric.count("/") != 1:
            raise ConfigError(
                f"best_metric: expected loss or TASK/METRIC (e.g. cls/accuracy), got {self.best_metric!r}"
            )
        from mtldata.train.trunks import parse_trunk  # here: the trunk registry imports this module

        parse_trunk(self.trunk)
        if self.dwa_temperature <= 0:
            raise ConfigError(f"dwa_temperature: expected a number > 0, got {self.dwa_temperature}")
        if self.mean_file and self.mean_values:
            raise ConfigError("give either mean_file or mean_values, not both (as in Caffe)")
        if self.weighting == "gradnorm" and self.freeze_trunk:
            raise ConfigError(
                "weighting gradnorm measures gradients at the trunk, which freeze_trunk freezes"
            )

    # -------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> TrainConfig:
        """A config from a mapping of field names (unknown names are an error naming close matches)."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{origin}: unknown setting {key!r}{hint}")
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> TrainConfig:
        """Defaults, then the TOML file at `path` (if any), then `overrides` (None values are skipped)."""
        values: dict[str, Any] = {}
        if path is not None:
            values.update(read_toml(path))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, str(path) if path is not None else "config")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """TOML text that `TrainConfig.load` reads back to an equal config."""
        lines = ["# mtldata train configuration (resolved)"]
        for f in fields(self):
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"

    def differences(self, other: TrainConfig, ignore: frozenset[str] = RUNTIME_FIELDS) -> list[str]:
        """Names of fields (outside `ignore`) whose values differ."""
        return [
            f.name
            for f in fields(self)
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)
        ]


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    if "train" in doc and isinstance(doc["train"], dict) and len(doc) == 1:
        doc = doc["train"]  # a [train] table is accepted too
    return doc


def _check_type(name: str, annotation: Any, value: Any) -> Any:
    kind = str(annotation)
    if kind == "str":
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if kind.startswith("list["):
        item = kind[5:-1]
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_check_type(name, item, v) for v in value]
    raise AssertionError(f"no type check for {name}: {kind}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr of a float is the shortest exact form, valid TOML for finite values
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(c if ord(c) >= 0x20 and c != "\x7f" else f"\\u{ord(c):04X}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
