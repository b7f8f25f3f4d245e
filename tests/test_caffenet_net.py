"""CaffeNet (phase filtering, splits, shared params, caffemodels) against hand computations of Caffe's rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from caffe_layer_cases import case_types, family_of, net_param, one_layer, run

from mtldata.caffe import caffe_pb2
from mtldata.caffe.blob import array_to_blob
from mtldata.caffenet.layers import CaffeNetError, fill
from mtldata.caffenet.net import (
    CaffeNet,
    caffemodel_proto,
    filter_net,
    insert_splits,
    load_caffemodel,
    save_caffemodel,
)


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


def test_every_layer_type_of_the_caffe_goldens_is_registered():
    if not case_types():
        pytest.skip("Caffe layer goldens not found")
    assert {t for t in case_types().values() if family_of(t) is None} == set()


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
