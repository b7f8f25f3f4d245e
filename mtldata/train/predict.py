"""Predict with a trained run: a list file, a folder of images or a dataset in, one row per image out.

Raw image files get the training data's preprocessing: decoded and resized as the conversion of the
training dataset did (its manifest's gray and resize options, Caffe-exact), then the run's transform
(test phase). A dataset's records are already converted and only get the transform.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from mtldata.durable import replace_atomically
from mtldata.errors import MtlDataError
from mtldata.storage.image import ImageDecodeError, ImageOptions, prepare_image
from mtldata.storage.listfile import ListLineError, infer_num_labels, parse_line
from mtldata.train.run_io import LoadedModel, iter_dataset, load_run, open_for_model, run_model

__all__ = ["FORMATS", "IMAGE_SUFFIXES", "PredictResult", "input_kind", "predict_run", "prediction_columns"]

FORMATS = ("csv", "jsonl")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_DATASET_MARKERS = ("manifest.json", "data.mdb", "images.lmdb/data.mdb", "hdf5_list.txt")


@dataclass
class PredictResult:
    """Where the predictions went, how many rows they hold, and the inputs skipped (one line each)."""

    output: Path
    count: int
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Item:
    """One raw image to predict: its row name, its file, and where it came from (for messages)."""

    name: str
    path: Path
    where: str


def input_kind(path: str | os.PathLike[str]) -> str:
    """ "dataset" (an mtldata, Caffe LMDB or HDF5 dataset), "folder" (of image files) or "list" (a list file)."""
    p = Path(path)
    if p.is_dir():
        return "dataset" if any((p / m).exists() for m in _DATASET_MARKERS) else "folder"
    if p.is_file():
        return "dataset" if p.suffix.lower() in (".h5", ".hdf5") else "list"
    raise MtlDataError(f"{p}: no such file or folder")


def prediction_columns(loaded: LoadedModel) -> list[str]:
    """The CSV columns after the row name: per task, under the task's and its labels' names."""
    columns: list[str] = []
    for task in loaded.tasks:
        if task.kind == "softmax":
            columns.append(task.name)
            if task.class_names is not None:
                columns.append(f"{task.name}.name")
            columns.append(f"{task.name}.prob")
        else:
            columns += _value_columns(loaded, task.name)
    return columns


def _value_columns(loaded: LoadedModel, task_name: str) -> list[str]:
    names = loaded.column_names(task_name)
    if len(names) == 1 and names[0] == task_name:
        return [task_name]
    return [f"{task_name}.{name}" for name in names]


def _records(loaded: LoadedModel, outputs: dict[str, torch.Tensor]) -> list[dict[str, dict[str, Any]]]:
    """Per image {task: {field: value}}: softmax class, name and probability; sigmoid probabilities;
    euclidean values."""
    n = next(iter(outputs.values())).shape[0] if outputs else 0
    rows: list[dict[str, dict[str, Any]]] = [{} for _ in range(n)]
    for task in loaded.tasks:
        out = outputs[task.name]
        if task.kind == "softmax":
            prob, index = torch.softmax(out, 1).max(1)
            for i in range(n):
                entry: dict[str, Any] = {"class": int(index[i])}
                if task.class_names is not None:
                    entry["name"] = task.class_names[int(index[i])]
                entry["prob"] = float(prob[i])
                rows[i][task.name] = entry
        else:
            values = (torch.sigmoid(out) if task.kind == "sigmoid" else out).tolist()
            names = loaded.column_names(task.name)
            for i in range(n):
                rows[i][task.name] = dict(zip(names, values[i], strict=True))
    return rows


def _csv_row(name: str, record: dict[str, dict[str, Any]], loaded: LoadedModel) -> list[str]:
    row = [name]
    for task in loaded.tasks:
        entry = record[task.name]
        if task.kind == "softmax":
            row.append(str(entry["class"]))
            if "name" in entry:
                row.append(entry["name"])
            row.append(f"{entry['prob']:.6g}")
        else:
            row += [f"{v:.6g}" for v in entry.values()]
    return row


def predict_run(
    run: str | os.PathLike[str] | LoadedModel,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    output_format: str = "csv",
    batch_size: int = 64,
    strict: bool = False,
    labels: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PredictResult:
    """Predict every image of `source` (a list file, a folder of images or a dataset) into `output`.

    An image that cannot be read is skipped and named in `PredictResult.skipped` (one line each), or,
    with `strict`, raises. `output` is written whole or not at all.
    """
    if output_format not in FORMATS:
        raise MtlDataError(f"format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    if batch_size < 1:
        raise MtlDataError(f"batch size must be >= 1, got {batch_size}")
    loaded = run if isinstance(run, LoadedModel) else load_run(run)
    kind = input_kind(source)
    result = PredictResult(Path(output), 0)
    if kind == "dataset":
        ds = open_for_model(loaded, source, labels, check_labels=False)
        batches: Iterator[tuple[list[str], dict[str, torch.Tensor]]] = (
            (keys, outputs) for keys, outputs, _ in iter_dataset(loaded, ds, batch_size, str(source))
        )
        total, id_column = len(ds), "key"
    else:
        ds = None
        items = _folder_items(Path(source)) if kind == "folder" else _list_items(Path(source), result, strict)
        batches = _image_batches(loaded, items, batch_size, result, strict)
        total, id_column = len(items), "path"

    def write(fh: IO[bytes]) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        table = csv.writer(text, lineterminator="\n") if output_format == "csv" else None
        if table is not None:
            table.writerow([id_column, *prediction_columns(loaded)])
        done = 0
        for names, outputs in batches:
            for name, record in zip(names, _records(loaded, outputs), strict=True):
                if table is not None:
                    table.writerow(_csv_row(name, record, loaded))
                else:
                    text.write(json.dumps({id_column: name, **record}) + "\n")
            result.count += len(names)
            done += len(names)
            if progress is not None:
                progress(done, total)
        if progress is not None and done < total:  # skipped images still count as handled
            progress(total, total)
        text.flush()
        text.detach()

    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(output, write)
    finally:
        if ds is not None:
            ds.close()
    return result


def _folder_items(folder: Path) -> list[_Item]:
    """The image files under `folder` (by suffix, recursively), in path order."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise MtlDataError(f"{folder}: no image files in it ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [_Item(str(p.relative_to(folder)), p, str(p)) for p in files]


