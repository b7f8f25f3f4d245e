"""Training: Caffe-normalised losses, task weighting, config, metrics, checkpoints, the loop and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_helpers import make_dataset

from mtldata.tasks import TaskSet, TaskSpec, load_tasks
from mtldata.train import ConfigError, TrainConfig, train
from mtldata.train.checkpoint import load_checkpoint, save_checkpoint
from mtldata.train.data import EpochSampler, split_indices
from mtldata.train.loop import amp_dtype, autocast, pick_device
from mtldata.train.losses import (
    MultiTaskObjective,
    euclidean_loss,
    sigmoid_cross_entropy_loss,
    softmax_with_loss,
)
from mtldata.train.metrics import TaskMetrics, format_table
from mtldata.train.models import build_model
from mtldata.train.weighting import DWA, GradNorm, UncertaintyWeighting, make_weighting

TASKS = TaskSet(
    (
        TaskSpec("cls", slice(0, 1), "softmax", classes=3, ignore_label=-1),
        TaskSpec("attr", slice(1, 4), "sigmoid", loss_weight=0.5),
        TaskSpec("reg", slice(4, 5), "euclidean", loss_weight=2.0),
    ),
    num_labels=5,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def small_config(tiny: tuple[Path, Path], out: Path, **changes) -> TrainConfig:
    dataset, tasks = tiny
    values = dict(
        dataset=str(dataset),
        tasks=str(tasks),
        epochs=2,
        batch_size=8,
        lr=0.05,
        width=8,
        num_workers=0,
        out_dir=str(out),
        seed=1,
        log_every=2,
    )
    values.update(changes)
    return TrainConfig(**values)


# --- losses: each kind against a hand computation ----------------------------------------------------


def test_softmax_with_loss_divides_by_the_non_ignored_count():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [3.0, 3.0, 3.0], [-0.5, 0.2, 0.9]])
    target = torch.tensor([0, 1, -1, 2])
    by_hand = 0.0
    for row, t in zip(logits.tolist(), target.tolist(), strict=True):
        if t == -1:
            continue
        by_hand += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    assert softmax_with_loss(logits, target, ignore_label=-1).item() == pytest.approx(by_hand / 3, rel=1e-6)
    # without ignore_label every sample counts
    assert softmax_with_loss(logits, torch.tensor([0, 1, 2, 2])).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([0, 1, 2, 2])).item(), rel=1e-6
    )


def test_an_all_ignored_batch_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = softmax_with_loss(logits, torch.full((4,), -1), ignore_label=-1)
    loss.backward()
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    assert torch.equal(logits.grad, torch.zeros(4, 3))
    sig = torch.randn(2, 3, requires_grad=True)
    loss = sigmoid_cross_entropy_loss(sig, torch.full((2, 3), -1.0), ignore_label=-1)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(sig.grad, torch.zeros(2, 3))


def test_sigmoid_cross_entropy_sums_over_elements_and_divides_by_n():
    x = torch.tensor([[0.3, -1.2, 2.0], [-0.1, 0.0, 1.5]])
    t = torch.tensor([[1.0, 0.0, 1.0], [0.0, -1.0, 1.0]])  # one ignored element
    by_hand = 0.0
    for xi, ti in zip(x.flatten().tolist(), t.flatten().tolist(), strict=True):
        if ti == -1:
            continue
        p = 1 / (1 + math.exp(-xi))
        by_hand += -(ti * math.log(p) + (1 - ti) * math.log(1 - p))
    assert sigmoid_cross_entropy_loss(x, t, ignore_label=-1).item() == pytest.approx(by_hand / 2, rel=1e-6)
    # N, not N*k: three times PyTorch's mean over 3 columns
    t2 = (t > 0.5).float()
    mean = F.binary_cross_entropy_with_logits(x, t2).item()
    assert sigmoid_cross_entropy_loss(x, t2).item() == pytest.approx(3 * mean, rel=1e-6)


def test_euclidean_loss_is_the_sum_of_squares_over_2n():
    pred = torch.tensor([[0.5, 1.0], [2.0, -1.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.5, -0.5]])
    by_hand = (0.25 + 0 + 1 + 4 + 0.25 + 0.25) / (2 * 3)
    assert euclidean_loss(pred, target).item() == pytest.approx(by_hand, rel=1e-6)


def test_losses_equal_real_caffe_on_its_recorded_blobs(caffe_fixtures):
    expected = json.loads((caffe_fixtures / "mt" / "expected.json").read_text())["iter0"]
    blobs = {k: torch.tensor(v["values"]) for k, v in expected["blobs"].items()}
    labels = {k: torch.tensor(v["values"]) for k, v in expected["label_blobs"].items()}
    outputs = {"cls": blobs["fc_cls"], "attr": blobs["fc_attr"], "reg": blobs["fc_reg"]}
    targets = {
        "cls": labels["label_cls"].reshape(-1).long(),
        "attr": labels["label_attr"].reshape(4, 3),
        "reg": labels["label_reg"].reshape(4, 1),
    }
    objective = MultiTaskObjective(TASKS, make_weighting("fixed", TASKS))
    out = objective(outputs, targets)
    for name, caffe_name in (("cls", "loss_cls"), ("attr", "loss_attr"), ("reg", "loss_reg")):
        assert out.losses[name].item() == pytest.approx(expected["losses"][caffe_name], rel=1e-5)
    assert out.weighted.item() == pytest.approx(expected["weighted_total"], rel=1e-5)
    assert out.total.item() == pytest.approx(expected["weighted_total"], rel=1e-5)
    assert {k: v.item() for k, v in out.weights.items()} == {"cls": 1.0, "attr": 0.5, "reg": 2.0}


# --- weighting ----------------------------------------------------------------------------------------


def test_uncertainty_weighting_follows_kendall_et_al():
    w = UncertaintyWeighting(TASKS)
    with torch.no_grad():
        w.log_var.copy_(torch.tensor([0.5, -0.3, 1.0]))
    losses = {"cls": torch.tensor(1.2), "attr": torch.tensor(0.7), "reg": torch.tensor(0.1)}
    out = w(losses)
    s = [0.5, -0.3, 1.0]
    by_hand = 1.0 * (math.exp(-s[0]) * 1.2 + 0.5 * s[0])  # classification: exp(-s) L + s/2
    by_hand += 0.5 * (math.exp(-s[1]) * 0.7 + 0.5 * s[1])
    by_hand += 2.0 * (0.5 * math.exp(-s[2]) * 0.1 + 0.5 * s[2])  # regression: exp(-s) L / 2 + s/2
    assert out.total.item() == pytest.approx(by_hand, rel=1e-6)
    assert out.weights["reg"].item() == pytest.approx(2.0 * 0.5 * math.exp(-1.0), rel=1e-6)


def test_dwa_weights_from_the_last_two_epoch_losses():
    dwa = DWA(TASKS, temperature=2.0)
    epochs = [[1.0, 2.0, 0.5], [0.8, 1.0, 0.5], [0.4, 0.9, 0.5]]
    for means in epochs:
        for _ in range(3):  # three steps with the same losses: their mean is `means`
            dwa({n: torch.tensor(v) for n, v in zip(TASKS.names, means, strict=True)})
        dwa.epoch_end()
    ratios = [b / a for a, b in zip(epochs[1], epochs[2], strict=True)]
    exp = [math.exp(r / 2.0) for r in ratios]
    expected = [3 * e / sum(exp) for e in exp]
    assert dwa.dyn.tolist() == pytest.approx(expected, rel=1e-6)
    assert dwa.weights()["attr"] == pytest.approx(0.5 * expected[1], rel=1e-6)
    state = dwa.state_dict()
    again = DWA(TASKS)
    again.load_state_dict(state)
    assert torch.equal(again.dyn, dwa.dyn) and torch.equal(again.history, dwa.history)


def test_gradnorm_moves_weights_towards_balanced_gradients_and_renormalises():
    torch.manual_seed(0)
    model = build_model("small", TASKS, width=4)
    gn = GradNorm(TASKS, alpha=1.5)
    objective = MultiTaskObjective(TASKS, gn)
    opt = torch.optim.SGD([*model.parameters(), *gn.parameters()], lr=0.01)
    x = torch.randn(4, 3, 16, 16)
    targets = {
        "cls": torch.tensor([0, 1, 2, 1]),
        "attr": torch.randint(0, 2, (4, 3)).float(),
        "reg": torch.rand(4, 1),
    }
    for _ in range(3):
        out = objective(model(x), targets, shared=model.shared_parameter)
        opt.zero_grad()
        out.total.backward()
        assert gn.w.grad is not None and torch.isfinite(gn.w.grad).all()
        opt.step()
        gn.after_step()
        assert gn.w.sum().item() == pytest.approx(3.0, rel=1e-5)
    assert not torch.allclose(gn.w, torch.ones(3))
    assert bool(gn.has_initial.all()) and "w" in gn.state_dict() and "initial" in gn.state_dict()


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="fixed, uncertainty, dwa, gradnorm"):
        make_weighting("equal", TASKS)


# --- config -------------------------------------------------------------------------------------------


def test_config_toml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('lr = 0.1\nepochs = 3\nmean_values = [104, 117, 123]\nweighting = "dwa"\n')
    cfg = TrainConfig.load(path, epochs=5, lr=None)
    assert (cfg.lr, cfg.epochs, cfg.weighting, cfg.mean_values) == (0.1, 5, "dwa", [104.0, 117.0, 123.0])
    (tmp_path / "again.toml").write_text(cfg.to_toml())
    assert TrainConfig.load(tmp_path / "again.toml") == cfg


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"lrr": 0.1}, "unknown setting 'lrr'; did you mean 'lr'"),
        ({"epochs": "3"}, "epochs: expected an integer"),
        ({"weighting": "equal"}, "weighting: expected one of fixed, uncertainty, dwa, gradnorm"),
        ({"val": "v", "val_split": 0.1}, "either val"),
        ({"weighting": "gradnorm", "freeze_trunk": True}, "gradnorm"),
    ],
)
def test_config_errors_name_the_setting(values, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(values)


# --- models, metrics, data order ----------------------------------------------------------------------


@pytest.mark.parametrize("trunk", ["small", "resnet"])
def test_models_give_one_output_per_task(trunk):
    model = build_model(trunk, TASKS, width=4, blocks=[1, 1])
    out = model(torch.randn(2, 3, 20, 20))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"cls": (2, 3), "attr": (2, 3), "reg": (2, 1)}
    assert model.shared_parameter.requires_grad


def test_metrics_by_hand():
    cls, _, reg = TASKS.tasks
    tasks = TaskSet((cls, TaskSpec("attr", slice(1, 4), "sigmoid", ignore_label=-1), reg), num_labels=5)
    m = TaskMetrics(tasks)
    outputs = {
        "cls": torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [2.0, 0, 0]]),
        "attr": torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]),
        "reg": torch.tensor([[0.5], [1.0], [0.0], [2.0]]),
    }
    targets = {
        "cls": torch.tensor([0, 2, 2, -1]),
        "attr": torch.tensor([[1.0, 0, 1], [1, 0, 0], [0, 0, 1], [1, -1, 1]]),
        "reg": torch.tensor([[0.0], [1.0], [1.0], [2.0]]),
    }
    m.update(outputs, targets, {t.name: torch.tensor(1.0) for t in tasks})
    got = m.compute()
    assert got["cls"]["accuracy"] == pytest.approx(2 / 3)
    # 11 valid bits; wrong: (1,1) and (2,2); tp 5, fp 1, fn 1
    assert got["attr"]["mean_error"] == pytest.approx(2 / 11)
    assert got["attr"]["f1"] == pytest.approx(10 / 12)
    assert got["reg"]["mae"] == pytest.approx(1.5 / 4)
    assert got["reg"]["rmse"] == pytest.approx(math.sqrt(1.25 / 4))
    table = format_table({"train": {"losses": {"cls": 1.0}}, "weights": {}, "val": got}, tasks)
    assert "accuracy" in table and "0.6667" in table and "rmse" in table


def test_epoch_order_depends_on_seed_and_epoch_and_shards_cover_everything():
    idx = list(range(10))
    s = EpochSampler(idx, seed=3)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    assert sorted(first) == idx and list(s) != first
    s.set_epoch(0, start=4)
    assert list(s) == first[4:]
    shards = [EpochSampler(idx, seed=3, rank=r, world=3) for r in range(3)]
    seen = []
    for sh in shards:
        sh.set_epoch(2)
        seen += list(sh)
    assert len(seen) == 12 and set(seen) == set(idx)  # padded to 3 x 4 by wrapping
    train_idx, val_idx = split_indices(50, 0.2, seed=1)
    assert len(val_idx) == 10 and not set(train_idx) & set(val_idx)
    assert split_indices(50, 0.2, seed=1) == (train_idx, val_idx)


# --- device and precision (CPU here; the CUDA paths fall back) ------------------------------------------


def test_device_choice_and_autocast_helper_on_cpu():
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="CUDA is not available"):
            pick_device("cuda")
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, True) is None  # AMP is a CUDA feature here
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(cpu, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(cpu, None):
        assert (a @ b).dtype == torch.float32


# --- checkpoints --------------------------------------------------------------------------------------


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def broken(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --- the loop -----------------------------------------------------------------------------------------


def test_two_epochs_lower_every_task_loss_and_write_the_run(tiny, tmp_path):
    cfg = small_config(tiny, tmp_path / "run", val=str(tiny[0]))
    result = train(cfg)
    first, last = (r["train"]["losses"] for r in (result.history[0], result.history[-1]))
    for task in ("colour", "attrs", "level"):
        assert last[task] < first[task], (task, first, last)
    out = tmp_path / "run"
    assert {"last.pt", "best.pt", "config.toml", "tasks.toml", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(x["epoch"], x["split"]) for x in lines] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert set(lines[1]["metrics"]) == {"colour", "attrs", "level"}
    assert set(lines[1]["metrics"]["attrs"]) == {"mean_error", "f1"}
    assert lines[0]["loss"]["attrs"] == result.history[0]["train"]["losses"]["attrs"]
    state = load_checkpoint(out / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "objective", "epoch", "step", "rng", "config"):
        assert key in state
    assert state["epoch"] == 2 and state["step"] == result.step
    saved = TrainConfig.load(out / "config.toml")
    assert saved == TrainConfig.from_dict(state["config"]) == result.config
    assert load_tasks(out / "tasks.toml") == load_tasks(tiny[1])
    # a new run into the same folder must not overwrite it
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg)
    # a resumed run keeps its settings
    with pytest.raises(ConfigError, match="lr"):
        train(cfg.replace(resume=True, lr=0.5))


@pytest.mark.parametrize("weighting", ["dwa", "gradnorm"])
def test_resume_continues_to_the_uninterrupted_result(tiny, tmp_path, weighting):
    # mid-epoch stop, random crops and mirrors, accumulation and stateful task weights all resume exactly
    common = dict(epochs=3, weighting=weighting, mirror=True, crop_size=14, grad_accum=2, val_split=0.2)
    whole = train(small_config(tiny, tmp_path / "whole", **common))
    stopped = train(small_config(tiny, tmp_path / "split", max_steps=4, **common))
    assert stopped.step == 4 and stopped.epoch == 1  # stopped inside epoch 2
    resumed = train(small_config(tiny, tmp_path / "split", resume=True, **common))
    assert resumed.step == whole.step
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = whole.objective.state_dict(), resumed.objective.state_dict()
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    for key in ("val", "train", "weights", "lr", "step"):  # the records too, the epoch's loss sums included
        assert whole.history[-1][key] == resumed.history[-1][key]
    assert whole.history[1]["train"] == resumed.history[0]["train"]  # the epoch that was cut in two


def test_init_from_a_checkpoint_and_freeze_the_trunk(tiny, tmp_path):
    first = train(small_config(tiny, tmp_path / "a", epochs=1))
    cfg = small_config(
        tiny, tmp_path / "b", epochs=1, init=str(tmp_path / "a" / "last.pt"), freeze_trunk=True
    )
    second = train(cfg)
    a, b = first.model.state_dict(), second.model.state_dict()
    trunk = [k for k in a if k.startswith("trunk.")]
    assert trunk and all(torch.equal(a[k], b[k]) for k in trunk)  # BatchNorm statistics included
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("heads."))


def test_trunk_lr_mult_and_resnet_trunk(tiny, tmp_path):
    result = train(
        small_config(
            tiny,
            tmp_path / "r",
            epochs=1,
            trunk="resnet",
            resnet_blocks=[1, 1],
            trunk_lr_mult=0.1,
            weighting="uncertainty",
            max_steps=2,
        )
    )
    groups = {g["name"]: g for g in load_checkpoint(tmp_path / "r" / "last.pt")["optimizer"]["param_groups"]}
    assert groups["trunk"]["initial_lr"] == pytest.approx(0.1 * groups["heads"]["initial_lr"])
    assert groups["weighting"]["weight_decay"] == 0.0
    assert result.step == 2


def test_tensorboard_without_its_package_is_a_clear_error(tiny, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed")
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        train(small_config(tiny, tmp_path / "tb", tensorboard=True, epochs=1))
