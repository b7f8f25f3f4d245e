"""The HDF5 backend on real files: Caffe's layout, the fixture Caffe trained on, legacy readers, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_image, write_list

from mtldata.cli import main
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.errors import DatasetFormatError, DatasetStateError, InputError, MtlDataError
from mtldata.storage.backends import WriterOptions, open_reader
from mtldata.storage.backends.hdf5 import Hdf5Writer
from mtldata.storage.image import ImageOptions, load_image, to_chw
from mtldata.storage.records import ImagePayload, Sample


def hdf5_spec(list_file: Path, out: Path, **kw) -> ConvertSpec:
    kw.setdefault("workers", 1)
    return ConvertSpec(list_file=list_file, output=out, backend="hdf5", **kw)


def datasets(path: Path) -> dict[str, tuple]:
    with h5py.File(path, "r") as f:
        return {name: (ds.dtype, ds.shape, ds.chunks, ds.compression) for name, ds in f.items()}


def test_caffe_layout_names_dtypes_shapes(image_set, tmp_path):
    list_file, rows = image_set
    out = tmp_path / "out"
    result = convert(hdf5_spec(list_file, out, backend_options={"shard_size": 5}))
    assert result.count == 12
    shards = ["part-00000.h5", "part-00001.h5", "part-00002.h5"]
    assert sorted(p.name for p in out.glob("*.h5")) == shards
    assert not list(out.glob("*.pending")) and not list(out.glob("*.tmp"))
    assert (out / "hdf5_list.txt").read_text().split() == [str(out.resolve() / s) for s in shards]
    for name, n in zip(shards, (5, 5, 2), strict=True):
        found = datasets(out / name)
        assert set(found) == {"data", "label", "key"}
        assert found["data"] == (np.dtype("float32"), (n, 3, 20, 24), None, None)  # contiguous, as Caffe's
        assert found["label"] == (np.dtype("float32"), (n, 4), None, None)
    with h5py.File(out / shards[1], "r") as f:
        for row in range(5):
            i = 5 + row
            expected = to_chw(load_image(list_file.parent / rows[i][0])).astype(np.float32)
            np.testing.assert_array_equal(f["data"][row], expected)  # plain pixel values 0..255
            np.testing.assert_array_equal(f["label"][row], np.float32(rows[i][1]))
            assert f["key"].asstr()[row] == f"{i:08d}_{rows[i][0]}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "hdf5" and manifest["count"] == 12
    assert manifest["files"]["shards"] == shards and manifest["files"]["shard_counts"] == [5, 5, 2]
    assert manifest["files"]["datasets"]["data"]["dtype"] == "float32"
    assert manifest["options"]["shard_size"] == 5


def test_default_shard_size_keeps_a_shard_small(image_set, tmp_path):
    list_file, _ = image_set
    convert(hdf5_spec(list_file, tmp_path / "out"))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    per_shard = manifest["files"]["samples_per_shard"]
    assert per_shard * 3 * 20 * 24 * 4 <= 512 << 20 and per_shard * 3 * 20 * 24 < 2**31 - 1
    assert manifest["files"]["shards"] == ["part-00000.h5"]


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_uint8_chunks_whole_samples_and_reads_back_the_same(image_set, tmp_path, compression):
    list_file, _ = image_set
    convert(hdf5_spec(list_file, tmp_path / "plain"))
    options = {"hdf5_dtype": "uint8", "compression": compression, "shard_size": 8}
    convert(hdf5_spec(list_file, tmp_path / "small", backend_options=options))
    found = datasets(tmp_path / "small" / "part-00000.h5")
    dtype, shape, chunks, used = found["data"]
    assert (dtype, shape, used) == (np.dtype("uint8"), (8, 3, 20, 24), compression)
    assert chunks[1:] == (3, 20, 24) and 1 <= chunks[0] <= 8  # whole samples per chunk
    assert found["label"][2][1:] == (4,)
    plain, small = open_reader(tmp_path / "plain"), open_reader(tmp_path / "small")
    assert len(plain) == len(small) == 12
    for i in range(12):
        a, b = plain.sample(i), small.sample(i)
        assert a.key == b.key and a.image == b.image and a.image.format == "raw"
        np.testing.assert_array_equal(a.labels, b.labels)
        assert plain.image_array(i).dtype == np.uint8


def test_lmdb_and_hdf5_conversions_hold_the_same_pixels_and_labels(image_set, tmp_path):
    list_file, rows = image_set
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "lmdb", workers=1, shuffle=True, seed=2))
    convert(hdf5_spec(list_file, tmp_path / "h5", shuffle=True, seed=2, backend_options={"shard_size": 7}))
    lmdb_reader, h5_reader = open_reader(tmp_path / "lmdb"), open_reader(tmp_path / "h5")
    assert len(lmdb_reader) == len(h5_reader) == 12
    for a, b in zip(lmdb_reader, h5_reader, strict=True):
        assert (a.index, a.key) == (b.index, b.key)
        assert a.image == b.image
        np.testing.assert_array_equal(a.labels, b.labels)


def test_lmdb_dataset_rewritten_through_the_hdf5_writer_round_trips(image_set, tmp_path):
    list_file, _ = image_set
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "lmdb", workers=1))
    source = open_reader(tmp_path / "lmdb")
    (tmp_path / "h5").mkdir()
    writer = Hdf5Writer(tmp_path / "h5", WriterOptions(num_labels=4, extra={"shard_size": 5}))
    for sample in source:
        writer.put(sample)
    files = writer.close()
    assert files["shard_counts"] == [5, 5, 2]
    back = open_reader(tmp_path / "h5" / "hdf5_list.txt")
    for i, sample in enumerate(source):
        again = back.sample(i)
        assert again.key == sample.key and again.image == sample.image
        np.testing.assert_array_equal(back.labels(i), sample.labels)


TASKS = textwrap.dedent(
    """
    num_labels = 4
    [[task]]
    name = "cls"
    slice = "0:1"
    kind = "softmax"
    classes = 3
    [[task]]
    name = "attr"
    columns = [1]
    kind = "sigmoid"
    [[task]]
    name = "reg"
    columns = [2, 3]
    kind = "euclidean"
    """
)


def write_tasks(path: Path, text: str = TASKS) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_task_datasets_hold_each_tasks_columns(image_set, tmp_path):
    from mtldata.tasks import load_tasks

    list_file, rows = image_set
    tasks = load_tasks(write_tasks(tmp_path / "tasks.toml"))
    assert [(t.name, t.start, t.stop) for t in tasks] == [("cls", 0, 1), ("attr", 1, 2), ("reg", 2, 4)]
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["convert", str(list_file), "-o", str(out), "--backend", "hdf5", "-j", "1", "-q"]
    result = runner.invoke(main, [*args, "--tasks", str(tmp_path / "tasks.toml"), "--task-datasets"])
    assert result.exit_code == 0, result.output
    found = datasets(out / "part-00000.h5")
    assert set(found) == {"data", "label", "key", "cls", "attr", "reg"}
    assert [found[n][1] for n in ("cls", "attr", "reg")] == [(12, 1), (12, 1), (12, 2)]
    with h5py.File(out / "part-00000.h5", "r") as f:
        labels = np.float32([r[1] for r in rows])
        np.testing.assert_array_equal(f["cls"][:], labels[:, 0:1])
        np.testing.assert_array_equal(f["attr"][:], labels[:, 1:2])
        np.testing.assert_array_equal(f["reg"][:], labels[:, 2:4])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["datasets"]["reg"]["columns"] == [2, 4]


def test_task_datasets_refuse_bad_names_and_mismatched_k(image_set, tmp_path):
    list_file, _ = image_set
    clash = {"num_labels": 4, "tasks": [["label", 0, 1]]}
    with pytest.raises(MtlDataError, match="'label' is reserved"):
        convert(hdf5_spec(list_file, tmp_path / "a", backend_options={"task_datasets": clash}))
    other_k = {"num_labels": 5, "tasks": [["cls", 0, 1]]}
    with pytest.raises(MtlDataError, match="defined over 5 labels but the data has 4"):
        convert(hdf5_spec(list_file, tmp_path / "b", backend_options={"task_datasets": other_k}))
    assert not list(tmp_path.glob("*.partial"))  # refused before anything was written
    result = CliRunner().invoke(main, ["convert", str(list_file), "--task-datasets", "--backend", "hdf5"])
    assert result.exit_code != 0 and "--task-datasets needs --tasks" in result.output
    result = CliRunner().invoke(main, ["convert", str(list_file), "--shard-size", "4"])
    assert result.exit_code != 0 and "--shard-size: only for --backend hdf5" in result.output


def test_varying_image_sizes_ask_for_a_resize(tmp_path):
    write_image(tmp_path / "a.jpg", size=(24, 20))
    write_image(tmp_path / "b.jpg", size=(30, 20))
    list_file = write_list(tmp_path / "l.txt", ["a.jpg 0", "b.jpg 1"])
    with pytest.raises(InputError) as info:
        convert(hdf5_spec(list_file, tmp_path / "out"))
    message = str(info.value)
    assert info.value.line == 2 and "b.jpg" in message and "3x20x30" in message and "3x20x24" in message
    assert "--resize-width" in message and "--resize-height" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    resized = ImageOptions(resize_width=16, resize_height=12)
    assert convert(hdf5_spec(list_file, tmp_path / "out", image=resized)).count == 2
    result = convert(hdf5_spec(list_file, tmp_path / "chk", check_size=True))
    assert result.count == 1 and result.skipped == 1


def test_encoded_images_cannot_go_to_hdf5(image_set, tmp_path):
    list_file, _ = image_set
    with pytest.raises(MtlDataError, match="HDF5 stores decoded pixels.*--backend lmdb"):
        convert(hdf5_spec(list_file, tmp_path / "out", image=ImageOptions(encoded=True)))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# --- datasets mtldata did not write ---------------------------------------------------------------


def test_caffe_fixture_h5_reads_as_stored(caffe_fixtures, tmp_path, monkeypatch):
    h5 = caffe_fixtures / "h5"
    with h5py.File(h5 / "train.h5", "r") as f:
        data, label = f["data"][:], f["label"][:]
    monkeypatch.chdir(tmp_path)  # the list's entry is found next to the list, not only in the CWD
    for source in (h5 / "train.h5", h5 / "list.txt"):
        reader = open_reader(source)
        assert len(reader) == 10
        assert reader.describe()["layout"] == (
            "HDF5 file" if source.suffix == ".h5" else "HDF5Data source list"
        )
        for i in range(10):
            np.testing.assert_array_equal(reader.labels(i), label[i])
            array = reader.image_array(i)
            assert array.dtype == np.float32
            np.testing.assert_array_equal(array, data[i])
            sample = reader.sample(i)
            assert sample.image.format == "float32" and sample.image.shape == (3, 32, 32)
            np.testing.assert_array_equal(
                np.frombuffer(sample.image.data, np.float32).reshape(3, 32, 32), data[i]
            )
        reader.close()


def test_caffe_fixture_h5_equals_the_transformed_lmdb_pair(caffe_fixtures):
    # train.h5 was built from mt/img_lmdb + mt/label_lmdb: (pixels - mean) * scale, labels copied.
    pair = open_reader(caffe_fixtures / "mt" / "img_lmdb", caffe_fixtures / "mt" / "label_lmdb")
    h5 = open_reader(caffe_fixtures / "h5" / "train.h5")
    mean = np.float32([104, 117, 123]).reshape(3, 1, 1)
    assert len(pair) == len(h5) == 10
    for i in range(10):
        sample = pair.sample(i)
        pixels = np.frombuffer(sample.image.data, np.uint8).reshape(sample.image.shape).astype(np.float32)
        np.testing.assert_array_equal((pixels - mean) * np.float32(0.00390625), h5.image_array(i))
        np.testing.assert_array_equal(sample.labels, h5.labels(i))
    assert pair.labels(2)[0] == -1  # the ignored sample


def test_legacy_lmdbs_read(caffe_fixtures):
    dump = json.loads((caffe_fixtures / "lmdb_dump.json").read_text())["databases"]
    raw = open_reader(caffe_fixtures / "lmdb" / "raw")
    records = dump["lmdb/raw"]["records"]
    assert len(raw) == len(records) == 14
    for i, record in enumerate(records):
        sample = raw.sample(i)
        assert sample.key == record["key"]
        assert sample.image.shape == (record["channels"], record["height"], record["width"])
        assert raw.labels(i).tolist() == [record["label"]]
    pair = open_reader(caffe_fixtures / "mt" / "img_lmdb", caffe_fixtures / "mt" / "label_lmdb")
    for i, record in enumerate(dump["mt/label_lmdb"]["records"]):
        assert pair.key(i) == record["key"]
        np.testing.assert_array_equal(pair.labels(i), np.float32(record["float_data"]))


def write_foreign_h5(path: Path, data: np.ndarray, label: np.ndarray, **more: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)
        for name, value in more.items():
            f.create_dataset(name, data=value)
    return path


def test_foreign_hdf5_dtypes_and_label_shapes(tmp_path):
    rng = np.random.default_rng(0)
    data64 = rng.normal(size=(6, 2, 4, 5))  # float64
    a = write_foreign_h5(tmp_path / "a.h5", data64, np.arange(6, dtype=np.int64))  # (N,) int labels
    reader = open_reader(a)
    assert len(reader) == 6
    assert reader.labels(3).tolist() == [3.0] and reader.labels(3).dtype == np.float32
    np.testing.assert_array_equal(reader.image_array(4), data64[4].astype(np.float32))
    labels4 = rng.normal(size=(5, 3, 1, 1)).astype(np.float32)
    b = write_foreign_h5(tmp_path / "b.h5", rng.integers(0, 256, (5, 1, 3, 3), dtype=np.uint8), labels4)
    reader = open_reader(b)
    np.testing.assert_array_equal(reader.labels(2), labels4[2].reshape(3))
    sample = reader.sample(2)
    assert sample.image.format == "raw" and sample.image.shape == (1, 3, 3)
    ints = rng.integers(0, 256, (4, 3, 2, 2)).astype(np.int32)
    c = write_foreign_h5(tmp_path / "c.h5", ints, np.ones((4, 2), np.float64))
    np.testing.assert_array_equal(open_reader(c).image_array(1), ints[1].astype(np.uint8))
    features = write_foreign_h5(tmp_path / "d.h5", np.ones((3, 7), np.float32), np.zeros((3, 2), np.float32))
    assert open_reader(features).sample(0).image.shape == (7, 1, 1)  # Caffe's (N, D) as D x 1 x 1


@pytest.mark.parametrize("backend", ["lmdb", "hdf5"])
def test_sample_view_reads_what_sample_reads_and_sample_outlives_the_reader(image_set, tmp_path, backend):
    list_file, _ = image_set
    out = tmp_path / "ds"
    convert(
        ConvertSpec(
            list_file=list_file,
            output=out,
            backend=backend,
            image=ImageOptions(resize_height=20, resize_width=24),
            workers=0,
        )
    )
    reader = open_reader(out)
    kept = [reader.sample(i) for i in range(len(reader))]
    for i in reversed(range(len(reader))):
        view = reader.sample_view(i)
        assert view.key == kept[i].key and view.image.shape == kept[i].image.shape
        assert bytes(view.image.data) == bytes(kept[i].image.data)
        np.testing.assert_array_equal(view.labels, kept[i].labels)
    reader.close()
    # what sample() returned is the caller's own: still whole after the reader closed
    again = open_reader(out)
    for i, sample in enumerate(kept):
        assert bytes(sample.image.data) == bytes(again.sample(i).image.data)
    again.close()


def test_rows_read_in_blocks_equal_the_files_in_any_order(tmp_path, monkeypatch):
    from mtldata.storage.backends.hdf5 import _OpenFile

    monkeypatch.setattr(_OpenFile, "BLOCK_ROWS", 3)  # many blocks, few kept: evictions happen
    monkeypatch.setattr(_OpenFile, "CACHED_BLOCKS", 2)
    rng = np.random.default_rng(5)
    files, expect = [], []
    for k, n in enumerate((7, 5)):
        data = rng.integers(0, 256, (n, 3, 4, 5)).astype(np.float32)
        label = rng.normal(size=(n, 4)).astype(np.float32)
        keys = np.array([f"{k}-{i}".encode() for i in range(n)])
        files.append(write_foreign_h5(tmp_path / f"{k}.h5", data, label, key=keys))
        expect += [(data[i], label[i], f"{k}-{i}") for i in range(n)]
    (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in files))
    reader = open_reader(tmp_path / "list.txt")
    order = rng.permutation(len(expect)).tolist() * 2
    for i in order:
        data, label, key = expect[i]
        np.testing.assert_array_equal(reader.image_array(i), data)
        np.testing.assert_array_equal(reader.labels(i), label)
        assert reader.key(i) == key
    # what a reader returns is the caller's: changing it changes no later read
    first = reader.labels(0)
    first[:] = 99
    image = reader.image_array(0)
    image[:] = 7
    np.testing.assert_array_equal(reader.labels(0), expect[0][1])
    np.testing.assert_array_equal(reader.image_array(0), expect[0][0])


@pytest.mark.parametrize("bad", [np.nan, 256.0, -1.0, 3.5, np.inf])
def test_pixel_data_that_is_not_integral_0_to_255_names_the_file_and_sample(tmp_path, bad):
    data = np.full((3, 1, 2, 2), 10.0, np.float32)
    data[1, 0, 1, 1] = bad
    path = write_foreign_h5(tmp_path / "px.h5", data, np.zeros((3, 1), np.float32))
    with h5py.File(path, "a") as f:
        f.attrs["mtldata_data"] = "pixels"  # as mtldata writes it: integral pixels, read as uint8
    reader = open_reader(path)
    assert reader.image_array(0).dtype == np.uint8
    with pytest.raises(DatasetFormatError, match=r"px\.h5: sample 1 of 'data'.*not integral pixels"):
        reader.image_array(1)
    assert reader.image_array(2).tolist() == [[[10, 10], [10, 10]]]


def test_hdf5_list_resolution_and_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    (tmp_path / "sub").mkdir()
    write_foreign_h5(tmp_path / "sub" / "x.h5", rng.normal(size=(2, 1, 2, 2)), np.zeros((2, 3)))
    write_foreign_h5(tmp_path / "y.h5", rng.normal(size=(3, 1, 2, 2)), np.ones((3, 3)))
    listing = write_list(tmp_path / "sub" / "list.txt", ["x.h5", "y.h5"])
    monkeypatch.chdir(tmp_path)  # x.h5 is next to the list, y.h5 only in the CWD (where Caffe looks)
    reader = open_reader(listing)
    assert len(reader) == 5 and reader.labels(4).tolist() == [1, 1, 1]
    with pytest.raises(DatasetFormatError, match=r"list.txt:1: HDF5 file 'nope.h5' not found"):
        open_reader(write_list(tmp_path / "sub" / "list.txt", ["nope.h5"]))
    write_foreign_h5(tmp_path / "z.h5", rng.normal(size=(2, 1, 2, 2)), np.zeros((2, 4)))
    with pytest.raises(DatasetFormatError, match="must agree"):
        open_reader(write_list(tmp_path / "two.txt", ["y.h5", "z.h5"]))
    write_image(tmp_path / "img.jpg")
    with pytest.raises(DatasetFormatError, match="not an HDF5 file; is images.txt an image list"):
        open_reader(write_list(tmp_path / "images.txt", ["img.jpg 1 0"]))
    with h5py.File(tmp_path / "nolabel.h5", "w") as f:
        f["data"] = np.zeros((2, 3))
        f["cls"] = np.zeros((2,))
    with pytest.raises(DatasetFormatError, match="no 'label' dataset \\(it has cls, data\\)"):
        open_reader(tmp_path / "nolabel.h5")
    bad = write_foreign_h5(tmp_path / "bad.h5", np.zeros((2, 1, 2, 2)), np.zeros((2, 3, 2)))
    with pytest.raises(DatasetFormatError, match=r"\(N,\), \(N, K\) or \(N, K, 1, 1\)"):
        open_reader(bad)


def test_info_works_on_every_kind_of_dataset(caffe_fixtures, image_set, tmp_path):
    list_file, _ = image_set
    convert(hdf5_spec(list_file, tmp_path / "ours", backend_options={"shard_size": 5}))
    write_foreign_h5(tmp_path / "f.h5", np.zeros((4, 3, 2, 2)), np.arange(8.0).reshape(4, 2, 1, 1))
    cases = [
        ([str(tmp_path / "ours")], "hdf5 (mtldata)", "samples:   12"),
        ([str(tmp_path / "ours" / "hdf5_list.txt")], "hdf5 (mtldata)", "samples:   12"),
        ([str(caffe_fixtures / "h5" / "train.h5")], "hdf5 (HDF5 file)", "image:     3x32x32"),
        ([str(caffe_fixtures / "h5" / "list.txt")], "HDF5Data source list", "K=5"),
        ([str(tmp_path / "f.h5")], "hdf5 (HDF5 file)", "K=2"),
        ([str(caffe_fixtures / "lmdb" / "raw")], "convert_imageset", "samples:   14"),
        (
            [str(caffe_fixtures / "mt" / "img_lmdb"), "--labels", str(caffe_fixtures / "mt" / "label_lmdb")],
            "multi-label",
            "K=5",
        ),
    ]
    runner = CliRunner()
    for args, *expected in cases:
        result = runner.invoke(main, ["info", *args])
        assert result.exit_code == 0, (args, result.output)
        for text in expected:
            assert text in result.output, (args, result.output)
    result = runner.invoke(main, ["info", "--json", str(caffe_fixtures / "h5" / "train.h5")])
    assert json.loads(result.output)["datasets"]["data"]["shape"] == [10, 3, 32, 32]


# --- resume -----------------------------------------------------------------------------------------


def read_all(path: Path) -> list[tuple[str, bytes, list[float]]]:
    reader = open_reader(path)
    out = [(s.key, s.image.data, s.labels.tolist()) for s in reader]
    reader.close()
    return out


def shard_contents(path: Path) -> list[dict[str, np.ndarray]]:
    out = []
    for shard in sorted(path.glob("part-*.h5")):
        with h5py.File(shard, "r") as f:
            out.append({name: f[name][:] for name in f})
    return out


def assert_same_hdf5(a: Path, b: Path) -> None:
    left, right = shard_contents(a), shard_contents(b)
    assert len(left) == len(right)
    for x, y in zip(left, right, strict=True):
        assert set(x) == set(y)
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])


class Stop(Exception):
    pass


@pytest.mark.parametrize("stop_at", [2, 7, 11])
def test_interrupted_hdf5_conversion_resumes_to_the_same_dataset(image_set, tmp_path, stop_at):
    list_file, _ = image_set
    options = {"shard_size": 5}
    convert(hdf5_spec(list_file, tmp_path / "ref", shuffle=True, seed=3, backend_options=options))

    def progress(done: int, total: int) -> None:
        if done == stop_at:
            raise Stop

    out = tmp_path / "out"
    spec = hdf5_spec(list_file, out, shuffle=True, seed=3, backend_options=options, commit_every=4)
    with pytest.raises(Stop):
        convert(spec, progress)
    assert (tmp_path / "out.partial").is_dir() and not out.exists()
    with pytest.raises(DatasetStateError, match="--resume"):
        convert(spec)
    result = convert(hdf5_spec(list_file, out, shuffle=True, seed=3, backend_options=options, resume=True))
    assert result.count == 12
    assert_same_hdf5(out, tmp_path / "ref")
    assert read_all(out) == read_all(tmp_path / "ref")


KILLER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from mtldata.convert.pipeline import ConvertSpec, convert

    def progress(done, total):
        if done == 8:
            # The writer runs on a thread of its own: let it seal the first shard before the kill.
            shard = Path(sys.argv[2] + ".partial") / "part-00000.h5"
            deadline = time.monotonic() + 20
            while not shard.is_file() and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)

    spec = ConvertSpec(list_file=Path(sys.argv[1]), output=Path(sys.argv[2]), workers=1, commit_every=3,
                       backend="hdf5", backend_options={"shard_size": 5, "compression": "gzip"})
    convert(spec, progress)
    """
)


