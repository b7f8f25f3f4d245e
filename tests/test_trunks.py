"""Trunks beyond the built-in ones: a Caffe net's lower layers from a caffemodel, your own factory;
freezing, fine-tuning, resume and DDP with them; the train command's options and logs."""

from __future__ import annotations

import dataclasses

import click
import pytest
import torch
from click.testing import CliRunner
from train_helpers import make_dataset
from trunk_helpers import Notes, changed, ddp_train, trunk_start

from mtldata.caffe.prototxt import read_net
from mtldata.caffenet.net import filter_net
from mtldata.cli import main
from mtldata.cli.train import train_command
from mtldata.tasks import load_tasks
from mtldata.train import ConfigError, TrainConfig, train
from mtldata.train.models import build_model, freeze
from mtldata.train.trunks import TrunkError, parse_trunk
from mtldata.train.trunks.caffe import default_last_layer

NOT_CONFIG = {"config_file", "quiet", "solver", "workdir"}  # options that are not training settings


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    """32x32 images: the size the fixture net's fc1 was made for."""
    return make_dataset(tmp_path_factory.mktemp("data32"), count=24, size=32)


@pytest.fixture
def mt_net(caffe_fixtures):
    return caffe_fixtures / "mt" / "train.prototxt", caffe_fixtures / "mt" / "init.caffemodel"


def caffe_cfg(data, mt_net, out, **changes) -> TrainConfig:
    (dataset, tasks), (prototxt, init) = data, mt_net
    base = dict(
        dataset=str(dataset),
        tasks=str(tasks),
        trunk=f"caffe:{prototxt}",
        init=str(init),
        epochs=2,
        batch_size=6,
        lr=0.05,
        num_workers=0,
        device="cpu",
        out_dir=str(out),
        seed=1,
    )
    return TrainConfig(**{**base, **changes})


def test_default_last_layer_is_the_last_one_every_output_shares(mt_net, caffe_fixtures):
    assert default_last_layer(filter_net(read_net(mt_net[0]), "train")) == "relu_fc1"  # before 3 heads
    solver_net = filter_net(read_net(caffe_fixtures / "solvers" / "net.prototxt"), "train")
    names = [layer.name for layer in solver_net.layer]
    assert default_last_layer(solver_net) in names


def test_caffe_trunk_frozen_keeps_the_caffemodel_weights_and_trains_the_heads(data32, mt_net, tmp_path):
    cfg = caffe_cfg(data32, mt_net, tmp_path / "frozen", freeze_trunk=True)
    start = trunk_start(cfg)
    notes = Notes()
    result = train(cfg, notes.reporter)
    after = result.model.state_dict()
    assert not any(changed(start, after, "trunk.").values())
    assert all(changed(start, after, "heads.").values())
    assert any("init: 2 layers from" in line for line in notes.lines)  # conv1 and fc1 from the caffemodel
    assert any(line.startswith("parameters: ") and " frozen" in line for line in notes.lines)


def test_caffe_trunk_freeze_until_keeps_lower_layers_and_trains_the_rest(data32, mt_net, tmp_path):
    cfg = caffe_cfg(data32, mt_net, tmp_path / "until", freeze_until="conv1")
    start = trunk_start(cfg)
    after = train(cfg).model.state_dict()
    moved = changed(start, after, "trunk.")
    conv1 = [k for k in moved if k.startswith("trunk.net.layer_list.0.")]
    rest = [k for k in moved if k not in conv1]
    assert conv1 and not any(moved[k] for k in conv1)
    assert rest and all(moved[k] for k in rest)


def test_caffe_trunk_fine_tuned_with_a_small_trunk_lr_moves_less(data32, mt_net, tmp_path):
    full = train(caffe_cfg(data32, mt_net, tmp_path / "full", epochs=1)).model.state_dict()
    small = train(
        caffe_cfg(data32, mt_net, tmp_path / "small", epochs=1, trunk_lr_mult=0.01)
    ).model.state_dict()
    start = trunk_start(caffe_cfg(data32, mt_net, tmp_path / "x"))
    key = "trunk.net.layer_list.0.weight"
    assert 0 < (small[key] - start[key]).abs().max() < (full[key] - start[key]).abs().max()


