"""Caffe's loss layers and Accuracy against real BVLC Caffe (the goldens of every case) and hand computations.

SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss,
InfogainLoss, ContrastiveLoss, MultinomialLogisticLoss, Accuracy.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from caffe_layer_cases import family_cases, one_layer, run, run_case

from mtldata.caffenet.layers import CaffeNetError


@pytest.mark.parametrize("case", family_cases("losses"))
def test_layer_matches_the_caffe_golden(case):
    assert run_case(case) == []


# ---- Losses and Accuracy ------------------------------------------------------------------------


def test_softmax_loss_ignore_label_and_normalizations():
    x = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0], [3.0, -1.0, 2.0]])
    label = torch.tensor([1.0, -1.0, 0.0])
    logp = torch.log_softmax(x, 1)
    picked = -(logp[0, 1] + logp[2, 0])
    for norm, divisor in (
        ("", 2),
        ("normalization: FULL", 3),
        ("normalization: BATCH_SIZE", 3),
        ("normalization: NONE", 1),
    ):
        text = f'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "t" top: "loss" loss_param {{ ignore_label: -1 {norm} }}'
        net = one_layer(text, {"x": (3, 3), "t": (3,)})
        assert torch.allclose(run(net, x=x, t=label)["loss"], picked / divisor), norm
    net = one_layer(
        'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "t" top: "loss" loss_param { ignore_label: -1 }',
        {"x": (3, 3), "t": (3,)},
    )
    assert run(net, x=x, t=torch.full((3,), -1.0))["loss"].item() == 0  # all ignored: 0, not NaN
    net = one_layer(
        'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "t" top: "loss"', {"x": (3, 3), "t": (3,)}
    )
    with pytest.raises(CaffeNetError, match="'l'.*label -1 is outside"):
        run(net, x=x, t=label)


def test_softmax_loss_over_spatial_positions():
    x = torch.randn(2, 3, 2, 2)
    label = torch.randint(0, 3, (2, 1, 2, 2)).float()
    net = one_layer(
        'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "t" top: "loss"',
        {"x": (2, 3, 2, 2), "t": (2, 1, 2, 2)},
    )
    want = F.cross_entropy(x, label[:, 0].long())  # mean over the 8 valid positions
    assert torch.allclose(run(net, x=x, t=label)["loss"], want)


def test_sigmoid_and_euclidean_normalization():
    x, t = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
    net = one_layer(
        'name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss"',
        {"x": (4, 3), "t": (4, 3, 1, 1)},
    )
    want = F.binary_cross_entropy_with_logits(x, t, reduction="sum") / 4  # / N, not / (N * 3)
    assert torch.allclose(run(net, x=x, t=t.reshape(4, 3, 1, 1))["loss"], want)
    net = one_layer(
        'name: "l" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "loss"', {"x": (4, 3), "t": (4, 3)}
    )
    assert torch.allclose(run(net, x=x, t=t)["loss"], ((x - t) ** 2).sum() / 8)


def test_accuracy_top_k_and_ignore():
    x = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    t = torch.tensor([2.0, 0.0, 0.0, -1.0])
    text = 'name: "a" type: "Accuracy" bottom: "x" bottom: "t" top: "acc" top: "per" accuracy_param { ignore_label: -1 }'
    out = run(one_layer(text, {"x": (4, 3), "t": (4,)}), x=x, t=t)
    # row 1: class 0 ties with class 1 (both 0.3) and class 2 is higher: wrong at top-1.
    assert out["acc"].item() == pytest.approx(1 / 3)
    assert out["per"].tolist() == pytest.approx([0.5, 0.0, 0.0])
    text = 'name: "a" type: "Accuracy" bottom: "x" bottom: "t" top: "acc" accuracy_param { top_k: 2 ignore_label: -1 }'
    assert run(one_layer(text, {"x": (4, 3), "t": (4,)}), x=x, t=t)["acc"].item() == pytest.approx(2 / 3)


def test_softmax_loss_gradient_ignores_the_probability_floor():
    net = one_layer(
        'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "t" top: "loss"', {"x": (1, 2), "t": (1,)}
    )
    x = torch.tensor([[0.0, -200.0]], requires_grad=True)
    loss = run(net, x=x, t=torch.tensor([1.0]))["loss"]
    assert loss.item() == pytest.approx(-math.log(1.1754943508222875e-38), rel=1e-6)  # log(FLT_MIN)
    loss.backward()
    assert x.grad.tolist() == [[1.0, -1.0]]  # Caffe's p - 1, not 0


def test_infogain_matrix_file_not_found_names_the_layer(tmp_path):
    with pytest.raises(
        CaffeNetError, match=r"layer 'ig'.*infogain_loss_param\.source: 'nowhere\.binaryproto' not found"
    ):
        one_layer(
            'name: "ig" type: "InfogainLoss" bottom: "x" bottom: "t" top: "loss" '
            'infogain_loss_param { source: "nowhere.binaryproto" }',
            {"x": (2, 3), "t": (2,)},
        )
