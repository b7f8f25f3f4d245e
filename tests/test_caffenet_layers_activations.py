"""Caffe's activation layers against real BVLC Caffe (the goldens of every case) and hand computations.

ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL,
Threshold, Clip, Swish, Dropout.
"""

from __future__ import annotations

import pytest
import torch
from caffe_layer_cases import family_cases, one_layer, run, run_case


@pytest.mark.parametrize("case", family_cases("activations"))
def test_layer_matches_the_caffe_golden(case):
    assert run_case(case) == []


def test_neurons_softmax_dropout_silence():
    x = torch.tensor([[-2.0, 0.0, 3.0]])
    net = one_layer(
        'name: "r" type: "ReLU" bottom: "x" top: "x" relu_param { negative_slope: 0.1 }', {"x": (1, 3)}
    )
    assert torch.allclose(run(net, x=x)["x"], torch.tensor([[-0.2, 0.0, 3.0]]))
    for kind, fn in (("Sigmoid", torch.sigmoid), ("TanH", torch.tanh)):
        net = one_layer(f'name: "n" type: "{kind}" bottom: "x" top: "y"', {"x": (1, 3)})
        assert torch.allclose(run(net, x=x)["y"], fn(x))
    net = one_layer('name: "s" type: "Softmax" bottom: "x" top: "y"', {"x": (1, 3)})
    assert torch.allclose(run(net, x=x)["y"], torch.softmax(x, 1))
    net = one_layer(
        'name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 }',
        {"x": (1, 3)},
        "test",
    )
    assert torch.equal(run(net, x=x)["y"], x)
    net = one_layer(
        'name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 }', {"x": (1000,)}
    )
    y = run(net, x=torch.ones(1000))["y"]
    assert set(y.unique().tolist()) <= {0.0, 2.0} and 350 < int((y == 0).sum()) < 650
    net = one_layer('name: "s" type: "Silence" bottom: "x"', {"x": (1, 3)})
    assert "x" in run(net, x=x) and net.output_blobs == []


def test_threshold_is_strict_and_passes_no_gradient():
    net = one_layer(
        'name: "t" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: 0.5 }', {"x": (4,)}
    )
    x = torch.tensor([0.4, 0.5, 0.6, -1.0], requires_grad=True)
    y = run(net, x=x)["y"]
    assert y.tolist() == [0.0, 0.0, 1.0, 0.0] and not y.requires_grad


def test_clip_and_absval_gradients_at_their_edges():
    net = one_layer('name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: -1 max: 1 }', {"x": (4,)})
    x = torch.tensor([-1.0, 1.0, 1.5, -2.0], requires_grad=True)
    run(net, x=x)["y"].sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # both bounds pass the gradient
    net = one_layer('name: "a" type: "AbsVal" bottom: "x" top: "y"', {"x": (3,)})
    x = torch.tensor([-2.0, 0.0, 3.0], requires_grad=True)
    run(net, x=x)["y"].sum().backward()
    assert x.grad.tolist() == [-1.0, 0.0, 1.0]
