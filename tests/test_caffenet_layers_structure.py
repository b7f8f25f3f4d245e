"""Caffe's structure layers against real BVLC Caffe (the goldens of every case) and hand computations.

Concat, Slice, Split, Eltwise, Flatten, Reshape, Crop, Tile,
Reduction, ArgMax, Softmax, Silence, Parameter, Filter, BatchReindex.
"""

from __future__ import annotations

import pytest
import torch
from caffe_layer_cases import family_cases, one_layer, run, run_case

from mtldata.caffenet.layers import CaffeNetError


@pytest.mark.parametrize("case", family_cases("structure"))
def test_layer_matches_the_caffe_golden(case):
    assert run_case(case) == []


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


def test_argmax_ranks_ties_with_the_larger_index_first():
    net = one_layer(
        'name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 3 out_max_val: true }',
        {"x": (1, 5)},
    )
    y = run(net, x=torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0]]))["y"]
    assert y.tolist() == [[[3.0, 1.0, 4.0], [3.0, 3.0, 2.0]]]
    net = one_layer(
        'name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 1 }', {"x": (1, 3, 2)}
    )
    y = run(net, x=torch.tensor([[[5.0, 0.0], [5.0, 1.0], [4.0, 1.0]]]))["y"]
    assert y.tolist() == [[[1.0, 2.0]]]


def test_crop_that_does_not_fit_names_the_layer():
    with pytest.raises(CaffeNetError, match=r"layer 'c' \(type Crop\).*does not fit"):
        one_layer(
            'name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 2 offset: 3 }',
            {"x": (1, 1, 4, 4), "r": (1, 1, 2, 2)},
        )


def test_filter_keeps_the_selected_items_and_routes_their_gradient():
    net = one_layer('name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y"', {"x": (4, 2), "s": (4,)})
    x = torch.arange(8.0).reshape(4, 2).requires_grad_()
    y = run(net, x=x, s=torch.tensor([1.0, 0.0, 0.5, 0.0]))["y"]
    assert y.tolist() == [[0.0, 1.0], [4.0, 5.0]]
    y.sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]


def test_batch_reindex_gathers_items_and_accumulates_repeats():
    net = one_layer(
        'name: "b" type: "BatchReindex" bottom: "x" bottom: "i" top: "y"', {"x": (3, 2), "i": (3,)}
    )
    x = torch.arange(6.0).reshape(3, 2).requires_grad_()
    y = run(net, x=x, i=torch.tensor([2.0, 0.0, 2.0]))["y"]
    assert y.tolist() == [[4.0, 5.0], [0.0, 1.0], [4.0, 5.0]]
    y.sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]]
