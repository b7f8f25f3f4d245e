"""Training throughput: optimizer steps/s and the share of step time spent waiting for data.

Makes the built-in sample set (or uses --dataset with --tasks), then trains for a fixed number of
steps with `mtldata.train.train` once per DataLoader worker count, and reports for each:

* steps/s and images/s over the steps after the first `--warmup` (setup and first-batch costs out);
* data wait: the share of the training loop's wall time spent blocked on the next batch.

The device is --device (auto: CUDA when there is one, with AMP and channels_last; else CPU).

    python tools/bench_train.py                 # ~1 min on 2 CPU cores
    python tools/bench_train.py --quick         # a few seconds: smoke test
    python tools/bench_train.py --dataset DS --tasks tasks.toml --trunk resnet --batch-size 64
    python tools/bench_train.py --compare       # mtldata's loop against a plain PyTorch loop, per trunk

`--compare` trains the same model (same trunk, heads and initial weights), data and batch size with
`mtldata.train.train` and with a plain loop (DataLoader of float tensors, forward, Caffe's losses,
SGD step), for `small`, a torchvision ResNet-18 (when torchvision imports) and a Caffe trunk (the
fixture net in ../shared/fixtures/caffe/mt, when present), and prints both side by side with ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.loader.transforms import TransformSpec
from mtldata.storage.sample_set import CLASS_NAMES, LABEL_NAMES, make_sample_set
from mtldata.tasks import TaskSet, TaskSpec, dump_tasks
from mtldata.train import Reporter, TrainConfig, train
from mtldata.train.loop import amp_dtype, pick_device

SAMPLE_TASKS = TaskSet(
    (
        TaskSpec("shape", slice(0, 1), "softmax", classes=len(CLASS_NAMES)),
        TaskSpec("attributes", slice(1, 4), "sigmoid"),
        TaskSpec("size", slice(4, 5), "euclidean"),
    ),
    num_labels=len(LABEL_NAMES),
)


class StepClock(Reporter):
    """Records when each optimizer step finished."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def step(self, step: int, logs: dict[str, Any] | None) -> None:
        self.times.append(time.perf_counter())


def sample_dataset(directory: Path, count: int, size: int) -> tuple[Path, Path]:
    list_file = make_sample_set(directory / "sample", count=count, size=size)
    dataset = directory / "sample_lmdb"
    convert(ConvertSpec(list_file=list_file, output=dataset, label_names=LABEL_NAMES, workers=1))
    tasks = directory / "tasks.toml"
    tasks.write_text(dump_tasks(SAMPLE_TASKS), encoding="utf-8")
    return dataset, tasks


def bench(cfg: TrainConfig, warmup: int) -> dict[str, Any]:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        torch.cuda.synchronize()
    clock = StepClock()
    result = train(cfg, clock)
    steps = len(clock.times) - 1 - warmup
    if steps < 1:
        raise SystemExit(f"bench_train: only {len(clock.times)} steps ran; raise --steps or lower --warmup")
    seconds = clock.times[-1] - clock.times[warmup]
    return {
        "workers": cfg.num_workers,
        "steps": steps,
        "steps_per_s": steps / seconds,
        "images_per_s": steps * cfg.batch_size * cfg.grad_accum / seconds,
        "data_wait_share": result.data_wait_share,
    }