def _list_items(list_file: Path, result: PredictResult, strict: bool) -> list[_Item]:
    """The images a list file names (paths relative to its folder; trailing labels, if any, ignored)."""
    items: list[_Item] = []
    root = list_file.parent
    k: int | None = None
    try:
        with open(list_file, "rb") as fh:
            raw_lines = fh.read().splitlines()
    except OSError as e:
        raise MtlDataError(f"{list_file}: cannot read the list: {e.strerror or e}") from None
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8").lstrip("\ufeff").strip()
        except UnicodeDecodeError:
            _skip(result, f"{list_file}:{number}: the line is not UTF-8 text", strict)
            continue
        if not text or text.startswith("#"):
            continue
        if k is None:
            k = infer_num_labels(text)
        if k == 0:
            path = text
        else:
            entry = parse_line(text, k, number, lambda p: (root / p).exists())
            if isinstance(entry, ListLineError):
                _skip(result, f"{list_file}:{number}: {entry.reason}", strict)
                continue
            path = entry.path
        items.append(_Item(path, root / path, f"{list_file}:{number}: {path}"))
    if not items and not result.skipped:
        raise MtlDataError(f"{list_file}: no image paths in it")
    return items


def _skip(result: PredictResult, message: str, strict: bool) -> None:
    if strict:
        raise MtlDataError(message)
    result.skipped.append(message)


def _image_batches(
    loaded: LoadedModel, items: list[_Item], batch_size: int, result: PredictResult, strict: bool
) -> Iterator[tuple[list[str], dict[str, torch.Tensor]]]:
    """Decode (as the conversion did), transform and run the model, `batch_size` images at a time."""
    options = loaded.image_options or ImageOptions()
    gray = options.gray or loaded.input_shape[0] == 1
    decode = ImageOptions(
        gray=gray,
        resize_width=options.resize_width,
        resize_height=options.resize_height,
        resize_mode=options.resize_mode,
    )
    preprocess = loaded.preprocessor()
    for start in range(0, len(items), batch_size):
        names, inputs = [], []
        for item in items[start : start + batch_size]:
            try:
                payload = prepare_image(item.path, decode)
                pixels = torch.from_numpy(np.frombuffer(payload.data, np.uint8).reshape(payload.shape).copy())
                inputs.append(preprocess(pixels))  # test phase: centred crop
            except (ImageDecodeError, ValueError) as e:
                _skip(result, f"{item.where}: {e}", strict)
                continue
            names.append(item.name)
        if names:
            yield names, run_model(loaded, inputs, items[start].where)