def test_caffe_trunk_run_resumed_midway_ends_with_the_uninterrupted_weights(data32, mt_net, tmp_path):
    whole = train(caffe_cfg(data32, mt_net, tmp_path / "a", freeze_until="conv1", trunk_lr_mult=0.5))
    cfg = caffe_cfg(data32, mt_net, tmp_path / "b", freeze_until="conv1", trunk_lr_mult=0.5)
    assert train(cfg.replace(max_steps=3)).step == 3
    resumed = train(cfg.replace(resume=True))
    assert resumed.step == whole.step
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_caffe_trunk_under_ddp_with_resume_ends_identical_on_both_ranks(data32, mt_net, tmp_path):
    cfg = caffe_cfg(data32, mt_net, tmp_path / "ddp", freeze_until="conv1", trunk_lr_mult=0.1, batch_size=4)
    dump = tmp_path / "dump"
    dump.mkdir()
    first, second = ddp_train(dataclasses.asdict(cfg), dump, [{"max_steps": 2}, {"resume": True}])
    assert first[0]["step"] == 2 and second[0]["step"] == second[1]["step"] > 2
    a, b = (r["model"] for r in second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = trunk_start(cfg)
    assert torch.equal(a["trunk.net.layer_list.0.weight"], start["trunk.net.layer_list.0.weight"])  # frozen


def _small_ddp_config(tmp_path, **changes) -> TrainConfig:
    """A 16-image dataset and a 4-wide model: DDP runs of a few steps."""
    dataset, tasks = make_dataset(tmp_path / "data", count=16)
    return TrainConfig(
        dataset=str(dataset), tasks=str(tasks), epochs=2, batch_size=4, width=4, num_workers=0, device="cpu"
    ).replace(**changes)


def test_ddp_runs_stopped_by_max_steps_or_resumed_exit_cleanly_and_leave_no_group_thread(tmp_path):
    base = _small_ddp_config(tmp_path)
    for i in range(2):  # the abort at exit came in about 1 run in 5; mp.spawn fails if a rank dies
        dump = tmp_path / f"dump{i}"
        dump.mkdir()
        cfg = base.replace(out_dir=str(tmp_path / f"run{i}"))
        runs = ddp_train(dataclasses.asdict(cfg), dump, [{"max_steps": 1}])
        runs += ddp_train(dataclasses.asdict(cfg), dump, [{"resume": True}])
        # The process group is gone when train returns: gloo's threads (gloo_tcp_loop,
        # pt_gloo_runloop) and rank 0's store thread (pt_tcpstore_uv) do not live on into the
        # interpreter's shutdown, where a rank could abort.
        for run in runs:
            for rank in run:
                assert rank["error"] is None
                assert _group_threads(rank) == []


def _group_threads(rank: dict) -> list[str]:
    if rank["threads"] is None:
        pytest.skip("thread names are read from /proc (Linux)")
    assert len(rank["threads"]) >= 1
    return [t for t in rank["threads"] if t.startswith(("gloo", "pt_gloo", "pt_tcpstore"))]


def test_ddp_run_that_fails_raises_on_every_rank_and_leaves_no_group_thread(tmp_path):
    # A learning rate that makes the loss NaN at step 2: train raises on both ranks, and the
    # traceback must not keep the DDP model, and with it the group, past _shut_down_group.
    cfg = _small_ddp_config(tmp_path, lr=1e38, out_dir=str(tmp_path / "run"))
    dump = tmp_path / "dump"
    dump.mkdir()
    [run] = ddp_train(dataclasses.asdict(cfg), dump, [{"_expect": "NonFiniteLossError"}])
    for rank in run:
        assert rank["error"] is not None and rank["error"].startswith("NonFiniteLossError: step ")
        assert _group_threads(rank) == []


def test_factory_trunk_with_hidden_heads_and_dropout(tmp_path):
    dataset, tasks = make_dataset(tmp_path / "data", count=24, size=28)
    cfg = TrainConfig(
        dataset=str(dataset),
        tasks=str(tasks),
        trunk="trunk_helpers:multilenet",
        head_hidden=12,
        head_dropout=0.5,
        epochs=1,
        batch_size=8,
        num_workers=0,
        device="cpu",
        out_dir=str(tmp_path / "run"),
    )
    result = train(cfg)
    head = result.model.heads["colour"]
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert head[0].in_features == 50 and head[0].out_features == 12 and head[2].p == 0.5
    with pytest.raises(TrunkError, match="says 51 features"):
        build_model(
            cfg.replace(trunk="trunk_helpers:wrong_size"), load_tasks(tasks, num_labels=5), (3, 28, 28)
        )


def test_frozen_batch_norm_stays_in_eval_mode_after_model_train():
    tasks = load_tasks_text()
    model = build_model(TrainConfig(trunk="trunk_helpers:tiny_bn"), tasks, (3, 8, 8))
    trainable, frozen = freeze(model, until="1")  # conv 0 and its BatchNorm 1
    assert frozen == 4 * 3 * 9 + 4 + 4 + 4 and trainable > 0
    model.train()
    assert not model.trunk[1].training and model.trunk[4].training
    before = model.trunk[1].running_mean.clone()
    model(torch.randn(4, 3, 8, 8) + 3)
    assert torch.equal(model.trunk[1].running_mean, before)  # no statistics update in the frozen part
    with pytest.raises(TrunkError, match="no layer 'nope'"):
        freeze(model, until="nope")


def load_tasks_text():
    from mtldata.tasks import TaskSet, TaskSpec

    return TaskSet((TaskSpec("c", slice(0, 1), "softmax", classes=2),), num_labels=1)


@pytest.mark.parametrize(
    "text, kind",
    [
        ("small", "small"),
        ("torchvision:resnet18", "torchvision"),
        ("timm:vit_tiny_patch16_224", "timm"),
        ("caffe:net.prototxt:relu_fc1", "caffe"),
        ("my.pkg:make_trunk", "factory"),
    ],
)
def test_trunk_values_name_their_kind(text, kind):
    assert parse_trunk(text)[0] == kind


def test_an_unknown_trunk_is_one_config_error():
    with pytest.raises(ConfigError, match="expected small, resnet, torchvision:NAME"):
        TrainConfig(trunk="vgg")


def test_torchvision_trunk_without_torchvision_names_the_extra():
    pytest.importorskip("torch")
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision imports here: the message is for machines without it")
    except Exception:  # noqa: BLE001 - a broken torchvision fails with other errors than ImportError
        pass
    with pytest.raises(TrunkError, match=r"pip install 'mtldata\[vision\]'"):
        build_model(TrainConfig(trunk="torchvision:resnet18"), load_tasks_text(), (3, 16, 16))


def test_every_config_key_is_a_train_option_and_every_option_a_config_key():
    options = {p.name for p in train_command.params} - NOT_CONFIG
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert options == fields


def test_train_help_explains_every_option():
    ctx = click.Context(train_command)
    for param in train_command.params:
        if isinstance(param, click.Option):
            text = (param.help or "").split("[default")[0].strip()
            assert len(text) > 8, f"{param.opts[0]} has no explanation"
    assert "lr-step-epochs" in train_command.get_help(ctx) and "best-metric" in train_command.get_help(ctx)


def test_best_pt_follows_the_named_metric_and_logs_have_no_bar_redraws(tmp_path):
    dataset, tasks = make_dataset(tmp_path / "data", count=24)
    out = tmp_path / "run"
    args = ["train", str(dataset), "--tasks", str(tasks), "--val-split", "0.25", "--epochs", "3", "-b", "6"]
    args += ["--width", "4", "-j", "0", "--device", "cpu", "-o", str(out), "--best-metric", "level/mae", "-q"]
    result = CliRunner().invoke(main, args)  # stderr is not a terminal here, as in a log file
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "epoch 3" in result.output and "accuracy" in result.output
    import json

    val = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    maes = [r["metrics"]["level"]["mae"] for r in val if r["split"] == "val"]
    flags = [r["best"] for r in val if r["split"] == "train"]
    expected = [m < min(maes[:i], default=float("inf")) for i, m in enumerate(maes)]
    assert flags == expected
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == 1 + maes.index(min(maes))
    bad = CliRunner().invoke(main, [*args[:-5], "-o", str(tmp_path / "r2"), "--best-metric", "level/nope"])
    assert bad.exit_code == 1 and "no such validation metric" in bad.output


def test_pretrained_alone_means_the_library_weights_and_with_a_value_a_file():
    assert train_command.make_context("train", ["--pretrained", "-q"]).params["pretrained"] == "default"
    assert train_command.make_context("train", ["--pretrained", "w.pth"]).params["pretrained"] == "w.pth"


@pytest.mark.parametrize("kind", ["small", "resnet"])
def test_the_built_in_trunks_take_pretrained_weights_from_a_file_and_refuse_the_bare_flag(kind, tmp_path):
    from mtldata.train.trunks import build_trunk
    from mtldata.train.trunks.base import TrunkRequest

    source = build_trunk(kind, TrunkRequest(width=8)).module
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_(-1, 1)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    built = build_trunk(kind, TrunkRequest(width=8, pretrained=str(tmp_path / "w.pth")))
    assert all(
        torch.equal(a, b)
        for a, b in zip(built.module.state_dict().values(), source.state_dict().values(), strict=True)
    )
    assert built.notes and built.notes[0].startswith(f"pretrained: {len(source.state_dict())} tensors from ")
    # the bare flag asks for weights that do not exist: an error, not a run from random weights
    with pytest.raises(TrunkError, match=f"trunk {kind}: has no published weights"):
        build_trunk(kind, TrunkRequest(width=8, pretrained="default"))
    # a checkpoint's weights come later (load_weights=False): nothing is read
    assert build_trunk(kind, TrunkRequest(width=8, pretrained="default", load_weights=False)).notes == []
