"""Trunks for the tests: a MultiLeNet-like factory (`--trunk trunk_helpers:multilenet`) and a tiny one."""

from __future__ import annotations

from torch import nn


def multilenet() -> tuple[nn.Module, int]:
    """MultiLeNet's shared part (Sener & Koltun 2018): two 5x5 conv + max-pool + ReLU stages, a 50-d layer."""
    net = nn.Sequential(
        nn.Conv2d(3, 10, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(10, 20, 5),
        nn.Dropout2d(0.5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(50),
        nn.ReLU(),
    )
    return net, 50


def tiny_bn() -> tuple[nn.Module, int]:
    """Conv-BN-ReLU twice, for freezing tests: named children 0..5."""
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
    )
    return net, 6


# ---------------------------------------------------------------------------------------------------
# Runs shared by the Caffe and torchvision trunk tests: transfer choices, resume, DDP


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Notes:
    """A Reporter that keeps the run's messages."""

    def __init__(self) -> None:
        from mtldata.train import Reporter

        self.reporter = type("Keep", (Reporter,), {"message": lambda _, text: self.lines.append(text)})()
        self.lines: list[str] = []


def trunk_start(cfg):
    """The model's weights before training (its --pretrained/--init weights loaded), as training builds it."""
    from mtldata.loader.dataset import open_dataset
    from mtldata.tasks import load_tasks
    from mtldata.train.models import build_model

    ds = open_dataset(cfg.dataset, output="uint8")
    shape = tuple(ds[0][0].shape)
    ds.close()
    tasks = load_tasks(cfg.tasks, num_labels=5)
    import torch

    torch.manual_seed(cfg.seed)  # as the loop does: the same random weights where no file gives them
    model = build_model(cfg, tasks, shape, load_weights=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed(before, after, prefix: str) -> dict[str, bool]:
    """{name: whether it moved} for the float tensors under `prefix`."""
    return {
        k: not torch_equal(before[k], after[k])
        for k in before
        if k.startswith(prefix) and before[k].is_floating_point() and k in after
    }


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _ddp_rank(rank: int, world: int, ports: list[int], cfg_dict: dict, dump: str, runs: list[dict]) -> None:
    import os
    from pathlib import Path

    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from mtldata.errors import MtlDataError
    from mtldata.train import TrainConfig, train

    for i, changes in enumerate(runs):
        # A port per run: on one port, a rank that finished run i first could join run i+1 through
        # rank 0's store of run i before rank 0 has torn it down, and the two ranks would then wait
        # for each other in different groups.
        os.environ["MASTER_PORT"] = str(ports[i])
        changes = dict(changes)
        expect = changes.pop("_expect", None)  # the name of an MtlDataError this run should raise
        try:
            result = train(TrainConfig(**{**cfg_dict, **changes}))
        except MtlDataError as exc:
            if type(exc).__name__ != expect:
                raise
            # read while the exception and its traceback are alive: train's teardown is done by now
            saved = {"error": f"{type(exc).__name__}: {exc}", "threads": _thread_names()}
        else:
            saved = {
                "error": None,
                "threads": _thread_names(),
                "model": result.model.state_dict(),
                "step": result.step,
            }
        torch.save(saved, Path(dump) / f"run{i}-rank{rank}.pt")


def _thread_names() -> list[str] | None:
    """The names of this process's threads (Linux: /proc), None where they cannot be listed."""
    import os

    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    names = []
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as fh:
                names.append(fh.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return names


def ddp_train(cfg_dict: dict, dump, runs: list[dict], world: int = 2) -> list[list[dict]]:
    """Train with `world` gloo processes, once per entry of `runs` (config changes, e.g. resume=True),
    each run a fresh process group; returns [run][rank] -> {"model", "step", "error", "threads"} (the
    rank's thread names once train returned, None off Linux). A run whose changes hold "_expect": the
    name of an MtlDataError, may raise it: "error" is then its text, and there is no model. A rank
    that dies (a signal at exit included) fails mp.spawn."""
    import torch
    import torch.multiprocessing as mp

    ports = [_free_port() for _ in runs]
    mp.spawn(_ddp_rank, args=(world, ports, cfg_dict, str(dump), runs), nprocs=world)
    return [[torch.load(dump / f"run{i}-rank{r}.pt") for r in range(world)] for i in range(len(runs))]


def wrong_size() -> tuple[nn.Module, int]:
    """A factory that gets its feature size wrong (50 made, 51 claimed)."""
    return multilenet()[0], 51
