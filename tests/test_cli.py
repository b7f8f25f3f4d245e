"""The `mtldata` command line, driven through click's CliRunner on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_image, write_list

from mtldata.cli.main import main
from mtldata.cli.report import EXIT_SKIPPED


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("chosen", [None, "2"], ids=["unset", "user's"])
def test_cli_process_keeps_one_openblas_thread_unless_the_user_chose(chosen):
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("counts threads through /proc/self/task (Linux)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if chosen:
        env["OPENBLAS_NUM_THREADS"] = chosen
    code = "import os, mtldata.cli, numpy; print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))"
    setting, threads = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert setting == (chosen or "1")
    if chosen is None:
        assert threads == "1"  # numpy imported, and no BLAS thread beside the main one


def test_help_explains_every_convert_option():
    result = run("convert", "--help")
    assert result.exit_code == 0
    for option in (
        "--num-labels",
        "--root",
        "--gray",
        "--resize-width",
        "--encoded",
        "--encode-type",
        "--shuffle",
        "--seed",
        "--check-size",
        "--workers",
        "--strict",
        "--resume",
        "--overwrite",
        "--quiet",
        "errors.tsv",
    ):
        assert option in result.output


def test_convert_then_info(image_set, tmp_path):
    list_file, _ = image_set
    out = tmp_path / "ds"
    result = run("convert", list_file, "-o", out, "-q", "-j", "1", "--label-names", "a,b,c,d")
    assert result.exit_code == 0, result.output
    assert "wrote 12 samples" in result.output
    info = run("info", out)
    assert info.exit_code == 0
    assert "samples:   12" in info.output and "3x20x24" in info.output and "K=4" in info.output
    assert "d" in info.output and "-1.5" in info.output
    as_json = json.loads(run("info", out, "--json").output)
    assert as_json["count"] == 12 and as_json["label_names"] == ["a", "b", "c", "d"]


def test_default_output_is_named_after_the_list(image_set, tmp_path, monkeypatch):
    list_file, _ = image_set
    monkeypatch.chdir(tmp_path)
    assert run("convert", list_file, "-q", "-j", "1").exit_code == 0
    assert (tmp_path / "list_lmdb" / "manifest.json").is_file()


def test_skipped_samples_give_exit_code_3_and_line_numbers(tmp_path):
    write_image(tmp_path / "a.jpg")
    list_file = write_list(tmp_path / "l.txt", ["a.jpg 1 2", "gone.jpg 1 2", "a.jpg 1"])
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(list_file), "-o", str(tmp_path / "o"), "-q", "-j", "1"])
    assert result.exit_code == EXIT_SKIPPED
    assert f"{list_file}:2: gone.jpg: file not found" in result.output
    assert f"{list_file}:3: expected a path and 2 labels" in result.output
    assert "skipped 2 sample(s)" in result.output
    assert f"wrote 1 sample to {tmp_path / 'o'} in " in result.output


def test_strict_error_is_one_line_and_exit_1(tmp_path):
    write_image(tmp_path / "a.jpg")
    list_file = write_list(tmp_path / "l.txt", ["a.jpg 1 2", "a.jpg 1 x"])
    result = run("convert", list_file, "-o", tmp_path / "o", "-q", "-j", "1", "--strict")
    assert result.exit_code == 1
    assert result.output.strip() == f"mtldata: error: {list_file}:2: label 2 is 'x', not a number"
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(image_set, tmp_path):
    list_file, _ = image_set
    assert run("convert", list_file, "-o", tmp_path / "o", "-q", "-j", "1").exit_code == 0
    again = run("convert", list_file, "-o", tmp_path / "o", "-q", "-j", "1")
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert run("convert", list_file, "-o", tmp_path / "o", "-q", "-j", "1", "--overwrite").exit_code == 0


def test_info_reads_a_plain_caffe_lmdb(caffe_fixtures):
    result = run("info", caffe_fixtures / "lmdb" / "raw")
    assert result.exit_code == 0, result.output
    assert "samples:   14" in result.output and "convert_imageset" in result.output


def test_info_reads_a_caffe_image_and_label_pair(caffe_fixtures):
    mt = caffe_fixtures / "mt"
    result = run("info", mt / "img_lmdb", "--labels", mt / "label_lmdb")
    assert result.exit_code == 0, result.output
    assert "samples:   10" in result.output and "K=5" in result.output


def test_info_on_a_missing_or_foreign_path_fails_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("info", tmp_path / "empty")
    assert result.exit_code == 1 and "not a dataset mtldata knows" in result.output


def test_demo_builds_and_summarises_a_sample_set(tmp_path):
    result = run("demo", "-d", tmp_path / "demo", "-n", "24", "-q", "--no-train")  # training: test_train_cli
    assert result.exit_code == 0, result.output
    assert "samples:   24" in result.output
    assert (tmp_path / "demo" / "demo_lmdb" / "manifest.json").is_file()
    assert len(list((tmp_path / "demo" / "images").glob("*.jpg"))) == 24


def test_labels_from_list_are_exact_in_the_label_db(tmp_path):
    write_image(tmp_path / "x y.jpg")
    list_file = write_list(tmp_path / "l.txt", ["x y.jpg 7 0.5 -3 123456"])
    assert run("convert", list_file, "-o", tmp_path / "o", "-q", "-j", "1").exit_code == 0
    from mtldata.storage.backends import open_reader

    reader = open_reader(tmp_path / "o")
    assert reader.key(0) == "00000000_x y.jpg"
    assert reader.labels(0).tolist() == [7.0, 0.5, -3.0, 123456.0]
    assert reader.sample(0).image.shape == (3, 20, 24)
    assert Path(reader.describe()["images"]).name == "images.lmdb"
