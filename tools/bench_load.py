"""Loading throughput of `mtldata.open_dataset` + DataLoader against bare baselines, in one run.

Makes N photo-like JPEGs, converts them to a raw and an encoded LMDB (and HDF5 when that backend is
installed) with mtldata's converter, then measures samples/s of:

* open_dataset(output="uint8") + DataLoader(batch 256, collate_uint8) with 0 and 2 workers, and with
  2 workers also MultiTaskCollate(reuse_shared_memory=True) (workers refill released batch memory);
* (a) a bare lmdb cursor copying each raw Datum's pixels into a batch array with numpy;
* (b) an ImageFolder-style dataset opening each JPEG with PIL, same DataLoader settings;
* (c) a bare decode loop (simplejpeg when installed, else PIL) over the encoded bytes, in memory;
* (d) a bare h5py loop reading each sample's row of the HDF5 shards into a uint8 batch array.

Targets: raw LMDB >= 0.5x the bare cursor, encoded >= 0.8x the bare decode loop, per worker
(with 2 workers the rate is divided by 2 before comparing).

Then, per sample in one process (what a user's own Dataset wrapper gets from `ds[i]`), side by side
with (e) a plain Pillow per-sample loader over the same files: the 256 px JPEGs (encoded and raw
LMDB), and small gray PNGs like MultiMNIST's 28 px digits (encoded LMDB). Target: ds[i] >= 1x (e).

    python tools/bench_load.py                 # about 5 min on 2 cores
    python tools/bench_load.py --quick         # a few seconds: smoke test
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from mtldata.caffe.datum import data_field_span, parse_datum
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.loader.dataset import MultiTaskCollate, collate_uint8, open_dataset
from mtldata.storage.image import ImageOptions
from mtldata.tasks import TaskSet, TaskSpec

TASKS = TaskSet(
    (
        TaskSpec("cls", slice(0, 1), "softmax", classes=3),
        TaskSpec("attr", slice(1, 4), "sigmoid"),
        TaskSpec("reg", slice(4, 5), "euclidean"),
    ),
    num_labels=5,
)


# --------------------------------------------------------------------------------------------------
# Data


def photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """An RGB uint8 image with smooth gradients, a few shapes and sensor-like noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    for c in range(3):
        a, b, d = rng.uniform(-120, 120, 3)
        img[..., c] = 128 + a * x + b * y + d * np.sin(rng.uniform(2, 9) * x + rng.uniform(0, 6) * y)
    for _ in range(rng.integers(2, 6)):  # discs and boxes with their own colour
        cx, cy, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
        mask = (
            (x - cx) ** 2 + (y - cy) ** 2 < r * r
            if rng.random() < 0.5
            else ((abs(x - cx) < r) & (abs(y - cy) < r * rng.uniform(0.3, 1)))
        )
        img[mask] = img[mask] * 0.3 + rng.uniform(0, 255, 3) * 0.7
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_images(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """Write n JPEGs and a 5-label list file (cls, attr x3, reg) under root; return the list path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rel = f"images/{i:06d}.jpg"
        path = root / rel
        if not path.exists():
            Image.fromarray(photo_like(rng, size)).save(path, quality=90)
        labels = [i % 3, i % 2, (i // 2) % 2, (i // 3) % 2, round(0.01 * (i % 100), 2)]
        lines.append(rel + " " + " ".join(f"{v:g}" for v in labels))
    list_file = root / "list.txt"
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list_file


def build(root: Path, list_file: Path) -> dict[str, Path]:
    """Convert the list raw and encoded (and to HDF5 if that backend exists); reuse earlier outputs."""
    from mtldata.storage.backends import WRITERS, _load_builtin_backends

    _load_builtin_backends()
    outputs = {"raw": (ImageOptions(), "lmdb"), "encoded": (ImageOptions(encoded=True), "lmdb")}
    try:
        import mtldata.storage.backends.hdf5  # noqa: F401  (registers the writer when it exists)
    except ImportError:
        pass
    if "hdf5" in WRITERS:
        outputs["hdf5"] = (ImageOptions(), "hdf5")
    made = {}
    for name, (options, backend) in outputs.items():
        out = root / f"ds_{name}"
        if not (out / "manifest.json").is_file():
            spec = ConvertSpec(
                list_file=list_file, output=out, image=options, backend=backend, workers=2, overwrite=True
            )
            convert(spec)
        made[name] = out
    return made


# --------------------------------------------------------------------------------------------------
# Baselines


class BareCursor:
    """(a): iterate the cursor, copy each record's pixels into a (batch, C, H, W) array: one array
    reused throughout, or (`fresh`) a new one per batch, as a loader that hands batches out must.

    The environment stays open between passes, as a persistent DataLoader worker keeps its own. It
    opens a copy of the LMDB (`cursor_copy`; py-lmdb opens an environment only once per process,
    and the 0-worker loaders hold theirs), so both sides read from the page cache.
    """

    def __init__(self, copy: Path, batch: int, shape: tuple[int, int, int]) -> None:
        self.env = lmdb.open(str(copy), readonly=True, lock=False, readahead=False)
        self.batch, self.shape = batch, shape
        self.out = np.empty((batch, *shape), np.uint8)

    def __call__(self, fresh: bool) -> int:
        count = int(np.prod(self.shape))
        out, batch, shape = self.out, self.batch, self.shape
        n = 0
        with self.env.begin(buffers=False) as txn:
            offset = None
            for j, (_, value) in enumerate(txn.cursor()):
                if offset is None:
                    offset = data_field_span(value)[1]  # where the pixels start
                if fresh and j % batch == 0:
                    out = np.empty((batch, *shape), np.uint8)
                out[j % batch] = np.frombuffer(value, np.uint8, count=count, offset=offset).reshape(shape)
                n += 1
        return n


def cursor_copy(images_lmdb: Path) -> Path:
    """The copy of `images_lmdb` that BareCursor opens, made (once, before any baseline process
    forks: each opening it must find it whole) unless it is there already."""
    copy = images_lmdb.parent.parent / "bare_cursor_copy.lmdb"
    if (
        not (copy / "data.mdb").is_file()
        or (copy / "data.mdb").stat().st_size != (images_lmdb / "data.mdb").stat().st_size
    ):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(images_lmdb, copy)
    return copy


def encoded_bytes(images_lmdb: Path) -> list[bytes]:
    env = lmdb.open(str(images_lmdb), readonly=True, lock=False)
    with env.begin() as txn:
        data = [parse_datum(v).data for _, v in txn.cursor()]
    env.close()
    return data


def jpeg_decoder() -> tuple[str, Callable[[bytes], np.ndarray]]:
    """simplejpeg when installed, else PIL; both give HxWx3 BGR."""
    try:
        import simplejpeg
    except ImportError:

        def decode_pil(b: bytes) -> np.ndarray:
            with Image.open(io.BytesIO(b)) as im:
                return np.asarray(im.convert("RGB"))[:, :, ::-1]

        return "PIL", decode_pil

    def decode_simplejpeg(b: bytes) -> np.ndarray:
        return simplejpeg.decode_jpeg(b, colorspace="BGR", fastdct=False, fastupsample=False)

    return "simplejpeg", decode_simplejpeg


def bare_decode(blobs: list[bytes], out: np.ndarray, fresh: bool) -> int:
    """(c): decode every encoded image (HxWx3 BGR) and copy it into the (batch, H, W, C) array `out`
    (or, `fresh`, a new one per batch), nothing else."""
    decode = jpeg_decoder()[1]
    for j, b in enumerate(blobs):
        if fresh and j % len(out) == 0:
            out = np.empty_like(out)
        out[j % len(out)] = decode(b)
    return len(blobs)


class BareH5:
    """(d): what a hand-written HDF5 loop does: h5py reads each sample's row of `data` (float32
    pixels, as mtldata and Caffe's HDF5Data store them) and casts it into a uint8 batch array."""

    def __init__(self, files: list[Path], batch: int, shape: tuple[int, int, int]) -> None:
        import h5py

        self.files = [h5py.File(f, "r") for f in files]
        self.out = np.empty((batch, *shape), np.uint8)

    def __call__(self, fresh: bool) -> int:
        out, n = self.out, 0
        for f in self.files:
            data = f["data"]
            for row in range(data.shape[0]):
                if fresh and n % len(out) == 0:
                    out = np.empty_like(out)
                out[n % len(out)] = data[row]
                n += 1
        return n


class InProcesses:
    """A baseline run in `k` forked processes at once, each over all the data, as DataLoader workers
    share the machine; a run returns the samples of all of them. The processes stay up between
    runs (like persistent workers) and build their baseline themselves, before the parent opens
    any LMDB environment (py-lmdb opens one only once per process, and a child inherits that)."""

    def __init__(self, make: Callable[[], Callable[[bool], int]], k: int) -> None:
        context = multiprocessing.get_context("fork")
        self.conns = []
        for _ in range(k):
            ours, theirs = context.Pipe()
            context.Process(target=_serve_baseline, args=(theirs, make), daemon=True).start()
            self.conns.append(ours)

    def __call__(self, fresh: bool) -> int:
        for conn in self.conns:
            conn.send(fresh)
        return sum(conn.recv() for conn in self.conns)

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)


