"""A torchvision ResNet-18 trunk (random weights saved to a file, standing in for pretrained ones) and a
timm trunk: frozen, partly frozen, fine-tuned, resumed, under DDP. Needs torchvision (second venv in CI)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from train_helpers import make_dataset
from trunk_helpers import Notes, changed, ddp_train, trunk_start

from mtldata.train import TrainConfig, train
from mtldata.train.trunks import TrunkError

torchvision = pytest.importorskip("torchvision", reason="torchvision does not import beside this torch")
pytestmark = pytest.mark.vision


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vision")
    dataset, tasks = make_dataset(tmp / "data", count=24, size=16)
    torch.manual_seed(5)
    weights = tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # with its ImageNet classifier
    return dataset, tasks, weights


def cfg_for(setup, out, **changes) -> TrainConfig:
    dataset, tasks, weights = setup
    base = dict(
        dataset=str(dataset),
        tasks=str(tasks),
        trunk="torchvision:resnet18",
        pretrained=str(weights),
        epochs=2,
        batch_size=6,
        lr=0.002,
        momentum=0.5,
        num_workers=0,
        device="cpu",
        out_dir=str(out),
        seed=3,
    )
    return TrainConfig(**{**base, **changes})


def test_resnet18_from_a_weights_file_frozen_trains_the_heads_only(setup, tmp_path):
    cfg = cfg_for(setup, tmp_path / "frozen", freeze_trunk=True)
    start = trunk_start(cfg)
    saved = torch.load(setup[2], weights_only=True)
    assert torch.equal(start["trunk.conv1.weight"], saved["conv1.weight"])  # the file's weights, not new ones
    notes = Notes()
    result = train(cfg, notes.reporter)
    after = result.model.state_dict()
    assert not any(changed(start, after, "trunk.").values())  # BatchNorm statistics included: eval mode
    assert all(changed(start, after, "heads.").values())
    assert any("channels flipped" in line and "BGR" in line for line in notes.lines)
    assert any(line.startswith("pretrained: ") for line in notes.lines)


def test_resnet18_freeze_until_layer2_and_fine_tuning(setup, tmp_path):
    cfg = cfg_for(setup, tmp_path / "until", freeze_until="layer2", trunk_lr_mult=0.1)
    start = trunk_start(cfg)
    moved = changed(start, train(cfg).model.state_dict(), "trunk.")
    low = [k for k in moved if k.split(".")[1] in ("conv1", "bn1", "layer1", "layer2")]
    high = [k for k in moved if k.split(".")[1] in ("layer3", "layer4") and "num_batches" not in k]
    assert low and not any(moved[k] for k in low)
    assert high and all(moved[k] for k in high)


def test_resnet18_resumed_run_ends_with_the_uninterrupted_weights(setup, tmp_path):
    whole = train(cfg_for(setup, tmp_path / "a", freeze_until="layer1", trunk_lr_mult=0.5))
    cfg = cfg_for(setup, tmp_path / "b", freeze_until="layer1", trunk_lr_mult=0.5)
    train(cfg.replace(max_steps=3))
    resumed = train(cfg.replace(resume=True))
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert resumed.step == whole.step
    assert all(torch.isfinite(a[k].float()).all() for k in a)  # NaN != NaN would hide nothing
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resnet18_under_ddp_with_resume_ends_identical_on_both_ranks(setup, tmp_path):
    cfg = cfg_for(setup, tmp_path / "ddp", freeze_until="layer3", batch_size=4)
    dump = tmp_path / "dump"
    dump.mkdir()
    first, second = ddp_train(dataclasses.asdict(cfg), dump, [{"max_steps": 2}, {"resume": True}])
    a, b = (r["model"] for r in second)
    assert second[0]["step"] > 2 and all(torch.equal(a[k], b[k]) for k in a)


def test_library_weights_missing_from_the_cache_is_one_error_saying_where(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(
        TrunkError, match=r"torch-home/hub/checkpoints/resnet18-.*\.pth: the pretrained weights"
    ):
        trunk_start(cfg_for(setup, tmp_path / "x", pretrained="default"))


def test_timm_trunk_trains_frozen(setup, tmp_path):
    pytest.importorskip("timm", reason="timm is not installed")
    cfg = cfg_for(
        setup, tmp_path / "timm", trunk="timm:resnet10t", pretrained="", freeze_trunk=True, epochs=1
    )
    start = trunk_start(cfg)
    after = train(cfg).model.state_dict()
    assert not any(changed(start, after, "trunk.").values()) and all(changed(start, after, "heads.").values())
