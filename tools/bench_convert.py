"""Benchmark `mtldata convert` against a single-process baseline, side by side in one run.

Generates N photo-like 256x256 JPEGs, then converts the list (raw and --encoded) with mtldata
and with a plain loop (PIL decode -> Datum -> LMDB, one process), each in a fresh subprocess so
that peak RSS is measured per run. Peak RSS is also measured at a second, longer list (the same
images listed several times) to show that memory does not grow with the number of lines.

    python tools/bench_convert.py                 # 4,000 images, about three minutes on 2 cores
    python tools/bench_convert.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TARGET_SPEEDUP = 1.7


def make_corpus(directory: Path, count: int, size: int = 256, seed: int = 0) -> list[str]:
    """Photo-like JPEGs: smooth colour fields, shapes, blur and sensor noise (not flat colour)."""
    rng = np.random.default_rng(seed)
    (directory / "img").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    names = []
    for i in range(count):
        base = np.zeros((size, size, 3), np.float32)
        for c in range(3):
            a, b, f, p = (
                rng.uniform(-120, 120),
                rng.uniform(-120, 120),
                rng.uniform(1, 6),
                rng.uniform(0, 6.3),
            )
            base[..., c] = 128 + a * xx + b * yy + 40 * np.sin(f * (xx + yy) + p)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, size, 2)
            w, h = rng.integers(10, size // 2, 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(1.2))
        noisy = np.asarray(image, np.float32) + rng.normal(0, 5, (size, size, 3))
        name = f"img/{i:06d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(directory / name, quality=90)
        names.append(name)
    return names


def write_list(path: Path, names: list[str], repeat: int, k: int = 5) -> None:
    rng = np.random.default_rng(1)
    with open(path, "w") as fh:
        for _ in range(repeat):
            for name in names:
                labels = [int(rng.integers(0, 3))] + [int(v) for v in rng.integers(0, 2, k - 2)]
                labels.append(round(float(rng.random()), 3))
                fh.write(name + " " + " ".join(str(v) for v in labels) + "\n")


# Each measured run is its own process, so ru_maxrss is that run's peak (workers counted apart).
MTLDATA_RUN = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from mtldata.convert.pipeline import ConvertSpec, convert
    from mtldata.storage.image import ImageOptions
    list_file, out, encoded, workers = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
    start = time.perf_counter()
    result = convert(ConvertSpec(list_file=Path(list_file), output=Path(out), workers=workers,
                                 image=ImageOptions(encoded=encoded)))
    seconds = time.perf_counter() - start
    print(json.dumps({"count": result.count, "seconds": seconds,
                      "rss_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "rss_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
    """
)

