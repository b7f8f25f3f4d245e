"""A MultiMNIST-style check: two drawn digits overlaid (one up-left, one down-right), two softmax tasks.

    python docs/examples/multimnist.py OUT [--count 3000] [--epochs 4]

Draws the digits with Pillow's built-in font (random size, shift and stroke), converts the list with
mtldata, then trains `small`, the MultiLeNet factory in multilenet.py and the Caffe version of the same
net (multilenet.prototxt up to relu3) for --epochs, and prints each trunk's validation accuracies.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
TASKS = """num_labels = 2
[[task]]
name = "L"
slice = "0:1"
kind = "softmax"
classes = 10
[[task]]
name = "R"
slice = "1:2"
kind = "softmax"
classes = 10
"""


def digit(d: int, rng: np.random.Generator) -> np.ndarray:
    font = ImageFont.load_default(size=int(rng.integers(18, 24)))
    im = Image.new("L", (28, 28))
    ImageDraw.Draw(im).text(
        (7, 1), str(d), fill=255, font=font, stroke_width=int(rng.integers(0, 2)), stroke_fill=255
    )
    return np.asarray(im, dtype=np.float32)


def make(out: Path, count: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (out / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        left, right = (int(v) for v in rng.integers(0, 10, 2))
        canvas = np.zeros((36, 36), np.float32)
        a, b = rng.integers(0, 5, 2), rng.integers(4, 9, 2)
        canvas[a[0] : a[0] + 28, a[1] : a[1] + 28] = np.maximum(
            canvas[a[0] : a[0] + 28, a[1] : a[1] + 28], digit(left, rng)
        )
        canvas[b[0] : b[0] + 28, b[1] : b[1] + 28] = np.maximum(
            canvas[b[0] : b[0] + 28, b[1] : b[1] + 28], digit(right, rng)
        )
        Image.fromarray(canvas.astype(np.uint8)).resize((28, 28), Image.BILINEAR).convert("RGB").save(
            out / "img" / f"{i:05d}.png"
        )
        lines.append(f"img/{i:05d}.png {left} {right}")
    (out / "list.txt").write_text("\n".join(lines) + "\n")
    (out / "tasks.toml").write_text(TASKS)
    subprocess.run(["mtldata", "convert", str(out / "list.txt"), "-o", str(out / "ds"), "-q"], check=True)
    return out / "ds"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    ds = make(args.out, args.count)
    trunks = {
        "small": ["--trunk", "small", "--width", "16"],
        "multilenet": ["--trunk", "multilenet:multilenet", "--head-hidden", "50", "--head-dropout", "0.5"],
        "caffe": [
            "--trunk",
            f"caffe:{HERE / 'multilenet.prototxt'}:relu3",
            "--head-hidden",
            "50",
            "--head-dropout",
            "0.5",
        ],
    }
    for name, flags in trunks.items():
        started = time.perf_counter()
        cmd = [
            "mtldata",
            "train",
            str(ds),
            "--tasks",
            str(args.out / "tasks.toml"),
            "--val-split",
            "0.2",
            "--epochs",
            str(args.epochs),
            "-b",
            "64",
            "--optimizer",
            "adamw",
            "--lr",
            "0.003",
            "--weight-decay",
            "0.0001",
            "-j",
            "0",
            "-o",
            str(args.out / f"run-{name}"),
            "-q",
            *flags,
        ]
        done = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
        if done.returncode:
            print(name, "failed:", done.stderr.strip().splitlines()[-1:])
            continue
        last = [line for line in done.stdout.splitlines() if line.startswith(("L ", "R "))][-2:]
        acc = {line.split()[0]: line.split()[5] for line in last}
        print(
            f"{name:<11} L accuracy {acc.get('L')}  R accuracy {acc.get('R')}  ({time.perf_counter() - started:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
