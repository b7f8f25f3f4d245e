"""A tiny generated multi-task dataset whose tasks a small CNN learns within a couple of epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mtldata.convert.pipeline import ConvertSpec, convert

TASKS_TOML = """
num_labels = 5
[[task]]
name = "colour"
slice = "0:1"
kind = "softmax"
classes = 3
ignore_label = -1
[[task]]
name = "attrs"
slice = "1:3"
kind = "sigmoid"
loss_weight = 0.5
[[task]]
name = "level"
slice = "3:5"
kind = "euclidean"
loss_weight = 2.0
"""


def make_dataset(directory: Path, count: int = 48, size: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Write `count` PNGs and convert them; return (dataset directory, tasks.toml).

    colour: the dominant channel (every 7th sample ignored, -1); attrs: bright top half, bright left
    half; level: the mean brightness and the dominant channel's strength, in [0, 1].
    """
    rng = np.random.default_rng(seed)
    (directory / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        colour = int(rng.integers(0, 3))
        top, left = (int(v) for v in rng.integers(0, 2, 2))
        base = rng.uniform(40, 120)
        strength = rng.uniform(0.3, 1.0)
        img = np.full((size, size, 3), base) + rng.normal(0, 4, (size, size, 3))
        img[..., colour] += 120 * strength
        if top:
            img[: size // 2] += 50
        if left:
            img[:, : size // 2] += 50
        pixels = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(directory / "img" / f"{i:03d}.png")
        label = -1 if i % 7 == 3 else colour
        level = pixels.mean() / 255
        lines.append(f"img/{i:03d}.png {label} {top} {left} {level:.4f} {strength:.4f}")
    list_file = directory / "list.txt"
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dataset = directory / "ds"
    convert(ConvertSpec(list_file=list_file, output=dataset, workers=1))
    tasks = directory / "tasks.toml"
    tasks.write_text(TASKS_TOML, encoding="utf-8")
    return dataset, tasks
