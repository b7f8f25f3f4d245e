"""CaffeNet and its layers against small hand computations of Caffe's rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from mtldata.caffe import caffe_pb2
from mtldata.caffe.blob import array_to_blob
from mtldata.caffenet.layers import CaffeNetError, caffe_pool2d, fill
from mtldata.caffenet.net import (
    CaffeNet,
    caffemodel_proto,
    filter_net,
    insert_splits,
    load_caffemodel,
    save_caffemodel,
)


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


def test_xavier_and_msra_scales():
    torch.manual_seed(0)
    filler = caffe_pb2.FillerParameter(type="xavier")
    w = fill(filler, (100, 50))
    assert w.abs().max() <= math.sqrt(3 / 50) and w.abs().max() > 0.9 * math.sqrt(3 / 50)
    w = fill(
        caffe_pb2.FillerParameter(type="msra", variance_norm=caffe_pb2.FillerParameter.FAN_OUT), (400, 100)
    )
    assert abs(float(w.std()) - math.sqrt(2 / 400)) < 0.002  # fan_out = count / shape[1] = 400
    with pytest.raises(ValueError, match="unknown filler type 'bogus'"):
        fill(caffe_pb2.FillerParameter(type="bogus"), (2,))


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


# ---- Plumbing layers ----------------------------------------------------------------------------


def test_slice_points_equal_parts_and_errors():
    net = one_layer(
        'name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" slice_param { axis: 1 slice_point: 1 slice_point: 4 }',
        {"x": (2, 5)},
    )
    x = torch.arange(10.0).reshape(2, 5)
    out = run(net, x=x)
    assert out["a"].shape == (2, 1) and out["b"].shape == (2, 3) and out["c"].shape == (2, 1)
    assert out["b"].tolist() == [[1, 2, 3], [6, 7, 8]]
    net = one_layer('name: "s" type: "Slice" bottom: "x" top: "a" top: "b"', {"x": (2, 4)})
    assert run(net, x=torch.zeros(2, 4))["b"].shape == (2, 2)
    with pytest.raises(CaffeNetError, match="'s'.*equal parts"):
        one_layer('name: "s" type: "Slice" bottom: "x" top: "a" top: "b"', {"x": (2, 5)})


def test_concat_axis():
    net = one_layer(
        'name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: -1 }',
        {"a": (2, 1), "b": (2, 3)},
    )
    a, b = torch.randn(2, 1), torch.randn(2, 3)
    assert torch.equal(run(net, a=a, b=b)["y"], torch.cat([a, b], 1))


def test_eltwise_sum_coeffs_prod_and_max_ties():
    shapes = {"a": (2, 2), "b": (2, 2)}
    a, b = torch.tensor([[1.0, 2], [3, 4]]), torch.tensor([[1.0, 0], [5, 4]])
    net = one_layer(
        'name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: SUM coeff: 2 coeff: -1 }',
        shapes,
    )
    assert torch.equal(run(net, a=a, b=b)["y"], 2 * a - b)
    net = one_layer(
        'name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: PROD }', shapes
    )
    assert torch.equal(run(net, a=a, b=b)["y"], a * b)
    net = one_layer(
        'name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: MAX }', shapes
    )
    a.requires_grad_(True)
    b.requires_grad_(True)
    y = net({"a": a, "b": b})["y"]
    y.sum().backward()
    # Caffe's MAX picks a only where a > b; ties (1 vs 1, 4 vs 4) go to the second bottom.
    assert a.grad.tolist() == [[0, 1], [0, 0]] and b.grad.tolist() == [[1, 0], [1, 1]]
    with pytest.raises(CaffeNetError, match="coeff"):
        one_layer(
            'name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { coeff: 1 }', shapes
        )


def test_reshape_copy_and_infer_rules():
    net = one_layer(
        'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 } }',
        {"x": (2, 3, 4)},
    )
    assert run(net, x=torch.zeros(2, 3, 4))["y"].shape == (2, 12)
    text = 'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 2 dim: -1 } axis: 1 num_axes: 1 }'
    net = one_layer(text, {"x": (2, 6, 4)})
    assert run(net, x=torch.zeros(2, 6, 4))["y"].shape == (2, 2, 3, 4)
    net = one_layer(
        'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 1 } axis: -1 num_axes: 0 }',
        {"x": (2, 3)},
    )
    assert run(net, x=torch.zeros(2, 3))["y"].shape == (2, 3, 1)
    with pytest.raises(CaffeNetError, match="multiple -1"):
        one_layer(
            'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: -1 } }',
            {"x": (2, 3)},
        )
    with pytest.raises(CaffeNetError, match="divisible"):
        one_layer(
            'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 4 dim: -1 } }',
            {"x": (2, 3)},
        )


def test_flatten_axes():
    net = one_layer('name: "f" type: "Flatten" bottom: "x" top: "y"', {"x": (2, 3, 4, 5)})
    assert run(net, x=torch.zeros(2, 3, 4, 5))["y"].shape == (2, 60)
    net = one_layer(
        'name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 }',
        {"x": (2, 3, 4, 5)},
    )
    assert run(net, x=torch.zeros(2, 3, 4, 5))["y"].shape == (2, 12, 5)


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


# ---- The net ------------------------------------------------------------------------------------

MULTI = """
name: "multi"
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "slice" type: "Slice" bottom: "label" top: "l_cls" top: "l_reg" }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "fc" top: "fc" }
layer { name: "sc" type: "Scale" bottom: "fc" top: "fc" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" include { phase: TRAIN } }
layer { name: "cls" type: "InnerProduct" bottom: "fc" top: "cls" param { lr_mult: 2 decay_mult: 0 } inner_product_param { num_output: 3 } }
layer { name: "reg" type: "InnerProduct" bottom: "fc" top: "reg" inner_product_param { num_output: 1 } }
layer { name: "loss_cls" type: "SoftmaxWithLoss" bottom: "cls" bottom: "l_cls" top: "loss_cls" }
layer { name: "loss_reg" type: "EuclideanLoss" bottom: "reg" bottom: "l_reg" top: "loss_reg" loss_weight: 0.25 }
layer { name: "acc" type: "Accuracy" bottom: "cls" bottom: "l_cls" top: "acc" exclude { phase: TRAIN } }
"""


def test_phase_filtering_splits_outputs_and_loss_weights():
    train = CaffeNet(net_param(MULTI), "train")
    test = CaffeNet(net_param(MULTI), "test")
    assert "drop" in [m.layer_name for m in train.layers()] and "acc" not in [
        m.layer_name for m in train.layers()
    ]
    assert "drop" not in [m.layer_name for m in test.layers()] and "acc" in [
        m.layer_name for m in test.layers()
    ]
    # fc feeds two layers, so Caffe inserts a Split named after the last producer (relu / drop).
    names = [layer.name for layer in train.net_param.layer]
    assert "fc_drop_0_split" in names and "fc_relu_0_split" in [x.name for x in test.net_param.layer]
    assert train.output_blobs == ["loss_cls", "loss_reg"]  # sorted by name, as Caffe's std::set
    assert test.output_blobs == ["acc", "loss_cls", "loss_reg"]
    assert train.loss_terms == [("loss_cls", 1.0), ("loss_reg", 0.25)]
    assert train.is_setup  # the Input layer gave the shapes
    blobs = train({"data": torch.randn(2, 3), "label": torch.tensor([[1.0, 0.5], [2.0, -0.5]])})
    assert "fc_drop_0_split_1" in blobs
    total = train.weighted_loss(blobs)
    assert torch.allclose(total, blobs["loss_cls"] + 0.25 * blobs["loss_reg"])
    params = {p.key: p for p in train.learnable_params()}
    # Caffe's learnable params include BatchNorm's statistics, with lr_mult forced to 0.
    assert list(params) == [
        "fc/0",
        "fc/1",
        "bn/0",
        "bn/1",
        "bn/2",
        "sc/0",
        "sc/1",
        "cls/0",
        "cls/1",
        "reg/0",
        "reg/1",
    ]
    assert [(params[f"bn/{i}"].lr_mult, params[f"bn/{i}"].decay_mult) for i in range(3)] == [(0.0, 1.0)] * 3
    assert (params["cls/0"].lr_mult, params["cls/0"].decay_mult) == (2.0, 0.0)
    assert (params["cls/1"].lr_mult, params["cls/1"].decay_mult) == (1.0, 1.0)


def test_include_exclude_rules_with_stages_and_levels():
    text = """
    layer { name: "a" type: "Input" top: "x" include { phase: TRAIN stage: "s1" } }
    layer { name: "b" type: "Input" top: "y" include { min_level: 2 } }
    layer { name: "c" type: "Input" top: "z" exclude { not_stage: "s1" } }
    """
    names = lambda **kw: [layer.name for layer in filter_net(net_param(text), **kw).layer]  # noqa: E731
    assert names(phase="train") == []
    assert names(phase="train", stages=["s1"]) == ["a", "c"]
    assert names(phase="test", stages=["s1"], level=3) == ["b", "c"]
    with pytest.raises(CaffeNetError, match="either include rules or exclude rules"):
        filter_net(
            net_param(
                'layer { name: "a" type: "Input" top: "x" include { phase: TRAIN } exclude { phase: TEST } }'
            ),
            "train",
        )


def test_insert_splits_for_a_weighted_loss_that_is_also_consumed():
    text = """
    layer { name: "in" type: "Input" top: "x" }
    layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "x" top: "loss" loss_weight: 2 }
    layer { name: "p" type: "Power" bottom: "loss" top: "p" }
    """
    out = insert_splits(net_param(text))
    split = [layer for layer in out.layer if layer.type == "Split"]
    assert [s.name for s in split] == ["x_in_0_split", "loss_l_0_split"]
    assert list(split[1].top) == ["loss_l_0_split_0", "loss_l_0_split_1"] and list(split[1].loss_weight) == [
        2
    ]
    assert list(out.layer[-1].bottom) == ["loss_l_0_split_1"]


def test_unknown_layer_type_and_bad_wiring_name_the_layer():
    with pytest.raises(CaffeNetError, match=r"layer 'warp': unknown layer type 'SpatialTransformer'"):
        CaffeNet(
            net_param(
                'layer { name: "in" type: "Input" top: "x" } layer { name: "warp" type: "SpatialTransformer" bottom: "x" top: "y" }'
            )
        )
    with pytest.raises(CaffeNetError, match=r"layer 'r': unknown bottom blob 'nope'"):
        CaffeNet(net_param('layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }'))
    with pytest.raises(CaffeNetError, match="produced by multiple sources"):
        CaffeNet(
            net_param('layer { name: "a" type: "Input" top: "x" } layer { name: "b" type: "Input" top: "x" }')
        )
    with pytest.raises(CaffeNetError, match=r"'ip'.*input size 7"):
        net = one_layer(
            'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 }',
            {"x": (1, 6)},
        )
        run(net, x=torch.zeros(1, 7))


def test_shared_params_by_name():
    text = """
    layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip1" type: "InnerProduct" bottom: "a" top: "ya" param { name: "w" } inner_product_param { num_output: 2 bias_term: false weight_filler { type: "gaussian" } } }
    layer { name: "ip2" type: "InnerProduct" bottom: "b" top: "yb" param { name: "w" } inner_product_param { num_output: 2 bias_term: false weight_filler { type: "gaussian" } } }
    """
    net = CaffeNet(net_param(text))
    assert net.layer("ip1").weight is net.layer("ip2").weight
    assert [p.key for p in net.learnable_params()] == ["ip1/0"]


def test_caffemodel_round_trip_batch_norm_and_scale(tmp_path):
    torch.manual_seed(3)
    net = CaffeNet(net_param(MULTI), "train")
    with torch.no_grad():
        net.layer("bn").mean.copy_(torch.arange(4.0))
        net.layer("bn").scale_factor.fill_(2.5)
    path = save_caffemodel(net, tmp_path / "w.caffemodel")
    proto = caffemodel_proto(net)
    bn = next(layer for layer in proto.layer if layer.name == "bn")
    assert [list(b.shape.dim) for b in bn.blobs] == [[4], [4], [1]]
    assert [p.lr_mult for p in bn.param] == [0, 0, 0]  # as Caffe's BatchNorm adds them to its param
    assert list(next(layer for layer in proto.layer if layer.name == "loss_cls").loss_weight) == [1.0]
    other = CaffeNet(net_param(MULTI), "test")
    report = load_caffemodel(other, path)
    assert report.copied == ["fc", "bn", "sc", "cls", "reg"] and report.ignored == ["drop", "fc_drop_0_split"]
    assert (
        torch.equal(other.layer("bn").mean, torch.arange(4.0))
        and other.layer("bn").scale_factor.item() == 2.5
    )
    for name in ("fc", "sc", "cls", "reg"):
        for a, b in zip(net.layer(name).blobs(), other.layer(name).blobs(), strict=True):
            assert torch.equal(a, b)


def test_caffemodel_shape_checks_and_legacy_blobs():
    net = one_layer(
        'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 }',
        {"x": (1, 3)},
    )
    proto = caffe_pb2.NetParameter()
    layer = proto.layer.add(name="ip", type="InnerProduct")
    layer.blobs.append(array_to_blob(np.zeros((2, 4), np.float32)))
    layer.blobs.append(array_to_blob(np.zeros(2, np.float32)))
    with pytest.raises(
        CaffeNetError, match=r"param 0 weights from layer 'ip'.*source shape \[2, 4\], target shape \[2, 3\]"
    ):
        load_caffemodel(net, proto)
    del layer.blobs[1]
    with pytest.raises(CaffeNetError, match="'ip': incompatible number of blobs: 1 in the file, 2"):
        load_caffemodel(net, proto)
    # Old caffemodels hold every blob as legacy 4-D (num, channels, height, width).
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=list(range(6)))
    bias = caffe_pb2.BlobProto(num=1, channels=1, height=1, width=2, data=[5, 6])
    del layer.blobs[:]
    layer.blobs.extend([legacy, bias])
    load_caffemodel(net, proto)
    assert net.layer("ip").weight.tolist() == [[0, 1, 2], [3, 4, 5]] and net.layer("ip").bias.tolist() == [
        5,
        6,
    ]