def _serve_baseline(conn: Any, make: Callable[[], Callable[[bool], int]]) -> None:
    run = make()
    while (fresh := conn.recv()) is not None:
        conn.send(run(fresh))


class ImageFolderStyle(Dataset):
    """(b): what torchvision's ImageFolder does per sample: open the file with PIL, make a tensor."""

    def __init__(self, root: Path, list_file: Path) -> None:
        self.items = []
        for line in list_file.read_text(encoding="utf-8").splitlines():
            path, *labels = line.split()
            self.items.append((str(root / path), float(labels[0])))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.items[i]
        with Image.open(path) as im:
            pixels = np.array(im.convert("RGB"))  # writable, as ImageFolder's to_tensor gets
        return torch.from_numpy(pixels).permute(2, 0, 1), torch.tensor(label)


class PillowPerSample(Dataset):
    """(e): a plain per-sample loader: open the file with Pillow, make a tensor and a label tensor."""

    def __init__(self, root: Path, list_file: Path, mode: str) -> None:
        self.items = []
        for line in list_file.read_text(encoding="utf-8").splitlines():
            path, *labels = line.split()
            self.items.append((str(root / path), [float(v) for v in labels]))
        self.mode = mode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, labels = self.items[i]
        with Image.open(path) as im:
            pixels = torch.from_numpy(np.array(im.convert(self.mode)))
        return pixels, torch.tensor(labels, dtype=torch.float32)


