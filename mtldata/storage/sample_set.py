"""A small built-in multi-task sample set: real image files plus a list file, made on the spot.

Each image shows one shape on a background; the labels are learnable from the pixels:
shape class (0 circle, 1 square, 2 triangle), three binary attributes (red shape, bright
background, filled) and one regression target (the shape's size relative to the image).
With `missing`, that share of each task's labels (TASK_COLUMNS) is written as `nan`, image by image.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABEL_NAMES = ("shape", "red", "bright_bg", "filled", "size")
CLASS_NAMES = ("circle", "square", "triangle")
# The demo's tasks by label columns: shape (softmax), the attributes (sigmoid), size (euclidean).
TASK_COLUMNS = ((0, 1), (1, 4), (4, 5))


def _draw(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[float]]:
    shape = int(rng.integers(0, 3))
    red = int(rng.integers(0, 2))
    bright = int(rng.integers(0, 2))
    filled = int(rng.integers(0, 2))
    rel = float(np.round(rng.uniform(0.3, 0.8), 2))
    bg = tuple(int(v) for v in (rng.integers(170, 230, 3) if bright else rng.integers(20, 80, 3)))
    noise = rng.normal(0, 6, (size, size, 3))
    base = np.clip(np.asarray(bg, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(image)
    colour = (220, 30, 30) if red else (30, int(rng.integers(90, 200)), 220)
    r = rel * size / 2
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    fill = colour if filled else None
    width = max(1, size // 20)
    if shape == 0:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=colour, width=width)
    elif shape == 1:
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=colour, width=width)
    else:
        pts = [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        draw.polygon(pts, fill=fill, outline=colour, width=width)
    return image, [shape, red, bright, filled, rel]


def make_sample_set(
    directory: str | Path, count: int = 200, size: int = 64, seed: int = 0, missing: float = 0.0
) -> Path:
    """Write `count` JPEG images and `list.txt` (`path l1 .. l5`) into `directory`; return the list.

    `missing` in [0, 1): the share of images whose labels of a task are `nan`, drawn per task (the
    images are the same whatever `missing` is).
    """
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be in [0, 1), got {missing!r}")
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    drop = np.random.default_rng([seed, 1])  # its own stream, so the images do not depend on it
    absent = [set(drop.permutation(count)[: round(missing * count)].tolist()) for _ in TASK_COLUMNS]
    lines = [f"# mtldata demo set: {', '.join(LABEL_NAMES)}"]
    for i in range(count):
        image, labels = _draw(rng, size)
        rel_path = f"images/{i:05d}.jpg"
        image.save(directory / rel_path, quality=90)
        values: list[float] = list(labels)
        for (start, stop), gone in zip(TASK_COLUMNS, absent, strict=True):
            if i in gone:
                values[start:stop] = [math.nan] * (stop - start)
        lines.append(rel_path + " " + " ".join(f"{v:g}" for v in values))
    list_path = directory / "list.txt"
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list_path
