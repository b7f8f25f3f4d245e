"""The Caffe translation against real BVLC Caffe runs (shared/fixtures/caffe/mt and h5).

Tolerances are the fixtures README's: iteration-0 losses 1e-5, every iteration's losses 1e-4
relative (atol 1e-5), gradients rtol 1e-4 / atol 1e-6, final weights 1e-4 absolute.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import same_caffe_line

from mtldata.caffe.prototxt import caffemodel_weights, read_caffemodel
from mtldata.caffenet.net import CaffeNet, caffemodel_proto, load_caffemodel
from mtldata.caffenet.runner import NetFeeder, load_solver
from mtldata.errors import CaffeFileError, DatasetFormatError

TASKS = ("loss_cls", "loss_attr", "loss_reg")


@pytest.fixture(scope="module")
def mt(caffe_fixtures: Path) -> Path:
    return caffe_fixtures / "mt"


@pytest.fixture(scope="module")
def expected(mt: Path) -> dict:
    return json.loads((mt / "expected.json").read_text())


@pytest.fixture(scope="module")
def expected_h5(caffe_fixtures: Path) -> dict:
    return json.loads((caffe_fixtures / "h5" / "expected.json").read_text())


def iter0(mt: Path) -> tuple[CaffeNet, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The LMDB net with init.caffemodel after a forward on batch 0: (net, inputs, blobs)."""
    net = CaffeNet(mt / "train.prototxt", "train")
    feeder = NetFeeder(net, [mt])
    net.setup(feeder.peek_shapes())
    report = load_caffemodel(net, mt / "init.caffemodel")
    assert report.copied == ["conv1", "fc1", "fc_cls", "fc_attr", "fc_reg"] and not report.not_in_file
    inputs = next(feeder)
    return net, inputs, net(inputs)


def test_iteration0_forward_matches_caffe(mt, expected):
    net, inputs, blobs = iter0(mt)
    want = expected["iter0"]
    for task in TASKS:
        assert blobs[task].item() == pytest.approx(want["losses"][task], rel=1e-5, abs=1e-5), task
    assert net.weighted_loss(blobs).item() == pytest.approx(want["weighted_total"], rel=1e-5)
    for head in ("fc_cls", "fc_attr", "fc_reg"):
        np.testing.assert_allclose(
            blobs[head].detach().numpy(), want["blobs"][head]["values"], rtol=1e-5, atol=1e-6
        )
    data = inputs["data"].numpy()
    assert data.shape == tuple(want["data"]["shape"])
    assert float(data[0].mean(dtype=np.float64)) == pytest.approx(want["data"]["first_sample_mean"], abs=1e-7)
    assert data[0, 0, 0, :8].tolist() == want["data"]["first_sample_first_row_ch0"]  # exact arithmetic
    for name, blob in want["label_blobs"].items():
        assert blobs[name].shape == tuple(blob["shape"])
        np.testing.assert_array_equal(blobs[name].numpy(), np.asarray(blob["values"], dtype=np.float32))
    assert {k: list(v.shape) for k, v in blobs.items()} == expected["blob_shapes"]


def test_iteration0_gradients_match_caffe(mt):
    net, _, blobs = iter0(mt)
    net.weighted_loss(blobs).backward()
    grads = np.load(mt / "iter0_grads.npz")
    params = net.learnable_params()
    assert sorted(p.key for p in params) == sorted(grads.files)
    for p in params:
        np.testing.assert_allclose(p.tensor.grad.numpy(), grads[p.key], rtol=1e-4, atol=1e-6, err_msg=p.key)


def test_caffemodel_round_trip_is_byte_identical(mt, tmp_path):
    net, _, _ = iter0(mt)
    assert caffemodel_proto(net).SerializeToString() == (mt / "init.caffemodel").read_bytes()


def _train(solver: Path, init: Path, cwd: Path, workdir: Path) -> tuple:
    log: list[str] = []
    solver_obj, _ = load_solver(solver, init=init, cwd=cwd, workdir=workdir, log=log.append)
    seen: list[dict[str, np.ndarray]] = []
    feeder = solver_obj.train_batches

    def recorded():
        for batch in feeder:
            seen.append({k: v.numpy().copy() for k, v in batch.items()})
            yield batch

    solver_obj.train_batches = recorded()
    solver_obj.solve()
    return solver_obj, seen, log


def _check_training(solver, seen, expected: dict, final_model: Path) -> None:
    assert len(solver.records) == 10
    for record, want, batch in zip(solver.records, expected["iterations"], seen, strict=False):
        for task in TASKS:
            assert float(record.outputs[task]) == pytest.approx(want["losses"][task], rel=1e-4, abs=1e-5)
        assert record.loss == pytest.approx(want["weighted_total"], rel=1e-4, abs=1e-5)
        assert record.lr == pytest.approx(want["lr"], rel=1e-6)
        # The label plumbing: wrap-around batches (8, 9, 0, 1 ...) and the ignored -1 sample.
        labels = np.concatenate(
            [np.asarray(want["labels"][k]).reshape(4, -1) for k in ("label_cls", "label_attr", "label_reg")],
            1,
        )
        np.testing.assert_array_equal(batch["label"].reshape(4, 5), labels.astype(np.float32))
    final = caffemodel_weights(read_caffemodel(final_model))
    mine = solver.net.params_by_layer()
    assert sorted(final) == sorted(mine)
    for layer, blobs in final.items():
        for j, blob in enumerate(blobs):
            np.testing.assert_allclose(
                mine[layer][j].detach().numpy(), blob, rtol=0, atol=1e-4, err_msg=f"{layer}/{j}"
            )
    post = expected["post_training_forward"]
    for task in TASKS:
        assert float(solver.final_outputs[task]) == pytest.approx(post["losses"][task], rel=1e-4, abs=1e-5)
    assert solver.final_loss == pytest.approx(post["weighted_total"], rel=1e-4)


