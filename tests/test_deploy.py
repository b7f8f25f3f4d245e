"""After training: checkpoints that describe their model, load_run, evaluate, predict and export.

One small run is trained once per module on real JPEGs converted gray and resized (so predicting raw
files must repeat the conversion), with a crop and mean values (so the transform matters).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_image, write_list

from mtldata.cli import main
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.storage.image import ImageOptions
from mtldata.tasks import load_tasks, tasks_to_dict
from mtldata.train import TrainConfig, train
from mtldata.train.checkpoint import CheckpointError, save_checkpoint
from mtldata.train.evaluate import average_ranks, evaluate_run, rank_auc
from mtldata.train.export import export_run
from mtldata.train.predict import predict_run
from mtldata.train.run_io import DESCRIPTION_KEY, load_run

README = Path(__file__).resolve().parents[1] / "README.md"

TASKS = """
num_labels = 5
[[task]]
name = "kind"
slice = "0:1"
kind = "softmax"
classes = 3
ignore_label = -1
class_names = ["low", "mid", "high"]
[[task]]
name = "attrs"
slice = "1:3"
kind = "sigmoid"
[[task]]
name = "level"
slice = "3:5"
kind = "euclidean"
"""
LABEL_NAMES = ("kind", "top", "left", "mean", "spread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A trained run on 24 real JPEGs (24x20), converted gray and resized to 16x12, cropped to 10."""
    root = tmp_path_factory.mktemp("deploy")
    rows = []
    for i in range(24):
        write_image(root / "img" / f"{i:02d}.jpg", size=(24, 20), seed=i)
        rows.append(f"img/{i:02d}.jpg {i % 3} {i % 2} {(i // 2) % 2} {0.04 * i:.2f} {1 - 0.03 * i:.2f}")
    list_file = write_list(root / "list.txt", rows)
    dataset = root / "ds"
    convert(
        ConvertSpec(
            list_file=list_file,
            output=dataset,
            image=ImageOptions(gray=True, resize_width=16, resize_height=12),
            label_names=LABEL_NAMES,
            workers=1,
        )
    )
    tasks = root / "tasks.toml"
    tasks.write_text(TASKS, encoding="utf-8")
    cfg = TrainConfig(
        dataset=str(dataset),
        tasks=str(tasks),
        epochs=2,
        batch_size=8,
        lr=0.05,
        width=8,
        crop_size=10,
        mean_values=[100.0],
        scale=0.01,
        num_workers=0,
        out_dir=str(root / "run"),
        seed=3,
    )
    result = train(cfg)
    return {"root": root, "dataset": dataset, "list": list_file, "run": root / "run", "model": result.model}


def invoke(*args: str):
    try:  # click < 8.2 mixes stderr into output unless told not to; 8.2 always keeps it apart
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args])


