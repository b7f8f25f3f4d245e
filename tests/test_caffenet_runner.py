"""The solver runner on datasets mtldata converts: TRAIN/TEST nets, data layers, snapshots, seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtldata.caffe import caffe_pb2
from mtldata.caffenet.multitask import DataSource, emit_train_val
from mtldata.caffenet.net import CaffeNet
from mtldata.caffenet.runner import NetFeeder, train_from_solver
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.tasks import TaskSet, TaskSpec

NET = """
name: "mt_small"
layer { name: "data" type: "Data" top: "data" include { phase: TRAIN }
  transform_param { scale: 0.00390625 mean_value: 128 mirror: true }
  data_param { source: "ds/images.lmdb" batch_size: 5 backend: LMDB } }
layer { name: "label" type: "Data" top: "label" include { phase: TRAIN }
  data_param { source: "ds/labels.lmdb" batch_size: 5 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" include { phase: TEST }
  transform_param { scale: 0.00390625 mean_value: 128 crop_size: 16 }
  data_param { source: "ds/images.lmdb" batch_size: 4 backend: LMDB } }
layer { name: "label" type: "Data" top: "label" include { phase: TEST }
  data_param { source: "ds/labels.lmdb" batch_size: 4 backend: LMDB } }
layer { name: "slice" type: "Slice" bottom: "label" top: "l_cls" top: "l_bin" top: "l_reg" slice_param { slice_point: 1 slice_point: 2 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "msra" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" dropout_param { dropout_ratio: 0.2 } }
layer { name: "cls" type: "InnerProduct" bottom: "pool" top: "cls" inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "bin" type: "InnerProduct" bottom: "pool" top: "bin" inner_product_param { num_output: 1 weight_filler { type: "xavier" } } }
layer { name: "reg" type: "InnerProduct" bottom: "pool" top: "reg" inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss_cls" type: "SoftmaxWithLoss" bottom: "cls" bottom: "l_cls" top: "loss_cls" }
layer { name: "loss_bin" type: "SigmoidCrossEntropyLoss" bottom: "bin" bottom: "l_bin" top: "loss_bin" loss_weight: 0.5 }
layer { name: "loss_reg" type: "EuclideanLoss" bottom: "reg" bottom: "l_reg" top: "loss_reg" loss_weight: 0.1 }
layer { name: "acc" type: "Accuracy" bottom: "cls" bottom: "l_cls" top: "acc" include { phase: TEST } }
"""

SOLVER = """
net: "net.prototxt"
test_iter: 2
test_interval: 3
base_lr: 0.01
lr_policy: "multistep"
gamma: 0.1
stepvalue: 3
momentum: 0.9
weight_decay: 0.0001
iter_size: 2
max_iter: 6
display: 3
snapshot: 3
snapshot_prefix: "snaps/run"
random_seed: 7
solver_mode: CPU
"""


def make_setup_dir(image_set, root: Path) -> Path:
    """A dataset `ds` converted from `image_set`, with NET and SOLVER beside it, in `root`."""
    list_file, _ = image_set
    convert(ConvertSpec(list_file=list_file, output=root / "ds", workers=1))
    (root / "net.prototxt").write_text(NET)
    (root / "solver.prototxt").write_text(SOLVER)
    return root


@pytest.fixture
def setup_dir(image_set, tmp_path: Path) -> Path:
    return make_setup_dir(image_set, tmp_path)


def test_train_and_test_nets_on_a_converted_dataset(setup_dir, image_set):
    log: list[str] = []
    workdir = setup_dir / "out"
    solver = train_from_solver(setup_dir / "solver.prototxt", cwd=setup_dir, workdir=workdir, log=log.append)
    assert [r.lr for r in solver.records] == pytest.approx([0.01] * 3 + [0.001] * 3)
    assert all(np.isfinite(r.loss) for r in solver.records)
    assert [t.iter for t in solver.tests] == [0, 3, 6]
    assert set(solver.tests[0].scores) == {"acc", "loss_bin", "loss_cls", "loss_reg"}
    assert 0 <= float(solver.tests[-1].scores["acc"]) <= 1
    assert "    Test net output #0: acc = " + f"{float(solver.tests[0].scores['acc']):.6g}" in log
    assert [p.name for p in solver.snapshots] == ["run_iter_3.caffemodel", "run_iter_6.caffemodel"]
    assert all(
        (workdir / "snaps" / name).is_file() for name in ("run_iter_3.caffemodel", "run_iter_6.solverstate")
    )
    test_net = solver.test_nets[0]
    assert test_net.layer("bn").use_global_stats and test_net.layer("bn").mean is solver.net.layer("bn").mean
    assert float(solver.net.layer("bn").scale_factor) > 0  # TRAIN batches updated the statistics
    # The TEST feeder reads 4 at a time and wraps: 2 test_iter x 3 tests = 24 reads of 12 records.
    assert solver.test_batches[0].feeds[0].position == 0
    # The same seed gives the same run (fillers, mirror draws, dropout).
    again = train_from_solver(setup_dir / "solver.prototxt", cwd=setup_dir, workdir=setup_dir / "again")
    assert [r.loss for r in again.records] == [r.loss for r in solver.records]


def test_data_layer_reads_labels_and_a_dataset_directory(setup_dir, image_set):
    _, rows = image_set
    net = CaffeNet(setup_dir / "net.prototxt", "test")
    batch = next(NetFeeder(net, [setup_dir]))
    assert batch["data"].shape == (4, 3, 16, 16)  # centred crop in TEST
    assert batch["label"].shape == (4, 4, 1, 1)
    np.testing.assert_array_equal(
        batch["label"][:, :, 0, 0].numpy(), np.asarray([r[1] for r in rows[:4]], np.float32)
    )
    # A source naming the dataset directory itself gives images, then label vectors.
    text = (
        'layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "ds" batch_size: 5 backend: LMDB } }'
        'layer { name: "s" type: "Silence" bottom: "data" bottom: "label" }'
    )
    from google.protobuf import text_format

    net = CaffeNet(text_format.Parse(text, caffe_pb2.NetParameter()))
    feeder = NetFeeder(net, [setup_dir])
    for _ in range(3):  # 15 reads of 12 records: the third batch wraps to 0, 1, 2
        batch = next(feeder)
    assert batch["data"].shape == (5, 3, 20, 24) and batch["data"].dtype == torch.float32
    np.testing.assert_array_equal(
        batch["label"][:, :, 0, 0].numpy(), np.asarray([r[1] for r in rows[10:12] + rows[:3]], np.float32)
    )


def test_a_net_emitted_by_multitask_runs(setup_dir):
    tasks = TaskSet(
        (
            TaskSpec("cls", slice(0, 1), "softmax", classes=3),
            TaskSpec("bin", slice(1, 2), "sigmoid"),
            TaskSpec("reg", slice(2, 4), "euclidean", loss_weight=0.1),
        ),
        num_labels=4,
    )
    train = DataSource("lmdb", "ds/images.lmdb", "ds/labels.lmdb", batch_size=6)
    net = CaffeNet(emit_train_val(tasks, train, width=4), "train")
    feeder = NetFeeder(net, [setup_dir])
    net.setup(feeder.peek_shapes())
    total, blobs = net.forward_loss(next(feeder))
    total.backward()
    assert net.output_blobs == ["loss_bin", "loss_cls", "loss_reg"] and torch.isfinite(total)
    assert all(p.tensor.grad is not None for p in net.learnable_params())


@pytest.mark.parametrize(
    ("file", "old", "new", "reason"),
    [
        (
            "net.prototxt",
            '"ds/labels.lmdb" batch_size: 5',
            '"ds/nowhere.lmdb" batch_size: 5',
            "layer 'label' data_param.source: 'ds/nowhere.lmdb' not found",
        ),
        (
            "net.prototxt",
            'bottom: "pool" top: "cls"',
            'bottom: "pool2" top: "cls"',
            "layer 'cls': unknown bottom blob 'pool2'",
        ),
        ("solver.prototxt", "max_iter: 6", 'max_iter: 6\ntype: "Adamax"', "unknown solver type 'Adamax'"),
        ("solver.prototxt", '"multistep"', '"cosine"', "unknown learning rate policy 'cosine'"),
    ],
)
def test_an_error_in_a_net_or_solver_names_its_file(setup_dir, file, old, new, reason):
    from mtldata.errors import MtlDataError

    path = setup_dir / file
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(MtlDataError) as caught:
        train_from_solver(setup_dir / "solver.prototxt", cwd=setup_dir, workdir=setup_dir / "out")
    assert str(caught.value).startswith(f"{path}: {reason}")