# The baseline: what a careful one-process script does (PIL decode -> Datum -> LMDB, batched commits).
BASELINE_RUN = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    import lmdb, numpy as np
    from PIL import Image
    from mtldata.caffe.caffe_pb2 import Datum
    list_file, out, encoded = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
    root = Path(list_file).parent
    start = time.perf_counter()
    out.mkdir(parents=True)
    images = lmdb.open(str(out / "images"), map_size=1 << 34)
    labels = lmdb.open(str(out / "labels"), map_size=1 << 34)
    ti, tl = images.begin(write=True), labels.begin(write=True)
    n = 0
    for i, line in enumerate(open(list_file)):
        parts = line.split()
        path, values = parts[0], [float(v) for v in parts[1:]]
        raw = (root / path).read_bytes()
        with Image.open(root / path) as im:
            pixels = np.asarray(im.convert("RGB"))
        d = Datum(label=int(values[0]))
        if encoded:
            d.data, d.encoded = raw, True
        else:
            chw = np.ascontiguousarray(pixels[:, :, ::-1].transpose(2, 0, 1))
            d.channels, d.height, d.width = chw.shape
            d.data, d.encoded = chw.tobytes(), False
        key = f"{i:08d}_{path}".encode()
        ti.put(key, d.SerializeToString())
        ld = Datum(channels=len(values), height=1, width=1)
        ld.float_data.extend(values)
        tl.put(key, ld.SerializeToString())
        n += 1
        if n % 1000 == 0:
            ti.commit(); tl.commit()
            ti, tl = images.begin(write=True), labels.begin(write=True)
    ti.commit(); tl.commit()
    seconds = time.perf_counter() - start
    print(json.dumps({"count": n, "seconds": seconds,
                      "rss_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rss_child": 0}))
    """
)


def run(script: str, *args: object) -> dict:
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """The run with the median time (its RSS figures come along with it)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--images", type=int, default=4000, help="distinct JPEGs in the corpus")
    parser.add_argument("--workers", type=int, default=2, help="mtldata --workers")
    parser.add_argument("--repeat", type=int, default=2, help="the long list repeats the corpus this often")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each converter; the median counts")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeat, args.runs = 64, 2, 1
    work = args.dir or Path(tempfile.mkdtemp(prefix="mtldata-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        names = make_corpus(work, args.images)
        short, long_ = work / "list.txt", work / "list_long.txt"
        write_list(short, names, 1)
        write_list(long_, names, args.repeat)
        print(
            f"corpus: {len(names)} photo-like 256x256 JPEGs ({time.perf_counter() - started:.0f} s to make); "
            f"{os.cpu_count()} cores; mtldata workers={args.workers}"
        )
        rows = []
        for mode, encoded in (("raw", "0"), ("encoded", "1")):
            # Alternate the two a few times and keep the median: one short run is at the mercy of
            # whatever else the machine does in those seconds.
            base_runs, our_runs = [], []
            for r in range(args.runs):
                base_runs.append(run(BASELINE_RUN, short, work / f"base_{mode}_{r}", encoded))
                our_runs.append(run(MTLDATA_RUN, short, work / f"ours_{mode}_{r}", encoded, args.workers))
                shutil.rmtree(work / f"base_{mode}_{r}")
                shutil.rmtree(work / f"ours_{mode}_{r}")
            base, ours = median_run(base_runs), median_run(our_runs)
            assert ours["count"] == base["count"] == len(names), (ours, base)
            rows.append((mode, len(names) / base["seconds"], len(names) / ours["seconds"], base, ours))
        print()
        print(f"median of {args.runs} run(s) each")
        print(
            f"{'mode':<9}{'baseline img/s':>16}{'mtldata img/s':>15}{'ratio':>8}   target >= {TARGET_SPEEDUP}x"
        )
        for mode, b, o, _, _ in rows:
            verdict = "met" if o / b >= TARGET_SPEEDUP else "NOT met"
            print(f"{mode:<9}{b:>16.0f}{o:>15.0f}{o / b:>7.2f}x   {verdict}")
        long_ours = run(MTLDATA_RUN, long_, work / "ours_long", "0", args.workers)
        long_base = run(BASELINE_RUN, long_, work / "base_long", "0")
        short_ours, short_base = rows[0][4], rows[0][3]
        n_short, n_long = len(names), len(names) * args.repeat
        print()
        print("peak RSS (MiB), raw mode; mtldata main process / largest worker")
        print(f"{'lines':>8}{'baseline':>10}{'mtldata main':>14}{'worker':>9}")
        for n, b, o in ((n_short, short_base, short_ours), (n_long, long_base, long_ours)):
            print(
                f"{n:>8}{b['rss_main'] / 1024:>10.1f}{o['rss_main'] / 1024:>14.1f}{o['rss_child'] / 1024:>9.1f}"
            )
        growth = long_ours["rss_main"] / short_ours["rss_main"]
        print(
            f"mtldata main-process peak RSS grows {growth:.2f}x for {args.repeat}x the lines "
            f"({'flat' if growth < 1.15 else 'GROWS'})"
        )
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