def make_digits(root: Path, n: int, size: int = 28, seed: int = 0) -> Path:
    """n small gray PNGs (a bright stroke on noise, like MultiMNIST's digits) and their list."""
    rng = np.random.default_rng(seed)
    (root / "digits").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rel = f"digits/{i:06d}.png"
        if not (root / rel).exists():
            img = rng.integers(0, 40, (size, size)).astype(np.uint8)
            r, c = rng.integers(2, size // 2, 2)
            img[r : r + size // 3, c : c + 3] = 255
            img[r : r + 3, c : c + size // 3] = 230
            Image.fromarray(img, "L").save(root / rel)
        lines.append(f"{rel} {i % 10} {(i // 10) % 10}")
    list_file = root / "digits.txt"
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list_file


def per_sample_rates(runs: dict[str, Dataset], repeat: int) -> dict[str, tuple[float, float]]:
    """Best samples/s (wall) and per CPU-second of reading every index of each dataset with [i],
    interleaved over `repeat` rounds after a warm-up."""
    best = {name: (0.0, 0.0) for name in runs}
    for round_ in range(repeat + 1):
        for name, ds in runs.items():
            n = len(ds)
            cpu, start = time.process_time(), time.perf_counter()
            for i in range(n):
                ds[i]
            wall, used = time.perf_counter() - start, time.process_time() - cpu
            if round_:
                best[name] = (max(best[name][0], n / wall), max(best[name][1], n / max(used, 1e-9)))
    return best


def per_sample_table(root: Path, list_file: Path, datasets: dict[str, Path], n: int, repeat: int) -> bool:
    """The ds[i] rows against (e); True when every ratio meets 1x."""
    digits_list = make_digits(root, n)
    digits = root / "ds_digits"
    if not (digits / "manifest.json").is_file():
        convert(
            ConvertSpec(
                list_file=digits_list,
                output=digits,
                image=ImageOptions(encoded=True, gray=True),
                workers=2,
                overwrite=True,
            )
        )
    groups = {
        "256 px JPEG": (
            PillowPerSample(root, list_file, "RGB"),
            {
                "ds[i], encoded LMDB": open_dataset(datasets["encoded"], tasks=TASKS, output="uint8"),
                "ds[i], raw LMDB": open_dataset(datasets["raw"], tasks=TASKS, output="uint8"),
            },
        ),
        "28 px gray PNG": (
            PillowPerSample(root, digits_list, "L"),
            {"ds[i], encoded LMDB": open_dataset(digits, output="uint8")},
        ),
    }
    runs: dict[str, Dataset] = {}
    for group, (pillow, ours) in groups.items():
        runs[f"{group}: (e) Pillow per-sample loader"] = pillow
        runs.update({f"{group}: {name}": ds for name, ds in ours.items()})
    rates = per_sample_rates(runs, repeat)
    print()
    print(f"per sample, one process (ds[i] as a user's own Dataset calls it), best of {repeat} rounds")
    width = max(len(name) for name in rates)
    header = f"{'loader':<{width}} {'samples/s':>10} {'per CPU-s':>10}  {'ratio':>5} {'CPU ratio':>9}  target"
    print(header)
    print("-" * len(header))
    all_met = True
    for group, (_, ours) in groups.items():
        base_wall, base_cpu = rates[f"{group}: (e) Pillow per-sample loader"]
        print(f"{group + ': (e) Pillow per-sample loader':<{width}} {base_wall:>10,.0f} {base_cpu:>10,.0f}")
        for name in ours:
            wall, cpu = rates[f"{group}: {name}"]
            met = wall / base_wall >= 1.0
            all_met &= met
            verdict = (
                "met" if met else ("NOT met, met per CPU-second" if cpu / base_cpu >= 1.0 else "NOT met")
            )
            print(
                f"{group + ': ' + name:<{width}} {wall:>10,.0f} {cpu:>10,.0f}  {wall / base_wall:>5.2f} "
                f"{cpu / base_cpu:>9.2f}  {verdict} (>= 1.0)"
            )
    return all_met


# --------------------------------------------------------------------------------------------------
# Timing


def cpu_seconds() -> float | None:
    """CPU time used so far by this process and its live children (DataLoader workers), or None
    where /proc is missing. Interleaved runs leave the other loaders' workers idle, so a run's
    difference is its own work, whatever other processes on the machine are doing."""
    total = time.process_time()
    try:
        tick = os.sysconf("SC_CLK_TCK")
        children: set[str] = set()
        for task in Path("/proc/self/task").iterdir():
            children.update((task / "children").read_text().split())
        for pid in children:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    except (OSError, ValueError):
        return None
    return total


def best_rates(runs: dict[str, Callable[[], int]], repeat: int) -> dict[str, tuple[float, float | None]]:
    """Best samples/s (wall clock) and best samples per CPU-second of each run over `repeat` rounds,
    after one untimed warm-up round (page cache, worker start-up). The rounds interleave the runs,
    so a burst of load from other processes hits them all alike instead of one measurement."""
    for run in runs.values():
        run()
    wall = dict.fromkeys(runs, 0.0)
    cpu: dict[str, float | None] = dict.fromkeys(runs, 0.0)
    for _ in range(repeat):
        for name, run in runs.items():
            cpu0, start = cpu_seconds(), time.perf_counter()
            n = run()
            elapsed, cpu1 = time.perf_counter() - start, cpu_seconds()
            wall[name] = max(wall[name], n / elapsed)
            if cpu0 is None or cpu1 is None or cpu[name] is None:
                cpu[name] = None
            else:
                cpu[name] = max(cpu[name], n / max(cpu1 - cpu0, 1e-9))
    return {name: (wall[name], cpu[name]) for name in runs}


class Passes(Sampler[int]):
    """Indices 0..n-1, `passes` times over: one DataLoader epoch that reads the data `passes` times,
    so the workers' start-up and the drain at the epoch's end weigh as little as in a long epoch."""

    def __init__(self, n: int, passes: int) -> None:
        self.n, self.passes = n, passes

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.passes):
            yield from range(self.n)

    def __len__(self) -> int:
        return self.n * self.passes


def loader_run(
    dataset: Dataset, batch: int, workers: int, collate: Callable | None, passes: int, prefetch: int
) -> Callable[[], int]:
    """A DataLoader (persistent workers, `prefetch` batches in flight per worker) over `dataset` read
    `passes` times in one epoch; a run returns the samples seen."""
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=Passes(len(dataset), passes),
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers else None,
    )

    def run() -> int:
        n = 0
        for images, _ in loader:
            n += images.shape[0]
        return n

    return run


def repeated(run: Callable[[], int], passes: int) -> Callable[[], int]:
    """`run` made `passes` times in a row, as one run."""
    return lambda: sum(run() for _ in range(passes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work directory (kept; reused when it holds the data)")
    parser.add_argument("-n", "--num-images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (the best of each kept)")
    parser.add_argument("--passes", type=int, default=4, help="passes over the data per timed run")
    parser.add_argument(
        "--prefetch", type=int, default=4, help="DataLoader prefetch_factor (batches in flight per worker)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (a few seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_images, args.size, args.batch_size, args.repeat, args.passes = 48, 64, 16, 1, 1
    workers = [int(w) for w in args.workers.split(",")]
    torch.set_num_threads(1)  # as in a DataLoader worker; keeps the comparison per core

    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        list_file = make_images(root, args.num_images, args.size)
        datasets = build(root, list_file)
        setup = time.perf_counter() - started
        shape = (3, args.size, args.size)
        b, rep, passes = args.batch_size, args.repeat, args.passes
        cursor_lmdb = cursor_copy(datasets["raw"] / "images.lmdb")
        blobs = encoded_bytes(datasets["encoded"] / "images.lmdb")
        decoder = jpeg_decoder()[0]

        baselines = {
            "raw": "(a) bare cursor",
            "encoded": f"(c) bare {decoder} decode",
            "hdf5": "(d) bare h5py rows",
        }
        targets = {"raw": 0.5, "encoded": 0.8}
        h5_files = sorted(datasets["hdf5"].glob("*.h5")) if "hdf5" in datasets else []
        k = max(workers)
        together = {  # the same baselines in k processes at once, forked before the parent opens any
            "(a) bare cursor": InProcesses(lambda: BareCursor(cursor_lmdb, b, shape), k),
            f"(c) bare {decoder} decode": InProcesses(
                lambda: lambda f: bare_decode(blobs, np.empty((b, args.size, args.size, 3), np.uint8), f), k
            ),
        }
        if h5_files:
            together["(d) bare h5py rows"] = InProcesses(lambda: BareH5(h5_files, b, shape), k)
        cursor = BareCursor(cursor_lmdb, b, shape)
        decoded = np.empty((b, args.size, args.size, 3), np.uint8)
        runs: dict[str, Callable[[], int]] = {}
        # name -> (workers, baseline name, target)
        meta: dict[str, tuple[int, str | None, float | None]] = {}
        h5 = BareH5(h5_files, b, shape) if h5_files else None
        for fresh, tag in ((False, "one reused batch array"), (True, "a new batch array each batch")):
            runs[f"(a) bare cursor, {tag}"] = repeated(lambda f=fresh: cursor(f), passes)
            runs[f"(c) bare {decoder} decode, {tag}"] = repeated(
                lambda f=fresh: bare_decode(blobs, decoded, f), passes
            )
            if h5 is not None:
                runs[f"(d) bare h5py rows, {tag}"] = repeated(lambda f=fresh: h5(f), passes)
        if k > 1:
            for base, pool in together.items():
                name = f"{base}, {k} processes at once"
                runs[name] = repeated(lambda p=pool: p(False), passes)
                meta[name] = (k, None, None)
        for w in workers:
            name = f"(b) ImageFolder-style (PIL), {w} workers"
            runs[name] = loader_run(ImageFolderStyle(root, list_file), b, w, None, passes, args.prefetch)
            meta[name] = (w, None, None)
        pooled = MultiTaskCollate(reuse_shared_memory=True)
        for kind, path in datasets.items():
            for w in workers:
                for collate, tag in ((collate_uint8, ""), (pooled, ", reused shm")):
                    if w == 0 and collate is pooled:
                        continue  # no shared memory without workers
                    name = f"open_dataset {kind}, {w} workers{tag}"
                    ds = open_dataset(path, tasks=TASKS, output="uint8")
                    runs[name] = loader_run(ds, b, w, collate, passes, args.prefetch)
                    ds.close()
                    meta[name] = (w, baselines[kind], targets.get(kind))
        rates = best_rates(runs, rep)

        print(
            f"bench_load: {args.num_images} JPEGs of {args.size}x{args.size}, batch {b}, best of {rep} "
            f"interleaved runs of {args.passes} passes after a warm-up, prefetch_factor {args.prefetch}, torch threads 1, {os.cpu_count()} cores (setup {setup:.1f} s)"
        )
        width = max(len(name) for name in rates)
        header = (
            f"{'loader':<{width}} {'samples/s':>10} {'per worker':>10} {'per CPU-s':>10} {'vs (b)':>6}  "
            f"{'ratio':>5} {'CPU ratio':>9}  target"
        )
        print(header)
        print("-" * len(header))
        all_met = True
        for name, (got, per_cpu) in rates.items():
            w, base, target = meta.get(name, (0, None, None))
            per_worker = got / max(w, 1)
            cpu_text = f"{per_cpu:>10,.0f}" if per_cpu is not None else f"{'-':>10}"
            folder = rates.get(f"(b) ImageFolder-style (PIL), {w} workers")
            versus = f"{got / folder[0]:>5.1f}x" if name.startswith("open_dataset") and folder else f"{'':>6}"
            line = f"{name:<{width}} {got:>10,.0f} {per_worker:>10,.0f} {cpu_text} {versus}"
            if base is not None:
                base_wall, base_cpu = rates[f"{base}, one reused batch array"]
                ratio = per_worker / base_wall
                cpu_ratio = per_cpu / base_cpu if per_cpu is not None and base_cpu else None
                line += (
                    f"  {ratio:>5.2f} {cpu_ratio:>9.2f}"
                    if cpu_ratio is not None
                    else f"  {ratio:>5.2f} {'-':>9}"
                )
                if target is not None:
                    met = ratio >= target
                    all_met &= met
                    line += f"  {'met' if met else 'NOT met'} (>= {target})"
                    if not met and cpu_ratio is not None and cpu_ratio >= target:
                        line += ", met per CPU-second"
            print(line)
        print(
            "vs (b): samples/s over the ImageFolder-style loader with as many workers; "
            "ratio: per-worker samples/s over the (a)/(c)/(d) baseline with one reused batch array "
            "(the targets: raw vs (a), encoded vs (c)); CPU ratio: the same per CPU-second of all the "
            "loader's processes, much less skewed by other load"
        )
        if k > 1:
            parts = []
            for kind, base in baselines.items():
                loader = rates.get(f"open_dataset {kind}, {k} workers")
                alone = rates.get(f"{base}, {k} processes at once")
                if loader and alone:
                    parts.append(f"{kind} {loader[0] / alone[0]:.2f}")
            print(
                f"with {k} workers, per-worker samples/s over the same baseline run in {k} processes at "
                f"once (what the machine gives {k} busy processes): " + ", ".join(parts)
            )
        all_met &= per_sample_table(root, list_file, datasets, args.num_images, rep)
        print("all targets met" if all_met else "some targets NOT met")
        for pool in together.values():
            pool.close()
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"load average at the end: {load} on {os.cpu_count()} cores (other processes skew the numbers)")
        if "hdf5" not in datasets:
            print("hdf5: skipped (no HDF5 backend installed)")
    return 0


def _has_simplejpeg() -> bool:
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