def test_kill_9_then_resume_equals_an_uninterrupted_hdf5_run(image_set, tmp_path):
    list_file, _ = image_set
    options = {"shard_size": 5, "compression": "gzip"}
    convert(hdf5_spec(list_file, tmp_path / "ref", backend_options=options))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(list_file), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr
    assert (tmp_path / "out.partial" / "part-00000.h5").is_file()  # sealed after the commit at 3
    convert(hdf5_spec(list_file, out, backend_options=options, resume=True))
    assert_same_hdf5(out, tmp_path / "ref")


def make_sample(i: int, shape=(1, 2, 2)) -> Sample:
    pixels = np.full(shape, i, np.uint8)
    return Sample(i, f"{i:08d}_s{i}.jpg", ImagePayload(pixels.tobytes(), False, shape), np.float32([i, -i]))


def test_writer_truncates_torn_pending_tails_and_sealed_shards(tmp_path):
    options = WriterOptions(num_labels=2, extra={"shard_size": 3})
    writer = Hdf5Writer(tmp_path, options)
    for i in range(8):  # shards 0..2 and 3..5 sealed, 6 and 7 pending
        writer.put(make_sample(i))
    writer.commit()
    writer._fh.close()  # the process dies; a half-written frame is left behind
    pending = tmp_path / "part-00002.pending"
    pending.write_bytes(pending.read_bytes() + b"\x08\x00\x00")
    writer = Hdf5Writer(tmp_path, options)
    assert writer.counts == [3, 3] and writer.pending_count == 2
    writer.truncate_from(4)  # splits shard 1: sample 3 goes back to pending
    assert writer.counts == [3] and writer.pending_count == 1
    assert not (tmp_path / "part-00001.h5").exists()
    for i in range(4, 8):
        writer.put(make_sample(i))
    files = writer.close()
    assert files["shard_counts"] == [3, 3, 2]
    reader = open_reader(tmp_path / "hdf5_list.txt")
    assert [reader.key(i) for i in range(8)] == [f"{i:08d}_s{i}.jpg" for i in range(8)]
    assert [int(reader.image_array(i)[0, 0, 0]) for i in range(8)] == list(range(8))
    assert not os.listdir(tmp_path) or not list(tmp_path.glob("*.pending"))


def test_shard_size_beyond_int_max_values_is_refused(tmp_path):
    write_image(tmp_path / "a.jpg", size=(64, 64))
    list_file = write_list(tmp_path / "l.txt", ["a.jpg 0"])
    with pytest.raises(InputError, match=r"INT_MAX.*--shard-size 174762 or less"):
        convert(hdf5_spec(list_file, tmp_path / "out", backend_options={"shard_size": 10**6}))