def one_error_line(result) -> str:
    """The single `mtldata: error:` line a failed command printed (and nothing like a traceback)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mtldata: error: "), result.stderr
    assert "Traceback" not in result.output and "weights_only=False" not in result.output
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# Checkpoints and load_run


def test_checkpoint_describes_the_model_in_weights_only_types(run):
    state = torch.load(run["run"] / "last.pt", weights_only=True)
    description = state[DESCRIPTION_KEY]
    assert description["tasks"] == tasks_to_dict(load_tasks(TASKS))
    assert description["input_shape"] == [1, 10, 10]  # gray, cropped to 10
    transform = description["transform"]
    assert (transform["scale"], transform["mean_values"], transform["crop_size"]) == (0.01, (100.0,), 10)
    assert transform["channel_order"] == "bgr"
    assert description["label_names"] == list(LABEL_NAMES)
    options = description["image_options"]
    assert (options["gray"], options["resize_width"], options["resize_height"]) == (True, 16, 12)
    assert description["mtldata_version"]
    assert state["config"]["trunk"] == "small" and state["config"]["width"] == 8


def test_load_run_gives_the_trained_model_in_eval_mode(run):
    loaded = load_run(run["run"])
    assert loaded.checkpoint == run["run"] / "best.pt" or not (run["run"] / "best.pt").exists()
    from_file = load_run(run["run"] / "last.pt")
    assert from_file.checkpoint == run["run"] / "last.pt"
    assert not from_file.model.training
    assert from_file.tasks.names == ("kind", "attrs", "level")
    assert from_file.column_names("attrs") == ("top", "left")
    assert from_file.image_options == ImageOptions(gray=True, resize_width=16, resize_height=12)
    trained = run["model"].eval()
    x = torch.randn(4, *from_file.input_shape)
    with torch.no_grad():
        expected = trained(x)
        got = from_file.model(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_bad_runs_are_one_line_and_a_crafted_file_runs_no_code(run, tmp_path):
    marker = tmp_path / "code-ran"
    crafted = tmp_path / "crafted.pt"
    with open(crafted, "wb") as fh:
        torch.save({"format": "mtldata-train", "model": _RunsCode(str(marker))}, fh, pickle_module=pickle)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    state_dict = tmp_path / "weights.pt"
    torch.save(run["model"].state_dict(), state_dict)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    cases = {
        tmp_path / "missing": "no such run folder or checkpoint file",
        empty: "no best.pt or last.pt",
        crafted: "not a mtldata checkpoint (it holds Python objects",
        garbage: "not a mtldata checkpoint (not a torch file",
        state_dict: "not a mtldata checkpoint (no 'mtldata-train' format tag",
    }
    for bad, expected in cases.items():
        for args in (
            ("evaluate", bad, run["dataset"]),
            ("predict", bad, run["list"], "-o", tmp_path / "p.csv"),
            ("export", bad, "-o", tmp_path / "m.pt"),
        ):
            line = one_error_line(invoke(*args))
            assert expected in line, (args, line)
    assert not marker.exists()
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.pt").exists()


def test_a_checkpoint_without_the_model_description_is_a_clear_error(run, tmp_path):
    state = torch.load(run["run"] / "last.pt", weights_only=True)
    del state[DESCRIPTION_KEY]
    old = tmp_path / "old.pt"
    save_checkpoint(old, {k: v for k, v in state.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="older mtldata, without the model description"):
        load_run(old)


# ---------------------------------------------------------------------------------------------------
# evaluate


def test_average_ranks_and_auc_by_hand():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4: 1+0 + 1+1 + 1+0.5 wins of 6 pairs
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
    assert rank_auc(scores, np.array([0, 0, 1, 1, 1], bool)) == pytest.approx(4.5 / 6)
    assert rank_auc(scores, np.ones(5, bool)) is None
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 5, 30).astype(float)  # many ties
        t = rng.integers(0, 2, 30).astype(bool)
        wins = sum((a > b) + 0.5 * (a == b) for a in s[t] for b in s[~t])
        assert rank_auc(s, t) == pytest.approx(wins / (t.sum() * (~t).sum()))


def write_h5(path: Path, pixels: np.ndarray, labels: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=pixels)
        f.create_dataset("label", data=labels.astype(np.float32))
    return path


def test_evaluate_counts_labelled_entries_only_and_matches_a_hand_computation(run, tmp_path):
    rng = np.random.default_rng(5)
    n = 30
    pixels = rng.integers(0, 256, (n, 1, 12, 16), dtype=np.uint8)
    labels = np.stack(
        [rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 2, n), rng.random(n), rng.random(n)], 1
    ).astype(np.float64)
    labels[[0, 5, 9], 0] = np.nan  # missing class labels
    labels[[1, 2], 0] = -1  # ignore_label
    labels[[3, 4, 7], 1] = np.nan
    labels[[8], 4] = np.nan
    data = write_h5(tmp_path / "test.h5", pixels, labels)
    report = evaluate_run(run["run"], data, batch_size=7, confusion_dir=tmp_path / "conf")

    loaded = load_run(run["run"])
    with torch.no_grad():
        out = loaded.model(loaded.preprocessor().apply_batch(torch.from_numpy(pixels)))
    kind = report.tasks["kind"]
    keep = np.isfinite(labels[:, 0]) & (labels[:, 0] != -1)
    predicted = out["kind"].argmax(1).numpy()
    assert kind["labelled"] == 25 and report.samples == n
    assert kind["accuracy"] == pytest.approx(np.mean(predicted[keep] == labels[keep, 0]))
    assert np.sum(kind["confusion"]) == 25

    attrs = report.tasks["attrs"]
    logits = out["attrs"].numpy()
    assert attrs["labelled"] == 2 * n - 3
    balanced = []
    for j, name in enumerate(("top", "left")):
        rows = np.isfinite(labels[:, 1 + j])
        truth, pred = labels[rows, 1 + j] > 0.5, logits[rows, j] > 0
        tpr, tnr = np.mean(pred[truth]), np.mean(~pred[~truth])
        balanced.append((tpr + tnr) / 2)
        assert attrs["labels"][name]["labelled"] == rows.sum()
        assert attrs["labels"][name]["accuracy"] == pytest.approx(np.mean(pred == truth))
        assert attrs["labels"][name]["balanced_accuracy"] == pytest.approx(balanced[-1])
        assert attrs["labels"][name]["auc"] == pytest.approx(rank_auc(logits[rows, j], truth))
    assert attrs["mA"] == pytest.approx(np.mean(balanced))

    level = report.tasks["level"]
    values = out["level"].numpy()
    keep = np.isfinite(labels[:, 3:5])
    diff = (values - labels[:, 3:5])[keep]
    assert level["labelled"] == 2 * n - 1
    assert level["mae"] == pytest.approx(np.abs(diff).mean(), rel=1e-6)
    assert level["rmse"] == pytest.approx(np.sqrt((diff**2).mean()), rel=1e-6)

    with open(report.confusion_files["kind"], newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["true\\predicted", "low", "mid", "high"]
    assert [r[0] for r in table[1:]] == ["low", "mid", "high"]
    assert [[int(v) for v in r[1:]] for r in table[1:]] == kind["confusion"]


def test_evaluate_command_prints_the_table_and_json(run, tmp_path):
    table = invoke("evaluate", run["run"], run["dataset"], "-q", "--confusion-dir", tmp_path)
    assert table.exit_code == 0, table.output
    assert re.search(r"^kind\s+softmax\s+24\s+\d\.\d{4}", table.stdout, re.M)
    assert re.search(r"^top\s+24\s+\d+\s", table.stdout, re.M)  # the per-label table of attrs
    assert "labelled" in table.stdout and "mA" in table.stdout and "auc" in table.stdout
    as_json = invoke("evaluate", run["run"], run["dataset"], "-q", "--json", "--confusion-dir", tmp_path)
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["samples"] == 24 and report["tasks"]["level"]["labelled"] == 48
    assert Path(report["confusion_files"]["kind"]).is_file()


def test_evaluate_refuses_a_dataset_whose_k_does_not_fit(run, tmp_path):
    data = write_h5(tmp_path / "k3.h5", np.zeros((4, 1, 12, 16), np.uint8), np.zeros((4, 3)))
    line = one_error_line(invoke("evaluate", run["run"], data, "-q"))
    assert "holds 3 labels per sample but the run's tasks are defined over num_labels = 5" in line


def test_evaluate_names_a_class_label_outside_the_task(run, tmp_path):
    labels = np.zeros((4, 5))
    labels[2, 0] = 7
    data = write_h5(tmp_path / "bad.h5", np.zeros((4, 1, 12, 16), np.uint8), labels)
    line = one_error_line(invoke("evaluate", run["run"], data, "-q"))
    assert "task 'kind': label 7 is not a class in [0, 3)" in line


# ---------------------------------------------------------------------------------------------------
# predict


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_predicting_raw_files_repeats_the_conversion_and_equals_predicting_the_dataset(run, tmp_path):
    from_files = predict_run(run["run"], run["list"], tmp_path / "files.csv", batch_size=5)
    from_data = predict_run(run["run"], run["dataset"], tmp_path / "data.csv")
    assert from_files.count == from_data.count == 24 and not from_files.skipped
    files, data = read_csv(tmp_path / "files.csv"), read_csv(tmp_path / "data.csv")
    assert list(files[0]) == [
        "path",
        "kind",
        "kind.name",
        "kind.prob",
        "attrs.top",
        "attrs.left",
        "level.mean",
        "level.spread",
    ]
    assert [r["path"] for r in files] == [f"img/{i:02d}.jpg" for i in range(24)]
    assert [r["key"] for r in data] == [f"{i:08d}_img/{i:02d}.jpg" for i in range(24)]
    for a, b in zip(files, data, strict=True):
        assert a["kind"] == b["kind"] and a["kind.name"] == ["low", "mid", "high"][int(a["kind"])]
        for column in list(a)[3:]:
            assert float(a[column]) == pytest.approx(float(b[column]), abs=1e-6)


def test_predict_a_folder_as_jsonl_with_task_and_label_names(run, tmp_path):
    result = invoke("predict", run["run"], run["root"] / "img", "-o", tmp_path / "p.jsonl", "-q")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and rows[0]["path"] == "00.jpg"
    first = rows[0]
    assert set(first) == {"path", "kind", "attrs", "level"}
    assert set(first["kind"]) == {"class", "name", "prob"} and 0 < first["kind"]["prob"] <= 1
    assert set(first["attrs"]) == {"top", "left"} and all(0 <= v <= 1 for v in first["attrs"].values())
    assert set(first["level"]) == {"mean", "spread"}
    # an existing output is kept unless --overwrite
    again = invoke("predict", run["run"], run["root"] / "img", "-o", tmp_path / "p.jsonl", "-q")
    assert "already exists" in one_error_line(again)


def test_predict_skips_unreadable_images_with_one_line_each_and_exit_3(run, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    lines = [str(run["root"] / "img" / "00.jpg"), str(tmp_path / "broken.jpg"), str(tmp_path / "gone.png")]
    lines.append(str(run["root"] / "img" / "01.jpg"))
    listed = write_list(tmp_path / "mixed.txt", lines)
    result = invoke("predict", run["run"], listed, "-o", tmp_path / "p.csv", "-q")
    assert result.exit_code == 3, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(skipped) == 2
    assert f"mixed.txt:2: {tmp_path / 'broken.jpg'}: " in skipped[0]
    assert "mixed.txt:3:" in skipped[1] and "file not found" in skipped[1]
    assert len(read_csv(tmp_path / "p.csv")) == 2
    strict = invoke("predict", run["run"], listed, "-o", tmp_path / "s.csv", "-q", "--strict")
    assert "mixed.txt:2:" in one_error_line(strict)
    assert not (tmp_path / "s.csv").exists()


# ---------------------------------------------------------------------------------------------------
# export


def test_export_onnx_runs_in_onnxruntime_like_the_torch_model(run, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install 'mtldata[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (mtldata[onnx])")
    result = invoke("export", run["run"], "-o", tmp_path / "model.onnx")
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["kind", "attrs", "level"]
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["scale"]) == 0.01 and json.loads(meta["mean_values"]) == [100.0]
    assert meta["channel_order"] == "bgr" and json.loads(meta["input_shape"]) == ["N", 1, 10, 10]
    assert json.loads(meta["tasks"])["kind"]["class_names"] == ["low", "mid", "high"]
    loaded = load_run(run["run"])
    x = loaded.preprocessor().apply_batch(torch.randint(0, 256, (5, 1, 12, 16), dtype=torch.uint8))
    with torch.no_grad():
        expected = loaded.model(x)
    outputs = session.run(None, {"image": x.numpy()})
    for name, got in zip(("kind", "attrs", "level"), outputs, strict=True):
        np.testing.assert_allclose(got, expected[name].numpy(), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_torchscript_loads_and_gives_the_same_outputs(run, tmp_path):
    path = export_run(run["run"], tmp_path / "model.pt")
    extra = {"mtldata.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["mtldata.json"])
    assert meta["channel_order"] == "bgr" and json.loads(meta["mean_values"]) == [100.0]
    assert json.loads(meta["outputs"]) == ["kind", "attrs", "level"]
    loaded = load_run(run["run"])
    x = torch.randn(3, *loaded.input_shape)
    with torch.no_grad():
        expected, got = loaded.model(x), scripted(x)
    assert set(got) == {"kind", "attrs", "level"}
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5)


def test_export_needs_a_known_suffix(run, tmp_path):
    assert ".onnx" in one_error_line(invoke("export", run["run"], "-o", tmp_path / "model.bin"))


# ---------------------------------------------------------------------------------------------------
# The demo and the README


def test_the_readme_commands_work_on_the_demo_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = CliRunner().invoke(main, ["demo", "-d", "demo", "--count", "40", "--epochs", "1", "-q"])
    assert demo.exit_code == 0, demo.output
    assert f"model: {Path('demo/run/best.pt')}" in demo.output
    assert "predictions for 40 images in demo/preds.csv" in demo.output
    assert len(read_csv(tmp_path / "demo" / "preds.csv")) == 40
    text = README.read_text(encoding="utf-8")
    commands = [
        shlex.split(line.split("#")[0])
        for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)
        for line in block.splitlines()
        if re.match(r"mtldata (evaluate|predict|export) demo/", line)
    ]
    assert {c[1] for c in commands} == {"evaluate", "predict", "export"}, commands
    for command in commands:
        result = CliRunner().invoke(main, command[1:])
        assert result.exit_code == 0, (command, result.output)
        output = command[command.index("-o") + 1] if "-o" in command else None
        if output is not None:
            assert os.path.getsize(output) > 0


@pytest.mark.parametrize("command", ["predict", "export"])
def test_an_output_under_a_file_is_one_line_naming_the_file(run, tmp_path, command):
    (tmp_path / "a_file").write_text("keep", encoding="utf-8")
    output = tmp_path / "a_file" / ("p.csv" if command == "predict" else "m.onnx")
    args = (
        ("predict", run["run"], run["root"] / "img", "-o", output)
        if command == "predict"
        else ("export", run["run"], "-o", output)
    )
    line = one_error_line(invoke(*args))
    assert line == f"mtldata: error: {tmp_path / 'a_file'}: is a file where a folder is needed"
    assert (tmp_path / "a_file").read_text(encoding="utf-8") == "keep"
