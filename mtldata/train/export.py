"""Export a trained run for serving: ONNX (`.onnx`) or TorchScript (`.pt`).

The file takes one input, `image`: a float32 (N, C, H, W) batch already transformed as in training,
`(pixels - mean) * scale` in the run's channel order (BGR unless the transform says rgb), centre-cropped
to the training size. It gives one output per task, named after it (ONNX output names; TorchScript returns a dict
{task: tensor}): softmax logits, sigmoid logits,
euclidean values. The metadata (ONNX metadata_props; TorchScript extra file `mtldata.json`) states all
of that: the transform, the input shape, the tasks with their label and class names.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtldata.durable import write_bytes_atomic
from mtldata.errors import MissingDependencyError, MtlDataError
from mtldata.tasks import dump_tasks
from mtldata.train.run_io import LoadedModel, load_run

__all__ = ["EXPORT_FORMATS", "TORCHSCRIPT_EXTRA", "export_metadata", "export_run"]

EXPORT_FORMATS = {".onnx": "onnx", ".pt": "torchscript"}
TORCHSCRIPT_EXTRA = "mtldata.json"
INPUT_NAME = "image"


class _TaskOutputs(nn.Module):
    """The multi-task net with its outputs as a tuple in task order (what the exporters name)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(image)
        return tuple(outputs[name] for name in self.names)


def export_metadata(loaded: LoadedModel) -> dict[str, str]:
    """What a user of the exported file needs to feed it and read it, as string key/value pairs."""
    spec = loaded.transform
    c, h, w = loaded.input_shape
    tasks: dict[str, Any] = {}
    for task in loaded.tasks:
        entry: dict[str, Any] = {"kind": task.kind, "output": _output_meaning(task.kind)}
        if task.kind == "softmax":
            entry["classes"] = task.classes
            if task.class_names is not None:
                entry["class_names"] = list(task.class_names)
        else:
            entry["labels"] = list(loaded.column_names(task.name))
        tasks[task.name] = entry
    order = spec.channel_order
    return {
        "mtldata_version": loaded.mtldata_version,
        "input": INPUT_NAME,
        "input_shape": json.dumps(["N", c, h, w]),
        "input_formula": f"(pixels - mean) * scale, pixels in {order.upper()} order, uint8 0..255, NCHW",
        "channel_order": order,
        "scale": repr(spec.scale),
        "mean_values": json.dumps(list(spec.mean_values)),
        "mean_file": spec.mean_file or "",
        "crop_size": str(spec.crop_size),
        "image_options": json.dumps(
            None if loaded.image_options is None else dataclasses.asdict(loaded.image_options), sort_keys=True
        ),
        "outputs": json.dumps(list(loaded.tasks.names)),
        "tasks": json.dumps(tasks),
        "tasks_toml": dump_tasks(loaded.tasks),
        "checkpoint": str(loaded.checkpoint),
    }


def _output_meaning(kind: str) -> str:
    return {
        "softmax": "logits (N, classes); softmax gives the class probabilities",
        "sigmoid": "logits (N, labels); sigmoid gives each label's probability",
        "euclidean": "values (N, labels)",
    }[kind]


def export_run(
    run: str | os.PathLike[str] | LoadedModel, output: str | os.PathLike[str], *, opset: int | None = None
) -> Path:
    """Write the run's model to `output`: ONNX for a `.onnx` name, TorchScript for `.pt`."""
    path = Path(output)
    kind = EXPORT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise MtlDataError(f"{path}: the output name must end in .onnx (ONNX) or .pt (TorchScript)")
    loaded = run if isinstance(run, LoadedModel) else load_run(run)
    wrapper = _TaskOutputs(loaded.model, loaded.tasks.names).eval()
    example = torch.zeros((1, *loaded.input_shape))
    metadata = export_metadata(loaded)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "onnx":
            data = _onnx_bytes(wrapper, example, loaded.tasks.names, metadata, opset)
        else:
            data = _torchscript_bytes(loaded.model, example, metadata)
    except MtlDataError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporters raise many kinds for a model they cannot trace
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise MtlDataError(
            f"{loaded.checkpoint}: cannot export the model as {kind}: {type(e).__name__}: {first}"
        ) from None
    write_bytes_atomic(path, data)
    return path


def _onnx_bytes(
    wrapper: nn.Module,
    example: torch.Tensor,
    names: tuple[str, ...],
    metadata: dict[str, str],
    opset: int | None,
) -> bytes:
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(
            "ONNX export needs the onnx package: pip install 'mtldata[onnx]'"
        ) from None
    buffer = io.BytesIO()
    dynamic = {INPUT_NAME: {0: "N"}, **{name: {0: "N"} for name in names}}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter (dynamo=False) works offline; the dynamo one needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        kwargs = {} if opset is None else {"opset_version": opset}
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=list(names),
            dynamic_axes=dynamic,
            dynamo=False,
            **kwargs,
        )
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = metadata["input_formula"]
    return model.SerializeToString()


def _torchscript_bytes(model: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        # strict=False: the traced module keeps the net's {task: output} dict as its output
        traced = torch.jit.trace(model, (example,), strict=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata, indent=2)})
    return buffer.getvalue()
