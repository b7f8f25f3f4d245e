"""A real 2-process gloo job: each rank's share of the dataset is disjoint and together they cover it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import write_image, write_list
from torch.utils.data import DataLoader, DistributedSampler

from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.loader.dataset import MultiTaskDataset, ShardedSequentialSampler, collate_uint8, open_dataset

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seen(loader: DataLoader) -> list[int]:
    """The sample numbers a rank was fed (the dataset's label column 0 holds each sample's number)."""
    return [int(v) for _, targets in loader for v in targets["label"][:, 0].tolist()]


def _shares(ds: MultiTaskDataset) -> dict[str, list[int]]:
    """What this rank reads under each sampler."""
    runs = {}
    for layout in ("strided", "contiguous"):
        for drop_last in (False, True):
            sampler = ShardedSequentialSampler(ds, layout=layout, drop_last=drop_last)  # from the group
            loader = DataLoader(ds, batch_size=3, sampler=sampler, collate_fn=collate_uint8)
            runs[f"{layout}/{'drop' if drop_last else 'pad'}"] = _seen(loader)
    sampler = DistributedSampler(ds, shuffle=True, seed=5)
    sampler.set_epoch(1)
    # Workers forked from the rank, as under torchrun (a spawned rank would otherwise spawn them too).
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, multiprocessing_context="fork")
    runs["distributed_sampler"] = _seen(loader)
    return runs


def _rank_main(rank: int, port: int, datasets: list[str], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = [_shares(open_dataset(path, output="uint8")) for path in datasets]
        gathered: list[list[dict[str, list[int]]] | None] = [None] * WORLD
        dist.all_gather_object(gathered, results)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered), encoding="utf-8")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def check_shares(ranks: list[dict[str, list[int]]], n: int) -> None:
    everything = set(range(n))
    per = -(-n // WORLD)
    for name in ("strided/drop", "contiguous/drop"):  # disjoint; only the uneven tail is dropped
        shares = [set(r[name]) for r in ranks]
        assert not shares[0] & shares[1]
        assert shares[0] | shares[1] == set(range(n - n % WORLD))
    for name in ("strided/pad", "contiguous/pad", "distributed_sampler"):
        seen = [s for r in ranks for s in r[name]]
        assert all(len(r[name]) == per for r in ranks)
        assert set(seen) == everything  # together they cover the dataset
        # disjoint when it splits evenly; else one padding sample, as DistributedSampler pads
        assert len(seen) == n + (n % WORLD)
    # order kept: strided is Caffe's multi-GPU order, contiguous one block each, both in key order
    assert ranks[0]["strided/pad"] == [i % n for i in range(0, 2 * per, 2)]
    assert ranks[1]["strided/pad"] == [i % n for i in range(1, 2 * per, 2)]
    assert ranks[0]["contiguous/pad"] + ranks[1]["contiguous/pad"] == [i % n for i in range(2 * per)]
    shuffled = ranks[0]["distributed_sampler"] + ranks[1]["distributed_sampler"]
    assert shuffled != sorted(shuffled)


def test_two_gloo_ranks_see_disjoint_covering_shares(tmp_path):
    sizes = (12, 13)  # an even and an uneven split in one job (process start-up is the slow part)
    for i in range(max(sizes)):
        write_image(tmp_path / f"{i:02d}.png", size=(8, 6), seed=i)
    datasets = []
    for n in sizes:
        lines = [f"{i:02d}.png {i} {i % 2}" for i in range(n)]
        out = tmp_path / f"ds{n}"
        convert(ConvertSpec(list_file=write_list(tmp_path / f"list{n}.txt", lines), output=out, workers=1))
        datasets.append(str(out))
    seen_file = tmp_path / "seen.json"
    mp.spawn(_rank_main, args=(_free_port(), datasets, str(seen_file)), nprocs=WORLD, join=True)
    gathered = json.loads(seen_file.read_text(encoding="utf-8"))
    for k, n in enumerate(sizes):
        check_shares([rank_results[k] for rank_results in gathered], n)
