"""Caffe-net training speed: `mtldata train --solver` iterations/s beside the same net in plain torch.

The net is the solver fixture's (shared/fixtures/caffe/solvers/net.prototxt: Convolution, BatchNorm,
Scale, PReLU in place, MAX pooling with a Split, two InnerProduct heads, SoftmaxWithLoss and a
weighted EuclideanLoss), fed by its HDF5Data layer with batch 32 of 64x64 images made here. Each
setting runs in a fresh process:

* mtldata at 1 thread, at 2 threads, and at the default (a timed trial picks the thread count);
* plain torch: the same layers as torch.nn modules, forward + backward + torch.optim.SGD on
  batches already in memory, at 1 and 2 threads (no data layer, no Caffe update rule: a ceiling).

Every round runs each setting once; the table gives each setting's median round.

    python tools/bench_caffe.py            # ~3 min on 2 cores
    python tools/bench_caffe.py --quick    # a few seconds: smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIXTURE_NET = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "fixtures"
    / "caffe"
    / "solvers"
    / "net.prototxt"
)

SOLVER = """net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
max_iter: {iters}
display: 0
snapshot: 0
snapshot_after_train: false
random_seed: 1
"""


def make_setup(directory: Path, batch: int, size: int, samples: int) -> Path:
    """The fixture net with a bigger batch and image size, its HDF5 data and a plain SGD solver."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(directory / "train.h5", "w") as f:
        f["data"] = rng.normal(0, 1, (samples, 3, size, size)).astype(np.float32)
        f["label_cls"] = rng.integers(0, 3, samples).astype(np.float32)
        f["label_reg"] = rng.normal(0, 0.5, (samples, 2)).astype(np.float32)
    (directory / "train_h5_list.txt").write_text(str(directory / "train.h5") + "\n")
    text = FIXTURE_NET.read_text().replace("batch_size: 4", f"batch_size: {batch}")
    text = text.replace('source: "train_h5_list.txt"', f'source: "{directory / "train_h5_list.txt"}"')
    (directory / "net.prototxt").write_text(text)
    return directory


def run_mtldata(directory: Path, threads: int | None, iters: int, warmup: int, trial: int) -> dict:
    """`mtldata train --solver`'s loop (the library call behind it), timed after `warmup` iterations."""
    from mtldata.caffenet.runner import load_solver
    from mtldata.caffenet.threads import ThreadChooser

    (directory / "solver.prototxt").write_text(SOLVER.format(iters=iters + warmup))
    solver, _ = load_solver(directory / "solver.prototxt", cwd=directory, workdir=directory)
    lines: list[str] = []
    solver.before_iteration = ThreadChooser(threads, trial=trial, log=lines.append)
    start = time.perf_counter()
    solver.step(warmup)
    middle = time.perf_counter()
    solver.step(iters)
    end = time.perf_counter()
    return {"it_s": iters / (end - middle), "it_s_all": (iters + warmup) / (end - start), "log": lines}


