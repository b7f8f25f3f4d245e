"""An MTCNN-style multi-task Caffe net end to end: build, fine-tune with `train --solver`, deploy.

P-Net's published layout (12x12 input: conv 10 -> PReLU -> max pool -> conv 16 -> PReLU -> conv 32
-> PReLU, then three 1x1 heads): face classification with ignore_label -1 (part faces carry no
class), box regression and landmarks as EuclideanLoss with their loss_weights.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from click.testing import CliRunner

from mtldata.caffe.prototxt import caffemodel_weights, read_caffemodel
from mtldata.caffenet.net import CaffeNet, load_caffemodel, save_caffemodel
from mtldata.cli import main


def conv(name: str, bottom: str, outputs: int, kernel: int) -> str:
    return f"""layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  convolution_param {{ num_output: {outputs} kernel_size: {kernel} stride: 1
    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0 }} }} }}
"""


def prelu(name: str, blob: str) -> str:
    return f'layer {{ name: "{name}" type: "PReLU" bottom: "{blob}" top: "{blob}" }}\n'


TRUNK = (
    conv("conv1", "data", 10, 3)
    + prelu("PReLU1", "conv1")
    + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
    + conv("conv2", "pool1", 16, 3)
    + prelu("PReLU2", "conv2")
    + conv("conv3", "conv2", 32, 3)
    + prelu("PReLU3", "conv3")
    + conv("conv4-1", "conv3", 2, 1)
    + conv("conv4-2", "conv3", 4, 1)
    + conv("conv4-3", "conv3", 10, 1)
)

TRAIN_NET = (
    'name: "PNet"\n'
    'layer { name: "data" type: "HDF5Data" top: "data" top: "label" top: "roi" top: "pts"\n'
    '  hdf5_data_param { source: "train_h5_list.txt" batch_size: 8 } }\n'
    + TRUNK
    + 'layer { name: "cls_loss" type: "SoftmaxWithLoss" bottom: "conv4-1" bottom: "label" top: "cls_loss"\n'
    "  loss_weight: 1 loss_param { ignore_label: -1 } }\n"
    'layer { name: "roi_loss" type: "EuclideanLoss" bottom: "conv4-2" bottom: "roi" top: "roi_loss" loss_weight: 0.5 }\n'
    'layer { name: "pts_loss" type: "EuclideanLoss" bottom: "conv4-3" bottom: "pts" top: "pts_loss" loss_weight: 0.5 }\n'
)

DEPLOY_NET = (
    'name: "PNet"\nlayer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 24 dim: 24 } } }\n'
    + TRUNK
    + 'layer { name: "prob1" type: "Softmax" bottom: "conv4-1" top: "prob1" }\n'
)

SOLVER = """net: "pnet_train.prototxt"
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
max_iter: 40
display: 10
snapshot: 0
snapshot_prefix: "pnet"
random_seed: 1
type: "Adam"
momentum2: 0.999
"""


def make_setup(directory: Path) -> None:
    """A learnable toy task: the class is the sign of the image mean; box and points follow it."""
    rng = np.random.default_rng(0)
    n = 32
    label = rng.integers(0, 2, n).astype(np.float32)
    label[::5] = -1  # part faces: no class, still a box and landmarks
    data = (
        rng.normal(0, 0.3, (n, 3, 12, 12)).astype(np.float32)
        + np.where(label == 1, 0.5, -0.5)[:, None, None, None]
    )
    roi = (np.where(label == 1, 0.2, -0.2)[:, None] * np.ones(4)).astype(np.float32)
    pts = (np.where(label == 1, 0.1, -0.1)[:, None] * np.ones(10)).astype(np.float32)
    with h5py.File(directory / "train.h5", "w") as f:
        f["data"], f["label"], f["roi"], f["pts"] = data, label, roi, pts
    (directory / "train_h5_list.txt").write_text("train.h5\n")
    (directory / "pnet_train.prototxt").write_text(TRAIN_NET)
    (directory / "pnet_deploy.prototxt").write_text(DEPLOY_NET)
    (directory / "solver.prototxt").write_text(SOLVER)
    torch.manual_seed(0)
    net = CaffeNet(directory / "pnet_train.prototxt", "train")
    net.setup({"data": (8, 3, 12, 12), "label": (8,), "roi": (8, 4), "pts": (8, 10)})
    save_caffemodel(net, directory / "init.caffemodel")


def test_mtcnn_style_net_fine_tunes_with_train_solver(tmp_path: Path, monkeypatch) -> None:
    make_setup(tmp_path)
    monkeypatch.chdir(tmp_path)  # Caffe resolves the HDF5 list against the working directory
    result = CliRunner().invoke(
        main,
        ["train", "--solver", "solver.prototxt", "--init", "init.caffemodel", "--workdir", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    losses = [float(line.split("loss = ")[1]) for line in result.output.splitlines() if ", loss = " in line]
    assert len(losses) >= 4 and all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses  # it learns the toy task
    for top, weight in (("cls_loss", "1"), ("roi_loss", "0.5"), ("pts_loss", "0.5")):
        assert any(
            f": {top} = " in line and (f"(* {weight} = " in line) for line in result.output.splitlines()
        )
    trained = tmp_path / "pnet_iter_40.caffemodel"
    weights = caffemodel_weights(read_caffemodel(trained))
    assert weights["PReLU1"][0].shape == (10,)  # one slope per channel
    initial = caffemodel_weights(read_caffemodel(tmp_path / "init.caffemodel"))
    assert not np.allclose(weights["PReLU1"][0], initial["PReLU1"][0])  # the slopes were trained too

    deploy = CaffeNet(tmp_path / "pnet_deploy.prototxt", "test")
    report = load_caffemodel(deploy, trained)
    assert "cls_loss" in report.ignored and not report.not_in_file
    with torch.no_grad():
        blobs = deploy({"data": torch.randn(1, 3, 24, 24)})
    assert tuple(blobs["prob1"].shape) == (1, 2, 7, 7)  # fully convolutional: a 7x7 map of faces
    assert tuple(blobs["conv4-2"].shape) == (1, 4, 7, 7) and tuple(blobs["conv4-3"].shape) == (1, 10, 7, 7)
    assert torch.allclose(blobs["prob1"].sum(1), torch.ones(1, 7, 7), atol=1e-5)
