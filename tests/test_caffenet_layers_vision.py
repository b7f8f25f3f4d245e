"""Caffe's vision layers against real BVLC Caffe (the goldens of every case) and hand computations.

Convolution, Deconvolution, Pooling, SPP, InnerProduct, Embed, Im2col.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from caffe_layer_cases import family_cases, one_layer, run, run_case

from mtldata.caffenet.layers import CaffeNetError, caffe_pool2d


@pytest.mark.parametrize("case", family_cases("vision"))
def test_layer_matches_the_caffe_golden(case):
    assert run_case(case) == []


# ---- Pooling ------------------------------------------------------------------------------------


def test_max_pooling_rounds_the_output_size_up():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    out = caffe_pool2d(x, [2, 2], [2, 2], [0, 0], "MAX")
    # ceil((5 - 2) / 2) + 1 = 3 (torch's floor gives 2); the last window holds column/row 4 only.
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0].tolist() == [[6, 8, 9], [16, 18, 19], [21, 23, 24]]


def test_pooling_drops_a_last_window_that_would_start_in_the_padding():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    # ceil((3 + 2 - 2) / 2) + 1 = 3, but window 3 would start at 4 >= 3 + pad: Caffe keeps 2.
    out = caffe_pool2d(x, [2, 2], [2, 2], [1, 1], "MAX")
    assert out[0, 0].tolist() == [[0, 2], [6, 8]]


def test_ave_pooling_divisor_counts_padding_but_not_beyond_it():
    ones = torch.ones(1, 1, 3, 3)
    out = caffe_pool2d(ones, [2, 2], [2, 2], [1, 1], "AVE")
    assert torch.allclose(out[0, 0], torch.tensor([[0.25, 0.5], [0.5, 1.0]]))
    # 4x4, kernel 3, stride 2, pad 1: 3 windows per axis with valid rows [2, 3, 1] and Caffe's
    # divisors [3, 3, 2] (the last window is clipped at H + pad, not at H + pad + 1).
    out = caffe_pool2d(torch.ones(1, 1, 4, 4), [3, 3], [2, 2], [1, 1], "AVE")
    valid, size = torch.tensor([2.0, 3, 1]), torch.tensor([3.0, 3, 2])
    assert torch.allclose(out[0, 0], (valid[:, None] * valid[None]) / (size[:, None] * size[None]))


def test_pooling_layer_global_and_floor_mode():
    net = one_layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE global_pooling: true }',
        {"x": (2, 3, 4, 5)},
    )
    x = torch.randn(2, 3, 4, 5)
    assert torch.allclose(run(net, x=x)["y"], x.mean((2, 3), keepdim=True), atol=1e-6)
    net = one_layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }',
        {"x": (1, 1, 5, 5)},
    )
    assert run(net, x=torch.randn(1, 1, 5, 5))["y"].shape == (1, 1, 2, 2)


def test_max_pooling_gradient_goes_to_the_first_maximum():
    x = torch.tensor([[[[1.0, 3.0], [3.0, 0.0]]]], requires_grad=True)
    caffe_pool2d(x, [2, 2], [2, 2], [0, 0], "MAX").sum().backward()
    assert x.grad[0, 0].tolist() == [[0, 1], [0, 0]]


# ---- Convolution, InnerProduct ------------------------------------------------------------------


def test_convolution_group_dilation_pad_stride_and_no_bias():
    layer = (
        'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 kernel_size: 3 '
        'pad: 2 stride: 2 dilation: 2 group: 2 bias_term: false weight_filler { type: "gaussian" std: 0.5 } }'
    )
    net = one_layer(layer, {"x": (2, 6, 9, 9)})
    conv = net.layer("c")
    assert conv.weight.shape == (4, 3, 3, 3) and conv.bias is None
    x = torch.randn(2, 6, 9, 9)
    want = F.conv2d(x, conv.weight, None, stride=2, padding=2, dilation=2, groups=2)
    assert torch.allclose(run(net, x=x)["y"], want)
    assert want.shape == (2, 4, 5, 5)


def test_convolution_kernel_h_w_and_bias_filler():
    layer = (
        'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_h: 1 '
        'kernel_w: 3 pad_h: 0 pad_w: 1 bias_filler { type: "constant" value: 0.5 } }'
    )
    net = one_layer(layer, {"x": (1, 1, 4, 4)})
    conv = net.layer("c")
    assert conv.weight.shape == (2, 1, 1, 3)
    assert torch.all(conv.weight == 0) and torch.all(conv.bias == 0.5)  # Caffe's default filler is constant 0
    assert torch.all(run(net, x=torch.randn(1, 1, 4, 4))["y"] == 0.5)


def test_inner_product_flattens_from_its_axis():
    x = torch.randn(2, 3, 4)
    net = one_layer(
        'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 5 weight_filler { type: "xavier" } }',
        {"x": (2, 3, 4)},
    )
    ip = net.layer("ip")
    assert ip.weight.shape == (5, 12)  # axis 1: (C, H) flattened, C-major
    assert torch.allclose(run(net, x=x)["y"], x.reshape(2, 12) @ ip.weight.T + ip.bias, atol=1e-6)
    net = one_layer(
        'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 5 axis: 2 weight_filler { type: "xavier" } }',
        {"x": (2, 3, 4)},
    )
    ip = net.layer("ip")
    assert ip.weight.shape == (5, 4)
    y = run(net, x=x)["y"]
    assert y.shape == (2, 3, 5)
    assert torch.allclose(y, x @ ip.weight.T + ip.bias, atol=1e-6)
    net = one_layer(
        'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 5 transpose: true axis: -1 }',
        {"x": (2, 3, 4)},
    )
    assert net.layer("ip").weight.shape == (4, 5)


def test_embed_index_outside_the_table_names_the_layer():
    with pytest.raises(CaffeNetError, match=r"layer 'e' \(type Embed\).*\[0, input_dim = 4\)"):
        net = one_layer(
            'name: "e" type: "Embed" bottom: "x" top: "y" embed_param { num_output: 2 input_dim: 4 }',
            {"x": (3,)},
        )
        run(net, x=torch.tensor([0.0, 4.0, 1.0]))


def test_spp_pools_a_pyramid_of_bins_with_pooling_rules():
    net = one_layer(
        'name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 }', {"x": (1, 1, 4, 4)}
    )
    y = run(net, x=torch.arange(16.0).reshape(1, 1, 4, 4))["y"]
    assert y.tolist() == [[15.0, 5.0, 7.0, 13.0, 15.0]]
    net = one_layer(
        'name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 pool: AVE }',
        {"x": (1, 1, 5, 5)},
    )
    x = torch.arange(25.0).reshape(5, 5)
    y = run(net, x=x.reshape(1, 1, 5, 5))["y"]
    # Level 1: kernel 3, pad 1; the padding counts in the divisor (9), the third window is dropped.
    level1 = [x[:2, :2].sum() / 9, x[:2, 2:].sum() / 9, x[2:, :2].sum() / 9, x[2:, 2:].sum() / 9]
    assert torch.allclose(y, torch.stack([x.mean(), *level1]).reshape(1, 5))
    net = one_layer(
        'name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 }', {"x": (2, 3, 4, 4)}
    )
    assert run(net, x=torch.ones(2, 3, 4, 4))["y"].shape == (2, 3, 1, 1)


def test_im2col_columns_times_the_weights_are_the_convolution():
    conv = "kernel_h: 3 kernel_w: 2 pad: 1 stride: 2 dilation: 2"
    net = one_layer(
        f'name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param {{ {conv} }}', {"x": (2, 3, 7, 6)}
    )
    x = torch.randn(2, 3, 7, 6)
    cols = run(net, x=x)["y"]
    weight = torch.randn(4, 3, 3, 2)
    want = F.conv2d(x, weight, padding=1, stride=2, dilation=2)
    assert cols.shape == (2, 18, *want.shape[2:])
    got = (weight.reshape(4, -1) @ cols.reshape(2, 18, -1)).reshape(want.shape)
    assert torch.allclose(got, want, atol=1e-5)
