"""Caffe's solver: learning-rate policies, the SGD update, and the Step/Solve/Test/Snapshot loop."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from mtldata.caffe import caffe_pb2
from mtldata.caffe.prototxt import read_caffemodel
from mtldata.caffenet.net import CaffeNet, LearnableParam
from mtldata.caffenet.solver import Solver, format_number, learning_rate
from mtldata.caffenet.updates import CaffeUpdate, SolverError


def solver_param(text: str) -> caffe_pb2.SolverParameter:
    return text_format.Parse(text, caffe_pb2.SolverParameter())


@pytest.mark.parametrize(
    ("text", "formula"),
    [
        ('lr_policy: "fixed" base_lr: 0.1', lambda it: 0.1),
        ('lr_policy: "step" base_lr: 0.1 gamma: 0.5 stepsize: 3', lambda it: 0.1 * 0.5 ** (it // 3)),
        ('lr_policy: "exp" base_lr: 0.1 gamma: 0.9', lambda it: 0.1 * 0.9**it),
        ('lr_policy: "inv" base_lr: 0.1 gamma: 0.01 power: 0.75', lambda it: 0.1 * (1 + 0.01 * it) ** -0.75),
        ('lr_policy: "poly" base_lr: 0.1 power: 2 max_iter: 20', lambda it: 0.1 * (1 - it / 20) ** 2),
        (
            'lr_policy: "sigmoid" base_lr: 0.1 gamma: -0.0 stepsize: 5',
            lambda it: 0.1 / (1 + math.exp(-0.0 * (it - 5))),
        ),
        (
            'lr_policy: "sigmoid" base_lr: 0.1 gamma: 0.5 stepsize: 5',
            lambda it: 0.1 / (1 + math.exp(-0.5 * (it - 5))),
        ),
    ],
)
def test_lr_policies_follow_caffes_formulas(text, formula):
    param = solver_param(text)
    for it in range(0, 20):
        rate, _ = learning_rate(param, it)
        assert rate == pytest.approx(formula(it), rel=1e-6), it
        assert rate == float(np.float32(rate))  # Caffe's rate is a float (Dtype)


def test_multistep_moves_one_stepvalue_per_iteration():
    param = solver_param(
        'lr_policy: "multistep" base_lr: 1 gamma: 0.1 stepvalue: 2 stepvalue: 4 stepvalue: 4'
    )
    step, rates = 0, []
    for it in range(7):
        rate, step = learning_rate(param, it, step)
        rates.append(rate)
    # Two stepvalues at 4: Caffe moves past one per call, so the second takes effect at iteration 5.
    assert rates == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])


def test_lr_policy_errors():
    with pytest.raises(SolverError, match="unknown learning rate policy 'cosine'"):
        learning_rate(solver_param('lr_policy: "cosine" base_lr: 1'), 0)
    with pytest.raises(SolverError, match="stepsize > 0"):
        learning_rate(solver_param('lr_policy: "step" base_lr: 1 gamma: 0.1'), 0)
    with pytest.raises(SolverError, match="unknown solver type 'LBFGS'"):
        CaffeUpdate([], solver_param('type: "LBFGS"'))


def one_param(value: float, lr_mult: float = 2.0, decay_mult: float = 0.5) -> LearnableParam:
    return LearnableParam("w/0", torch.nn.Parameter(torch.tensor([value])), lr_mult, decay_mult)


def test_sgd_update_by_hand_with_an_lr_change():
    p = one_param(1.0)
    sgd = CaffeUpdate([p], solver_param("momentum: 0.9 weight_decay: 0.1"))
    p.tensor.grad = torch.tensor([0.5])
    sgd.apply_update(0.1)
    # g = 0.5 + 0.1·0.5·1.0 = 0.55; V = 0.1·2·0.55 = 0.11; W = 1 − 0.11
    assert sgd.history[0].item() == pytest.approx(0.11, rel=1e-6)
    assert p.tensor.item() == pytest.approx(0.89, rel=1e-6)
    p.tensor.grad = torch.tensor([0.5])
    sgd.apply_update(0.05)
    # g = 0.5 + 0.05·0.89 = 0.5445; V = 0.9·0.11 + 0.05·2·0.5445 = 0.15345; W = 0.89 − 0.15345
    assert sgd.history[0].item() == pytest.approx(0.15345, rel=1e-6)
    assert p.tensor.item() == pytest.approx(0.73655, rel=1e-6)
    # torch.optim.SGD (V ← 0.9·V + g; W ← W − lr·V) differs once the rate changes.
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=0.2, momentum=0.9, weight_decay=0.05)
    for lr in (0.2, 0.1):
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.tensor([0.5])
        opt.step()
    assert w.item() != pytest.approx(0.73655, rel=1e-4)


def test_iter_size_clip_l1_and_nesterov():
    p = one_param(2.0, lr_mult=1.0, decay_mult=1.0)
    sgd = CaffeUpdate([p], solver_param("momentum: 0 weight_decay: 0 iter_size: 4"))
    p.tensor.grad = torch.tensor([8.0])  # the sum of 4 accumulated gradients
    sgd.apply_update(1.0)
    assert p.tensor.item() == pytest.approx(0.0)  # 2 − 8/4
    p = one_param(0.0, lr_mult=1.0, decay_mult=1.0)
    q = LearnableParam("v/0", torch.nn.Parameter(torch.zeros(1)), 1.0, 1.0)
    sgd = CaffeUpdate([p, q], solver_param("clip_gradients: 1"))
    p.tensor.grad, q.tensor.grad = torch.tensor([3.0]), torch.tensor([4.0])
    sgd.apply_update(1.0)
    assert (p.tensor.item(), q.tensor.item()) == pytest.approx((-0.6, -0.8))
    p = one_param(-2.0, lr_mult=1.0, decay_mult=1.0)
    sgd = CaffeUpdate([p], solver_param('weight_decay: 0.5 regularization_type: "L1"'))
    p.tensor.grad = torch.tensor([0.0])
    sgd.apply_update(1.0)
    assert p.tensor.item() == pytest.approx(-1.5)  # W − lr·wd·sign(W)
    p = one_param(1.0, lr_mult=1.0, decay_mult=0.0)
    sgd = CaffeUpdate([p], solver_param('type: "Nesterov" momentum: 0.5'))
    for _ in range(2):
        p.tensor.grad = torch.tensor([1.0])
        sgd.apply_update(0.1)
    # V1 = 0.1, step 1.5·0.1; V2 = 0.15, step 1.5·0.15 − 0.5·0.1
    assert p.tensor.item() == pytest.approx(1 - 0.15 - (0.225 - 0.05))


def test_format_number_like_glog():
    assert [format_number(x) for x in (1.0, 0.5, 2.4704821, 0.0205976, 1e-5, 123456789.0)] == [
        "1",
        "0.5",
        "2.47048",
        "0.0205976",
        "1e-05",
        "1.23457e+08",
    ]


NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 2 } shape { dim: 4 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p" inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" loss_weight: 2 }
layer { name: "err" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "err" loss_weight: 0 include { phase: TEST } }
"""