def test_ten_sgd_iterations_match_caffe(mt, expected, tmp_path):
    solver, seen, log = _train(mt / "solver.prototxt", mt / "init.caffemodel", cwd=mt, workdir=tmp_path)
    _check_training(solver, seen, expected, mt / "final.caffemodel")
    # The end-of-training snapshot: Caffe's name and layout, final weights.
    snapshot = tmp_path / "solver_iter_10.caffemodel"
    assert solver.snapshots == [snapshot] and (tmp_path / "solver_iter_10.solverstate").is_file()
    ours, theirs = read_caffemodel(snapshot), read_caffemodel(mt / "final.caffemodel")
    for layer in (*ours.layer, *theirs.layer):
        del layer.blobs[:]
    assert ours == theirs
    _check_log(log, (mt / "caffe_train.log").read_text())


def _check_log(ours: list[str], caffe_log: str) -> None:
    """Every Iteration/lr/output line of `caffe train` appears in our log, numbers within 1e-4."""
    theirs = []
    for line in caffe_log.splitlines():
        match = re.match(r"I\d+ [\d:.]+ +\d+ (?:solver|sgd_solver)\.cpp:\d+\] (.*)", line)
        if match and re.search(r"Iteration \d+.*(loss|lr) = |net output", match.group(1)):
            theirs.append(re.sub(r" \([^)]*iter/s[^)]*\)", "", match.group(1)))
    relevant = [line for line in ours if re.search(r"Iteration \d+.*(loss|lr) = |net output", line)]
    assert len(relevant) == len(theirs) == 10 * 5 + 1
    for mine, caffe in zip(relevant, theirs, strict=True):
        assert same_caffe_line(mine, caffe, rel=1e-4, abs=1e-6), (mine, caffe)


def test_hdf5_variant_matches_caffe(caffe_fixtures, mt, expected_h5, tmp_path):
    # Caffe resolves source: "list.txt" and the train.h5 inside it against the working directory:
    # run from a copy of h5/ as cwd.
    run_dir = tmp_path / "h5"
    shutil.copytree(caffe_fixtures / "h5", run_dir)
    solver, seen, _ = _train(
        run_dir / "solver_h5.prototxt", mt / "init.caffemodel", cwd=run_dir, workdir=run_dir
    )
    assert seen[0]["label"].shape == (4, 5)  # HDF5Data gives 2-D labels; the Slice tops are (4, k)
    _check_training(solver, seen, expected_h5, mt / "final.caffemodel")


def test_paths_fall_back_to_the_prototxt_folder(caffe_fixtures, mt, expected_h5, tmp_path):
    # From an unrelated working directory, `net`, `source` and the .h5 paths resolve next to the files.
    solver, _ = load_solver(
        caffe_fixtures / "h5" / "solver_h5.prototxt",
        init=mt / "init.caffemodel",
        cwd=tmp_path,
        workdir=tmp_path,
    )
    record = solver.step(1)[0]
    assert float(record.outputs["loss_cls"]) == pytest.approx(
        expected_h5["iter0"]["losses"]["loss_cls"], rel=1e-5
    )
    with pytest.raises(CaffeFileError, match="no such solver file"):
        load_solver(tmp_path / "missing.prototxt")
    (tmp_path / "solver.prototxt").write_text('net: "nope.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    with pytest.raises(
        DatasetFormatError, match=r"net: 'nope.prototxt' not found \(looked for .*nope.prototxt\)"
    ):
        load_solver(tmp_path / "solver.prototxt", cwd=tmp_path)


def test_hdf5_data_equals_the_lmdb_data_layer(caffe_fixtures, mt):
    lmdb_net = CaffeNet(mt / "train.prototxt", "train")
    h5_net = CaffeNet(caffe_fixtures / "h5" / "train_h5.prototxt", "train")
    lmdb_feed, h5_feed = NetFeeder(lmdb_net, [mt]), NetFeeder(h5_net, [caffe_fixtures / "h5"])
    for _ in range(3):  # samples 0..9, then 0, 1: both wrap around continuously
        a, b = next(lmdb_feed), next(h5_feed)
        np.testing.assert_array_equal(a["data"].numpy(), b["data"].numpy())
        np.testing.assert_array_equal(a["label"].numpy().reshape(4, 5), b["label"].numpy())


def test_cli_train_solver_runs_the_caffe_setup(mt, expected, tmp_path):
    from click.testing import CliRunner

    from mtldata.cli import main

    args = ["train", "--solver", str(mt / "solver.prototxt"), "--init", str(mt / "init.caffemodel")]
    result = CliRunner().invoke(main, [*args, "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "Iteration 0, loss = 2.47048" in lines
    assert "    Train net output #0: loss_attr = 2.08021 (* 0.5 = 1.04011 loss)" in lines
    assert "Iteration 5, lr = 0.005" in lines and "Iteration 10, loss = 2.04531" in lines
    weights = caffemodel_weights(read_caffemodel(tmp_path / "solver_iter_10.caffemodel"))
    final = caffemodel_weights(read_caffemodel(mt / "final.caffemodel"))
    assert all(np.allclose(a, b, atol=1e-4) for k in final for a, b in zip(weights[k], final[k], strict=True))
    result = CliRunner().invoke(main, [*args, "--epochs", "2"])
    assert result.exit_code == 1 and "drop --epochs" in result.output
