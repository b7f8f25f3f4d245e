"""Contact sheets, label figures and training curves, rendered to real PNG files and looked at."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mtldata.cli import main
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.errors import MissingDependencyError
from mtldata.inspect.stats import dataset_stats
from mtldata.inspect.viz import (
    collect_curves,
    contact_sheet,
    label_lines,
    plot_curves,
    plot_stats,
    save_contact_sheet,
)
from mtldata.tasks import load_tasks

TASKS = """
[[task]]
name = "cls"
slice = "0:1"
kind = "softmax"
classes = 3
ignore_label = -1
class_names = ["cat", "dog", "bird"]
[[task]]
name = "attrs"
slice = "1:3"
kind = "sigmoid"
label_names = ["striped", "spotted"]
[[task]]
name = "size"
slice = "3:4"
kind = "euclidean"
"""

# A run in which val records carry no weights, one record has no loss, and the last line is torn.
METRICS = [
    {"epoch": 1, "step": 10, "split": "train", "loss": {"cls": 1.2, "attrs": 0.7}, "total": 1.9,
     "metrics": {"cls": {"acc": 0.4}}, "weights": {"cls": 1.0, "attrs": 0.5}, "lr": 0.1},
    {"epoch": 1, "step": 20, "split": "train", "loss": {"cls": 0.9, "attrs": 0.6}, "total": 1.5,
     "weights": {"cls": 0.9, "attrs": 0.6}},
    {"epoch": 1, "step": 20, "split": "val", "loss": {"cls": 1.0, "attrs": "n/a"},
     "metrics": {"cls": {"acc": 0.5}, "attrs": {"f1": 0.3}}},
    {"epoch": 2, "step": 30, "split": "train", "total": 1.2, "weights": {"cls": 0.8, "attrs": 0.7}},
]  # fmt: skip


@pytest.fixture
def dataset(image_set, tmp_path):
    list_file, _ = image_set
    convert(
        ConvertSpec(list_file=list_file, output=tmp_path / "ds", workers=1, label_names=("a", "b", "c", "d"))
    )
    return tmp_path / "ds"


@pytest.fixture
def run_dir(tmp_path):
    lines = [json.dumps(r) for r in METRICS] + ['{"epoch": 2, "step": 40, "split": "tr']
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines), encoding="utf-8")
    return tmp_path / "run"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def not_blank(pixels: np.ndarray) -> bool:
    return float(np.asarray(pixels, dtype=np.float64).std()) > 10.0


def test_contact_sheet_geometry_and_tiles(dataset, image_set):
    sheet, layout = contact_sheet(dataset, 10, columns=4, tile=48)
    assert (layout.count, layout.columns, layout.rows) == (10, 4, 3)
    assert sheet.size == layout.size
    assert layout.keys[0] == "00000000_images/img00.jpg" and len(layout.keys) == 10
    pixels = np.asarray(sheet)
    for i in range(10):
        x0, y0, x1, y1 = layout.image_box(i)
        assert not_blank(pixels[y0:y1, x0:x1]), f"tile {i} is blank"
    # The two slots after the last tile stay white: exactly 10 tiles were drawn.
    x0, y0 = layout.image_box(9)[2], layout.image_box(9)[1]
    assert (pixels[y0:, x0 + 1 :] == 255).all()
    with pytest.raises(IndexError):
        layout.image_box(10)


def test_tiles_show_the_stored_pixels_in_rgb(dataset, image_set):
    list_file, rows = image_set
    sheet, layout = contact_sheet(dataset, 4, tile=48)
    original = np.asarray(Image.open(list_file.parent / rows[3][0]).convert("RGB"))  # a PNG: lossless
    h, w = original.shape[:2]
    x0, y0, _, _ = layout.image_box(3)
    left, top = x0 + (48 - w) // 2, y0 + (48 - h) // 2  # not enlarged, centred
    assert np.array_equal(np.asarray(sheet)[top : top + h, left : left + w], original)


def test_save_writes_a_png_of_the_layout_size(dataset, tmp_path):
    layout = save_contact_sheet(dataset, tmp_path / "grid.png", 64, tile=32)
    assert layout.count == 12  # all there is
    with Image.open(tmp_path / "grid.png") as im:
        assert im.format == "PNG" and im.size == layout.size
        assert not_blank(np.asarray(im))


def test_seed_picks_a_repeatable_random_subset(dataset):
    _, a = contact_sheet(dataset, 5, seed=3, tile=16)
    _, b = contact_sheet(dataset, 5, seed=3, tile=16)
    _, first = contact_sheet(dataset, 5, tile=16)
    assert a.keys == b.keys and a.keys != first.keys and list(a.keys) == sorted(a.keys)


def test_label_lines_use_tasks_and_class_names():
    tasks = load_tasks(TASKS, num_labels=4)
    names = ["a", "b", "c", "d"]
    assert label_lines(np.array([2, 1, 1, 0.5]), tasks, names) == [
        "cls: bird",
        "attrs: striped, spotted",
        "size: 0.5",
    ]
    assert label_lines(np.array([-1, 0, 0, 1.25]), tasks, names)[:2] == ["cls: ignored", "attrs: none"]
    assert label_lines(np.array([1, 0, 1, 3]), None, names) == ["a: 1", "b: 0", "c: 1", "d: 3"]


def test_many_labels_are_cut_to_max_lines(dataset):
    _, layout = contact_sheet(dataset, 2, max_lines=2, tile=16)
    assert layout.text_lines == 3  # the key, one label, "+3 more"


def test_cli_show_works_without_matplotlib(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    (tmp_path / "tasks.toml").write_text(
        '[[task]]\nname = "k"\nslice = "0:1"\nkind = "softmax"\nclasses = 3\n'
        'class_names = ["x", "y", "z"]\n[[task]]\nname = "rest"\nslice = "1:4"\nkind = "euclidean"\n',
        encoding="utf-8",
    )
    out = tmp_path / "grid.png"
    result = run("show", dataset, "-n", 6, "-o", out, "--tasks", tmp_path / "tasks.toml", "--columns", 3)
    assert result.exit_code == 0, result.output
    assert "6 samples in 2 rows of 3" in result.output
    with Image.open(out) as im:
        assert not_blank(np.asarray(im))


def test_cli_show_rejects_an_unknown_image_format(dataset, tmp_path):
    result = run("show", dataset, "-o", tmp_path / "grid.xyz")
    assert result.exit_code == 1 and "grid.xyz" in result.output


def test_plot_stats_draws_one_panel_per_task(dataset, tmp_path):
    pytest.importorskip("matplotlib", reason="the viz extra (matplotlib) is not installed")
    layout = plot_stats(dataset_stats(dataset), tmp_path / "stats.png")
    assert layout.panels == ("a (label)", "b (label)", "c (label)", "d (label)")
    assert (layout.rows, layout.columns) == (2, 3)
    with Image.open(tmp_path / "stats.png") as im:
        assert im.size == layout.size and not_blank(np.asarray(im.convert("L")))


def test_collect_curves_tolerates_missing_keys():
    axis, panels = collect_curves(METRICS)
    assert axis == "step"
    assert list(panels) == [
        "total loss",
        "loss: cls",
        "loss: attrs",
        "metrics: cls",
        "metrics: attrs",
        "task weights",
        "learning rate",
    ]
    assert panels["total loss"] == {"train": [(10.0, 1.9), (20.0, 1.5), (30.0, 1.2)]}
    assert panels["loss: attrs"] == {"train": [(10.0, 0.7), (20.0, 0.6)]}  # "n/a" left out
    assert panels["metrics: cls"] == {"acc (train)": [(10.0, 0.4)], "acc (val)": [(20.0, 0.5)]}
    assert panels["task weights"]["cls"] == [(10.0, 1.0), (20.0, 0.9), (30.0, 0.8)]
    assert panels["learning rate"] == {"lr": [(10.0, 0.1)]}
    # Without a step everywhere the axis falls back to the epoch, then to the record's position;
    # a bare number as the loss is the total.
    axis, panels = collect_curves([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}])
    assert axis == "epoch" and panels == {"total loss": {"train": [(1.0, 2.0), (2.0, 1.0)]}}
    axis, panels = collect_curves([{"loss": 2.0}, {"step": 5, "loss": 1.0}])
    assert axis == "record" and panels["total loss"]["train"] == [(0.0, 2.0), (1.0, 1.0)]


def test_plot_curves_renders_every_panel(run_dir, tmp_path):
    pytest.importorskip("matplotlib", reason="the viz extra (matplotlib) is not installed")
    layout = plot_curves(run_dir, tmp_path / "curves.png")
    assert len(layout.panels) == 7 and (layout.rows, layout.columns) == (3, 3)
    assert layout.notes == ("skipped 1 line(s) that are not JSON objects",)
    with Image.open(tmp_path / "curves.png") as im:
        assert im.format == "PNG" and im.size == layout.size
        assert not_blank(np.asarray(im.convert("L")))


def test_cli_plot_defaults_to_the_run_directory(run_dir):
    pytest.importorskip("matplotlib", reason="the viz extra (matplotlib) is not installed")
    result = run("plot", run_dir)
    assert result.exit_code == 0, result.output
    assert (run_dir / "curves.png").is_file()
    assert "skipped 1 line(s)" in result.output


def test_cli_plot_of_a_run_without_metrics_fails_cleanly(tmp_path):
    result = run("plot", tmp_path)
    assert result.exit_code == 1 and "metrics.jsonl" in result.output


def test_missing_matplotlib_says_how_to_install_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'mtldata\[viz\]'"):
        plot_curves(run_dir, tmp_path / "curves.png")
    result = run("plot", run_dir, "-o", tmp_path / "curves.png")
    assert result.exit_code == 1
    assert "matplotlib, which is not installed" in result.output
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("command", ["show", "plot", "stats"])
def test_an_image_written_under_a_file_is_one_line_naming_it(dataset, run_dir, tmp_path, command):
    pytest.importorskip("matplotlib", reason="the viz extra (matplotlib) is not installed")
    (tmp_path / "a_file").write_text("keep", encoding="utf-8")
    output = tmp_path / "a_file" / "out.png"
    args = {
        "show": ("show", dataset, "-o", output),
        "plot": ("plot", run_dir, "-o", output),
        "stats": ("stats", dataset, "--plot", output),
    }[command]
    result = run(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("mtldata: error: ")]
    assert errors == [f"mtldata: error: {output}: a part of this path is a file, not a folder"]
    assert (tmp_path / "a_file").read_text(encoding="utf-8") == "keep"
