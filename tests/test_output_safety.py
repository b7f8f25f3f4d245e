"""Writers replace only what mtldata made, refuse outputs that name no new folder, and fail in one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from cli_errors import assert_one_line_error, run, snapshot
from conftest import write_image, write_list
from train_helpers import make_dataset

from mtldata.cli.report import EXIT_SKIPPED


def _user_folder(path: Path) -> dict[str, bytes]:
    """A folder of a user's own files that no command may delete or change."""
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "todo.txt").write_text("my own notes\n")
    (path / "data.csv").write_text("a,b\n1,2\n")
    return snapshot(path)


def test_overwrite_refuses_a_folder_mtldata_did_not_make(image_set, tmp_path):
    list_file, _ = image_set
    before = _user_folder(tmp_path / "work")
    result = run("convert", list_file, "-o", tmp_path / "work", "--overwrite", "-q", "-j", "1")
    assert_one_line_error(result.output, result.exit_code, "work", "not a dataset mtldata made")
    assert snapshot(tmp_path / "work") == before
    assert not (tmp_path / "work.partial").exists()


def test_overwrite_replaces_a_dataset_mtldata_made(image_set, tmp_path):
    list_file, _ = image_set
    assert run("convert", list_file, "-o", tmp_path / "ds", "-q", "-j", "1").exit_code == 0
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    result = run("convert", list_file, "-o", tmp_path / "ds", "--overwrite", "-q", "-j", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["count"] == manifest["count"]
    assert not (tmp_path / "ds" / ".mtldata-staging").exists()  # the staging marker is not published


def test_overwrite_refuses_a_partial_folder_mtldata_did_not_make(image_set, tmp_path):
    list_file, _ = image_set
    before = _user_folder(tmp_path / "ds.partial")
    result = run("convert", list_file, "-o", tmp_path / "ds", "--overwrite", "-q", "-j", "1")
    assert_one_line_error(result.output, result.exit_code, "ds.partial", "not a conversion mtldata started")
    assert snapshot(tmp_path / "ds.partial") == before


@pytest.mark.parametrize("output", [".", "", "x/..", "/", "images/.."])
def test_outputs_that_name_no_new_folder_are_refused_before_any_work(
    image_set, tmp_path, monkeypatch, output
):
    list_file, _ = image_set
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    result = run("convert", list_file, "-o", output, "--overwrite", "-q", "-j", "1")
    assert_one_line_error(result.output, result.exit_code, "names no new folder")
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.parent.glob("*.partial")) and not list(tmp_path.glob("*.partial"))


def test_outputs_holding_the_inputs_are_refused(image_set, tmp_path):
    list_file, _ = image_set
    outer = tmp_path / "images"  # the list's folder is tmp_path: an ancestor of it holds the list
    before = snapshot(tmp_path)
    for output, extra in ((tmp_path, []), (tmp_path.parent, []), (outer, ["--root", outer])):
        result = run("convert", list_file, "-o", output, "--overwrite", "-q", "-j", "1", *extra)
        assert_one_line_error(result.output, result.exit_code, "write the output to a new folder")
    assert snapshot(tmp_path) == before


def test_merge_refuses_outputs_holding_its_parts_or_not_its_own(image_set, tmp_path):
    list_file, _ = image_set
    parts = tmp_path / "parts"
    for i in range(2):
        args = ("--num-shards", "2", "--shard-index", i, "-q", "-j", "1")
        assert run("convert", list_file, "-o", parts / f"p{i}", *args).exit_code == 0
    before = snapshot(parts)
    result = run("merge", parts / "p0", parts / "p1", "-o", parts, "--overwrite", "-q")
    assert_one_line_error(result.output, result.exit_code, "holds the input")
    user = _user_folder(tmp_path / "mine")
    result = run("merge", parts / "p0", parts / "p1", "-o", tmp_path / "mine", "--overwrite", "-q")
    assert_one_line_error(result.output, result.exit_code, "not a dataset mtldata made")
    assert snapshot(parts) == before and snapshot(tmp_path / "mine") == user
    result = run("merge", parts / "p0", parts / "p1", "-o", ".", "-q")
    assert_one_line_error(result.output, result.exit_code, "names no new folder")


