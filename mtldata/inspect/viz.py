"""Pictures of datasets and runs: contact sheets (Pillow), label figures and training curves (matplotlib).

matplotlib is the optional extra `viz` and is imported only inside the functions that draw with it;
without it they raise MissingDependencyError saying how to install it. Contact sheets need Pillow only.

Training curves come from a run directory's `metrics.jsonl` (mtldata.train's loop appends to it):
one JSON object per line, one split's figures at a point of the run, for example

    {"epoch": 1, "step": 120, "split": "train", "loss": {"cls": 0.71, "attr": 0.52}, "total": 1.05,
     "metrics": {"cls": {"acc": 0.62}, "attr": {"f1": 0.4}}, "weights": {"cls": 1.0, "attr": 0.5},
     "lr": 0.01}

Every key is optional. `split` defaults to "train"; `loss` maps task -> loss (a bare number is taken
as the total); `total` is the weighted sum; `metrics` maps task -> metric -> value; `weights` maps
task -> the weight in use at that point; `lr` is the learning rate. The x axis is `step` when every
record has one, else `epoch` when every record has one, else the record's position. Values that are
not finite numbers are left out, and so are lines that are not JSON objects (a run still writing
may end mid-line).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtldata.errors import MissingDependencyError, MtlDataError
from mtldata.storage.backends import open_reader, read_manifest
from mtldata.storage.image import decode_bytes
from mtldata.storage.records import ImagePayload
from mtldata.tasks import TaskSet, load_tasks

if TYPE_CHECKING:
    from PIL import Image

    from mtldata.inspect.stats import DatasetStats

METRICS_NAME = "metrics.jsonl"
_PAD = 4  # pixels around and between contact-sheet tiles


def require_matplotlib() -> None:
    """Raise MissingDependencyError, with the install command, when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "plots need matplotlib, which is not installed: pip install 'mtldata[viz]' "
            "(or pip install matplotlib)"
        ) from None


# ---------------------------------------------------------------------------------------------------
# Contact sheets


