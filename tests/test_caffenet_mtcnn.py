"""An MTCNN-style multi-task net (PReLU trunk, face classification with ignore_label, box and landmark
EuclideanLoss with loss weights) runs forward and fine-tunes from a caffemodel with `train --solver`."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import torch
from click.testing import CliRunner

from mtldata.caffe.prototxt import caffemodel_weights, read_caffemodel
from mtldata.caffenet.net import CaffeNet, load_caffemodel, save_caffemodel
from mtldata.caffenet.runner import NetFeeder
from mtldata.cli import main

PNET = """
name: "PNet"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" top: "roi" top: "pts"
  hdf5_data_param { source: "train_h5.txt" batch_size: 8 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 10 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "PReLU1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 16 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "PReLU2" type: "PReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 32 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "PReLU3" type: "PReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4-1" type: "Convolution" bottom: "conv3" top: "conv4-1"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "conv4-2" type: "Convolution" bottom: "conv3" top: "conv4-2"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "conv4-3" type: "Convolution" bottom: "conv3" top: "conv4-3"
  convolution_param { num_output: 10 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "cls_loss" type: "SoftmaxWithLoss" bottom: "conv4-1" bottom: "label" top: "cls_loss"
  loss_param { ignore_label: -1 } }
layer { name: "roi_loss" type: "EuclideanLoss" bottom: "conv4-2" bottom: "roi" top: "roi_loss" loss_weight: 0.5 }
layer { name: "pts_loss" type: "EuclideanLoss" bottom: "conv4-3" bottom: "pts" top: "pts_loss" loss_weight: 0.5 }
"""

SOLVER = """net: "pnet.prototxt"
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
max_iter: 4
display: 1
snapshot_after_train: true
snapshot_prefix: "pnet"
random_seed: 3
"""


def mtcnn_setup(tmp_path: Path) -> None:
    """12x12 crops with a face label (-1: part face, ignored), a box offset and five landmarks."""
    rng = np.random.default_rng(5)
    n = 16
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["data"] = rng.normal(0, 1, (n, 3, 12, 12)).astype(np.float32)
        f["label"] = np.array([1, 0, -1, 1] * 4, dtype=np.float32)
        f["roi"] = rng.uniform(-0.3, 0.3, (n, 4)).astype(np.float32)
        f["pts"] = rng.uniform(0, 1, (n, 10)).astype(np.float32)
    (tmp_path / "train_h5.txt").write_text("train.h5\n")
    (tmp_path / "pnet.prototxt").write_text(PNET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)


def test_mtcnn_pnet_forward_ignores_part_faces_and_weights_the_regressions(tmp_path):
    mtcnn_setup(tmp_path)
    net = CaffeNet(tmp_path / "pnet.prototxt", "train")
    feeder = NetFeeder(net, [tmp_path])
    net.setup(feeder.peek_shapes())
    blobs = net(next(feeder))
    assert blobs["conv4-1"].shape == (8, 2, 1, 1) and blobs["conv4-3"].shape == (8, 10, 1, 1)
    assert [tuple(b.shape) for b in net.layer("PReLU2").blobs()] == [(16,)]
    logp = torch.log_softmax(blobs["conv4-1"].reshape(8, 2), 1)
    label = blobs["label"].long()
    kept = label != -1
    want = -logp[kept].gather(1, label[kept, None]).sum() / kept.sum()
    assert torch.allclose(blobs["cls_loss"], want)
    total = blobs["cls_loss"] + 0.5 * blobs["roi_loss"] + 0.5 * blobs["pts_loss"]
    assert torch.allclose(net.weighted_loss(blobs), total)


def test_mtcnn_pnet_fine_tunes_from_a_caffemodel_with_train_solver(tmp_path):
    mtcnn_setup(tmp_path)
    torch.manual_seed(11)
    net = CaffeNet(tmp_path / "pnet.prototxt", "train")
    feeder = NetFeeder(net, [tmp_path])
    net.setup(feeder.peek_shapes())
    with torch.no_grad():
        net.layer("PReLU1").weight.fill_(0.1)
    save_caffemodel(net, tmp_path / "init.caffemodel")
    batch0_loss = net.weighted_loss(net(next(feeder))).item()

    args = [
        "train",
        "--solver",
        str(tmp_path / "solver.prototxt"),
        "--init",
        str(tmp_path / "init.caffemodel"),
    ]
    result = CliRunner().invoke(main, [*args, "--workdir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    losses = [float(m) for m in re.findall(r"Iteration \d+, loss = ([-\d.e+]+)", result.output)]
    assert len(losses) >= 4 and all(np.isfinite(losses))
    assert abs(losses[0] - batch0_loss) <= 1e-5 * abs(batch0_loss)  # the run started from init.caffemodel
    assert "Train net output #0: cls_loss" in result.output and "(* 0.5 = " in result.output

    tuned = caffemodel_weights(read_caffemodel(tmp_path / "run" / "pnet_iter_4.caffemodel"))
    init = caffemodel_weights(read_caffemodel(tmp_path / "init.caffemodel"))
    assert set(tuned) == set(init)
    assert not np.allclose(tuned["PReLU1"][0], init["PReLU1"][0])  # the PReLU slopes learn too
    reloaded = CaffeNet(tmp_path / "pnet.prototxt", "train", input_shapes=feeder.peek_shapes())
    assert load_caffemodel(reloaded, tmp_path / "run" / "pnet_iter_4.caffemodel").not_in_file == []
