"""Caffe's normalization layers against real BVLC Caffe (the goldens of every case) and hand computations.

LRN, BatchNorm, MVN, Scale, Bias.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from caffe_layer_cases import family_cases, one_layer, run, run_case

from mtldata.caffenet.layers import CaffeNetError


@pytest.mark.parametrize("case", family_cases("normalization"))
def test_layer_matches_the_caffe_golden(case):
    assert run_case(case) == []


# ---- LRN, BatchNorm, Scale ----------------------------------------------------------------------


def test_lrn_across_channels_formula():
    x = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    net = one_layer(
        'name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 1 beta: 0.75 k: 2 }',
        {"x": (1, 3, 1, 1)},
    )
    # scale_c = k + alpha/size * (sum of x^2 over channels c-1..c+1, zero outside)
    sums = [1 + 4, 1 + 4 + 9, 4 + 9]
    want = [v * (2 + s / 3) ** -0.75 for v, s in zip([1, 2, 3], sums, strict=True)]
    assert torch.allclose(run(net, x=x)["y"].flatten(), torch.tensor(want))


def test_lrn_within_channel_formula():
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    net = one_layer(
        'name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }',
        {"x": (1, 1, 3, 3)},
    )
    sq = np.pad((x[0, 0].numpy() ** 2), 1)
    window = np.array([[sq[i : i + 3, j : j + 3].sum() for j in range(3)] for i in range(3)])
    want = x[0, 0].numpy() * (1 + 0.5 * window / 9) ** -0.75  # k is not used within a channel
    assert np.allclose(run(net, x=x)["y"][0, 0].numpy(), want, rtol=1e-6)


def test_batch_norm_global_stats_use_the_scale_factor():
    text = 'name: "bn" type: "BatchNorm" bottom: "x" top: "x" batch_norm_param { use_global_stats: true eps: 0.001 }'
    net = one_layer(text, {"x": (3, 2)})
    bn = net.layer("bn")
    bn.mean.copy_(torch.tensor([2.0, 4.0]))
    bn.variance.copy_(torch.tensor([8.0, 16.0]))
    bn.scale_factor.fill_(2.0)
    x = torch.randn(3, 2)
    want = (x - torch.tensor([1.0, 2.0])) / torch.sqrt(torch.tensor([4.0, 8.0]) + 0.001)
    assert torch.allclose(run(net, x=x)["x"], want)


def test_batch_norm_training_moving_average():
    net = one_layer(
        'name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { moving_average_fraction: 0.5 }',
        {"x": (2, 2, 1, 2)},
    )
    bn = net.layer("bn")
    assert bn.scale_factor.item() == 0  # the set-up dry run does not count as a batch
    x1, x2 = torch.randn(2, 2, 1, 2), torch.randn(2, 2, 1, 2)
    y = run(net, x=x1)["y"]
    mean1, var1 = x1.mean((0, 2, 3)), x1.var((0, 2, 3), unbiased=False)
    assert torch.allclose(
        y, (x1 - mean1.view(1, 2, 1, 1)) / torch.sqrt(var1.view(1, 2, 1, 1) + 1e-5), atol=1e-5
    )
    run(net, x=x2)
    mean2, var2 = x2.mean((0, 2, 3)), x2.var((0, 2, 3), unbiased=False)
    assert bn.scale_factor.item() == pytest.approx(0.5 * 1 + 1)
    assert torch.allclose(bn.mean, 0.5 * mean1 + mean2)
    m = 4  # values per channel: the variance blob gets the m/(m-1) bias correction
    assert torch.allclose(bn.variance, 0.5 * var1 * m / (m - 1) + var2 * m / (m - 1))
    test = one_layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y"', {"x": (2, 2, 1, 2)}, phase="test")
    assert test.layer("bn").use_global_stats


def test_batch_norm_rejects_learned_statistics():
    with pytest.raises(CaffeNetError, match="'bn'.*statistics"):
        one_layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 1 }', {"x": (2, 2)})


def test_scale_with_bias_and_two_bottoms():
    net = one_layer(
        'name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true }', {"x": (2, 3, 2)}
    )
    s = net.layer("s")
    assert s.weight.shape == (3,) and torch.all(s.weight == 1) and torch.all(s.bias == 0)
    with torch.no_grad():
        s.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        s.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.randn(2, 3, 2)
    assert torch.allclose(run(net, x=x)["y"], x * s.weight.view(1, 3, 1) + s.bias.view(1, 3, 1))
    net = one_layer(
        'name: "s" type: "Scale" bottom: "x" bottom: "g" top: "y" scale_param { axis: 0 }',
        {"x": (2, 3, 2), "g": (2, 3)},
    )
    g = torch.randn(2, 3)
    assert torch.allclose(run(net, x=x, g=g)["y"], x * g[:, :, None])


@pytest.mark.parametrize("global_stats", [False, True])
def test_batch_norm_kernel_path_matches_the_formula_path(global_stats):
    # float32 bottoms take torch's batch_norm kernel; other dtypes the formula written out. Both must
    # give the same outputs, input gradients and accumulated statistics (the goldens pin float32).
    flag = "true" if global_stats else "false"
    text = f'name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param {{ use_global_stats: {flag} moving_average_fraction: 0.9 eps: 0.01 }}'
    results = []
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        bn = one_layer(text, {"x": (4, 3, 5, 2)}).layer("bn")
        bn.mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.variance.copy_(torch.tensor([3.0, 1.0, 0.5]))
        bn.scale_factor.fill_(1.5)
        x = (torch.randn(4, 3, 5, 2) * 3 + 1).to(dtype).requires_grad_()
        grad = torch.randn(4, 3, 5, 2).to(dtype)
        (y,) = bn.forward(x)
        y.backward(grad)
        results.append([t.detach().double() for t in (y, x.grad, bn.mean, bn.variance, bn.scale_factor)])
    for kernel, formula in zip(*results, strict=True):
        assert torch.allclose(kernel, formula, rtol=1e-5, atol=1e-5)
    if not global_stats:
        assert results[0][4].item() == pytest.approx(0.9 * 1.5 + 1)  # one batch was counted


def _batch_norm_then_scale(bn_top: str, scale_bottom: str, scale_top: str, global_stats: bool):
    flag = "true" if global_stats else "false"
    text = (
        f'name: "bn" type: "BatchNorm" bottom: "x" top: "{bn_top}" batch_norm_param {{ use_global_stats: {flag} '
        f'moving_average_fraction: 0.9 eps: 0.01 }} }} layer {{ name: "sc" type: "Scale" bottom: "{scale_bottom}" '
        f'top: "{scale_top}" scale_param {{ bias_term: true }}'
    )
    net = one_layer(text, {"x": (4, 3, 5, 2)})
    bn, sc = net.layer("bn"), net.layer("sc")
    bn.mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn.variance.copy_(torch.tensor([3.0, 1.0, 0.5]))
    bn.scale_factor.fill_(1.5)
    with torch.no_grad():
        sc.weight.copy_(torch.tensor([0.5, 2.0, -1.5]))
        sc.bias.copy_(torch.tensor([0.25, -1.0, 3.0]))
    return net, bn, sc


@pytest.mark.parametrize("global_stats", [False, True])
@pytest.mark.parametrize("bn_top", ["x", "y"])  # BatchNorm in place, or not (the Scale in place on its top)
def test_batch_norm_and_the_scale_in_place_on_its_top_run_as_one_kernel_with_the_same_results(
    monkeypatch, global_stats, bn_top
):
    # The pair runs as one batch_norm kernel with the Scale's gamma and beta as its affine: outputs,
    # gradients (input, gamma, beta) and the statistics must be those of the two layers run apart.
    x0, grad = torch.randn(4, 3, 5, 2) * 3 + 1, torch.randn(4, 3, 5, 2)
    results, scale_calls = [], []
    for fused in (True, False):
        net, bn, sc = _batch_norm_then_scale(bn_top, bn_top, bn_top, global_stats)
        x = x0.clone().requires_grad_()
        if fused:
            monkeypatch.setattr(type(sc), "forward", lambda self, *a: scale_calls.append(1) or [])
            y = net({"x": x})[bn_top]
            monkeypatch.undo()
            assert scale_calls == []  # the Scale layer itself never ran
        else:
            (y,) = sc.forward(bn.forward(x)[0])
        y.backward(grad)
        results.append(
            [
                t.detach()
                for t in (y, x.grad, sc.weight.grad, sc.bias.grad, bn.mean, bn.variance, bn.scale_factor)
            ]
        )
    for one_kernel, apart in zip(*results, strict=True):
        assert torch.allclose(one_kernel, apart, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(results[0][0], bn.forward(x0)[0], atol=1e-3)  # scaled, not just normalised


@pytest.mark.parametrize("bn_top", ["x", "y"])
def test_a_batch_norm_whose_top_stays_visible_runs_apart_from_the_scale(bn_top):
    # A Scale writing a top of its own: the BatchNorm's top is a blob of the net that callers read, so
    # the two run apart and that blob holds the normalised values, not the scaled ones.
    net, bn, sc = _batch_norm_then_scale(bn_top, bn_top, "out", global_stats=True)
    x = torch.randn(4, 3, 5, 2)
    blobs = net({"x": x})
    assert torch.allclose(blobs[bn_top], bn.forward(x)[0])
    assert torch.allclose(blobs["out"], sc.forward(blobs[bn_top])[0])
    assert not torch.allclose(blobs["out"], blobs[bn_top], atol=1e-3)


def test_batch_norm_of_one_value_per_channel_gives_zeros_not_nan():
    # m = 1 value per channel: torch's unbiased variance would divide by zero (nan); Caffe skips its
    # m/(m-1) correction there, and every output is 0.
    net = one_layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y"', {"x": (1, 3)})
    bn = net.layer("bn")
    y = run(net, x=torch.tensor([[1.0, -2.0, 3.0]]))["y"]
    assert torch.all(y == 0) and torch.all(bn.variance == 0) and torch.all(torch.isfinite(bn.mean))