@dataclass(frozen=True)
class SheetLayout:
    """Where each tile of a contact sheet is: `count` tiles in `rows` x `columns`, filled row by row.

    A tile is a `tile` x `tile` image box with `text_lines` lines of `line_height` pixels under it.
    """

    count: int
    columns: int
    rows: int
    tile: int
    text_lines: int
    line_height: int
    keys: tuple[str, ...]

    @property
    def tile_height(self) -> int:
        return self.tile + self.text_lines * self.line_height + 2

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the sheet in pixels."""
        return _PAD + self.columns * (self.tile + _PAD), _PAD + self.rows * (self.tile_height + _PAD)

    def image_box(self, i: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of tile i's image box."""
        if not 0 <= i < self.count:
            raise IndexError(f"tile {i} of {self.count}")
        x = _PAD + (i % self.columns) * (self.tile + _PAD)
        y = _PAD + (i // self.columns) * (self.tile_height + _PAD)
        return x, y, x + self.tile, y + self.tile


def contact_sheet(
    path: str | Path,
    n: int = 64,
    *,
    tasks: TaskSet | str | Path | None = None,
    labels: str | Path | None = None,
    columns: int | None = None,
    tile: int = 128,
    seed: int | None = None,
    max_lines: int = 6,
) -> tuple[Image.Image, SheetLayout]:
    """A sheet of `n` samples (the first ones, or a random pick with `seed`), labels under each.

    Labels are written per task when `tasks` is given (class names where the task has them), else
    per label column with the manifest's label names.
    """
    from PIL import Image, ImageDraw, ImageFont

    if n < 1 or tile < 8 or max_lines < 1:
        raise ValueError(f"need n >= 1, tile >= 8 and max_lines >= 1, got {n}, {tile}, {max_lines}")
    path = Path(path)
    manifest = read_manifest(path) if path.is_dir() and labels is None else None
    reader = open_reader(path, labels)
    try:
        total = len(reader)
        if total == 0:
            raise MtlDataError(f"{path}: the dataset holds no samples")
        n = min(n, total)
        if seed is None:
            indices = list(range(n))
        else:
            indices = sorted(np.random.default_rng(seed).choice(total, n, replace=False).tolist())
        samples = [reader.sample(i) for i in indices]
    finally:
        reader.close()
    k = len(samples[0].labels)
    names = list((manifest or {}).get("label_names") or [])
    if len(names) != k:
        names = [f"label_{j}" for j in range(k)]
    if tasks is not None and not isinstance(tasks, TaskSet):
        tasks = load_tasks(tasks, num_labels=k)
    texts = [[s.key, *_fit_lines(label_lines(s.labels, tasks, names), max_lines)] for s in samples]

    font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox("Ag|")
    columns = columns or math.ceil(math.sqrt(n))
    layout = SheetLayout(
        count=n,
        columns=min(columns, n),
        rows=math.ceil(n / min(columns, n)),
        tile=tile,
        text_lines=max(len(t) for t in texts),
        line_height=bottom + 2,
        keys=tuple(s.key for s in samples),
    )
    sheet = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(sheet)
    for i, (sample, lines) in enumerate(zip(samples, texts, strict=True)):
        x0, y0, x1, y1 = layout.image_box(i)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(128, 128, 128))
        thumb = _display_image(sample.image)
        thumb.thumbnail((tile, tile))  # keeps the aspect ratio; never enlarges
        sheet.paste(thumb, (x0 + (tile - thumb.width) // 2, y0 + (tile - thumb.height) // 2))
        for j, line in enumerate(lines):
            colour = (110, 110, 110) if j == 0 else (0, 0, 0)  # the key in grey, the labels in black
            draw.text((x0, y1 + 1 + j * layout.line_height), _clip(line, font, tile), fill=colour, font=font)
    return sheet, layout


def save_contact_sheet(path: str | Path, out: str | Path, n: int = 64, **options: Any) -> SheetLayout:
    """Write `contact_sheet(path, n, **options)` to the image file `out` (format from its suffix)."""
    sheet, layout = contact_sheet(path, n, **options)
    # A PNG preview at zlib level 1: a 64-tile sheet saved in 0.2 s instead of 0.8 s (level 6),
    # a few percent larger. Other formats ignore the option.
    try:
        sheet.save(out, compress_level=1)
    except ValueError as exc:  # Pillow: an unknown file extension
        raise MtlDataError(f"{out}: {exc}") from None
    return layout


def label_lines(values: np.ndarray, tasks: TaskSet | None, names: Sequence[str]) -> list[str]:
    """One line per task (`name: value`), or per label column without tasks."""
    if tasks is None:
        return [f"{name}: {float(v):g}" for name, v in zip(names, values, strict=True)]
    lines = []
    for task in tasks:
        block = values[task.columns]
        col_names = task.label_names or tuple(names[task.start : task.stop])
        if task.kind == "softmax":
            v = float(block[0])
            if task.ignore_label is not None and v == task.ignore_label:
                text = "ignored"
            elif task.class_names and v.is_integer() and 0 <= v < task.classes:
                text = task.class_names[int(v)]
            else:
                text = f"{v:g}"
        elif task.kind == "sigmoid" and task.width > 1:
            on = [n for n, v in zip(col_names, block, strict=True) if v == 1]
            ignored = sum(1 for v in block if task.ignore_label is not None and v == task.ignore_label)
            text = ", ".join(on) or "none"
            text += f" ({ignored} ignored)" if ignored else ""
        else:
            text = " ".join(f"{float(v):.3g}" for v in block)
        lines.append(f"{task.name}: {text}")
    return lines


def _fit_lines(lines: list[str], max_lines: int) -> list[str]:
    if len(lines) <= max_lines:
        return lines
    return [*lines[: max_lines - 1], f"+{len(lines) - max_lines + 1} more"]


def _clip(text: str, font: Any, width: int) -> str:
    """`text`, cut and ended with '...' when it is wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _display_image(payload: ImagePayload) -> Image.Image:
    """An RGB (or L) Pillow image of a stored sample: stored BGR is turned back into RGB."""
    from PIL import Image

    data = payload.data
    if payload.format == "float32" and not isinstance(data, np.ndarray):  # HDF5 float inputs
        data = np.frombuffer(data, np.float32)
    if isinstance(data, np.ndarray):  # a reader holding arrays (HDF5), possibly float
        hwc = data.reshape(payload.shape).transpose(1, 2, 0)
        if hwc.dtype != np.uint8:
            # stretched to 0..255 for display; NaN and inf show as black
            finite = np.where(np.isfinite(hwc), hwc, np.nan).astype(np.float64)
            lo, hi = (
                (float(np.nanmin(finite)), float(np.nanmax(finite))) if np.isfinite(finite).any() else (0, 1)
            )
            scaled = (np.nan_to_num(finite, nan=lo) - lo) * (255.0 / (hi - lo if hi > lo else 1.0))
            hwc = np.clip(scaled, 0, 255).astype(np.uint8)
    elif payload.encoded:
        hwc = decode_bytes(data)
    else:
        hwc = np.frombuffer(data, np.uint8).reshape(payload.shape).transpose(1, 2, 0)
    if hwc.shape[2] >= 3:
        return Image.fromarray(np.ascontiguousarray(hwc[:, :, 2::-1]), "RGB")
    return Image.fromarray(np.ascontiguousarray(hwc[:, :, 0]), "L")


# ---------------------------------------------------------------------------------------------------
# matplotlib figures


@dataclass(frozen=True)
class PlotLayout:
    """What a figure holds: its panel titles in reading order, the grid, its size in pixels."""

    panels: tuple[str, ...]
    rows: int
    columns: int
    size: tuple[int, int]
    notes: tuple[str, ...] = ()


def _figure(count: int, panel_size: tuple[float, float], dpi: int) -> tuple[Any, list[Any], int, int]:
    """A matplotlib Figure (no pyplot, so no global state) with `count` panels in up to 3 columns."""
    require_matplotlib()
    from matplotlib.figure import Figure

    columns = min(3, count)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count], rows, columns


def _save(fig: Any, out: str | Path, panels: Sequence[str], rows: int, columns: int, notes=()) -> PlotLayout:
    try:
        fig.savefig(out, dpi=fig.dpi)
    except ValueError as exc:  # matplotlib: a file format it cannot write
        raise MtlDataError(f"{out}: {exc}") from None
    width, height = fig.canvas.get_width_height()
    return PlotLayout(tuple(panels), rows, columns, (int(width), int(height)), tuple(notes))


def plot_stats(stats: DatasetStats, out: str | Path, *, dpi: int = 100) -> PlotLayout:
    """Draw `stats` (from mtldata.inspect.stats.dataset_stats) into `out`: one panel per task."""
    if not stats.tasks:
        raise MtlDataError(f"{stats.path}: no labels to plot")
    fig, axes, rows, columns = _figure(len(stats.tasks), (4.5, 3.4), dpi)
    for ax, task in zip(axes, stats.tasks, strict=True):
        cols = task.columns
        ax.set_title(f"{task.name} ({task.kind})", fontsize=10)
        if task.kind == "sigmoid":
            rates = [c.class_counts[1] / max(1, sum(c.class_counts)) for c in cols]
            ax.bar([c.name for c in cols], rates, color="C0")
            ax.set_ylim(0, 1)
            ax.set_ylabel("positive rate")
            ignored, missing = sum(c.ignored for c in cols), sum(c.missing for c in cols)
            if ignored or missing:
                ax.set_xlabel(f"ignored {ignored}, missing {missing}")
        elif cols[0].categorical:
            col = cols[0]
            extra = [("ignored", col.ignored)] if col.ignore_label is not None or col.ignored else []
            extra += [(label, n) for label, n in (("missing", col.missing), ("invalid", col.invalid)) if n]
            bars = ax.bar(list(col.classes), list(col.class_counts), color="C0")
            ax.bar_label(bars, fontsize=8)
            if extra:
                grey = ax.bar([label for label, _ in extra], [n for _, n in extra], color="0.7", hatch="//")
                ax.bar_label(grey, fontsize=8)
            ax.set_ylabel("samples")
        else:
            for c in cols:
                if c.bin_counts:
                    ax.stairs(c.bin_counts, c.bin_edges, label=c.name, fill=len(cols) == 1, alpha=0.8)
            if len(cols) > 1:
                ax.legend(fontsize=8)
            ax.set_ylabel("samples")
            missing = sum(c.missing for c in cols)
            if missing:
                ax.set_xlabel(f"missing {missing}")
        if (task.kind == "sigmoid" and len(cols) > 6) or len(cols[0].classes) > 6:
            ax.tick_params(axis="x", labelrotation=45)
    return _save(fig, out, [f"{t.name} ({t.kind})" for t in stats.tasks], rows, columns)


def read_metrics(source: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a metrics.jsonl (given or in a run directory) and the number of lines skipped."""
    path = Path(source)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.is_file():
        raise MtlDataError(f"{path}: no such file (a run directory holds {METRICS_NAME})")
    records, skipped = [], 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                record = None  # counted as skipped, like any line that is not a record
            if isinstance(record, dict):
                records.append(record)
            else:
                skipped += 1
    return records, skipped


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def collect_curves(records: Sequence[dict[str, Any]]) -> tuple[str, dict[str, dict[str, list[tuple]]]]:
    """The x-axis name and the curves to draw: panel title -> series label -> [(x, y), ...].

    Panels come in this order: total loss, each task's loss, each task's metrics, task weights,
    learning rate.
    """
    for axis in ("step", "epoch"):
        if records and all(_number(r.get(axis)) is not None for r in records):
            break
    else:
        axis = "record"
    total: dict[str, list[tuple]] = {}
    losses: dict[str, dict[str, list[tuple]]] = {}
    metrics: dict[str, dict[str, list[tuple]]] = {}
    weights: dict[str, list[tuple]] = {}
    rates: dict[str, list[tuple]] = {}

    def add(series: dict[str, list[tuple]], label: str, x: float, value: Any) -> None:
        if (y := _number(value)) is not None:
            series.setdefault(label, []).append((x, y))

    for position, record in enumerate(records):
        x = float(record[axis]) if axis != "record" else float(position)
        split = str(record.get("split") or "train")
        loss = record.get("loss")
        if isinstance(loss, dict):
            for task, value in loss.items():
                add(losses.setdefault(str(task), {}), split, x, value)
        else:
            add(total, split, x, loss)
        add(total, split, x, record.get("total"))
        task_metrics = record.get("metrics")
        for task, values in task_metrics.items() if isinstance(task_metrics, dict) else ():
            for name, value in values.items() if isinstance(values, dict) else ():
                add(metrics.setdefault(str(task), {}), f"{name} ({split})", x, value)
        task_weights = record.get("weights")
        for task, value in task_weights.items() if isinstance(task_weights, dict) else ():
            add(weights, str(task), x, value)
        add(rates, "lr", x, record.get("lr"))

    panels: dict[str, dict[str, list[tuple]]] = {}
    if total:
        panels["total loss"] = total
    panels.update({f"loss: {task}": series for task, series in losses.items() if series})
    panels.update({f"metrics: {task}": series for task, series in metrics.items() if series})
    if weights:
        panels["task weights"] = weights
    if rates:
        panels["learning rate"] = rates
    return axis, panels


def plot_curves(source: str | Path, out: str | Path, *, dpi: int = 100) -> PlotLayout:
    """Draw a run's metrics.jsonl into `out`: losses, metrics and task weights over time."""
    records, skipped = read_metrics(source)
    axis, panels = collect_curves(records)
    if not panels:
        raise MtlDataError(f"{source}: no losses, metrics or weights to plot in {len(records)} record(s)")
    fig, axes, rows, columns = _figure(len(panels), (4.5, 3.2), dpi)
    for ax, (title, series) in zip(axes, panels.items(), strict=True):
        for label, points in series.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=label, marker="o" if len(points) < 20 else None, markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(axis)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    notes = [f"skipped {skipped} line(s) that are not JSON objects"] if skipped else []
    return _save(fig, out, list(panels), rows, columns, notes)
