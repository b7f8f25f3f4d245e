"""Caffe train_val prototxt <-> tasks: import, emit, the round trip, and the CLI commands over them."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format
from train_helpers import make_dataset

from mtldata.caffe import caffe_pb2
from mtldata.caffe.prototxt import UnknownFieldWarning
from mtldata.caffenet.multitask import (
    DataSource,
    NetImportWarning,
    emit_train_val,
    filter_phase,
    import_net,
    net_to_text,
)
from mtldata.cli import main
from mtldata.errors import TaskSpecError
from mtldata.tasks import TaskSet, TaskSpec, dump_tasks, load_tasks

FIXTURE_TASKS = TaskSet(
    (
        TaskSpec("cls", slice(0, 1), "softmax", classes=3, ignore_label=-1),
        TaskSpec("attr", slice(1, 4), "sigmoid", loss_weight=0.5),
        TaskSpec("reg", slice(4, 5), "euclidean", loss_weight=2.0),
    ),
    num_labels=5,
)


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


def test_real_caffe_prototxt_imports_to_its_tasks_and_sources(caffe_fixtures):
    imported = import_net(caffe_fixtures / "mt" / "train.prototxt")
    assert imported.tasks == FIXTURE_TASKS  # the last slice's width comes from fc_reg's num_output
    train = imported.train
    assert (train.backend, train.images, train.labels, train.batch_size) == (
        "lmdb",
        "img_lmdb",
        "label_lmdb",
        4,
    )
    assert list(train.transform.mean_value) == [104, 117, 123] and train.transform.scale == pytest.approx(
        1 / 256
    )
    h5 = import_net(caffe_fixtures / "h5" / "train_h5.prototxt")
    assert h5.tasks == FIXTURE_TASKS
    assert (h5.train.backend, h5.train.images, h5.train.batch_size) == ("hdf5", "list.txt", 4)


ROUND_TRIPS = [
    FIXTURE_TASKS,
    # a gap (column 2 belongs to no task), ignore labels on both kinds, weights of every size
    TaskSet(
        (
            TaskSpec("a", slice(0, 2), "sigmoid", ignore_label=-1, loss_weight=0.25),
            TaskSpec("b", slice(3, 4), "softmax", classes=7, ignore_label=255),
            TaskSpec("c", slice(4, 7), "euclidean", loss_weight=3.5),
        ),
        num_labels=8,
    ),
    TaskSet((TaskSpec("only", slice(0, 1), "softmax", classes=2),), num_labels=1),
]


@pytest.mark.parametrize("tasks", ROUND_TRIPS)
def test_emit_then_import_gives_the_same_tasks(tasks, tmp_path):
    transform = caffe_pb2.TransformationParameter(scale=1 / 256, mirror=True, crop_size=28)
    train = DataSource("lmdb", "ds/images.lmdb", "ds/labels.lmdb", 16, transform)
    test = DataSource(
        "lmdb", "val/images.lmdb", "val/labels.lmdb", 8, caffe_pb2.TransformationParameter(scale=1 / 256)
    )
    path = tmp_path / "train_val.prototxt"
    path.write_text(net_to_text(emit_train_val(tasks, train, test), "a header\nof two lines"))
    assert path.read_text().startswith("# a header\n# of two lines\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the emitted net uses nothing the schema lacks
        back = import_net(path, num_labels=tasks.num_labels)
    assert back.tasks == tasks
    assert back.train == DataSource("lmdb", "ds/images.lmdb", "ds/labels.lmdb", 16, transform)
    assert (back.test.images, back.test.batch_size) == ("val/images.lmdb", 8)


def test_include_and_exclude_rules_pick_each_phase():
    net = text_format.Parse(
        """
        layer { name: "a" type: "ReLU" include { phase: TRAIN } }
        layer { name: "b" type: "ReLU" include { phase: TEST } }
        layer { name: "c" type: "ReLU" exclude { phase: TEST } }
        layer { name: "d" type: "ReLU" }
        layer { name: "e" type: "ReLU" include { phase: TRAIN stage: "deploy" } }
        layer { name: "f" type: "ReLU" include { phase: TEST max_level: -1 } include { phase: TEST min_level: 0 } }
        """,
        caffe_pb2.NetParameter(),
    )
    assert [layer.name for layer in filter_phase(net, "train")] == ["a", "c", "d"]
    assert [layer.name for layer in filter_phase(net, "test")] == ["b", "d", "f"]
    assert [layer.name for layer in filter_phase(net, "train", stages=("deploy",))] == ["a", "c", "d", "e"]


def test_unknown_fields_and_settings_not_carried_over_warn(caffe_fixtures, tmp_path):
    text = (caffe_fixtures / "mt" / "train.prototxt").read_text()
    text = text.replace(
        "  loss_weight: 0.5\n",
        "  loss_weight: 0.5\n  loss_param { normalization: FULL }\n  my_fork_option: 3\n",
    )
    text = text.replace("  loss_weight: 2.0\n", "  loss_weight: 2.0\n  loss_param { ignore_label: 5 }\n")
    path = tmp_path / "odd.prototxt"
    path.write_text(text)
    with pytest.warns(UnknownFieldWarning, match="my_fork_option"), pytest.warns(NetImportWarning) as caught:
        imported = import_net(path)
    messages = " ".join(str(w.message) for w in caught)
    assert "normalization FULL" in messages and "ignore_label" in messages
    assert imported.tasks == FIXTURE_TASKS  # tolerated: Caffe's defaults, EuclideanLoss without ignore


def test_a_loss_on_something_else_than_the_labels_is_an_error(tmp_path):
    net = """
    layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "x" batch_size: 2 backend: LMDB } }
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "data" top: "loss" }
    """
    path = tmp_path / "bad.prototxt"
    path.write_text(net)
    with pytest.raises(TaskSpecError, match="label bottom"):
        import_net(path)
    path.write_text(net.replace('bottom: "data" top: "loss"', 'bottom: "label" top: "loss"'))
    tasks = import_net(path).tasks  # a single Data layer's own int label, K = 1
    assert (tasks.names, tasks["loss"].classes, tasks.num_labels) == (("loss",), 3, 1)


# --- the CLI --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["as an argument", "with --from-prototxt"])
def test_tasks_command_prints_the_tasks_toml(caffe_fixtures, given):
    prototxt = caffe_fixtures / "mt" / "train.prototxt"
    result = (
        run("tasks", prototxt) if given == "as an argument" else run("tasks", "--from-prototxt", prototxt)
    )
    assert result.exit_code == 0, result.output
    assert load_tasks(result.output) == FIXTURE_TASKS
    assert result.output == dump_tasks(FIXTURE_TASKS)


def test_tasks_command_wants_the_prototxt_once(caffe_fixtures):
    prototxt = caffe_fixtures / "mt" / "train.prototxt"
    for args in ((), (prototxt, "--from-prototxt", prototxt)):
        result = run("tasks", *args)
        assert result.exit_code == 2 and "give the prototxt once" in result.output


def test_convert_emits_a_prototxt_that_imports_and_trains(tmp_path, monkeypatch):
    data, tasks_file = make_dataset(tmp_path / "src", count=24)
    out = tmp_path / "out"
    result = run(
        "convert",
        tmp_path / "src" / "list.txt",
        "-o",
        out,
        "-q",
        "-j",
        "1",
        "--tasks",
        tasks_file,
        "--emit-prototxt",
    )
    assert result.exit_code == 0, result.output
    prototxt = out / "train_val.prototxt"
    assert prototxt.is_file() and f"wrote {prototxt}" in result.output
    assert import_net(prototxt).tasks == load_tasks(tasks_file)
    text = prototxt.read_text()
    assert text.count('type: "Data"') == 2 and 'type: "Slice"' in text and "loss_weight: 2" in text
    # `tasks` reads it back (K from the dataset it names) ...
    printed = run("tasks", "--from-prototxt", prototxt)
    assert load_tasks(printed.output) == load_tasks(tasks_file)
    # ... and `train --prototxt` trains on it from another working directory (sources beside the file)
    monkeypatch.chdir(tmp_path)
    trained = run(
        "train",
        "--prototxt",
        prototxt,
        "--epochs",
        "1",
        "--width",
        "4",
        "-j",
        "0",
        "-o",
        tmp_path / "run",
        "-q",
    )
    assert trained.exit_code == 0, trained.output
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert f'dataset = "{out}"' in saved and "batch_size = 32" in saved


def test_train_on_the_real_caffe_prototxt_and_its_lmdb_pair(caffe_fixtures, tmp_path):
    mt = tmp_path / "mt"
    shutil.copytree(caffe_fixtures / "mt", mt, ignore=shutil.ignore_patterns("*.caffemodel", "*.log"))
    result = run(
        "train",
        "--prototxt",
        mt / "train.prototxt",
        "--epochs",
        "2",
        "--width",
        "4",
        "-j",
        "0",
        "-o",
        tmp_path / "run",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "cls" in result.output and "attr" in result.output and "reg" in result.output
    from mtldata.train import TrainConfig

    cfg = TrainConfig.load(tmp_path / "run" / "config.toml")
    assert (cfg.dataset, cfg.labels) == (str(mt / "img_lmdb"), str(mt / "label_lmdb"))
    assert (cfg.batch_size, cfg.scale, cfg.mean_values) == (4, 0.00390625, [104.0, 117.0, 123.0])
    assert load_tasks(tmp_path / "run" / "tasks.toml") == FIXTURE_TASKS


def test_train_cli_errors_are_one_line(tmp_path):
    result = run("train", "-o", tmp_path / "run")
    assert result.exit_code == 1
    assert result.output.startswith("mtldata: error: no training dataset")
    if not torch.cuda.is_available():
        missing_cuda = run("train", tmp_path, "--device", "cuda", "-o", tmp_path / "run")
        assert missing_cuda.exit_code == 1
        assert missing_cuda.output.startswith("mtldata: error: device cuda: CUDA is not available")
    bad = run("train", tmp_path, "--tasks", Path(__file__), "-o", tmp_path / "run")
    assert bad.exit_code == 1 and bad.output.startswith("mtldata: error:") and bad.output.count("\n") == 1


@pytest.mark.parametrize("backend", ["lmdb", "hdf5"])
def test_the_emitted_net_runs_in_the_caffe_emulation(tmp_path, backend):
    # Short of real Caffe: mtldata's Caffe net builds it with Caffe's shape rules and runs a forward.
    from mtldata.caffenet.net import CaffeNet
    from mtldata.caffenet.runner import NetFeeder

    _, tasks_file = make_dataset(tmp_path / "src", count=16)
    out = tmp_path / "out"
    result = run(
        "convert",
        tmp_path / "src" / "list.txt",
        "-o",
        out,
        "-q",
        "-j",
        "1",
        "--backend",
        backend,
        "--tasks",
        tasks_file,
        "--emit-prototxt",
    )
    assert result.exit_code == 0, result.output
    net = CaffeNet(out / "train_val.prototxt", "train")
    feeder = NetFeeder(net, [out])
    net.setup(feeder.peek_shapes())
    blobs = net(next(feeder))
    assert net.loss_terms == [("loss_colour", 1.0), ("loss_attrs", 0.5), ("loss_level", 2.0)]
    for name, _ in net.loss_terms:
        assert torch.isfinite(blobs[name]) and 0 < blobs[name].item() < 10  # pixels scaled to [0, 1)
