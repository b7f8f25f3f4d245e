"""A real 2-process DDP run on CPU (gloo): the ranks end identical and the run writes one set of files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from train_helpers import make_dataset

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, dataset: str, tasks: str, out: str, dump: str) -> None:
    # What torchrun sets for each process; train() then joins the gloo group itself.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    from mtldata.train import TrainConfig, train

    cfg = TrainConfig(
        dataset=dataset,
        tasks=tasks,
        epochs=2,
        batch_size=4,
        lr=0.05,
        width=4,
        num_workers=0,
        out_dir=out,
        weighting="gradnorm",
        val_split=0.25,
        device="cpu",
        seed=2,
    )
    result = train(cfg)
    torch.save(
        {
            "model": result.model.state_dict(),
            "weights": result.objective.state_dict(),
            "history": result.history,
        },
        Path(dump) / f"rank{rank}.pt",
    )


def test_two_gloo_ranks_end_with_identical_weights_and_task_weights(tmp_path):
    dataset, tasks = make_dataset(tmp_path / "data", count=24)
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    mp.spawn(_rank, args=(_free_port(), str(dataset), str(tasks), str(out), str(dump)), nprocs=WORLD)
    ranks = [torch.load(dump / f"rank{r}.pt") for r in range(WORLD)]
    a, b = ranks
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # BatchNorm statistics too
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert not torch.equal(a["weights"]["weighting.w"], torch.ones(3))  # GradNorm did move them

    def numbers(history):  # everything but the timings, which are each rank's own
        return [{k: v for k, v in r.items() if k not in ("seconds", "data_wait_share")} for r in history]

    assert numbers(a["history"]) == numbers(
        b["history"]
    )  # losses and validation metrics reduced across ranks
    assert sorted(p.name for p in out.iterdir()) == [
        ".mtldata-run",  # the marker of a folder a run made (rank 0 only)
        "best.pt",
        "config.toml",
        "last.pt",
        "metrics.jsonl",
        "tasks.toml",
    ]
    saved = torch.load(out / "last.pt", weights_only=True)
    assert all(torch.equal(saved["model"][k], a["model"][k]) for k in a["model"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2 * 2  # train + val, 2 epochs, once
