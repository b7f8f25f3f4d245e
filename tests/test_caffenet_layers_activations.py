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


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_kernel_path_matches_the_formula_path(shared):
    # float32 bottoms take torch's prelu kernel, other dtypes torch.where; same values and gradients,
    # including at x = 0 (Caffe: the slope) and the slope's gradient (x summed over x <= 0).
    flag = "true" if shared else "false"
    results = []
    for dtype in (torch.float32, torch.float64):
        net = one_layer(
            f'name: "p" type: "PReLU" bottom: "x" top: "y" prelu_param {{ channel_shared: {flag} }}',
            {"x": (2, 3, 4)},
        )
        layer = net.layer("p")
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(0.3) if shared else torch.tensor([0.1, -0.5, 2.0]))
        torch.manual_seed(1)
        x = torch.randn(2, 3, 4)
        x[0, :, 0] = 0.0
        x = x.to(dtype).requires_grad_()
        grad = torch.randn(2, 3, 4).to(dtype)
        (y,) = layer.forward(x)
        y.backward(grad)
        results.append([y.detach().double(), x.grad.double(), layer.weight.grad.double()])
        layer.weight.grad = None
    for kernel, formula in zip(*results, strict=True):
        assert torch.allclose(kernel, formula, rtol=1e-6, atol=1e-6)
    assert torch.allclose(
        results[0][1][0, :, 0], (0.3 if shared else torch.tensor([0.1, -0.5, 2.0])) * grad[0, :, 0].double()
    )
