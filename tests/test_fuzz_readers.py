"""Property tests of every reader of untrusted files: tasks.toml, prototxt text, caffemodel and
binaryproto bytes, Datum records, manifests and HDF5 layouts.

Each input, however odd, either reads as a valid value or raises an MtlDataError subclass whose
message names the file; never another exception, never a huge allocation (declared sizes are
generated far past memory, so an allocation sized by them would fail the test with MemoryError).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtldata.caffe.blob import read_blob_proto, read_mean_file
from mtldata.caffe.caffe_pb2 import BlobProto, Datum, NetParameter
from mtldata.caffe.prototxt import caffemodel_weights, read_caffemodel, read_net, read_solver
from mtldata.errors import MtlDataError
from mtldata.storage.backends import open_reader, read_manifest
from mtldata.storage.backends.hdf5 import open_hdf5
from mtldata.tasks import load_tasks

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@contextmanager
def scratch():
    """A fresh folder per example (tmp_path is one folder per test, shared by its examples)."""
    folder = Path(tempfile.mkdtemp(prefix="mtldata-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def refuses_cleanly(call, file: Path):
    """Run `call`; an MtlDataError must name `file`. Returns the value, or None when refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown-field warnings are fine
            return call()
    except MtlDataError as exc:
        assert file.name in str(exc), f"{type(exc).__name__} does not name {file.name}: {exc}"
        return None


# -------------------------------------------------------------------------------------------------
# tasks.toml

toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["softmax", "sigmoid", "euclidean", "0:1", "1:3", "2:2", "a", "x-y"]),
)
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
task_keys = st.sampled_from(
    [
        "name",
        "slice",
        "columns",
        "kind",
        "classes",
        "ignore_label",
        "loss_weight",
        "label_names",
        "class_names",
        "x",
    ]
)
task_tables = st.dictionaries(task_keys, toml_values, max_size=7)
tasks_docs = st.fixed_dictionaries(
    {"task": st.lists(task_tables, max_size=4)},
    optional={
        "num_labels": st.one_of(st.integers(-3, 2**40), toml_scalars),
        "slice_points": toml_values,
        "allow_overlap": toml_scalars,
    },
)


def toml_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if value != value
            else ("inf" if value > 0 else "-inf")
            if value in (float("inf"), -float("inf"))
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_text(v) for v in value) + "]"


