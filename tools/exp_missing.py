"""Experiment: is masking missing labels better than training on the fully labelled images only?

Makes the built-in sample set (shape softmax, three sigmoid attributes, size euclidean), removes the
`--task` labels of a random half of the training images (`--drop`), and trains the same model twice
for the same number of epochs:

* masked: every training image, the missing labels skipped by the losses (convert --allow-missing);
* subset: only the images whose labels are all present (what one does without masking).

Both are scored on a separate, fully labelled validation set made with another seed; the script
prints the task's metric for each (accuracy for shape, mean error for attributes, MAE for size).

    python tools/exp_missing.py                          # 800 training images, 12 epochs (minutes)
    python tools/exp_missing.py --count 96 --epochs 3    # a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.storage.sample_set import CLASS_NAMES, LABEL_NAMES, TASK_COLUMNS, make_sample_set
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
METRIC = {"shape": ("accuracy", True), "attributes": ("mean_error", False), "size": ("mae", False)}


def _lists(directory: Path, count: int, size: int, task: str, drop: float, seed: int) -> tuple[Path, Path]:
    """The training list with `drop` of `task`'s labels as nan, and the list of the fully labelled rows."""
    full = make_sample_set(directory / "train", count=count, size=size, seed=seed)
    start, stop = TASK_COLUMNS[TASKS.names.index(task)]
    rows = [line for line in full.read_text().splitlines() if not line.startswith("#")]
    gone = set(np.random.default_rng(seed + 7).permutation(len(rows))[: round(drop * len(rows))].tolist())
    masked, subset = [], []
    for i, line in enumerate(rows):
        parts = line.split()
        if i in gone:
            parts[1 + start : 1 + stop] = ["nan"] * (stop - start)
            masked.append(" ".join(parts))
        else:
            masked.append(line)
            subset.append(line)
    masked_list = directory / "train" / "masked.txt"
    subset_list = directory / "train" / "subset.txt"
    masked_list.write_text("\n".join(masked) + "\n")
    subset_list.write_text("\n".join(subset) + "\n")
    return masked_list, subset_list


def run(
    directory: Path, *, count: int, val_count: int, size: int, epochs: int, task: str, drop: float, seed: int
) -> dict[str, dict[str, float]]:
    """Train masked and subset once each; return {setup: {metric, train_images, steps}}."""
    masked_list, subset_list = _lists(directory, count, size, task, drop, seed)
    val_list = make_sample_set(directory / "val", count=val_count, size=size, seed=seed + 1000)
    tasks_file = directory / "tasks.toml"
    tasks_file.write_text(dump_tasks(TASKS), encoding="utf-8")
    convert(ConvertSpec(list_file=val_list, output=directory / "val_lmdb", workers=1))
    metric, _ = METRIC[task]
    out: dict[str, dict[str, float]] = {}
    for name, list_file in (("masked", masked_list), ("subset", subset_list)):
        dataset = directory / f"{name}_lmdb"
        result = convert(ConvertSpec(list_file=list_file, output=dataset, allow_missing=True, workers=1))
        cfg = TrainConfig(
            dataset=str(dataset),
            tasks=str(tasks_file),
            val=str(directory / "val_lmdb"),
            epochs=epochs,
            batch_size=16,
            optimizer="adamw",
            lr=3e-3,
            weight_decay=1e-4,
            width=16,
            num_workers=0,
            out_dir=str(directory / f"run_{name}"),
            seed=seed,
            log_every=10,
        )
        trained = train(cfg)
        values = [r["val"][task][metric] for r in trained.history]
        losses = [v for r in trained.history for v in r["train"]["losses"].values()]
        out[name] = {
            metric: values[-1],
            f"best_{metric}": max(values) if METRIC[task][1] else min(values),
            "train_images": result.count,
            "steps": trained.step,
            "finite_losses": all(math.isfinite(v) for v in losses),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=800, help="training images before the drop")
    parser.add_argument("--val-count", type=int, default=400)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--task", choices=TASKS.names, default="shape")
    parser.add_argument("--drop", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="keep the data and runs here [default: a temporary folder]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mtldata-exp-") as tmp:
        directory = args.dir or Path(tmp)
        result = run(
            directory,
            count=args.count,
            val_count=args.val_count,
            size=args.size,
            epochs=args.epochs,
            task=args.task,
            drop=args.drop,
            seed=args.seed,
        )
    print(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "result": result}, indent=1))
    metric, higher = METRIC[args.task]
    a, b = result["masked"][metric], result["subset"][metric]
    better = a > b if higher else a < b
    print(
        f"{args.task} {metric} after {args.epochs} epochs: masked {a:.4f}, subset {b:.4f} -> masking "
        f"{'better' if better else 'NOT better'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
