"""The read limits (a stored sample's size, a softmax task's classes) and the flags that raise them.

Over a limit: one line naming the flag, exit 1, before any allocation. With the flag (or the library
parameter) raised: the same input works. The flag goes before the command and wins over the env var.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_errors import one_error_line
from click.testing import CliRunner
from train_helpers import TASKS_TOML, make_dataset

from mtldata.cli import main
from mtldata.errors import DatasetFormatError, TaskSpecError
from mtldata.loader.dataset import open_dataset
from mtldata.storage.backends import open_reader
from mtldata.tasks import MAX_CLASSES, TaskSpec, classes_limit, load_tasks, tasks_from_dict, tasks_to_dict

OVER_DEFAULT = MAX_CLASSES + 1


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _h5(path: Path, shape: tuple[int, ...], written: bool) -> Path:
    with h5py.File(path, "w") as f:
        if written:
            f["data"] = np.zeros(shape, np.uint8)
        else:
            f.create_dataset("data", shape, "u1")  # declared, never written: the file stays small
        f["label"] = np.arange(shape[0], dtype=np.float32).reshape(shape[0], 1)
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path]:
    return make_dataset(tmp_path_factory.mktemp("limits"), count=8, size=8)


def test_a_huge_declared_sample_names_the_flag_and_the_raised_flag_reads_it(tmp_path):
    path = _h5(tmp_path / "huge.h5", (2, 3, 20000, 20000), written=False)  # 1.2e9 bytes a sample
    assert path.stat().st_size < 100_000
    code, out = cli("info", path)
    assert code == 1
    one_error_line(out, "huge.h5", "over the limit of 1073741824 bytes", "mtldata --max-sample-mb")
    code, out = cli("--max-sample-mb", 1200, "info", path)
    assert code == 0, out
    assert "samples:   2" in out and "3x20000x20000" in out


def test_the_sample_flag_wins_over_the_env_var_in_every_reading_command(tmp_path, monkeypatch):
    path = _h5(tmp_path / "big.h5", (2, 3, 64, 64), written=True)  # 12288 bytes a sample
    monkeypatch.setenv("MTLDATA_MAX_SAMPLE_BYTES", "1000")
    commands = (
        ["info", path],
        ["verify", "-q", path],
        ["show", path, "-o", tmp_path / "grid.png"],
        ["stats", "-q", path],
    )
    for args in commands:
        code, out = cli(*args)
        assert code == 1, (args, out)
        one_error_line(out, "12288 bytes each, over the limit of 1000", "--max-sample-mb")
        code, out = cli("--max-sample-mb", 1, *args)
        assert code == 0, (args, out)
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_the_library_takes_the_sample_limit_as_a_parameter(tmp_path, monkeypatch):
    path = _h5(tmp_path / "big.h5", (2, 3, 64, 64), written=True)
    with pytest.raises(DatasetFormatError, match="over the limit of 12287 bytes"):
        open_reader(path, max_sample_bytes=12287)
    assert len(open_reader(path, max_sample_bytes=12288)) == 2
    monkeypatch.setenv("MTLDATA_MAX_SAMPLE_BYTES", "1000")
    with pytest.raises(DatasetFormatError, match="over the limit of 1000 bytes"):
        open_dataset(path)
    dataset = open_dataset(path, max_sample_bytes=20000)
    assert len(dataset) == 2 and tuple(dataset[1][0].shape) == (3, 64, 64)


def test_classes_past_the_limit_name_the_flag_and_the_raised_flag_accepts_them(pristine, tmp_path):
    ds, _ = pristine
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASKS_TOML.replace("classes = 3", f"classes = {OVER_DEFAULT}"))
    code, out = cli("stats", "-q", ds, "--tasks", tasks)
    assert code == 1
    one_error_line(out, str(tasks), "field 'classes'", str(OVER_DEFAULT), "mtldata --max-classes N")
    # Raised, the tasks are read and the labels (0..2) checked against them; a converted dataset
    # takes them too (convert --tasks checks the list's labels before any work).
    dataset = open_dataset(ds, tasks=tasks, max_classes=OVER_DEFAULT)
    assert dataset.tasks["colour"].classes == OVER_DEFAULT
    list_file = ds.parent / "list.txt"
    out_dir = tmp_path / "out"
    code, out = cli(
        "--max-classes", OVER_DEFAULT, "convert", list_file, "-o", out_dir, "--tasks", tasks,
        "--backend", "hdf5", "--task-datasets", "-q",
    )  # fmt: skip
    assert code == 0, out
    assert (out_dir / "manifest.json").is_file()


def test_the_classes_flag_sets_the_limit_both_ways(pristine, tmp_path):
    ds, tasks = pristine
    code, out = cli("--max-classes", 2, "stats", "-q", ds, "--tasks", tasks)
    assert code == 1
    one_error_line(out, "task 'colour'", "3 classes is over the limit of 2", "--max-classes")
    code, out = cli("--max-classes", 3, "stats", "-q", ds, "--tasks", tasks)
    assert code == 0, out
    assert "colour" in out


def test_the_library_takes_the_classes_limit_as_a_parameter():
    text = TASKS_TOML.replace("classes = 3", f"classes = {OVER_DEFAULT}")
    with pytest.raises(TaskSpecError, match="--max-classes"):
        load_tasks(text)
    taskset = load_tasks(text, max_classes=OVER_DEFAULT)
    assert taskset["colour"].classes == OVER_DEFAULT
    doc = tasks_to_dict(taskset)
    with pytest.raises(TaskSpecError, match="classes"):
        tasks_from_dict(doc)
    assert tasks_from_dict(doc, max_classes=OVER_DEFAULT)["colour"].classes == OVER_DEFAULT
    with pytest.raises(TaskSpecError, match="over the limit of 5"), classes_limit(5):
        TaskSpec("c", slice(0, 1), "softmax", classes=6)
    assert TaskSpec("c", slice(0, 1), "softmax", classes=6).classes == 6  # the limit ends with the block