def batches(seed: int):
    gen = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(4, 2, generator=gen)
        yield {"x": x, "y": x.sum(1, keepdim=True)}


def tiny_solver(tmp_path, text: str, log: list[str]) -> Solver:
    param = solver_param(text)
    net_param = text_format.Parse(NET, caffe_pb2.NetParameter())
    test_nets = [CaffeNet(net_param, "test")] if param.test_iter else []
    return Solver(
        param=param,
        net=CaffeNet(net_param, "train"),
        train_batches=batches(0),
        test_nets=test_nets,
        test_batches=[batches(1) for _ in test_nets],
        snapshot_prefix=str(tmp_path / "snap"),
        log=log.append,
    )


def test_solver_loop_logs_tests_and_snapshots_like_caffe(tmp_path):
    log: list[str] = []
    solver = tiny_solver(
        tmp_path,
        'base_lr: 0.05 lr_policy: "step" gamma: 0.1 stepsize: 4 momentum: 0.9 max_iter: 6 display: 2 '
        "snapshot: 4 test_iter: 3 test_interval: 3 average_loss: 2",
        log,
    )
    records = solver.solve()
    assert [r.iter for r in records] == list(range(6))
    assert [r.lr for r in records] == pytest.approx([0.05] * 4 + [0.005] * 2)
    assert records[-1].loss < records[0].loss  # it learns the sum
    # average_loss 2: the displayed loss is the mean of the last two iterations (as float32)
    assert records[3].smoothed_loss == pytest.approx((records[2].loss + records[3].loss) / 2, rel=1e-6)
    assert log[0] == "Iteration 0, Testing net (#0)"
    assert log[1].startswith("    Test net output #0: err = ") and "(*" not in log[1]
    assert (
        log[2].startswith("    Test net output #1: loss = ")
        and log[2].endswith(" loss)")
        and "(* 2 = " in log[2]
    )
    assert log[3] == f"Iteration 0, loss = {format_number(records[0].loss)}"
    assert (
        log[4]
        == f"    Train net output #0: loss = {format_number(records[0].outputs['loss'])} (* 2 = "
        + format_number(np.float32(2) * records[0].outputs["loss"])
        + " loss)"
    )
    assert log[5] == "Iteration 0, lr = 0.05"
    assert "Iteration 3, Testing net (#0)" in log and "Iteration 6, Testing net (#0)" in log
    assert f"Snapshotting to binary proto file {tmp_path}/snap_iter_4.caffemodel" in log
    final = next(i for i, line in enumerate(log) if line.startswith("Iteration 6, loss = "))
    assert log[final + 1] == "Iteration 6, Testing net (#0)" and log[-1] == "Optimization Done."
    assert [p.name for p in solver.snapshots] == ["snap_iter_4.caffemodel", "snap_iter_6.caffemodel"]
    weights = read_caffemodel(tmp_path / "snap_iter_6.caffemodel")
    ip = next(layer for layer in weights.layer if layer.name == "ip")
    assert np.allclose(ip.blobs[0].data, solver.net.layer("ip").weight.detach().numpy().ravel())
    state = caffe_pb2.SolverState()
    state.ParseFromString((tmp_path / "snap_iter_6.solverstate").read_bytes())
    assert (
        state.iter == 6 and state.learned_net.endswith("snap_iter_6.caffemodel") and len(state.history) == 2
    )
    # The test net shares the train net's weights; its outputs are means over test_iter batches.
    assert solver.test_nets[0].layer("ip").weight is solver.net.layer("ip").weight
    assert [t.iter for t in solver.tests] == [0, 3, 6]


def test_solver_restores_a_snapshot(tmp_path):
    text = 'base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 max_iter: 4 snapshot: 2'
    first = tiny_solver(tmp_path, text, [])
    first.solve()
    resumed = tiny_solver(tmp_path, text, [])
    resumed.train_batches = itertools.islice(batches(0), 2, None)  # where the first run stood at iteration 2
    resumed.restore(tmp_path / "snap_iter_2.solverstate")
    assert resumed.iter == 2
    resumed.solve()
    assert torch.allclose(resumed.net.layer("ip").weight, first.net.layer("ip").weight)


def test_iter_size_accumulates_and_averages_the_loss(tmp_path):
    log: list[str] = []
    solver = tiny_solver(
        tmp_path, 'base_lr: 0.01 lr_policy: "fixed" max_iter: 1 iter_size: 2 snapshot_after_train: false', log
    )
    one = solver.step(1)[0]
    gen = batches(0)
    reference = CaffeNet(text_format.Parse(NET, caffe_pb2.NetParameter()), "train")
    losses = [reference.forward_loss(next(gen))[0].item() for _ in range(2)]
    assert one.loss == pytest.approx(sum(losses) / 2, rel=1e-6)
