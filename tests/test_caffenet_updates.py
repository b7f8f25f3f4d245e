"""Caffe's six update rules against real Caffe's per-iteration updates and solverstates.

These replay Caffe's recorded raw gradients through mtldata's ApplyUpdate, so they test the solver
math alone (clipping, iter_size normalization, L1/L2 regularization, each rule, the lr policies and
the history layout), independent of the layers; test_caffenet_solver_goldens runs the whole nets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_blob_close

from mtldata.caffe import caffe_pb2
from mtldata.caffe.prototxt import read_net, read_solver
from mtldata.caffenet.net import LearnableParam
from mtldata.caffenet.solver import LearningRate
from mtldata.caffenet.updates import SOLVER_TYPES, CaffeUpdate, SolverError, solver_type

SOLVERS = ("sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam")


def multipliers(net: Path, names: list[str]) -> dict[str, tuple[float, float]]:
    """lr_mult and decay_mult per learnable param, as Caffe sets them from net.prototxt."""
    layers = {layer.name: layer for layer in read_net(net).layer}
    out = {}
    for name in names:
        layer_name, index = name.rsplit("/", 1)
        layer = layers[layer_name]
        spec = layer.param[int(index)] if int(index) < len(layer.param) else caffe_pb2.ParamSpec()
        lr_mult = 0.0 if layer.type == "BatchNorm" else spec.lr_mult  # Caffe forces 0 for the statistics
        out[name] = (lr_mult, spec.decay_mult)
    return out


@pytest.mark.parametrize("name", SOLVERS)
def test_update_rules_replay_caffes_updates_and_solverstate(
    solvers_dir: Path, solver_expected: dict, name: str
) -> None:
    entry = solver_expected["solvers"][name]
    arrays = np.load(solvers_dir / f"{name}.npz")
    names = entry["learnable_params"]
    mults = multipliers(solvers_dir / "net.prototxt", names)
    tensors = {p: torch.from_numpy(arrays[f"init/{p}"].copy()) for p in names}
    params = [LearnableParam(p, tensors[p], *mults[p]) for p in names]  # type: ignore[arg-type]
    solver_param = read_solver(solvers_dir / f"{name}.prototxt")
    updater = CaffeUpdate(params, solver_param)
    schedule = LearningRate(solver_param)
    clipped = []
    for it, record in enumerate(entry["iterations"]):
        rate = schedule(it)
        assert rate == pytest.approx(record["lr"], rel=1e-5), f"lr at iteration {it}"
        for p in names:
            after, update = arrays[f"iter{it}/params/{p}"], arrays[f"iter{it}/update/{p}"]
            # W as the update saw it: BatchNorm's forward moved its statistics before the update.
            tensors[p].copy_(torch.from_numpy(after + update))
            tensors[p].grad = torch.from_numpy(arrays[f"iter{it}/raw_grad/{p}"].copy())
        updates = dict(zip(names, updater.apply_update(rate, it), strict=True))
        if updater.last_clip is not None:
            clipped.append(it)
            norm, factor = updater.last_clip
            assert norm == pytest.approx(float(record["gradient_clipping"]["l2norm"]), rel=1e-5)
            assert factor == pytest.approx(float(record["gradient_clipping"]["scale_factor"]), rel=1e-5)
        for p in names:
            assert_blob_close(
                updates[p].numpy(), arrays[f"iter{it}/update/{p}"], f"{name} iter {it} update {p}"
            )
            expected_params = arrays[f"iter{it}/params/{p}"]
            assert_blob_close(tensors[p].numpy(), expected_params, f"{name} iter {it} params {p}")
    assert clipped == [it for it, r in enumerate(entry["iterations"]) if r.get("gradient_clipping")]
    state = updater.state_proto(8, schedule.current_step, entry["solverstate_fields"]["learned_net"])
    assert state.current_step == entry["solverstate_fields"]["current_step"]
    assert len(state.history) == len(entry["history_order"])
    for blob, key in zip(state.history, entry["history_order"], strict=True):
        mine = np.asarray(blob.data, dtype=np.float32).reshape(arrays[key].shape)
        assert_blob_close(mine, arrays[key], f"{name} {key}")


@pytest.mark.parametrize("name", SOLVERS)
def test_solverstate_from_caffes_own_fields_is_byte_identical(
    solvers_dir: Path, solver_expected: dict, name: str
) -> None:
    """Caffe's .solverstate loads into mtldata's history and is written back byte for byte."""
    entry = solver_expected["solvers"][name]
    names = entry["learnable_params"]
    arrays = np.load(solvers_dir / f"{name}.npz")
    params = [LearnableParam(p, torch.zeros(arrays[f"init/{p}"].shape), 1.0, 1.0) for p in names]  # type: ignore[arg-type]
    updater = CaffeUpdate(params, read_solver(solvers_dir / f"{name}.prototxt"))
    caffe_bytes = (solvers_dir / entry["solverstate"]).read_bytes()
    state = caffe_pb2.SolverState()
    state.ParseFromString(caffe_bytes)
    updater.load_history(state)
    fields = entry["solverstate_fields"]
    mine = updater.state_proto(fields["iter"], fields["current_step"], fields["learned_net"])
    assert mine.SerializeToString() == caffe_bytes


def test_solver_types_and_their_checks() -> None:
    param = caffe_pb2.SolverParameter()
    assert solver_type(param) == "SGD"
    for enum_name, kind in zip(
        ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM"), SOLVER_TYPES, strict=True
    ):
        param = caffe_pb2.SolverParameter()
        param.solver_type = caffe_pb2.SolverParameter.SolverType.Value(enum_name)
        assert solver_type(param) == kind
    param = caffe_pb2.SolverParameter(type="Adamax")
    with pytest.raises(SolverError, match="unknown solver type 'Adamax'"):
        solver_type(param)
    for kind in ("AdaGrad", "RMSProp"):
        with pytest.raises(SolverError, match=f"momentum cannot be used with {kind}"):
            CaffeUpdate([], caffe_pb2.SolverParameter(type=kind, momentum=0.9))


def test_a_solverstate_with_the_wrong_history_count_is_refused() -> None:
    params = [LearnableParam("ip/0", torch.zeros(2, 3), 1.0, 1.0)]  # type: ignore[arg-type]
    updater = CaffeUpdate(params, caffe_pb2.SolverParameter(type="Adam"))
    state = caffe_pb2.SolverState()
    state.history.add().data.extend([0.0] * 6)  # one blob; Adam keeps m and v
    with pytest.raises(SolverError, match="holds 1 history blobs; a Adam solver over this net keeps 2"):
        updater.load_history(state)
