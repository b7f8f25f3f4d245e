"""Training data: the run's datasets, a seeded shuffling sampler for DDP and resume, prototxt sources.

Data order depends only on the seed and the epoch: each epoch is one permutation of the training
indices, cut into the ranks' strided shares, and a run resumed in the middle of an epoch starts that
epoch's sampler at the first batch not yet trained on.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from mtldata.caffe.prototxt import read_net
from mtldata.caffenet.multitask import (
    NetImportWarning,
    data_sources,
    import_net,
    resolve_source_path,
    source_paths,
)
from mtldata.errors import MtlDataError, TaskSpecError
from mtldata.loader.dataset import MultiTaskDataset, collate_uint8, open_dataset
from mtldata.loader.transforms import CaffeTransform, TransformSpec
from mtldata.storage.backends import dataset_num_labels, open_reader
from mtldata.storage.label_check import check_dataset_labels
from mtldata.tasks import TaskSet, load_tasks
from mtldata.train.config import ConfigError, TrainConfig

__all__ = ["EpochSampler", "RunData", "build_data", "resolve_config", "split_indices"]


class EpochSampler(Sampler[int]):
    """One rank's share of a seeded permutation of `indices`, new each epoch.

    Epoch e shuffles with a generator seeded by (seed, e), so every rank draws the same permutation
    and takes positions rank, rank + R, ...; the permutation is padded by wrapping so that every rank
    gets the same count. `set_epoch(e, start)` skips the first `start` samples of this rank's share.
    """

    def __init__(
        self, indices: Sequence[int], *, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1
    ) -> None:
        self.indices = torch.as_tensor(list(indices), dtype=torch.int64)
        self.seed, self.shuffle, self.rank, self.world = int(seed), shuffle, rank, world
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(len(self.indices) / world) if len(self.indices) else 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> torch.Tensor:
        """This rank's indices for the current epoch (before `start` is skipped)."""
        n = len(self.indices)
        if n == 0:
            return self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            perm = self.indices[torch.randperm(n, generator=g)]
        else:
            perm = self.indices
        total = self.per_rank * self.world
        if total > n:
            perm = torch.cat([perm, perm[: total - n]])
        return perm[self.rank : total : self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :].tolist())

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (numpy's SeedSequence hashing)."""
    # int() first: numpy 1.x has no right_shift for uint64 and a Python int (it promotes to float)
    return int(np.random.SeedSequence([v % 2**32 for v in values]).generate_state(2, np.uint64)[0]) >> 1


def step_generator(seed: int, epoch: int, rank: int, batch: int) -> torch.Generator:
    """The generator of one batch's random crops and mirrors: a function of where it is in the run."""
    return torch.Generator().manual_seed(_mix(seed, epoch, rank, batch, 0x6372))


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) index lists: a seeded `fraction` of 0..n-1 held out, both in ascending order."""
    if not fraction:
        return list(range(n)), []
    count = max(1, round(n * fraction))
    if count >= n:
        raise ConfigError(f"val_split {fraction} of {n} samples leaves nothing to train on")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, 0x7661)))
    val = sorted(perm[:count].tolist())
    held = set(val)
    return [i for i in range(n) if i not in held], val


# ---------------------------------------------------------------------------------------------------
# Config resolution (prototxt, tasks)


def resolve_config(cfg: TrainConfig) -> tuple[TrainConfig, TaskSet]:
    """The config with every value a prototxt supplies filled in, and the run's tasks.

    Values the user set explicitly are kept: a prototxt fills the dataset, validation set, batch size,
    transform and tasks only where they were left at their defaults.
    """
    imported = None
    if cfg.prototxt:
        cfg, imported = _apply_prototxt(cfg)
    # Absolute paths: the saved config stays valid from any working directory.
    paths = ("dataset", "labels", "tasks", "val", "val_labels", "prototxt", "init", "mean_file")
    cfg = cfg.replace(**{name: os.path.abspath(getattr(cfg, name)) for name in paths if getattr(cfg, name)})
    if not cfg.dataset:
        raise ConfigError("no training dataset: give DATASET (or a prototxt whose TRAIN Data layer names it)")
    k = dataset_num_labels(cfg.dataset, cfg.labels or None)
    if cfg.tasks:
        tasks = load_tasks(Path(cfg.tasks), num_labels=k)
    elif imported is not None:
        tasks = imported
    else:
        raise ConfigError("no tasks: give a tasks.toml (--tasks) or a prototxt (--prototxt)")
    if k is not None and tasks.num_labels != k:
        raise TaskSpecError(
            f"the tasks are defined over num_labels = {tasks.num_labels} but {cfg.dataset} holds {k} labels"
        )
    return cfg, tasks


def _apply_prototxt(cfg: TrainConfig) -> tuple[TrainConfig, TaskSet]:
    defaults = TrainConfig()
    origin = Path(cfg.prototxt)
    net = read_net(origin)
    # The sources first: the tasks are read once the dataset's K is known.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetImportWarning)  # import_net below warns once
        train, test = data_sources(net, str(origin))
    changes: dict[str, Any] = {}
    if not cfg.dataset and train is not None:
        changes["dataset"], changes["labels"] = source_paths(train, origin)
    if not cfg.val and not cfg.val_split and test is not None and test != train:
        changes["val"], changes["val_labels"] = source_paths(test, origin)
    if cfg.batch_size == defaults.batch_size and train is not None and train.batch_size:
        changes["batch_size"] = int(train.batch_size)
    transform = train.transform if train is not None else None
    if transform is not None and _transform_fields_default(cfg, defaults):
        changes.update(
            scale=float(transform.scale),
            mean_values=[float(v) for v in transform.mean_value],
            mean_file=resolve_source_path(transform.mean_file, origin)
            if transform.HasField("mean_file")
            else "",
            crop_size=int(transform.crop_size),
            mirror=bool(transform.mirror),
        )
    cfg = cfg.replace(**changes)
    k = dataset_num_labels(cfg.dataset, cfg.labels or None) if cfg.dataset else None
    return cfg, import_net(net, num_labels=k, origin=str(origin)).tasks


def _transform_fields_default(cfg: TrainConfig, defaults: TrainConfig) -> bool:
    names = ("scale", "mean_values", "mean_file", "crop_size", "mirror")
    return all(getattr(cfg, n) == getattr(defaults, n) for n in names)


# ---------------------------------------------------------------------------------------------------
# Datasets and loaders


@dataclass
class RunData:
    """The datasets, samplers and loaders of a run, and the transforms applied to uint8 batches."""

    train: MultiTaskDataset
    train_sampler: EpochSampler
    train_loader: DataLoader
    train_transform: CaffeTransform | None  # applied on the device to uint8 batches; None: float data
    val: MultiTaskDataset | None
    val_loader: DataLoader | None
    val_transform: CaffeTransform | None
    val_count: int

    def close(self) -> None:
        """Stop the loaders' worker processes (now, not at garbage collection) and close the readers."""
        for loader in (self.train_loader, self.val_loader):
            workers = getattr(loader, "_iterator", None)  # persistent workers live in the loader's iterator
            if workers is not None and hasattr(workers, "_shutdown_workers"):
                workers._shutdown_workers()
                loader._iterator = None
        self.train.close()
        if self.val is not None and self.val.reader is not self.train.reader:
            self.val.close()