def dump_toml(doc: dict) -> str:
    lines = [f"{k} = {toml_text(v)}" for k, v in doc.items() if k != "task"]
    for table in doc["task"]:
        lines.append("[[task]]")
        lines += [f"{k} = {toml_text(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@FUZZ
@given(doc=tasks_docs, k=st.one_of(st.none(), st.integers(1, 12)))
def test_tasks_toml_of_any_shape_reads_or_is_refused_naming_the_file(doc, k):
    with scratch() as folder:
        path = folder / "tasks.toml"
        path.write_text(dump_toml(doc), encoding="utf-8")
        taskset = refuses_cleanly(lambda: load_tasks(path, num_labels=k), path)
        if taskset is not None:
            assert all(0 <= t.start < t.stop <= taskset.num_labels for t in taskset)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_tasks_toml_bytes_read_or_are_refused_naming_the_file(raw):
    with scratch() as folder:
        path = folder / "tasks.toml"
        path.write_bytes(raw)
        refuses_cleanly(lambda: load_tasks(path), path)


# -------------------------------------------------------------------------------------------------
# prototxt text

PROTOTXT_TOKENS = [
    "layer", "{", "}", "name:", "type:", '"Data"', '"Slice"', "bottom:", "top:", '"data"', "include",
    "phase:", "TRAIN", "TEST", "slice_param", "slice_point:", "3", "-1", "1e999", "data_param", "source:",
    "batch_size:", "convolution_param", "num_output:", "kernel_size:", "<", ">", "[", "]", ",", ";", ":",
    "layers", "net:", "base_lr:", "0.01", "max_iter:", "#", "\n", "loss_weight:", "blobs", "shape", "dim:",
    "999999999999", '"\\x00"', "'", "unknown_field:", "[ext.x]",
]  # fmt: skip


@FUZZ
@given(tokens=st.lists(st.sampled_from(PROTOTXT_TOKENS), max_size=40), noise=st.text(max_size=20))
def test_prototxt_text_parses_or_is_refused_naming_the_file(tokens, noise):
    with scratch() as folder:
        path = folder / "net.prototxt"
        path.write_text(" ".join(tokens) + noise, encoding="utf-8")
        refuses_cleanly(lambda: read_net(path), path)
        refuses_cleanly(lambda: read_solver(path), path)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_prototxt_bytes_parse_or_are_refused_naming_the_file(raw):
    with scratch() as folder:
        path = folder / "net.prototxt"
        path.write_bytes(raw)
        refuses_cleanly(lambda: read_net(path), path)


# -------------------------------------------------------------------------------------------------
# caffemodel and binaryproto bytes

dims = st.lists(st.integers(-2, 2**40), max_size=5)


@st.composite
def blobs(draw) -> BlobProto:
    blob = BlobProto()
    if draw(st.booleans()):
        blob.shape.dim.extend(draw(dims))
    else:
        for name in draw(st.sets(st.sampled_from(["num", "channels", "height", "width"]))):
            setattr(blob, name, draw(st.integers(-2, 2**31 - 1)))
    blob.data.extend(draw(st.lists(st.floats(width=32, allow_nan=True), max_size=8)))
    if draw(st.booleans()):
        blob.double_data.extend(draw(st.lists(st.floats(), max_size=4)))
    return blob


@st.composite
def caffemodels(draw) -> bytes:
    net = NetParameter()
    for _ in range(draw(st.integers(0, 3))):
        layer = net.layer.add()
        layer.name = draw(st.sampled_from(["conv1", "fc", "conv1", ""]))
        layer.type = draw(st.sampled_from(["Convolution", "InnerProduct", "Data"]))
        for _ in range(draw(st.integers(0, 2))):
            layer.blobs.add().CopyFrom(draw(blobs()))
    raw = net.SerializeToString()
    cut = draw(st.integers(0, len(raw)))
    return raw[:cut] + draw(st.binary(max_size=8)) if draw(st.booleans()) else raw


@FUZZ
@given(raw=st.one_of(caffemodels(), st.binary(max_size=200)))
def test_caffemodel_bytes_read_or_are_refused_naming_the_file(raw):
    with scratch() as folder:
        path = folder / "weights.caffemodel"
        path.write_bytes(raw)
        net = refuses_cleanly(lambda: read_caffemodel(path), path)
        if net is not None:

            def weights():
                try:
                    return caffemodel_weights(net)
                except MtlDataError as exc:
                    raise MtlDataError(f"{path}: {exc}") from None

            refuses_cleanly(weights, path)


@FUZZ
@given(raw=st.one_of(blobs().map(lambda b: b.SerializeToString()), st.binary(max_size=120)))
def test_binaryproto_bytes_read_or_are_refused_naming_the_file(raw):
    with scratch() as folder:
        path = folder / "mean.binaryproto"
        path.write_bytes(raw)
        array = refuses_cleanly(lambda: read_blob_proto(path), path)
        if array is not None:
            assert array.dtype == np.float32 and array.size <= 16
        refuses_cleanly(lambda: read_mean_file(path), path)


# -------------------------------------------------------------------------------------------------
# Datum records in a real LMDB


@st.composite
def datum_values(draw) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=64))
    datum = Datum()
    for name in draw(st.sets(st.sampled_from(["channels", "height", "width", "label"]))):
        setattr(datum, name, draw(st.integers(-(2**31), 2**31 - 1)))
    if draw(st.booleans()):
        datum.data = draw(st.binary(max_size=48))
    if draw(st.booleans()):
        datum.encoded = draw(st.booleans())
    datum.float_data.extend(draw(st.lists(st.floats(width=32, allow_nan=True), max_size=6)))
    raw = datum.SerializeToString()
    return raw[: draw(st.integers(0, len(raw)))] if draw(st.booleans()) else raw


@FUZZ
@given(images=st.lists(datum_values(), min_size=1, max_size=3), labels=st.lists(datum_values(), max_size=3))
def test_datum_records_read_or_are_refused_naming_the_lmdb(images, labels):
    with scratch() as folder:
        dirs = {"img_lmdb": images, "lbl_lmdb": labels}
        for name, values in dirs.items():
            env = lmdb.open(str(folder / name), map_size=1 << 22)
            with env.begin(write=True) as txn:
                for i, value in enumerate(values):
                    txn.put(f"{i:08d}_k".encode(), value)
            env.close()
        for label_dir in (None, folder / "lbl_lmdb"):

            def read_all(label_dir=label_dir):
                reader = open_reader(folder / "img_lmdb", label_dir)
                try:
                    for i in range(len(reader)):
                        sample = reader.sample(i)
                        assert sample.labels.dtype == np.float32
                        reader.labels(i)
                finally:
                    reader.close()

            refuses_cleanly(read_all, folder / ("img_lmdb" if label_dir is None else "_lmdb"))


