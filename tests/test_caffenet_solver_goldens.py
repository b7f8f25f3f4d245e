"""Whole Caffe solver runs against real Caffe: six solvers, 8 iterations each (fixtures/caffe/solvers).

The net has BatchNorm + Scale + PReLU in place, a Split, two weighted losses; the solvers cover every
type, six lr policies, iter_size 2, clip_gradients and L1. Tolerances are the fixtures README's:
losses rtol 1e-4, lr rtol 1e-5, every blob max error <= 1e-4 * max|golden| (zero blobs exactly).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_blob_close, same_caffe_line

from mtldata.caffe import caffe_pb2
from mtldata.caffe.prototxt import caffemodel_weights, read_caffemodel
from mtldata.caffenet.runner import load_solver, train_from_solver

SOLVERS = ("sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam")


@pytest.fixture(scope="module", params=SOLVERS)
def run(request, solvers_dir: Path, tmp_path_factory) -> tuple[str, object, Path, list[str]]:
    name = request.param
    workdir = tmp_path_factory.mktemp(name)
    log: list[str] = []
    solver = train_from_solver(
        solvers_dir / f"{name}.prototxt",
        init=solvers_dir / "init.caffemodel",
        cwd=solvers_dir,
        workdir=workdir,
        log=log.append,
        threads=1,
    )
    return name, solver, workdir, log


def test_losses_and_learning_rates_match_caffe(run, solver_expected) -> None:
    name, solver, _, _ = run
    entry = solver_expected["solvers"][name]
    assert [r.iter for r in solver.records] == list(range(8))
    for record, want in zip(solver.records, entry["iterations"], strict=True):
        assert record.loss == pytest.approx(want["loss"], rel=1e-4), f"{name} iteration {record.iter} loss"
        assert record.lr == pytest.approx(want["lr"], rel=1e-5), f"{name} iteration {record.iter} lr"
    post = entry["post_training_forward"]
    assert solver.final_loss == pytest.approx(post["weighted"], rel=1e-4)


def test_final_weights_and_snapshot_match_caffe(run, solver_expected, solvers_dir: Path) -> None:
    name, solver, workdir, _ = run
    arrays = np.load(solvers_dir / f"{name}.npz")
    mine = caffemodel_weights(read_caffemodel(workdir / f"{name}_iter_8.caffemodel"))
    golden = caffemodel_weights(read_caffemodel(solvers_dir / f"{name}_iter_8.caffemodel"))
    assert sorted(mine) == sorted(golden)
    for layer, blobs in golden.items():
        for i, blob in enumerate(blobs):
            assert_blob_close(mine[layer][i], arrays[f"final/{layer}/{i}"], f"{name} final {layer}/{i}")
            assert_blob_close(mine[layer][i], np.asarray(blob), f"{name} caffemodel {layer}/{i}")


def test_solverstate_matches_caffes(run, solver_expected, solvers_dir: Path) -> None:
    name, _, workdir, _ = run
    entry = solver_expected["solvers"][name]
    arrays = np.load(solvers_dir / f"{name}.npz")
    state = caffe_pb2.SolverState()
    state.ParseFromString((workdir / f"{name}_iter_8.solverstate").read_bytes())
    fields = entry["solverstate_fields"]
    assert (state.iter, state.current_step) == (fields["iter"], fields["current_step"])
    assert Path(state.learned_net).name == fields["learned_net"]
    assert len(state.history) == len(entry["history_order"])
    for blob, key in zip(state.history, entry["history_order"], strict=True):
        assert list(blob.shape.dim) == list(arrays[key].shape), key
        assert_blob_close(np.asarray(blob.data, dtype=np.float32), arrays[key], f"{name} {key}")


def test_caffe_log_lines(run, solvers_dir: Path) -> None:
    name, _, _, log = run
    caffe_log = (solvers_dir / "logs" / f"{name}_caffe_train.log").read_text()
    wanted = [
        line.split("] ", 1)[1]
        for line in caffe_log.splitlines()
        if "] " in line and any(m in line for m in (", lr = ", "MultiStep Status", "Gradient clipping"))
    ]
    assert len(wanted) >= 8
    rest = iter(log)  # in Caffe's order: each line is looked for after the one before it
    for line in wanted:
        assert any(same_caffe_line(mine, line, rel=1e-4) for mine in rest), f"{name}: Caffe logged {line!r}"


def test_resuming_from_caffes_solverstate_continues_its_run(solvers_dir: Path, tmp_path: Path) -> None:
    """mtldata resumes from Caffe's own .solverstate (iteration 8) and runs on like Caffe would."""
    work = tmp_path / "adam"
    shutil.copytree(solvers_dir, work, ignore=shutil.ignore_patterns("logs", "generator"))
    solver, _ = load_solver(work / "adam.prototxt", cwd=work, workdir=tmp_path)
    solver.restore(work / "adam_iter_8.solverstate")
    assert solver.iter == 8
    golden = caffemodel_weights(read_caffemodel(work / "adam_iter_8.caffemodel"))
    for layer, blobs in golden.items():
        for i, blob in enumerate(blobs):
            assert_blob_close(
                solver.net.params_by_layer()[layer][i].detach().numpy(), np.asarray(blob), layer
            )
    solver.param.max_iter = 9
    solver.step(1)
    assert solver.iter == 9 and np.isfinite(solver.records[-1].loss)
