"""Task specs, tasks.toml, label checks and the Slice-layer label slicer (against real Caffe output)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CAFFE_FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from mtldata.errors import MtlDataError, TaskSpecError
from mtldata.tasks import LabelSlicer, TaskSet, TaskSpec, dump_tasks, load_tasks

FIXTURES = CAFFE_FIXTURES

EXAMPLE = """
num_labels = 5            # optional; checked against the dataset when given
[[task]]
name = "cls"
slice = "0:1"
kind = "softmax"
classes = 3
ignore_label = -1
loss_weight = 1.0
[[task]]
name = "attr"
slice = "1:4"
kind = "sigmoid"
loss_weight = 0.5
[[task]]
name = "reg"
slice = "4:5"
kind = "euclidean"
loss_weight = 2.0
"""

# The same three tasks, Caffe style: the Slice layer's points, tasks in order.
CAFFE_STYLE = """
slice_points = [1, 4]
[[task]]
name = "cls"
kind = "softmax"
classes = 3
ignore_label = -1
[[task]]
name = "attr"
kind = "sigmoid"
loss_weight = 0.5
[[task]]
name = "reg"
kind = "euclidean"
loss_weight = 2.0
"""


@pytest.fixture(scope="module")
def fixtures() -> Path:
    if not (FIXTURES / "README.md").is_file():
        pytest.skip(f"Caffe golden fixtures not found at {FIXTURES}")
    return FIXTURES


# --- parsing ---------------------------------------------------------------------------------------


def test_load_explicit_slices():
    ts = load_tasks(EXAMPLE)
    assert ts.num_labels == 5
    assert ts.names == ("cls", "attr", "reg")
    cls, attr, reg = ts.tasks
    assert (cls.columns, cls.kind, cls.classes, cls.ignore_label) == (slice(0, 1), "softmax", 3, -1)
    assert (attr.columns, attr.width, attr.kind, attr.ignore_label) == (slice(1, 4), 3, "sigmoid", None)
    assert (reg.columns, reg.kind) == (slice(4, 5), "euclidean")
    assert ts.loss_weights == {"cls": 1.0, "attr": 0.5, "reg": 2.0}
    assert ts.slice_points == (1, 4)
    assert ts["attr"] is attr


def test_columns_list_and_default_loss_weight():
    text = EXAMPLE.replace('slice = "1:4"', "columns = [1, 2, 3]").replace('slice = "0:1"', "columns = [0]")
    text = text.replace("loss_weight = 1.0\n", "")
    assert load_tasks(text) == load_tasks(EXAMPLE)
    assert load_tasks(text)["cls"].loss_weight == 1.0  # Caffe's default


def test_caffe_slice_points_give_the_same_tasks():
    assert load_tasks(CAFFE_STYLE, num_labels=5) == load_tasks(EXAMPLE)
    assert load_tasks("num_labels = 5\n" + CAFFE_STYLE) == load_tasks(EXAMPLE)


def test_equal_split_like_slice_without_slice_point():
    text = "num_labels = 6\n" + "".join(f'[[task]]\nname = "t{i}"\nkind = "euclidean"\n' for i in range(3))
    ts = load_tasks(text)
    assert [t.columns for t in ts] == [slice(0, 2), slice(2, 4), slice(4, 6)]
    unsized = text.replace("num_labels = 6\n", "")
    assert load_tasks(unsized, num_labels=6) == ts  # K from the dataset
    with pytest.raises(TaskSpecError, match="cannot split 5 labels equally") as err:
        load_tasks(unsized, num_labels=5)
    assert err.value.field == "num_labels"
    with pytest.raises(TaskSpecError, match="needs num_labels"):
        load_tasks(unsized)


def test_num_labels_is_inferred_from_explicit_slices():
    ts = load_tasks(EXAMPLE.replace("num_labels = 5", ""))
    assert ts.num_labels == 5


def test_gaps_and_allowed_overlap():
    gap = load_tasks('[[task]]\nname = "a"\nslice = "2:4"\nkind = "sigmoid"\n', num_labels=6)
    assert gap.num_labels == 6 and gap.slice_points is None
    overlap = """
    allow_overlap = true
    [[task]]
    name = "all"
    slice = "0:3"
    kind = "euclidean"
    [[task]]
    name = "first"
    slice = "0:1"
    kind = "euclidean"
    """
    assert load_tasks(overlap).allow_overlap
    with pytest.raises(TaskSpecError, match="overlap task 'all'") as err:
        load_tasks(overlap.replace("allow_overlap = true", ""))
    assert (err.value.task, err.value.field) == ("first", "columns")
    assert "columns 0:1 overlap task 'all' (0:3)" in str(err.value)


def test_load_from_file_and_errors_name_the_file(tmp_path):
    path = tmp_path / "tasks.toml"
    path.write_text(EXAMPLE, encoding="utf-8")
    assert load_tasks(path) == load_tasks(str(path)) == load_tasks(EXAMPLE)
    path.write_text(EXAMPLE.replace("classes = 3", "classes = 1"), encoding="utf-8")
    with pytest.raises(TaskSpecError) as err:
        load_tasks(path)
    assert str(err.value).startswith(f"{path}: task 'cls': field 'classes': ")
    assert (err.value.file, err.value.task, err.value.field) == (str(path), "cls", "classes")
    with pytest.raises(TaskSpecError, match="cannot read"):
        load_tasks(tmp_path / "missing.toml")
    path.write_text("[[task]\n", encoding="utf-8")
    with pytest.raises(TaskSpecError, match="not valid TOML"):
        load_tasks(path)


BAD = [
    # (replace in EXAMPLE, by, task, field, message part)
    ('slice = "0:1"', 'slice = "0:2"', "cls", "columns", "exactly 1 column"),
    ("classes = 3\n", "", "cls", "classes", "needs its number of classes"),
    ('slice = "4:5"', 'slice = "4:6"', "reg", "columns", "reach past num_labels = 5"),
    ('slice = "4:5"', 'slice = "3:5"', "reg", "columns", "overlap task 'attr'"),
    ('slice = "4:5"', 'slice = "5:4"', "reg", "slice", "start < stop"),
    ('slice = "4:5"', 'slice = "4-5"', "reg", "slice", "start:stop"),
    ('kind = "sigmoid"', 'kind = "logistic"', "attr", "kind", "softmax, sigmoid, euclidean"),
    ('kind = "sigmoid"', 'kind = "sigmoid"\nclasses = 2', "attr", "classes", "softmax tasks only"),
    ('kind = "euclidean"', 'kind = "euclidean"\nignore_label = -1', "reg", "ignore_label", "EuclideanLoss"),
    ("loss_weight = 0.5", "loss_weight = -1.0", "attr", "loss_weight", ">= 0"),
    ("loss_weight = 0.5", 'loss_weight = "half"', "attr", "loss_weight", "a number"),
    ("loss_weight = 0.5", "lossweight = 0.5", "attr", "lossweight", "unknown key"),
    ("loss_weight = 0.5", 'label_names = ["x", "y"]', "attr", "label_names", r"one name per column \(3\)"),
    ('name = "reg"', 'name = "attr"', "attr", "name", "two tasks have this name"),
    ('name = "reg"', 'name = "a/b"', "a/b", "name", "a task name is"),
    ("ignore_label = -1", "ignore_label = 0.5", "cls", "ignore_label", "an integer"),
]


@pytest.mark.parametrize("old, new, task, field, message", BAD)
def test_spec_errors_name_task_and_field(old, new, task, field, message):
    assert old in EXAMPLE
    with pytest.raises(TaskSpecError, match=message) as err:
        load_tasks(EXAMPLE.replace(old, new, 1))
    assert (err.value.task, err.value.field) == (task, field)
    assert f"task {task!r}" in str(err.value) and f"field {field!r}" in str(err.value)
    assert isinstance(err.value, MtlDataError)


@pytest.mark.parametrize(
    "text, kwargs, field, message",
    [
        (CAFFE_STYLE, {}, "num_labels", "slice_points needs num_labels"),
        (CAFFE_STYLE.replace("[1, 4]", "[1]"), {"num_labels": 5}, "slice_points", "make 2 slices but"),
        (CAFFE_STYLE.replace("[1, 4]", "[4, 1]"), {"num_labels": 5}, "slice_points", "increase strictly"),
        (CAFFE_STYLE.replace("[1, 4]", "[1, 5]"), {"num_labels": 5}, "slice_points", "increase strictly"),
        (EXAMPLE, {"num_labels": 6}, "num_labels", "the file says 5 but the dataset has 6"),
        ("num_tasks = 2\n" + EXAMPLE, {}, "num_tasks", "unknown top-level key"),
        ("num_labels = 5\n", {}, "task", r"\[\[task\]\]"),
        ("slice_points = [1, 4]\n" + EXAMPLE, {}, "slice_points", "not both"),
    ],
)
def test_layout_errors(text, kwargs, field, message):
    with pytest.raises(TaskSpecError, match=message) as err:
        load_tasks(text, **kwargs)
    assert err.value.field == field and err.value.file == "<tasks text>"


def test_every_task_needs_a_slice_once_one_has_one():
    text = EXAMPLE.replace('slice = "1:4"\n', "")
    with pytest.raises(TaskSpecError, match="every task needs a slice") as err:
        load_tasks(text)
    assert err.value.task == "attr"


def test_programmatic_specs_and_pickling():
    spec = TaskSpec("cls", (0, 1), "softmax", classes=3, class_names=["a", "b", "c"])
    assert spec.columns == slice(0, 1) and spec.class_names == ("a", "b", "c")
    assert hash(spec) == hash(TaskSpec("cls", slice(0, 1), "softmax", classes=3, class_names=("a", "b", "c")))
    with pytest.raises(TaskSpecError, match="one name per class"):
        TaskSpec("cls", slice(0, 1), "softmax", classes=3, class_names=["a"])
    with pytest.raises(TaskSpecError, match="at least one task"):
        TaskSet([], num_labels=3)
    err = TaskSpecError("bad", file="t.toml", task="cls", field="classes")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.task, again.field) == (str(err), "cls", "classes")


# --- dump -> load round trip -----------------------------------------------------------------------

_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,8}", fullmatch=True)
_weights = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False) | st.integers(0, 5)


@st.composite
def tasksets(draw) -> TaskSet:
    names = draw(st.lists(_names, min_size=1, max_size=5, unique=True))
    tasks, position = [], 0
    for name in names:
        position += draw(st.integers(0, 2))  # columns no task owns
        kind = draw(st.sampled_from(["softmax", "sigmoid", "euclidean"]))
        width = 1 if kind == "softmax" else draw(st.integers(1, 4))
        classes = draw(st.integers(2, 6)) if kind == "softmax" else None
        ignore = draw(st.none() | st.integers(-5, 300)) if kind != "euclidean" else None
        label_names = draw(st.none() | st.lists(st.text(max_size=6), min_size=width, max_size=width))
        class_names = None
        if kind == "softmax":
            class_names = draw(st.none() | st.lists(st.text(max_size=6), min_size=classes, max_size=classes))
        tasks.append(
            TaskSpec(
                name=name,
                columns=slice(position, position + width),
                kind=kind,
                classes=classes,
                ignore_label=ignore,
                loss_weight=draw(_weights),
                label_names=label_names,
                class_names=class_names,
            )
        )
        position += width
    order = draw(st.permutations(tasks))
    return TaskSet(order, num_labels=position + draw(st.integers(0, 2)))


@settings(max_examples=150, deadline=None)
@given(tasksets())
def test_dump_then_load_gives_an_equal_taskset(ts):
    text = dump_tasks(ts)
    assert load_tasks(text) == ts
    assert load_tasks(text, num_labels=ts.num_labels) == ts


def test_dump_of_a_caffe_style_file_round_trips(tmp_path):
    ts = load_tasks(CAFFE_STYLE, num_labels=5)
    (tmp_path / "tasks.toml").write_text(dump_tasks(ts), encoding="utf-8")
    assert load_tasks(tmp_path / "tasks.toml") == ts


# --- label checks ----------------------------------------------------------------------------------


def test_check_labels_accepts_valid_rows_and_ignore_label():
    ts = load_tasks(EXAMPLE)
    labels = np.array([[2, 1, 0, 1, 0.46], [-1, 0, 1, 0, -3.5], [0, 0, 0, 0, 1e6]], np.float32)
    ts.check_labels(labels)
    ts.check_labels(torch.from_numpy(labels).reshape(3, 5, 1, 1))  # Caffe's Data layer blob


@pytest.mark.parametrize(
    "row, column, task, why",
    [
        (1, 0, "cls", "softmax class must be an integer in \\[0, 3\\) or the ignore_label -1"),
        (2, 0, "cls", "softmax class"),
        (1, 2, "attr", "sigmoid target must be 0 or 1"),
        (2, 4, "reg", "finite"),
    ],
)
def test_check_labels_names_task_and_sample(row, column, task, why):
    ts = load_tasks(EXAMPLE)
    labels = np.zeros((4, 5), np.float32)
    bad = {(1, 0): 3.0, (2, 0): 1.5, (1, 2): 0.5, (2, 4): np.inf}[(row, column)]
    labels[row, column] = bad
    keys = [f"{i:08d}_img{i}.jpg" for i in range(4)]
    with pytest.raises(TaskSpecError, match=why) as err:
        ts.check_labels(labels, keys=keys)
    assert (err.value.task, err.value.sample, err.value.key) == (task, row, keys[row])
    assert f"sample {row} (key '{keys[row]}')" in str(err.value)
    assert f"label column {column}" in str(err.value)
    with pytest.raises(TaskSpecError) as err:
        ts.check_labels(labels)
    assert err.value.sample == row and err.value.key is None


def test_check_labels_skips_nan_as_a_missing_label():
    ts = load_tasks(EXAMPLE)
    labels = np.array([[np.nan, np.nan, 1, np.nan, np.nan], [2, 0, np.nan, 1, 0.5]], np.float32)
    ts.check_labels(labels)  # convert --allow-missing stores NaN: nothing to check there
    labels[1, 2] = 0.5
    with pytest.raises(TaskSpecError, match="sigmoid target must be 0 or 1"):
        ts.check_labels(labels)


def test_check_labels_wrong_width():
    with pytest.raises(TaskSpecError, match="6 columns") as err:
        load_tasks(EXAMPLE).check_labels(np.zeros((2, 6), np.float32))
    assert err.value.field == "num_labels"


def test_sigmoid_ignore_label():
    ts = load_tasks(EXAMPLE.replace('kind = "sigmoid"', 'kind = "sigmoid"\nignore_label = 255'))
    ts.check_labels(np.array([[0, 255, 1, 0, 0.0]], np.float32))
    with pytest.raises(TaskSpecError, match="0 or 1 or the ignore_label 255"):
        ts.check_labels(np.array([[0, 254, 1, 0, 0.0]], np.float32))


# --- slicing ---------------------------------------------------------------------------------------


@st.composite
def blobs_and_points(draw):
    k = draw(st.integers(1, 9))
    points = sorted(draw(st.sets(st.integers(1, k - 1), max_size=k - 1))) if k > 1 else []
    n = draw(st.integers(0, 5))
    trailing = draw(st.sampled_from([(), (1, 1)]))
    values = np.arange(n * k, dtype=np.float32).reshape(n, k, *trailing)
    return values, points


@settings(max_examples=100, deadline=None)
@given(blobs_and_points())
def test_slicer_is_torch_split_on_axis_1(case):
    values, points = case
    pieces = LabelSlicer(points)(values)
    sizes = np.diff([0, *points, values.shape[1]]).tolist()
    expected = torch.split(torch.from_numpy(values), sizes, dim=1)
    assert list(pieces) == [f"slice{i}" for i in range(len(points) + 1)]
    for got, want in zip(pieces.values(), expected, strict=True):
        assert got.shape == want.shape and torch.equal(got, want)


def test_slicer_equal_split_and_errors():
    labels = torch.arange(12.0).reshape(2, 6)
    pieces = LabelSlicer(names=["a", "b", "c"])(labels)
    assert [tuple(p.shape) for p in pieces.values()] == [(2, 2)] * 3
    assert torch.equal(pieces["c"], labels[:, 4:])
    assert torch.equal(LabelSlicer(num_outputs=2, axis=0)(labels)["slice1"], labels[1:])
    with pytest.raises(TaskSpecError, match="cannot split an axis of 6 labels equally"):
        LabelSlicer(num_outputs=4)(labels)
    with pytest.raises(TaskSpecError, match="do not fit"):
        LabelSlicer([2, 6])(labels)
    with pytest.raises(ValueError, match="strictly increasing"):
        LabelSlicer([3, 3])
    with pytest.raises(ValueError, match="names or num_outputs"):
        LabelSlicer()


def test_from_tasks_converts_per_kind_with_caffe_truncation():
    ts = load_tasks(EXAMPLE)
    labels = np.array([[2.7, 1, 0, 1, 0.25], [-1.0, 0, 1, 0, -0.5], [-0.5, 1, 1, 1, 3.0]], np.float64)
    out = LabelSlicer.from_tasks(ts)(labels)
    assert out["cls"].dtype == torch.int64 and out["cls"].tolist() == [2, -1, 0]  # static_cast<int>
    assert out["attr"].dtype == torch.float32 and tuple(out["attr"].shape) == (3, 3)
    assert out["reg"].dtype == torch.float32 and tuple(out["reg"].shape) == (3, 1)
    assert torch.equal(out["reg"][:, 0], torch.tensor([0.25, -0.5, 3.0]))
    four_d = LabelSlicer.from_tasks(ts)(torch.from_numpy(labels).reshape(3, 5, 1, 1))
    assert all(torch.equal(four_d[name], out[name]) for name in ts.names)
    with pytest.raises(TaskSpecError, match="4 columns"):
        LabelSlicer.from_tasks(ts)(labels[:, :4])


def test_from_tasks_with_gaps_takes_each_tasks_columns():
    ts = TaskSet(
        [TaskSpec("late", slice(3, 5), "euclidean"), TaskSpec("early", slice(0, 1), "softmax", classes=4)],
        num_labels=6,
    )
    labels = torch.arange(12.0).reshape(2, 6)
    out = LabelSlicer.from_tasks(ts)(labels)
    assert list(out) == ["late", "early"]
    assert torch.equal(out["late"], labels[:, 3:5]) and out["early"].tolist() == [0, 6]


def _fixture_labels(fixtures: Path) -> tuple[list[str], np.ndarray]:
    lmdb = pytest.importorskip("lmdb")
    from mtldata.caffe.datum import parse_datum

    env = lmdb.open(str(fixtures / "mt" / "label_lmdb"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            rows = [(k.decode(), list(parse_datum(v).float_data)) for k, v in txn.cursor()]
    finally:
        env.close()
    return [k for k, _ in rows], np.array([r for _, r in rows], dtype=np.float32)


def test_slicer_matches_caffe_slice_layer_on_the_fixture(fixtures):
    from google.protobuf import text_format

    from mtldata.caffe import caffe_pb2

    expected = json.loads((fixtures / "mt" / "expected.json").read_text())
    keys, labels = _fixture_labels(fixtures)
    assert keys == expected["keys"]
    net = text_format.Parse((fixtures / "mt" / "train.prototxt").read_text(), caffe_pb2.NetParameter())
    (layer,) = [layer for layer in net.layer if layer.type == "Slice"]
    slicer = LabelSlicer(list(layer.slice_param.slice_point), layer.slice_param.axis, names=list(layer.top))
    assert slicer.slice_points == (1, 4)
    by_tasks = LabelSlicer.from_tasks(load_tasks(CAFFE_STYLE, num_labels=labels.shape[1]))
    load_tasks(CAFFE_STYLE, num_labels=5).check_labels(labels, keys)
    for it in expected["iterations"]:
        batch = labels[it["batch_sample_indices"]].reshape(-1, 5, 1, 1)  # the Data layer's (4, 5, 1, 1) top
        tops = slicer(batch)
        assert list(tops) == ["label_cls", "label_attr", "label_reg"]
        for name, want in it["labels"].items():
            want = np.array(want, dtype=np.float32)
            assert tops[name].shape == (4, want.shape[1], 1, 1)
            assert np.array_equal(tops[name].reshape(4, -1).numpy(), want), (it["iter"], name)
        typed = by_tasks(batch)
        cls = np.array(it["labels"]["label_cls"], np.float32)[:, 0]
        assert typed["cls"].tolist() == [math.trunc(float(v)) for v in cls]
        assert np.array_equal(typed["attr"].numpy(), np.array(it["labels"]["label_attr"], np.float32))
        assert np.array_equal(typed["reg"].numpy(), np.array(it["labels"]["label_reg"], np.float32))
    # The ignored sample (cls = -1) stays -1 after the int conversion.
    assert by_tasks(labels)["cls"].tolist()[2] == -1