def plain_loop(cfg: TrainConfig, warmup: int) -> dict[str, Any]:
    """The baseline: what one writes by hand with torch alone, over the same model and data."""
    from mtldata.loader.dataset import open_dataset
    from mtldata.tasks import load_tasks
    from mtldata.train.losses import task_loss
    from mtldata.train.models import build_model

    torch.manual_seed(cfg.seed)
    spec = TransformSpec(scale=cfg.scale)
    ds = open_dataset(cfg.dataset, tasks=load_tasks(Path(cfg.tasks)), transform=spec, phase="train")
    model = build_model(cfg, ds.tasks, tuple(ds[0][0].shape))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, drop_last=True
    )
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model.train()
    times, wait, step = [], 0.0, 0
    while step < cfg.max_steps:
        it = iter(loader)
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            try:
                x, targets = next(it)
            except StopIteration:
                break
            if step > warmup:
                wait += time.perf_counter() - t0
            out = model(x)
            loss = sum(t.loss_weight * task_loss(t, out[t.name], targets[t.name]) for t in ds.tasks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            times.append(time.perf_counter())
    ds.close()
    steps = len(times) - 1 - warmup
    seconds = times[-1] - times[warmup]
    return {"steps_per_s": steps / seconds, "data_wait_share": wait / seconds}


def compare(args: argparse.Namespace, tmp_path: Path) -> list[dict[str, Any]]:
    """Each trunk trained by mtldata's loop and by the plain loop, with the same settings."""
    caffe_net = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "caffe" / "mt"
    trunks = [("small", {})]
    try:
        import torchvision  # noqa: F401

        trunks.append(("torchvision:resnet18", {}))
    except Exception:  # noqa: BLE001 - a torchvision that does not import beside this torch
        print("torchvision does not import: no ResNet-18 row", file=sys.stderr)
    if (caffe_net / "train.prototxt").is_file():
        trunks.append((f"caffe:{caffe_net / 'train.prototxt'}", {"init": str(caffe_net / "init.caffemodel")}))
    dataset, tasks = sample_dataset(tmp_path, args.count, 32)  # 32x32: the Caffe fixture net's input
    rows = []
    for i, (trunk, extra) in enumerate(trunks):
        cfg = TrainConfig(
            dataset=str(dataset),
            tasks=str(tasks),
            trunk=trunk,
            width=args.width,
            batch_size=args.batch_size,
            epochs=1000,
            max_steps=args.steps + args.warmup + 1,
            num_workers=int(args.workers.split(",")[0]),
            device="cpu",
            out_dir=str(tmp_path / f"cmp-{i}"),
            log_every=10**9,
            **extra,
        )
        ours = bench(cfg, args.warmup)
        plain = plain_loop(cfg, args.warmup)
        rows.append(
            {
                "trunk": trunk.split("/")[-1] if trunk.startswith("caffe:") else trunk,
                "mtldata": ours,
                "plain": plain,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", type=Path, help="A dataset to train on (with --tasks). [default: the sample set]"
    )
    parser.add_argument("--tasks", type=Path, help="tasks.toml for --dataset.")
    parser.add_argument("--count", type=int, default=1024, help="Sample images to make. [default: 1024]")
    parser.add_argument("--size", type=int, default=64, help="Sample image size. [default: 64]")
    parser.add_argument(
        "--steps", type=int, default=40, help="Steps to time, after the warm-up. [default: 40]"
    )
    parser.add_argument("--warmup", type=int, default=3, help="Steps not timed. [default: 3]")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers", default="0,2", help="DataLoader worker counts to compare. [default: 0,2]"
    )
    parser.add_argument("--trunk", default="small", choices=["small", "resnet"])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="Tiny settings: a smoke test of this script.")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    parser.add_argument(
        "--compare", action="store_true", help="mtldata's loop against a plain PyTorch loop, per trunk."
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.size, args.steps, args.warmup, args.batch_size, args.width = 96, 32, 4, 1, 16, 8
        args.workers = "0"
    if (args.dataset is None) != (args.tasks is None):
        parser.error("give --dataset and --tasks together")

    device = pick_device(args.device)
    if args.compare:
        with tempfile.TemporaryDirectory(prefix="mtldata-bench-train-") as tmp:
            rows = compare(args, Path(tmp))
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(
            f"batch {args.batch_size}, {args.steps} timed steps, workers {args.workers.split(',')[0]}, CPU, 32x32 images"
        )
        print(
            f"{'trunk':<22} {'mtldata steps/s':>15} {'plain steps/s':>13} {'ratio':>6} {'mtldata wait':>12} {'plain wait':>10}"
        )
        for r in rows:
            a, b = r["mtldata"], r["plain"]
            print(
                f"{r['trunk']:<22} {a['steps_per_s']:>15.2f} {b['steps_per_s']:>13.2f} "
                f"{a['steps_per_s'] / b['steps_per_s']:>6.2f} {100 * a['data_wait_share']:>11.1f}% "
                f"{100 * b['data_wait_share']:>9.1f}%"
            )
        return 0
    with tempfile.TemporaryDirectory(prefix="mtldata-bench-train-") as tmp:
        tmp_path = Path(tmp)
        if args.dataset is None:
            dataset, tasks = sample_dataset(tmp_path, args.count, args.size)
        else:
            dataset, tasks = args.dataset, args.tasks
        results = []
        for i, workers in enumerate(int(w) for w in args.workers.split(",")):
            cfg = TrainConfig(
                dataset=str(dataset),
                tasks=str(tasks),
                trunk=args.trunk,
                width=args.width,
                batch_size=args.batch_size,
                epochs=1000,
                max_steps=args.steps + args.warmup + 1,
                num_workers=workers,
                device=args.device,
                compile=args.compile,
                out_dir=str(tmp_path / f"run-{i}"),
                log_every=10**9,
            )
            results.append(bench(cfg, args.warmup))

    meta = {
        "device": str(device),
        "amp": str(amp_dtype(device, True)).replace("torch.", "") if device.type == "cuda" else "off",
        "threads": torch.get_num_threads(),
        "trunk": args.trunk,
        "width": args.width,
        "batch_size": args.batch_size,
        "image_size": args.size if args.dataset is None else None,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return 0
    print(" ".join(f"{k}={v}" for k, v in meta.items() if v is not None))
    print(f"{'workers':>7}  {'steps/s':>8}  {'images/s':>9}  {'data wait':>9}")
    for r in results:
        print(
            f"{r['workers']:>7}  {r['steps_per_s']:>8.2f}  {r['images_per_s']:>9.1f}  {100 * r['data_wait_share']:>8.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
