"""Layer tests' helpers: one-layer nets, and the real-Caffe layer goldens (shared/fixtures/caffe/layers).

Each family's test file asks `family_cases("vision")` for the cases whose layer type its family
module registers, so a new case in cases.json is picked up by the right file without editing it.
A case is run as the fixtures README says: build the net in its phase, load its caffemodel, feed
`in/*`, compare `out/*` (and BatchNorm's `param_after/*`), then differentiate
Σ out·top_diff + Σ loss_weight·loss and compare `grad/*` and `param_grad/*`, each within the
tolerance cases.json gives for that key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from mtldata.caffe import caffe_pb2
from mtldata.caffenet.layers import LAYERS
from mtldata.caffenet.net import CaffeNet, load_caffemodel

LAYER_GOLDENS = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "caffe" / "layers"


def net_param(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def one_layer(layer: str, shapes: dict[str, tuple[int, ...]], phase: str = "train") -> CaffeNet:
    """A net with an Input layer for `shapes` and the given layer text after it."""
    inputs = "".join(f'top: "{name}" ' for name in shapes)
    dims = "".join("shape { " + " ".join(f"dim: {d}" for d in s) + " } " for s in shapes.values())
    text = f'layer {{ name: "in" type: "Input" {inputs} input_param {{ {dims} }} }} layer {{ {layer} }}'
    return CaffeNet(net_param(text), phase)


def run(net: CaffeNet, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    return net({k: torch.as_tensor(v, dtype=torch.float32) for k, v in inputs.items()})


def _cases() -> dict[str, dict]:
    index = LAYER_GOLDENS / "cases.json"
    return json.loads(index.read_text())["cases"] if index.is_file() else {}


def family_of(layer_type: str) -> str | None:
    """The family module that registers `layer_type` (None: mtldata lacks the type)."""
    factory = LAYERS.get(layer_type)
    return None if factory is None else factory.__module__.rsplit(".", 1)[-1]


def case_types() -> dict[str, str]:
    """Case name -> layer type, for every case in cases.json (empty without the fixtures)."""
    return {name: entry["layer_type"] for name, entry in _cases().items()}


def family_cases(family: str) -> list:
    """pytest params: the cases of this family's layer types, or one skipped param without the fixtures."""
    if not (LAYER_GOLDENS / "cases.json").is_file():
        return [
            pytest.param(
                None, marks=pytest.mark.skip(reason=f"Caffe layer goldens not found at {LAYER_GOLDENS}")
            )
        ]
    names = [name for name, layer_type in case_types().items() if family_of(layer_type) == family]
    return [pytest.param(name, id=name) for name in names]


def _compare(key: str, mine: torch.Tensor | None, golden: np.ndarray, tolerance: dict) -> str | None:
    """None when `mine` matches the golden within its tolerance, else what is wrong (with the excess)."""
    if mine is None:
        return f"{key}: not computed"
    got = mine.detach().to(torch.float32).numpy()
    if got.shape != golden.shape:
        return f"{key}: shape {got.shape}, Caffe's {golden.shape}"
    rtol, atol = tolerance["rtol"], tolerance["atol"]
    excess = np.abs(got.astype(np.float64) - golden) - (atol + rtol * np.abs(golden.astype(np.float64)))
    if np.isnan(got).any() != np.isnan(golden).any() or (excess > 0).any():
        allowed = atol + rtol * np.abs(golden.astype(np.float64))
        ratio = float(np.max(np.abs(got.astype(np.float64) - golden) / np.maximum(allowed, 1e-45)))
        return f"{key}: off by up to {ratio:.3g}x the tolerance (rtol {rtol}, atol {atol})"
    return None


def run_case(name: str) -> list[str]:
    """Run one golden case; returns the mismatches (empty when every key is within tolerance)."""
    entry = _cases()[name]
    z = np.load(LAYER_GOLDENS / entry["npz"])
    # Caffe ran in the fixture folder; the net finds infogain_H.binaryproto next to the prototxt.
    net = CaffeNet(LAYER_GOLDENS / entry["prototxt"], entry["phase"].lower())
    inputs = {}
    for blob, spec in entry["inputs"].items():
        t = torch.from_numpy(np.array(z[f"in/{blob}"]))
        inputs[blob] = t.requires_grad_(bool(entry["backward"] and spec["gradient"]))
    if not net.is_setup:
        net.setup({b: t.shape for b, t in inputs.items()})
    if entry["caffemodel"]:
        load_caffemodel(net, LAYER_GOLDENS / entry["caffemodel"])
    params = net.params_by_layer()
    problems = []
    for key in entry["npz_keys"].get("param", []):
        layer, i = key.split("/")[1:]
        if not torch.equal(params[layer][int(i)].detach(), torch.from_numpy(np.array(z[key]))):
            problems.append(f"{key}: loaded blob differs from the caffemodel's")
    blobs = net(inputs)
    tol = entry["tolerance"]
    for key in entry["npz_keys"].get("out", []):
        problems.append(_compare(key, blobs.get(key[4:]), z[key], tol[key]))
    for key in entry["npz_keys"].get("param_after", []):
        layer, i = key.split("/")[1:]
        problems.append(_compare(key, params[layer][int(i)], z[key], tol[key]))
    if entry["backward"]:
        objective = torch.zeros((), dtype=torch.float64)
        for blob, spec in entry["outputs"].items():
            if f"top_diff/{blob}" in z.files:
                objective = (
                    objective
                    + (blobs[blob].double() * torch.from_numpy(z[f"top_diff/{blob}"]).double()).sum()
                )
            elif spec.get("loss_weight"):
                objective = objective + spec["loss_weight"] * blobs[blob].double().sum()
        objective.backward()
        for key in entry["npz_keys"].get("grad", []):
            problems.append(_compare(key, inputs[key[5:]].grad, z[key], tol[key]))
        for key in entry["npz_keys"].get("param_grad", []):
            layer, i = key.split("/")[1:]
            problems.append(_compare(key, params[layer][int(i)].grad, z[key], tol[key]))
    return [p for p in problems if p]
