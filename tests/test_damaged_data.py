"""Damaged datasets and bad inputs as a user meets them: one `mtldata: error:` line, exit 1, no signal.

Each case is a real file broken the way disks and people break them: a data.mdb cut short by an
interrupted copy, a file of zeros, a manifest of the wrong shape, short label records, undecodable
records, HDF5 files declaring huge samples, tasks.toml typos, non-UTF-8 settings files. Commands that
could die by a signal run in a subprocess, so a SIGBUS shows as a negative return code, not a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
from cli_errors import one_error_line
from click.testing import CliRunner
from train_helpers import TASKS_TOML, make_dataset

from mtldata.caffe.caffe_pb2 import Datum
from mtldata.caffe.datum import label_datum
from mtldata.cli import main
from mtldata.errors import DatasetFormatError, MtlDataError, TaskSpecError, WorkerDataError
from mtldata.loader.dataset import open_dataset
from mtldata.storage.backends import open_reader

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path]:
    """One converted 12-sample dataset (5 labels) and its tasks.toml, copied by each test."""
    return make_dataset(tmp_path_factory.mktemp("pristine"), count=12, size=8)


@pytest.fixture
def dataset(pristine, tmp_path) -> tuple[Path, Path]:
    ds, tasks = pristine
    shutil.copytree(ds, tmp_path / "ds")
    shutil.copy(tasks, tmp_path / "tasks.toml")
    return tmp_path / "ds", tmp_path / "tasks.toml"


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def subprocess_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtldata", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


READING_COMMANDS = {
    "info": lambda ds, tasks, out: ["info", ds],
    "verify": lambda ds, tasks, out: ["verify", "-q", ds],
    "show": lambda ds, tasks, out: ["show", ds, "-o", out / "grid.png"],
    "stats": lambda ds, tasks, out: ["stats", "-q", ds, "--tasks", tasks],
    "train": lambda ds, tasks, out: ["train", ds, "--tasks", tasks, "-o", out / "run", "-j", "0", "-q"],
}

OPEN_DATASET = (
    "import sys\n"
    "from mtldata import open_dataset\n"
    "from mtldata.errors import MtlDataError\n"
    "try:\n"
    "    ds = open_dataset(sys.argv[1], tasks=sys.argv[2])\n"
    "    ds[0]\n"
    "except MtlDataError as exc:\n"
    "    print('MtlDataError:', exc)\n"
)


def assert_every_reader_refuses(ds: Path, tasks: Path, tmp_path: Path, *needles: str) -> None:
    """Every reading command exits 1 with one error line (in a subprocess: a signal would show), and
    open_dataset raises an MtlDataError."""
    for name, args in READING_COMMANDS.items():
        done = subprocess_cli(*args(ds, tasks, tmp_path), cwd=tmp_path)
        assert done.returncode == 1, (name, done.returncode, done.stderr)
        one_error_line(done.stderr, *needles)
    done = subprocess.run(
        [sys.executable, "-c", OPEN_DATASET, str(ds), str(tasks)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MtlDataError: ") and all(n in done.stdout for n in needles), done.stdout


def test_a_data_mdb_cut_short_is_one_error_in_every_reader_not_sigbus(dataset, tmp_path):
    ds, tasks = dataset
    data = ds / "images.lmdb" / "data.mdb"
    assert data.stat().st_size >= 3 * 4096
    os.truncate(data, data.stat().st_size - 4096)  # the meta pages survive an interrupted copy
    assert_every_reader_refuses(ds, tasks, tmp_path, "images.lmdb/data.mdb", "cut short")


def test_a_label_data_mdb_cut_short_is_refused_too(dataset, tmp_path):
    ds, tasks = dataset
    data = ds / "labels.lmdb" / "data.mdb"
    os.truncate(data, data.stat().st_size - 4096)
    done = subprocess_cli("verify", "-q", ds, cwd=tmp_path)
    assert done.returncode == 1
    one_error_line(done.stderr, "labels.lmdb/data.mdb", "cut short")


def test_a_data_mdb_of_zeros_is_not_an_lmdb_file(dataset, tmp_path):
    ds, tasks = dataset
    data = ds / "images.lmdb" / "data.mdb"
    data.write_bytes(bytes(data.stat().st_size))
    for name, args in READING_COMMANDS.items():  # in-process: LMDB itself refuses zeros, no signal
        code, out = cli(*args(ds, tasks, tmp_path))
        assert code == 1, (name, out)
        one_error_line(out, "data.mdb", "not an LMDB data file")
    with pytest.raises(DatasetFormatError, match="not an LMDB data file"):
        open_dataset(ds, tasks=tasks)[0]


def test_an_empty_data_mdb_is_refused(dataset):
    ds, _ = dataset
    (ds / "images.lmdb" / "data.mdb").write_bytes(b"")
    code, out = cli("info", ds)
    assert code == 1
    one_error_line(out, "data.mdb: empty")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda m: [m], id="a-list"),
        pytest.param(lambda m: {**m, "count": "12"}, id="count-a-string"),
        pytest.param(lambda m: {**m, "image": None}, id="image-null"),
        pytest.param(lambda m: {**m, "image": {**m["image"], "shape": [3, -8]}}, id="bad-shape"),
        pytest.param(lambda m: {**m, "label_stats": [{"name": 1}]}, id="stats-entry"),
        pytest.param(lambda m: {**m, "files": ["images.lmdb"]}, id="files-a-list"),
        pytest.param(lambda m: {**m, "errors": {"count": -1}}, id="negative-error-count"),
        pytest.param(lambda m: {k: v for k, v in m.items() if k != "num_labels"}, id="no-num-labels"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_one_error_naming_it(dataset, change):
    ds, tasks = dataset
    manifest = json.loads((ds / "manifest.json").read_text())
    (ds / "manifest.json").write_text(json.dumps(change(manifest)))
    for args in (
        ["info", ds],
        ["verify", "-q", ds],
        ["stats", "-q", ds],
        ["show", ds, "-o", ds.parent / "g.png"],
    ):
        code, out = cli(*args)
        assert code == 1, (args, out)
        one_error_line(out, "manifest.json")
    with pytest.raises(DatasetFormatError, match="manifest.json"):
        open_dataset(ds, tasks=tasks)


def test_a_manifest_that_is_not_utf8_or_not_json_is_one_error(dataset):
    ds, _ = dataset
    (ds / "manifest.json").write_bytes(b'{"backend": "\xff\xfe"}')
    code, out = cli("info", ds)
    assert code == 1
    one_error_line(out, "manifest.json", "not UTF-8")
    (ds / "manifest.json").write_text("[" * 100000)
    code, out = cli("info", ds)
    assert code == 1
    one_error_line(out, "manifest.json", "not valid JSON")


def _put(env_dir: Path, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(env_dir), subdir=True)
    with env.begin(write=True) as txn:
        assert txn.get(key) is not None
        txn.put(key, value)
    env.close()


def _first_key(env_dir: Path, index: int = 0) -> bytes:
    env = lmdb.open(str(env_dir), readonly=True, lock=False)
    with env.begin() as txn:
        keys = [bytes(k) for k in txn.cursor().iternext(values=False)]
    env.close()
    return keys[index]


def test_a_label_record_with_fewer_values_than_k_names_its_key(dataset, tmp_path):
    ds, tasks = dataset
    key = _first_key(ds / "labels.lmdb", 4)
    _put(ds / "labels.lmdb", key, label_datum([1.0, 0.0]))
    for args in (
        ["stats", "-q", ds, "--tasks", tasks],
        ["show", ds, "-o", tmp_path / "g.png"],
        ["train", ds, "--tasks", tasks, "-o", tmp_path / "run", "-j", "0", "-q"],
    ):
        code, out = cli(*args)
        assert code == 1, (args, out)
        one_error_line(out, key.decode(), "holds 2 label value(s), expected 5")
    data = open_dataset(ds, tasks=tasks)  # lazy: the manifest's summary proves the labels in range
    with pytest.raises(DatasetFormatError, match=key.decode()):
        [data[i] for i in range(len(data))]
    data.close()  # py-lmdb opens an environment once per process
    code, out = cli("verify", ds)  # verify lists it as a bad record, by key
    assert code == 1 and f"{key.decode()}: label record: holds 2 labels" in out


def test_a_label_record_that_is_not_a_datum_names_its_key(dataset):
    ds, tasks = dataset
    key = _first_key(ds / "labels.lmdb", 2)
    _put(ds / "labels.lmdb", key, b"\xff\xff\xff")
    data = open_dataset(ds, tasks=tasks)
    with pytest.raises(DatasetFormatError, match="is not a Caffe Datum") as caught:
        [data[i] for i in range(len(data))]
    assert key.decode() in str(caught.value)


@pytest.fixture
def encoded_dataset(tmp_path) -> tuple[Path, Path, bytes]:
    """A dataset of encoded (PNG) records, one of which holds bytes that decode to nothing."""
    from mtldata.convert.pipeline import ConvertSpec, convert
    from mtldata.storage.image import ImageOptions

    make_dataset(tmp_path / "src", count=12, size=8)
    out = tmp_path / "enc"
    convert(
        ConvertSpec(
            list_file=tmp_path / "src" / "list.txt", output=out, image=ImageOptions(encoded=True), workers=1
        )
    )
    key = _first_key(out / "images.lmdb", 5)
    bad = Datum(encoded=True, data=b"\x89PNG\r\n\x1a\n this is not a PNG", label=1)
    _put(out / "images.lmdb", key, bad.SerializeToString())
    return out, tmp_path / "src" / "tasks.toml", key


def test_an_undecodable_encoded_record_names_its_key(encoded_dataset):
    ds, tasks, key = encoded_dataset
    data = open_dataset(ds, tasks=tasks)
    index = [data.key(i) for i in range(len(data))].index(key.decode())
    with pytest.raises(DatasetFormatError) as caught:
        data[index]
    assert key.decode() in str(caught.value) and "does not decode" in str(caught.value)


def test_a_bad_record_in_a_dataloader_worker_is_one_line_naming_dataset_and_key(encoded_dataset):
    import torch

    ds, tasks, key = encoded_dataset
    data = open_dataset(ds, tasks=tasks)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2)
    with pytest.raises(WorkerDataError) as caught:
        for _ in loader:
            pass
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert str(ds / "images.lmdb") in message and key.decode() in message


def test_train_with_two_workers_reports_a_bad_record_in_one_line(encoded_dataset, tmp_path):
    ds, tasks, key = encoded_dataset
    done = subprocess_cli(
        "train", ds, "--tasks", tasks, "-o", tmp_path / "run", "-j", "2", "-b", "4", "--epochs", "1", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    # The run's own notes (e.g. "mtldata: parameters: ...") may come first; nothing of torch's.
    assert all(line.startswith("mtldata: ") for line in done.stderr.splitlines()), done.stderr
    assert done.stderr.splitlines()[-1] == one_error_line(done.stderr, key.decode(), "does not decode")


def _h5(path: Path, data: np.ndarray | None = None, shape=None, dtype="u1", labels: int = 10) -> Path:
    with h5py.File(path, "w") as f:
        if data is not None:
            f["data"] = data
        else:
            f.create_dataset("data", shape, dtype)  # declared, never written: the file stays small
        f["label"] = np.arange(labels, dtype=np.float32).reshape(labels, 1)
    return path


def test_show_draws_an_hdf5_file_of_float_pixels(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    values[0, 0, 0, 0] = np.nan
    path = _h5(tmp_path / "float.h5", values, labels=4)
    code, out = cli("show", path, "-o", tmp_path / "grid.png")
    assert code == 0, out
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_an_hdf5_file_declaring_a_huge_sample_is_refused_before_allocating(tmp_path):
    path = _h5(tmp_path / "huge.h5", shape=(10, 3, 100000, 100000))
    assert path.stat().st_size < 100_000
    for args in (["info", path], ["show", path, "-o", tmp_path / "g.png"], ["stats", "-q", path]):
        code, out = cli(*args)
        assert code == 1, (args, out)
        one_error_line(out, "huge.h5", "over the limit", "MTLDATA_MAX_SAMPLE_BYTES")
    with pytest.raises(DatasetFormatError, match="over the limit"):
        open_dataset(path)


def test_the_sample_limit_can_be_raised(tmp_path, monkeypatch):
    path = _h5(tmp_path / "big.h5", data=np.zeros((2, 3, 64, 64), np.uint8), labels=2)
    monkeypatch.setenv("MTLDATA_MAX_SAMPLE_BYTES", "1000")
    with pytest.raises(DatasetFormatError, match="12288 bytes each, over the limit of 1000"):
        open_reader(path)
    monkeypatch.setenv("MTLDATA_MAX_SAMPLE_BYTES", "20000")
    assert len(open_reader(path)) == 2


def test_a_classes_typo_in_tasks_toml_is_refused_before_allocating(dataset, tmp_path):
    ds, tasks = dataset
    tasks.write_text(TASKS_TOML.replace("classes = 3", "classes = 10000000000"))
    for args in (
        ["stats", "-q", ds, "--tasks", tasks],
        ["train", ds, "--tasks", tasks, "-o", tmp_path / "run", "-j", "0", "-q"],
    ):
        code, out = cli(*args)
        assert code == 1, (args, out)
        one_error_line(out, str(tasks), "task 'colour'", "field 'classes'", "10000000000")


def test_a_config_file_that_is_not_utf8_is_one_error(dataset, tmp_path):
    ds, tasks = dataset
    config = tmp_path / "train.toml"
    config.write_bytes(b"epochs = 1\n# caf\xe9\n")
    code, out = cli("train", ds, "--tasks", tasks, "--config", config, "-o", tmp_path / "run", "-q")
    assert code == 1
    one_error_line(out, "train.toml", "not UTF-8")


def test_a_metrics_file_with_non_utf8_lines_is_read_around_them(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    good = {"epoch": 1, "step": 3, "split": "train", "loss": {"a": 1.0}, "total": 1.0, "weights": {"a": 1.0}}
    (run / "metrics.jsonl").write_bytes(json.dumps(good).encode() + b"\n\xff\xfe garbage\n")
    code, out = cli("plot", run, "-o", tmp_path / "curves.png")
    assert code == 0, out
    assert "Traceback" not in out and "skipped 1 line(s)" in out


@pytest.mark.parametrize("where", ["/abs", "../secret.txt"])
def test_a_part_naming_an_errors_file_outside_it_is_refused_and_merge_survives_a_part_cut_short(
    image_set, tmp_path, where
):
    from mtldata.convert.pipeline import ConvertSpec, convert

    list_file, _ = image_set
    parts = []
    for i in range(2):
        out = tmp_path / f"p{i}"
        convert(ConvertSpec(list_file=list_file, output=out, num_shards=2, shard_index=i, workers=1))
        parts.append(out)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours\n")
    manifest_file = parts[1] / "manifest.json"
    original = manifest_file.read_text()
    manifest = json.loads(original)
    manifest["errors"]["file"] = str(secret) if where == "/abs" else where
    manifest_file.write_text(json.dumps(manifest))
    done = subprocess_cli("merge", *parts, "-o", tmp_path / "merged", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr, f"{manifest_file}: errors.file", "points outside the dataset")
    assert done.stderr.splitlines() == [line]
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.partial").exists()
    assert secret.read_text() == "not yours\n"
    for args in (["verify", "-q", parts[1]], ["info", parts[1]]):
        code, out = cli(*args)
        assert code == 1, (args, out)
        one_error_line(out, "manifest.json: errors.file", "points outside the dataset")
    with pytest.raises(DatasetFormatError, match="errors.file .* points outside the dataset"):
        open_dataset(parts[1])
    manifest_file.write_text(original)
    data = parts[1] / "images.lmdb" / "data.mdb"
    os.truncate(data, data.stat().st_size - 4096)  # a part cut short: merge reads it, no SIGBUS
    done = subprocess_cli("merge", *parts, "-o", tmp_path / "merged", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    one_error_line(done.stderr, "p1/images.lmdb/data.mdb", "cut short")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("where", ["/abs", "../elsewhere", "a/../../b"])
def test_manifest_files_cannot_point_readers_outside_the_dataset(dataset, tmp_path, where):
    ds, tasks = dataset
    other = tmp_path / "other"
    shutil.copytree(ds / "images.lmdb", other)
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["files"]["images"] = str(other) if where == "/abs" else where
    (ds / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetFormatError, match="files.images"):
        open_reader(ds)
    code, out = cli("info", ds)
    assert code == 1
    one_error_line(out, "files.images")


def test_open_dataset_sees_a_dataset_replaced_on_disk(tmp_path):
    first, _ = make_dataset(tmp_path / "a", count=6, size=8, seed=1)
    second, _ = make_dataset(tmp_path / "b", count=9, size=8, seed=2)
    target = tmp_path / "live"
    shutil.copytree(first, target)
    old = open_dataset(target)
    old_labels = [old[i][1]["label"].tolist() for i in range(len(old))]
    shutil.rmtree(target)
    shutil.copytree(second, target)  # replaced while `old` (and its reader) is still alive
    new = open_dataset(target)
    assert len(new) == 9
    assert [new[i][1]["label"].tolist() for i in range(6)] != old_labels
    again = open_dataset(target)
    assert again.reader is new.reader  # still shared while the files are the same
    # The old handle let go of the old files and never serves their contents again: it reads the new
    # files, or (py-lmdb >= 3, which opens an environment once per process) says why it cannot.
    try:
        first = old[0]
    except DatasetFormatError as exc:
        assert "already open in this process" in str(exc)
    else:
        assert first[1]["label"].tolist() == new[0][1]["label"].tolist()


def test_a_missing_data_mdb_or_lmdb_error_never_escapes_as_lmdb_error(dataset):
    ds, _ = dataset
    (ds / "labels.lmdb" / "data.mdb").write_bytes(b"\xde\xc0\xef\xbe" * 8)  # LMDB's magic, little else
    with pytest.raises(MtlDataError):
        len(open_reader(ds))


# -------------------------------------------------------------------------------------------------
# Labels against tasks


def _relabel(ds: Path, index: int, column: int, value: float) -> bytes:
    """Set one label of a converted dataset (and its manifest summary, as a conversion would)."""
    from mtldata.caffe.datum import datum_labels, parse_datum

    key = _first_key(ds / "labels.lmdb", index)
    env = lmdb.open(str(ds / "labels.lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        labels = datum_labels(parse_datum(txn.get(key)))
    env.close()
    labels[column] = value
    _put(ds / "labels.lmdb", key, label_datum(labels))
    return key


def test_open_dataset_refuses_a_class_past_classes_naming_tasks_file_task_key_and_value(dataset):
    ds, tasks = dataset
    key = _relabel(ds, 3, 0, 9.0)
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["label_stats"][0].update(max=9.0, values=None)  # what a conversion of it would record
    (ds / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TaskSpecError) as caught:
        open_dataset(ds, tasks=tasks)
    message = str(caught.value)
    for part in (str(tasks), "task 'colour'", key.decode(), "is 9.0", "[0, 3)"):
        assert part in message, (part, message)
    assert open_dataset(ds, tasks=tasks, check_labels=False)[3]  # the check can be skipped on purpose


def test_a_plain_caffe_lmdb_is_checked_by_reading_its_labels(tmp_path):
    images, labels = tmp_path / "img_lmdb", tmp_path / "lbl_lmdb"
    from mtldata.caffe.datum import image_datum

    rows = [[0, 1, 0.5], [2, 0, 0.25], [1, float("nan"), 0.0], [3, 1, 1.0]]  # NaN: a missing label
    for env_dir, values in ((images, None), (labels, rows)):
        env = lmdb.open(str(env_dir), map_size=1 << 24)
        with env.begin(write=True) as txn:
            for i, row in enumerate(rows):
                value = image_datum(bytes(12), int(row[0]), (3, 2, 2)) if values is None else label_datum(row)
                txn.put(f"{i:08d}_x{i}.png".encode(), value)
        env.close()
    toml = tmp_path / "tasks.toml"
    toml.write_text(
        '[[task]]\nname = "c"\nslice = "0:1"\nkind = "softmax"\nclasses = 3\n'
        '[[task]]\nname = "s"\nslice = "1:2"\nkind = "sigmoid"\n'
        '[[task]]\nname = "r"\nslice = "2:3"\nkind = "euclidean"\n'
    )
    with pytest.raises(TaskSpecError, match="00000003_x3.png") as caught:
        open_dataset(images, labels=labels, tasks=toml)
    assert "task 'c'" in str(caught.value) and "is 3.0" in str(caught.value)
    toml.write_text(toml.read_text().replace("classes = 3", "classes = 4"))
    data = open_dataset(images, labels=labels, tasks=toml)  # the NaN (missing) passes the check
    assert len(data) == 4


def test_train_refuses_a_sigmoid_label_of_042_before_the_first_step(dataset, tmp_path):
    ds, tasks = dataset
    key = _relabel(ds, 7, 1, 0.42)
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["label_stats"][1].update(integral=False, values=[0.0, 0.42, 1.0])
    (ds / "manifest.json").write_text(json.dumps(manifest))
    code, out = cli("train", ds, "--tasks", tasks, "-o", tmp_path / "run", "-j", "0", "-q")
    assert code == 1
    one_error_line(out, str(tasks), "task 'attrs'", key.decode(), "0.42")
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_stats_refuses_a_softmax_label_past_classes(dataset):
    ds, tasks = dataset
    key = _relabel(ds, 2, 0, 5.0)
    code, out = cli("stats", "-q", ds, "--tasks", tasks)
    assert code == 1
    one_error_line(out, str(tasks), "task 'colour'", key.decode(), "is 5.0")


def test_convert_with_tasks_refuses_a_bad_label_naming_the_list_line(tmp_path):
    make_dataset(tmp_path, count=6, size=8)
    list_file = tmp_path / "list.txt"
    lines = list_file.read_text().splitlines()
    parts = lines[2].split()
    parts[2] = "0.42"  # a sigmoid column
    lines[2] = " ".join(parts)
    list_file.write_text("\n".join(lines) + "\n")
    code, out = cli(
        "convert", list_file, "-o", tmp_path / "out", "--backend", "hdf5", "--tasks", tmp_path / "tasks.toml",
        "--task-datasets", "-j", "1",
    )  # fmt: skip
    assert code == 1
    one_error_line(out, "tasks.toml", "task 'attrs'", "list.txt:3", "0.42")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_converted_dataset_s_manifest_summary_proves_its_labels(dataset):
    from mtldata.tasks import load_tasks

    ds, tasks = dataset
    manifest = json.loads((ds / "manifest.json").read_text())
    summary = manifest["label_stats"]
    assert summary[0]["integral"] and summary[0]["values"] == [-1.0, 0.0, 1.0, 2.0]
    assert summary[3]["integral"] is False
    taskset = load_tasks(tasks, num_labels=5)
    assert taskset.summary_allows(summary)
    assert not taskset.summary_allows([{**summary[0], "values": [0.0, 3.0]}, *summary[1:]])
    assert not taskset.summary_allows(
        [{"name": c["name"], "min": c["min"], "max": c["max"]} for c in summary]
    )


# -------------------------------------------------------------------------------------------------
# Training losses that stop being numbers


def _huge_target_dataset(tmp_path: Path) -> tuple[Path, Path]:
    ds, tasks = make_dataset(tmp_path / "src", count=8, size=8)
    list_file = tmp_path / "src" / "list.txt"
    lines = [line.rsplit(" ", 1)[0] + " 1e30" for line in list_file.read_text().splitlines()]
    list_file.write_text("\n".join(lines) + "\n")
    from mtldata.convert.pipeline import ConvertSpec, convert

    out = tmp_path / "huge"
    convert(ConvertSpec(list_file=list_file, output=out, workers=1))
    return out, tasks


def test_a_loss_that_becomes_inf_stops_the_run_naming_step_and_task(tmp_path):
    ds, tasks = _huge_target_dataset(tmp_path)
    code, out = cli("train", ds, "--tasks", tasks, "-o", tmp_path / "run", "-j", "0", "-q", "-b", "4")
    assert code == 1
    one_error_line(out, "step 1", "task 'level'", "inf", "--skip-nonfinite")


def test_skip_nonfinite_skips_such_steps_and_finishes(tmp_path):
    ds, tasks = _huge_target_dataset(tmp_path)
    code, out = cli(
        "train", ds, "--tasks", tasks, "-o", tmp_path / "run", "-j", "0", "-b", "4", "--epochs", "1",
        "--skip-nonfinite",
    )  # fmt: skip
    assert code == 0, out
    assert "step 1: skipped, a loss was not finite" in out and "step 2: skipped" in out
    assert (tmp_path / "run" / "last.pt").is_file()