def test_demo_refuses_a_folder_holding_a_users_own_files(tmp_path):
    folder = tmp_path / "mine"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "cat.jpg").write_bytes(b"my cat")
    (folder / "list.txt").write_text("images/cat.jpg 1\n")
    (folder / "tasks.toml").write_text("# mine\n")
    (folder / "run").mkdir()
    (folder / "run" / "last.pt").write_bytes(b"my checkpoint")
    before = snapshot(folder)
    result = run("demo", "-d", folder, "-n", "4", "-q", "--no-train")
    assert_one_line_error(result.output, result.exit_code, "was not made by mtldata demo")
    assert snapshot(folder) == before


def test_demo_writes_beside_other_files_and_again_into_its_own_folder(tmp_path):
    folder = tmp_path / "d"
    other = _user_folder(folder)
    for _ in range(2):  # the second run replaces the demo's own files
        result = run("demo", "-d", folder, "-n", "6", "-q", "--no-train")
        assert result.exit_code == 0, result.output
    assert {k: v for k, v in snapshot(folder).items() if k in other} == other
    assert (folder / "demo_lmdb" / "manifest.json").is_file()


def test_train_refuses_an_out_dir_with_a_users_own_settings(tmp_path):
    dataset, tasks = make_dataset(tmp_path / "data", count=12)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "tasks.toml").write_text("# my tasks\n")
    (out / "config.toml").write_text("# my config\n")
    (out / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = snapshot(out)
    result = run(
        "train", dataset, "--tasks", tasks, "-o", out, "--epochs", "1", "--max-steps", "1", "-q", "-j", "0"
    )
    assert_one_line_error(
        result.output, result.exit_code, "mine/config.toml", "was not made by mtldata train"
    )
    assert snapshot(out) == before


def test_train_writes_its_marker_and_resumes_in_its_own_run_folder(tmp_path):
    dataset, tasks = make_dataset(tmp_path / "data", count=12)
    out = tmp_path / "run"
    args = ("--tasks", tasks, "-o", out, "--epochs", "2", "--max-steps", "1", "-q", "-j", "0", "-b", "4")
    assert run("train", dataset, *args).exit_code == 0
    assert (out / ".mtldata-run").is_file() and (out / "last.pt").is_file()


def test_tasks_output_never_replaces_the_prototxt_or_a_file_without_overwrite(caffe_fixtures, tmp_path):
    prototxt = tmp_path / "train.prototxt"
    prototxt.write_bytes((caffe_fixtures / "mt" / "train.prototxt").read_bytes())
    original = prototxt.read_bytes()
    result = run("tasks", "--from-prototxt", prototxt, "-o", prototxt, "--overwrite", "-k", "5")
    assert_one_line_error(result.output, result.exit_code, "is the input prototxt")
    mine = tmp_path / "tasks.toml"
    mine.write_text("# mine\n")
    result = run("tasks", "--from-prototxt", prototxt, "-o", mine, "-k", "5")
    assert_one_line_error(result.output, result.exit_code, "already exists; pass --overwrite")
    assert prototxt.read_bytes() == original and mine.read_text() == "# mine\n"
    assert run("tasks", "--from-prototxt", prototxt, "-o", mine, "-k", "5", "--overwrite").exit_code == 0
    assert "[[task]]" in mine.read_text()


def test_a_missing_root_is_one_error_before_any_work(image_set, tmp_path):
    list_file, _ = image_set
    result = run("convert", list_file, "--root", tmp_path / "nowhere", "-o", tmp_path / "ds", "-q")
    assert_one_line_error(result.output, result.exit_code, "nowhere: --root is not a folder")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()


def test_a_utf16_list_is_named_as_such(tmp_path):
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.jpg 1 0\nb.jpg 0 1\n", encoding="utf-16")
    result = run("convert", list_file, "-o", tmp_path / "ds", "-q")
    assert_one_line_error(result.output, result.exit_code, "list.txt: the list is UTF-16 encoded")
    list_file.write_bytes("a.jpg 1 0\n".encode("utf-16-le"))  # no byte-order mark
    result = run("convert", list_file, "-o", tmp_path / "ds", "-q")
    assert_one_line_error(result.output, result.exit_code, "UTF-16 or UTF-32")


def test_a_nul_byte_in_a_list_path_is_a_bad_sample_with_its_line(image_set, tmp_path):
    list_file, rows = image_set
    lines = list_file.read_text().splitlines()
    lines.insert(1, "images/img\x0000.jpg 1 0 0 0")
    write_list(list_file, lines)
    result = run("convert", list_file, "-o", tmp_path / "ds", "-q", "-j", "1")
    assert result.exit_code == EXIT_SKIPPED and "Traceback" not in result.output
    assert "list.txt:2: the path 'images/img\\x0000.jpg' holds a NUL byte" in result.output
    strict = run("convert", list_file, "-o", tmp_path / "ds2", "-q", "-j", "1", "--strict")
    assert_one_line_error(strict.output, strict.exit_code, "list.txt:2:", "NUL byte")


def test_a_ten_megabyte_path_is_shortened_in_messages(image_set, tmp_path):
    list_file, _ = image_set
    huge = "d" * 10_000_000
    result = run("convert", list_file, "-o", tmp_path / huge, "-q", "-j", "1")
    line = assert_one_line_error(result.output, result.exit_code, "[...]")
    assert len(line) < 600
    write_list(list_file, [f"{'p' * 10_000_000}.jpg 1"])
    result = run("convert", list_file, "-o", tmp_path / "ds", "-q", "-j", "1", "--strict")
    line = assert_one_line_error(result.output, result.exit_code, "list.txt:1:", "[...]")
    assert len(line) < 600


def test_a_label_past_float32_is_one_error_without_numpy_warnings(image_set, tmp_path):
    list_file, _ = image_set
    write_list(list_file, ["images/img00.jpg 3.5e38", "images/img01.jpg -3.5e38"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run("convert", list_file, "-o", tmp_path / "ds", "-q", "-j", "1", "--strict")
    assert_one_line_error(result.output, result.exit_code, "list.txt:1:", "3.5e38", "overflows float32")


def test_help_states_the_defaults_as_they_are():
    convert_help = " ".join(run("convert", "--help").output.split())
    for fragment in (
        "./<list stem>_lmdb, ./<list stem>_hdf5 with --backend hdf5",
        "bit-identical to convert_imageset's OpenCV INTER_LINEAR",
        "--max-file-mb INTEGER",
        "[default: 256; x>=1]",
        "[default: 100000000; x>=1]",
        "anything else there is refused and left untouched",
    ):
        assert fragment in convert_help, fragment
    assert "anything else there is refused" in " ".join(run("merge", "--help").output.split())
    demo_help = " ".join(run("demo", "--help").output.split())
    assert "[default: 200; x>=1]" in demo_help and "[default: a new temporary folder]" in demo_help
    assert "that the demo did not make is refused" in demo_help


def test_merge_refuses_a_part_whose_errors_file_points_outside_it_and_copies_the_parts_own(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the dataset\n")
    rows = ["a.png 1", "missing.png 2", "b.png 3", "c.png 4"]
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name)
    list_file = write_list(tmp_path / "list.txt", rows)
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, part in enumerate(parts):
        run("convert", list_file, "-o", part, "--num-shards", "2", "--shard-index", i, "-q", "-j", "1")
    original = (parts[1] / "manifest.json").read_text()
    manifest = json.loads(original)
    manifest["errors"]["file"] = str(secret)  # a manifest pointing outside its dataset
    (parts[1] / "manifest.json").write_text(json.dumps(manifest))
    result = run("merge", *parts, "-o", tmp_path / "merged", "-q")
    assert result.exit_code == 1 and "errors.file" in result.output and "points outside" in result.output
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.partial").exists()
    (parts[1] / "manifest.json").write_text(original)
    result = run("merge", *parts, "-o", tmp_path / "merged", "-q")
    assert result.exit_code == 0, result.output
    merged_errors = (tmp_path / "merged" / "errors.tsv").read_text()
    assert "missing.png" in merged_errors and "not for the dataset" not in merged_errors