def run_plain(directory: Path, threads: int, iters: int, warmup: int, batch: int) -> dict:
    """The same layers in plain torch on batches already in memory."""
    import h5py
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    with h5py.File(directory / "train.h5", "r") as f:
        data = torch.from_numpy(f["data"][:])
        cls = torch.from_numpy(f["label_cls"][:]).long()
        reg = torch.from_numpy(f["label_reg"][:])
    size = data.shape[-1]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1, bias=False),
                nn.BatchNorm2d(4, momentum=0.1),
                nn.PReLU(4),
                nn.MaxPool2d(2, 2, ceil_mode=True),
                nn.Flatten(),
            )
            features = 4 * ((size + 1) // 2) ** 2
            self.cls, self.reg = nn.Linear(features, 3), nn.Linear(features, 2)

        def forward(self, x):
            h = self.trunk(x)
            return self.cls(h), self.reg(h)

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    n = data.shape[0]

    def step(i: int) -> None:
        idx = torch.arange(i * batch, (i + 1) * batch) % n
        out_cls, out_reg = model(data[idx])
        loss = nn.functional.cross_entropy(out_cls, cls[idx]) + 0.5 * (
            (out_reg - reg[idx]).pow(2).sum() / (2 * batch)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(warmup):
        step(i)
    start = time.perf_counter()
    for i in range(warmup, warmup + iters):
        step(i)
    return {"it_s": iters / (time.perf_counter() - start)}


def child(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    if args.child == "plain":
        result = run_plain(directory, args.threads, args.iters, args.warmup, args.batch)
    else:
        threads = None if args.threads == 0 else args.threads
        result = run_mtldata(directory, threads, args.iters, args.warmup, args.trial)
    print(json.dumps(result))


def spawn(kind: str, threads: int, args: argparse.Namespace, directory: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--threads", str(threads), "--dir", str(directory)]
    cmd += ["--iters", str(args.iters), "--warmup", str(args.warmup), "--batch", str(args.batch)]
    cmd += ["--trial", str(args.trial)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--iters", type=int, default=60, help="timed iterations per setting")
    parser.add_argument(
        "--warmup", type=int, default=12, help="untimed iterations first (covers the thread trial)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved runs of every setting; the median counts"
    )
    parser.add_argument(
        "--trial", type=int, default=4, help="timed iterations per thread count in the default's trial"
    )
    parser.add_argument("--quick", action="store_true", help="tiny run, for the test suite")
    parser.add_argument("--child", choices=("mtldata", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    if not FIXTURE_NET.is_file():
        print(f"bench_caffe: the fixture net is not at {FIXTURE_NET}", file=sys.stderr)
        return 1
    if args.quick:
        args.batch, args.size, args.iters, args.warmup, args.rounds, args.trial = 4, 16, 3, 4, 1, 1
    with tempfile.TemporaryDirectory(prefix="mtldata-bench-caffe-") as tmp:
        directory = make_setup(Path(tmp), args.batch, args.size, samples=max(4 * args.batch, 64))
        settings = (
            ("mtldata, 1 thread", "mtldata", 1),
            ("mtldata, 2 threads", "mtldata", 2),
            ("mtldata, default (trial)", "mtldata", 0),
            ("plain torch, 1 thread", "plain", 1),
            ("plain torch, 2 threads", "plain", 2),
        )
        # Rounds are interleaved (each round runs every setting once), so that a machine that
        # speeds up or slows down during the run weighs on every setting alike.
        runs: dict[str, list[dict]] = {label: [] for label, _, _ in settings}
        for _ in range(args.rounds):
            for label, kind, threads in settings:
                runs[label].append(spawn(kind, threads, args, directory))
    rows = {label: sorted(r, key=lambda run: run["it_s"])[len(r) // 2] for label, r in runs.items()}
    best_fixed = max(rows["mtldata, 1 thread"]["it_s"], rows["mtldata, 2 threads"]["it_s"])
    plain = max(rows["plain torch, 1 thread"]["it_s"], rows["plain torch, 2 threads"]["it_s"])
    print(
        f"Caffe net {FIXTURE_NET.name}, batch {args.batch} of {args.size}x{args.size}, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'setting':<28}{'it/s':>9}{'vs plain torch':>16}   all rounds (it/s)")
    for label, row in rows.items():
        every = " ".join(f"{run['it_s']:.1f}" for run in runs[label])
        print(f"{label:<28}{row['it_s']:>9.1f}{row['it_s'] / plain:>15.2f}x   {every}")
    default = rows["mtldata, default (trial)"]
    print(f"default vs the faster fixed count: {default['it_s'] / best_fixed:.2f}x (target >= 1.0)")
    print(f"the default's own choice (median round): {'; '.join(default['log']) or '(not settled)'}")
    chosen = [
        next((w for w in " ".join(run["log"]).split() if w.isdigit()), "?")
        for run in runs["mtldata, default (trial)"]
    ]
    print(f"threads the default chose, round by round: {', '.join(chosen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
