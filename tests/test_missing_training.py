"""Training on a partially labelled dataset: every weighting method stays finite; masking beats dropping."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.storage.sample_set import CLASS_NAMES, LABEL_NAMES, make_sample_set
from mtldata.tasks import TaskSet, TaskSpec, dump_tasks
from mtldata.train import TrainConfig, train

TASKS = TaskSet(
    (
        TaskSpec("shape", slice(0, 1), "softmax", classes=len(CLASS_NAMES)),
        TaskSpec("attributes", slice(1, 4), "sigmoid"),
        TaskSpec("size", slice(4, 5), "euclidean"),
    ),
    num_labels=len(LABEL_NAMES),
)


@pytest.fixture(scope="module")
def partial(tmp_path_factory) -> tuple[Path, Path]:
    """40 sample images with 40 % of each task's labels missing, converted with --allow-missing."""
    directory = tmp_path_factory.mktemp("partial")
    list_file = make_sample_set(directory / "set", count=40, size=24, missing=0.4)
    dataset = directory / "ds"
    result = convert(ConvertSpec(list_file=list_file, output=dataset, allow_missing=True, workers=1))
    assert result.manifest["missing_labels"]["by_column"] == [16] * 5
    tasks = directory / "tasks.toml"
    tasks.write_text(dump_tasks(TASKS), encoding="utf-8")
    return dataset, tasks


@pytest.mark.parametrize("method", ["fixed", "uncertainty", "dwa", "gradnorm"])
def test_a_dataset_with_missing_labels_trains_with_each_weighting_without_nan(partial, tmp_path, method):
    dataset, tasks = partial
    cfg = TrainConfig(
        dataset=str(dataset),
        tasks=str(tasks),
        val_split=0.25,
        epochs=3,  # DWA's weights move from the third epoch on
        batch_size=4,  # small batches: some hold no label of a task
        lr=0.01,
        width=4,
        num_workers=0,
        out_dir=str(tmp_path / "run"),
        seed=2,
        log_every=1,
    )
    result = train(cfg)
    assert len(result.history) == 3
    for record in result.history:
        assert all(math.isfinite(v) for v in record["train"]["losses"].values())
        assert all(math.isfinite(v) for v in record["weights"].values())
        for name, metrics in record["val"].items():
            assert math.isfinite(metrics["loss"]) and 0 < metrics["labelled"] < 10 * TASKS[name].width
    for p in result.objective.weighting.state_dict().values():
        assert not p.is_floating_point() or bool(p.isfinite().all())


def test_masking_beats_training_on_the_fully_labelled_images_only(tmp_path):
    """The tools/exp_missing.py experiment at test size (the README gives the full-size figures)."""
    spec = importlib.util.spec_from_file_location(
        "exp_missing", Path(__file__).resolve().parents[1] / "tools" / "exp_missing.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    got = module.run(tmp_path, count=96, val_count=48, size=32, epochs=3, task="shape", drop=0.5, seed=0)
    assert got["masked"]["train_images"] == 96 and got["subset"]["train_images"] == 48
    assert got["masked"]["finite_losses"] and got["subset"]["finite_losses"]
    assert got["masked"]["accuracy"] > got["subset"]["accuracy"]
