"""Multi-task training on mtldata datasets: a shared trunk, a head per task, Caffe's losses.

`train(TrainConfig(...))` runs the loop in `loop.py`; the pieces are one module each: `config`,
`data`, `models`, `losses` (Caffe-normalised losses and the multi-task objective), `weighting`,
`metrics` and `checkpoint`. After training, `load_run` (run_io.py) gives a run's model back with its
tasks and transform, for `evaluate`, `predict` and `export`.
"""

from __future__ import annotations

from mtldata.train.config import ConfigError, TrainConfig
from mtldata.train.loop import Reporter, TrainResult, train
from mtldata.train.run_io import LoadedModel, load_run

__all__ = ["ConfigError", "LoadedModel", "Reporter", "TrainConfig", "TrainResult", "load_run", "train"]
