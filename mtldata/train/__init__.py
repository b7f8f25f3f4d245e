"""Multi-task training on mtldata datasets: a shared trunk, a head per task, Caffe's losses.

`train(TrainConfig(...))` runs the loop in `loop.py`; the pieces are one module each: `config`,
`data`, `models`, `losses` (Caffe-normalised losses and the multi-task objective), `weighting`,
`metrics` and `checkpoint`.
"""

from __future__ import annotations

from mtldata.train.config import ConfigError, TrainConfig
from mtldata.train.loop import Reporter, TrainResult, train

__all__ = ["ConfigError", "Reporter", "TrainConfig", "TrainResult", "train"]
