"""A trained run as a model to use: what a checkpoint records for it, and `load_run` to get it back.

Training writes a `model_description` into every checkpoint: the tasks (as a dict), the input the
network takes (channels, size), the transform that makes that input from stored pixels, the label
names and the conversion's image options of the training dataset (resize, gray, encoding), and the
mtldata version. `load_run` rebuilds the model from the run's config through `build_model`, loads
its weights (with `weights_only=True`: a crafted file runs no code) and returns it with all of that.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtldata.errors import MtlDataError
from mtldata.loader.dataset import MultiTaskDataset, open_dataset
from mtldata.loader.transforms import CaffeTransform, TransformSpec
from mtldata.storage.backends import open_reader
from mtldata.storage.image import ImageOptions
from mtldata.tasks import TaskSet, tasks_from_dict, tasks_to_dict
from mtldata.train.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint
from mtldata.train.config import TrainConfig
from mtldata.train.data import transform_spec
from mtldata.train.models import build_model
from mtldata.version import __version__

__all__ = [
    "DESCRIPTION_KEY",
    "LoadedModel",
    "find_checkpoint",
    "iter_dataset",
    "load_run",
    "model_description",
    "open_for_model",
    "run_model",
]

DESCRIPTION_KEY = "model_description"
# The conversion options that decide the pixels of a raw image file (ImageOptions' fields).
_IMAGE_OPTION_FIELDS = ("gray", "resize_width", "resize_height", "resize_mode", "encoded", "encode_type")


def model_description(
    cfg: TrainConfig, tasks: TaskSet, manifest: dict[str, Any] | None, input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """What evaluate, predict and export need besides the weights, in types weights_only loading accepts.

    `manifest` is the training dataset's (None for a dataset without one, e.g. a plain Caffe LMDB);
    `input_shape` is the (C, H, W) the network sees.
    """
    options = (manifest or {}).get("options") or {}
    image_options = {k: options[k] for k in _IMAGE_OPTION_FIELDS if k in options} if manifest else None
    label_names = (manifest or {}).get("label_names")
    return {
        "tasks": tasks_to_dict(tasks),
        "input_shape": [int(v) for v in input_shape],
        "transform": dataclasses.asdict(transform_spec(cfg)),
        "label_names": list(label_names) if label_names else None,
        "image_options": image_options,
        "mtldata_version": __version__,
    }


@dataclass
class LoadedModel:
    """A trained model ready to run (eval mode, on the CPU) and everything needed to feed it."""

    model: nn.Module
    tasks: TaskSet
    transform: TransformSpec  # stored (C, H, W) uint8 pixels -> network input, Caffe's test phase
    input_shape: tuple[int, int, int]  # (C, H, W) the network was trained on
    label_names: tuple[str, ...] | None  # the K label columns' names, from the training dataset
    image_options: ImageOptions | None  # how the training dataset's images were converted
    config: TrainConfig
    checkpoint: Path
    epoch: int
    step: int
    mtldata_version: str

    def preprocessor(self) -> CaffeTransform:
        """The transform of test time (centred crop, no mirroring) as applied to uint8 batches."""
        return CaffeTransform(dataclasses.replace(self.transform, mirror=False), "test")

    def column_names(self, task_name: str) -> tuple[str, ...]:
        """Names of a task's label columns: its own label_names, else the dataset's, else task0, task1..."""
        task = self.tasks[task_name]
        if task.label_names is not None:
            return task.label_names
        if self.label_names is not None and len(self.label_names) >= task.stop:
            return tuple(self.label_names[task.start : task.stop])
        return tuple(f"{task.name}{i}" for i in range(task.width))


def find_checkpoint(run: str | os.PathLike[str]) -> Path:
    """The checkpoint a run stands for: the file itself, or a run folder's best.pt, else its last.pt."""
    path = Path(run)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no best.pt or last.pt in it (not a training run folder)")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file")
    return path


def load_run(run: str | os.PathLike[str]) -> LoadedModel:
    """Load a run (a run folder or a .pt checkpoint) as a model in eval mode, with its tasks and transform."""
    path = find_checkpoint(run)
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT or "model" not in state or "config" not in state:
        raise CheckpointError(
            f"{path}: not a mtldata checkpoint (no '{CHECKPOINT_FORMAT}' format tag; "
            "a bare state_dict can only start a run, with --init)"
        )
    description = state.get(DESCRIPTION_KEY)
    if not isinstance(description, dict):
        raise CheckpointError(
            f"{path}: written by an older mtldata, without the model description evaluate, predict and "
            "export need (tasks, input size, transform); train the run again with this version"
        )
    try:
        cfg = TrainConfig.from_dict(state["config"], f"{path} config")
        tasks = tasks_from_dict(description["tasks"], f"{path} tasks")
        transform = TransformSpec(**description["transform"])
        options = description.get("image_options")
        image_options = ImageOptions(**options) if options is not None else None
        input_shape = tuple(int(v) for v in description["input_shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: a damaged model description ({type(e).__name__}: {e})") from None
    if len(input_shape) != 3:
        raise CheckpointError(f"{path}: a damaged model description (input_shape {list(input_shape)})")
    model = _rebuild(cfg, tasks, input_shape)  # type: ignore[arg-type]
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: the weights do not fit the model its config describes ({first})"
        ) from None
    model.eval().requires_grad_(False)
    names = description.get("label_names")
    return LoadedModel(
        model=model,
        tasks=tasks,
        transform=transform,
        input_shape=input_shape,  # type: ignore[arg-type]
        label_names=tuple(names) if names else None,
        image_options=image_options,
        config=cfg,
        checkpoint=path,
        epoch=int(state.get("epoch", 0)),
        step=int(state.get("step", 0)),
        mtldata_version=str(description.get("mtldata_version", "")),
    )