def transform_spec(cfg: TrainConfig) -> TransformSpec:
    return TransformSpec(
        scale=cfg.scale,
        mirror=cfg.mirror,
        crop_size=cfg.crop_size,
        mean_file=cfg.mean_file or None,
        mean_values=tuple(cfg.mean_values),
    )


def build_data(
    cfg: TrainConfig, tasks: TaskSet, *, rank: int = 0, world: int = 1, pin_memory: bool = False
) -> RunData:
    """Open the training (and validation) data of `cfg` for this rank."""
    spec = transform_spec(cfg)
    reader = open_reader(cfg.dataset, cfg.labels or None)
    tasks_file = cfg.tasks or cfg.prototxt or None
    # every label against the tasks, before the first step (open_dataset then finds it checked)
    check_dataset_labels(reader, tasks, tasks_file=tasks_file, dataset=cfg.dataset)
    train = _open(reader, cfg.dataset, tasks, spec, "train", cfg.seed)
    train_idx, val_idx = split_indices(len(train), cfg.val_split, cfg.seed)
    if not train_idx:
        raise MtlDataError(f"{cfg.dataset}: the training set is empty")
    sampler = EpochSampler(train_idx, seed=cfg.seed, shuffle=True, rank=rank, world=world)
    loader = _loader(train, sampler, cfg, pin_memory)

    val = None
    if cfg.val:
        same = (cfg.val, cfg.val_labels) == (cfg.dataset, cfg.labels)
        # An LMDB environment opens once per process: the same data shares its reader.
        val_reader = reader if same else open_reader(cfg.val, cfg.val_labels or None)
        check_dataset_labels(val_reader, tasks, tasks_file=tasks_file, dataset=cfg.val)
        val = _open(val_reader, cfg.val, tasks, spec, "test", cfg.seed)
        val_idx = list(range(len(val)))
    elif val_idx:
        val = _open(reader, cfg.dataset, tasks, spec, "test", cfg.seed)
    val_loader = None
    if val is not None:
        # Validation is split across ranks without padding (each sample counted once), in key order.
        shard = val_idx[rank::world]
        val_loader = _loader(val, shard, cfg, pin_memory)
    return RunData(
        train=train,
        train_sampler=sampler,
        train_loader=loader,
        train_transform=train.transform if train.output == "uint8" else None,
        val=val,
        val_loader=val_loader,
        val_transform=val.transform if val is not None and val.output == "uint8" else None,
        val_count=len(val_idx),
    )


def _open(
    reader: Any, path: str, tasks: TaskSet, spec: TransformSpec, phase: str, seed: int
) -> MultiTaskDataset:
    if _float_images(reader):
        # Already-transformed float inputs (an HDF5Data source): used as they are, as Caffe does.
        return open_dataset(reader, tasks=tasks, transform=None, phase=phase, output="float", seed=seed)
    try:
        return open_dataset(reader, tasks=tasks, transform=spec, phase=phase, output="uint8", seed=seed)
    except ValueError as e:
        raise MtlDataError(f"{path}: {e}") from None


def _float_images(reader: Any) -> bool:
    if len(reader) == 0:
        return False
    image = reader.sample(0).image
    data = image.data
    if isinstance(data, np.ndarray):
        return data.dtype != np.uint8
    return image.format == "float32"


def _loader(ds: MultiTaskDataset, sampler: Any, cfg: TrainConfig, pin_memory: bool) -> DataLoader:
    workers = cfg.num_workers
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_uint8,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=False,
    )
