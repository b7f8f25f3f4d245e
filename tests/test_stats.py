"""Label figures per task, from real converted datasets; the table and the JSON of `mtldata stats`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_image, write_list

from mtldata.cli import main
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.errors import TaskSpecError
from mtldata.inspect.stats import dataset_stats, format_stats, label_stats
from mtldata.tasks import load_tasks

# image_set's labels are [i % 3, i % 2, 0.25 * i, -1.5 + i] for i in 0..11.
TASKS = """
[[task]]
name = "cls"
slice = "0:1"
kind = "softmax"
classes = 3
class_names = ["cat", "dog", "bird"]
[[task]]
name = "flag"
slice = "1:2"
kind = "sigmoid"
[[task]]
name = "reg"
slice = "2:4"
kind = "euclidean"
label_names = ["quarter", "offset"]
"""


@pytest.fixture
def dataset(image_set, tmp_path):
    list_file, _ = image_set
    convert(
        ConvertSpec(list_file=list_file, output=tmp_path / "ds", workers=1, label_names=("a", "b", "c", "d"))
    )
    (tmp_path / "tasks.toml").write_text(TASKS, encoding="utf-8")
    return tmp_path / "ds"


def table_rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_figures_per_task(dataset):
    stats = dataset_stats(dataset, dataset.parent / "tasks.toml", bins=4)
    assert stats.count == 12 and stats.num_labels == 4
    cls, flag, reg = stats.tasks
    assert (cls.kind, flag.kind, reg.kind) == ("softmax", "sigmoid", "euclidean")
    (col,) = cls.columns
    assert col.name == "a" and col.classes == ("cat", "dog", "bird") and col.class_counts == (4, 4, 4)
    assert (col.ignored, col.missing, col.invalid) == (0, 0, 0)
    (col,) = flag.columns
    assert col.classes == ("0", "1") and col.class_counts == (6, 6)
    quarter, offset = reg.columns
    assert (quarter.name, offset.name) == ("quarter", "offset")  # the tasks file's names win
    assert sum(quarter.bin_counts) == 12 and len(quarter.bin_edges) == 5
    assert (quarter.min, quarter.max) == (0.0, 2.75) and quarter.mean == pytest.approx(1.375)
    assert (offset.min, offset.max) == (-1.5, 9.5)


def test_without_tasks_each_column_is_described_as_found(dataset):
    stats = dataset_stats(dataset)
    assert [t.name for t in stats.tasks] == ["a", "b", "c", "d"]
    assert all(t.kind == "label" for t in stats.tasks)
    a, b, c, d = (t.columns[0] for t in stats.tasks)
    assert a.classes == ("0", "1", "2") and a.class_counts == (4, 4, 4)
    assert b.classes == ("0", "1") and b.class_counts == (6, 6)
    assert not c.categorical and sum(c.bin_counts) == 12  # 0.25 * i: not integers
    assert not d.categorical and len(d.bin_counts) == 20


def test_ignored_and_invalid_labels_are_counted(tmp_path):
    rows = ["-1 1", "0 -1", "2 1", "5 0", "1 1", "-1 0"]
    for i in range(len(rows)):
        write_image(tmp_path / f"{i}.png", seed=i)
    list_file = write_list(tmp_path / "list.txt", [f"{i}.png {r}" for i, r in enumerate(rows)])
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "ds", workers=1))
    tasks = load_tasks(
        '[[task]]\nname = "c"\nslice = "0:1"\nkind = "softmax"\nclasses = 3\nignore_label = -1\n'
        '[[task]]\nname = "s"\nslice = "1:2"\nkind = "sigmoid"\nignore_label = -1\n',
        num_labels=2,
    )
    c, s = (t.columns[0] for t in dataset_stats(tmp_path / "ds", tasks).tasks)
    assert c.class_counts == (1, 1, 1) and (c.ignored, c.invalid, c.missing) == (2, 1, 0)
    assert s.class_counts == (2, 3) and s.ignored == 1
    rows = table_rows(format_stats(dataset_stats(tmp_path / "ds", tasks)))
    assert ["ignored", "(-1)", "2", "33.3%"] in rows and ["invalid", "1", "16.7%"] in rows


def test_non_finite_labels_count_as_missing():
    values = np.array([[0.0, 1.5], [np.nan, np.inf], [1.0, 2.5]])
    a, b = (t.columns[0] for t in label_stats(values, None, ["a", "b"]))
    assert a.missing == 1 and a.class_counts == (1, 1)
    assert b.missing == 1 and sum(b.bin_counts) == 2 and b.mean == 2.0


def test_tasks_for_another_label_count_are_refused(dataset):
    with pytest.raises(TaskSpecError, match="num_labels"):
        dataset_stats(dataset, "num_labels = 5\n" + TASKS)


def test_the_table_holds_the_figures(dataset):
    table = format_stats(dataset_stats(dataset, dataset.parent / "tasks.toml", bins=4))
    assert "12 samples, 4 labels" in table
    rows = table_rows(table)
    assert ["cat", "4", "33.3%"] in rows and ["missing", "0", "0.0%"] in rows
    assert ["b", "6", "6", "50.0%", "0", "0", "0"] in rows  # sigmoid: positive, negative, rate, ...
    assert ["min", "0", "max", "2.75", "mean", "1.375", "std", "0.863", "missing", "0"] in rows
    assert ["0.6875", "1.375", "3"] in rows  # a histogram bin: from, to, count


def test_cli_prints_the_table_or_json(dataset):
    result = run("stats", dataset, "--tasks", dataset.parent / "tasks.toml", "-q")
    assert result.exit_code == 0, result.output
    assert "cls (softmax)" in result.output and "bird" in result.output
    as_json = json.loads(run("stats", dataset, "--json", "-q").output)
    assert as_json["count"] == 12 and [t["name"] for t in as_json["tasks"]] == ["a", "b", "c", "d"]


def test_cli_plot_writes_a_png(dataset, tmp_path):
    pytest.importorskip("matplotlib", reason="the viz extra (matplotlib) is not installed")
    from PIL import Image

    out = tmp_path / "stats.png"
    result = run("stats", dataset, "--tasks", dataset.parent / "tasks.toml", "--plot", out, "-q")
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 600
        assert np.asarray(im.convert("L")).std() > 10


def test_cli_plot_without_matplotlib_says_how_to_install_it(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run("stats", dataset, "--plot", tmp_path / "stats.png", "-q")
    assert result.exit_code == 1
    assert "pip install 'mtldata[viz]'" in result.output
    assert not (tmp_path / "stats.png").exists()