# -------------------------------------------------------------------------------------------------
# manifests (JSON of any shape) over a real dataset


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory) -> Path:
    from train_helpers import make_dataset

    ds, _ = make_dataset(tmp_path_factory.mktemp("fuzz-ds"), count=4, size=8)
    return ds


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-5, 2**40), st.floats(allow_nan=True), st.text(max_size=10)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
manifest_fields = st.sampled_from(
    ["backend", "count", "num_labels", "label_names", "image", "files", "errors", "label_stats", "source",
     "options", "checksums", "shard", "complete", "image.shape", "files.images", "files.labels",
     "errors.file", "errors.count", "label_stats.0", "label_stats.0.values"]
)  # fmt: skip


def _set(doc, dotted: str, value) -> None:
    """Set a dotted field ("image.shape", "label_stats.0") where the document's shape allows it."""
    *parents, last = dotted.split(".")
    for part in parents:
        doc = _child(doc, part)
        if doc is None:
            return
    if isinstance(doc, dict):
        doc[last] = value
    elif isinstance(doc, list) and last.isdigit() and int(last) < len(doc):
        doc[int(last)] = value


def _child(doc, part: str):
    if isinstance(doc, dict):
        child = doc.setdefault(part, {})
    elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
        child = doc[int(part)]
    else:
        return None
    return child if isinstance(child, (dict, list)) else None


@FUZZ
@given(
    changes=st.lists(st.tuples(manifest_fields, json_values), max_size=3),
    whole=st.one_of(st.none(), json_values),
)
def test_manifests_of_any_shape_read_or_are_refused_naming_the_file(real_dataset, changes, whole):
    from mtldata.inspect.info import dataset_info

    with scratch() as folder:
        ds = folder / "ds"
        shutil.copytree(real_dataset, ds)
        doc = json.loads((ds / "manifest.json").read_text())
        for field, value in changes:
            _set(doc, field, value)
        (ds / "manifest.json").write_text(json.dumps(doc if whole is None else whole))

        def read():
            manifest = read_manifest(ds)
            reader = open_reader(ds)
            try:
                for i in range(len(reader)):
                    reader.sample(i)
            finally:
                reader.close()
            dataset_info(ds)
            return manifest

        refuses_cleanly(read, ds)


# -------------------------------------------------------------------------------------------------
# HDF5 layouts in real h5py files

h5_dtypes = st.sampled_from(["u1", "f4", "f8", "i2", "u8", "?", "S4", "c8"])
h5_shapes = st.lists(st.one_of(st.integers(0, 4), st.integers(2**20, 2**40)), min_size=0, max_size=5)


@st.composite
def h5_layouts(draw) -> dict:
    layout = {}
    for name in ("data", "label", "key"):
        if draw(st.integers(0, 5)) == 0:
            continue  # missing
        layout[name] = (tuple(draw(h5_shapes)), draw(h5_dtypes))
    if draw(st.booleans()):
        layout["attr"] = draw(st.sampled_from(["pixels", b"pixels", 3, "other"]))
    return layout


def _write_h5(path: Path, layout: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for name in ("data", "label", "key"):
            if name not in layout:
                continue
            shape, dtype = layout[name]
            size = int(np.prod(shape)) if shape else 1
            if size <= 4096:  # small: real values (NaN and out-of-range pixels included)
                values = (
                    rng.normal(0, 200, size) if dtype[0] in "fc" else rng.integers(0, 300, size)
                ).astype(dtype)
                f.create_dataset(name, data=values.reshape(shape))
            else:  # declared only: HDF5 allocates on write, so the file stays small
                f.create_dataset(name, shape, dtype)
        if "attr" in layout:
            f.attrs["mtldata_data"] = layout["attr"]


@FUZZ
@given(layout=h5_layouts(), seed=st.integers(0, 100))
def test_hdf5_layouts_read_or_are_refused_naming_the_file(layout, seed, monkeypatch):
    monkeypatch.setenv("MTLDATA_MAX_SAMPLE_BYTES", str(1 << 20))  # any larger sample must be refused
    with scratch() as folder:
        path = folder / "part.h5"
        try:
            _write_h5(path, layout, seed)
        except (ValueError, TypeError, OSError):
            return  # a layout h5py itself cannot write (e.g. a string dtype from these values)

        def read_all():
            reader = open_hdf5(path)
            try:
                for i in range(min(len(reader), 3)):
                    sample = reader.sample(i)
                    assert len(sample.image.data) <= 1 << 20
                    reader.labels(i)
                    reader.key(i)
            finally:
                reader.close()

        refuses_cleanly(read_all, path)