def _rebuild(cfg: TrainConfig, tasks: TaskSet, input_shape: tuple[int, int, int]) -> nn.Module:
    """The run's network, built as training built it (the one place that does); the checkpoint's
    weights replace its own, so no pretrained or .caffemodel file is read."""
    try:
        return build_model(cfg, tasks, input_shape, load_weights=False)
    except (ValueError, MtlDataError) as e:
        raise CheckpointError(f"cannot rebuild the run's model: {e}") from None


def check_num_labels(loaded: LoadedModel, dataset: str | os.PathLike[str], num_labels: int | None) -> None:
    """Refuse a dataset whose label vectors do not have the K the run's tasks are defined over."""
    if num_labels is not None and num_labels != loaded.tasks.num_labels:
        raise MtlDataError(
            f"{dataset}: holds {num_labels} labels per sample but the run's tasks are defined over "
            f"num_labels = {loaded.tasks.num_labels}"
        )


def open_for_model(
    loaded: LoadedModel,
    dataset: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    *,
    check_labels: bool = True,
) -> MultiTaskDataset:
    """A dataset as the run's model reads it: raw label vectors (K, NaN kept) and untransformed pixels.

    With `check_labels` its K must be the run's; float images (an HDF5Data source of transformed
    inputs) pass as they are.
    """
    reader = open_reader(dataset, labels)
    if check_labels:
        manifest = getattr(reader, "manifest", None)
        k = manifest.get("num_labels") if isinstance(manifest, dict) else None
        if k is None and len(reader):
            k = int(reader.labels(0).size)
        check_num_labels(loaded, dataset, k)
    floats = len(reader) > 0 and reader.sample(0).image.format == "float32"
    return open_dataset(
        reader, tasks=None, transform=None, phase="test", output="float" if floats else "uint8"
    )


def iter_dataset(
    loaded: LoadedModel, ds: MultiTaskDataset, batch_size: int, source: str = "the dataset"
) -> Iterator[tuple[list[str], dict[str, torch.Tensor], torch.Tensor]]:
    """(keys, the model's outputs, the (N, K) float32 label rows) batch by batch, in key order."""
    preprocess = loaded.preprocessor() if ds.output == "uint8" else None
    for start in range(0, len(ds), batch_size):
        positions = list(range(start, min(start + batch_size, len(ds))))
        batch = ds.__getitems__(positions)
        images = batch.images if batch.images is not None else [image for image, _ in batch]
        if preprocess is not None:
            if isinstance(images, torch.Tensor):
                inputs: torch.Tensor | list[torch.Tensor] = preprocess.apply_batch(images)
            else:
                inputs = [preprocess(image) for image in images]  # centred crop
        else:
            inputs = images
        yield [ds.key(i) for i in positions], run_model(loaded, inputs, source), batch.targets["label"]


@torch.no_grad()
def run_model(
    loaded: LoadedModel, inputs: torch.Tensor | Sequence[torch.Tensor], source: str = "the input"
) -> dict[str, torch.Tensor]:
    """The model's raw outputs (logits; values for euclidean tasks) for transformed inputs: one (N, C, H, W)
    batch, or a list of (C, H, W) images that run in groups of equal size."""
    channels = loaded.input_shape[0]
    if isinstance(inputs, torch.Tensor):
        groups = [inputs]
    else:
        groups, current = [], []
        for image in inputs:
            if current and image.shape != current[0].shape:
                groups.append(torch.stack(current))
                current = []
            current.append(image)
        if current:
            groups.append(torch.stack(current))
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in loaded.tasks.names}
    for group in groups:
        if group.shape[1] != channels:
            raise MtlDataError(
                f"{source}: images with {group.shape[1]} channels, but the model takes {channels}"
            )
        for name, value in loaded.model(group.float()).items():
            outputs[name].append(value.float())
    return {name: torch.cat(parts) if parts else torch.empty(0) for name, parts in outputs.items()}
