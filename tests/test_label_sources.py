"""CSV/TSV label files, list headers, joined label sources and missing labels through convert."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import db_items, write_image, write_list
from hypothesis import given, settings
from hypothesis import strategies as st

from mtldata.caffe.datum import datum_labels, parse_datum
from mtldata.cli.main import main
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.errors import InputError
from mtldata.storage.backends import open_reader
from mtldata.storage.csvlist import read_csv_labels
from mtldata.storage.label_sources import open_labels
from mtldata.storage.listfile import ListEntry, ListLineError, header_names


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _same(a, b) -> bool:
    """Label tuples equal, NaN equal to NaN."""
    return len(a) == len(b) and all(
        (math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True)
    )


# --- CSV parsing ------------------------------------------------------------------------------------

_path_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"), min_size=1, max_size=12
).filter(lambda s: s.strip() == s and s.strip())
_cell = st.one_of(
    st.integers(-1000, 1000).map(float),
    st.sampled_from([0.5, -2.25, 1e-3]),
    st.just(math.nan),
)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(_path_text, st.lists(_cell, min_size=2, max_size=2)), min_size=1, max_size=6),
    missing_as=st.sampled_from(["", "nan", "NA", "NaN"]),
    crlf=st.booleans(),
    bom=st.booleans(),
    tsv=st.booleans(),
)
def test_csv_round_trips_quoted_paths_bom_crlf_and_empty_cells(
    tmp_path_factory, rows, missing_as, crlf, bom, tsv
):
    folder = tmp_path_factory.mktemp("csv")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t" if tsv else ",", lineterminator="\r\n" if crlf else "\n")
    writer.writerow(["image", "smile", "age"])
    for path, values in rows:
        writer.writerow([path, *(missing_as if math.isnan(v) else repr(v) for v in values)])
    data = buffer.getvalue().encode("utf-8")
    path = folder / ("labels.tsv" if tsv else "labels.csv")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    parsed = read_csv_labels(path, allow_missing=True)
    assert parsed.names == ("smile", "age")
    assert [r.path for r in parsed.rows] == [p for p, _ in rows]
    assert all(_same(r.labels, tuple(v)) for r, (_, v) in zip(parsed.rows, rows, strict=True))
    strict = read_csv_labels(path, allow_missing=False)
    for row, (_, values) in zip(strict.rows, rows, strict=True):
        assert isinstance(row, ListLineError) == any(math.isnan(v) for v in values)


@settings(max_examples=40, deadline=None)
@given(names=st.lists(st.sampled_from(["path", "a", "b", "c"]), min_size=2, max_size=5))
def test_duplicate_column_names_are_an_error_naming_both_columns(tmp_path_factory, names):
    path = tmp_path_factory.mktemp("dup") / "labels.csv"
    path.write_text(",".join(names) + "\n" + ",".join(["x.jpg"] + ["1"] * (len(names) - 1)) + "\n")
    if len(set(names)) == len(names):
        assert read_csv_labels(path).names == tuple(names[1:])
    else:
        with pytest.raises(
            InputError, match=r"labels.csv:1: duplicate column name '\w+' \(columns \d and \d\)"
        ):
            read_csv_labels(path)


def test_a_bad_cell_names_file_line_and_column(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('path,smile\n"a, b.jpg",1\n\nc.jpg,yes\nd.jpg,\n', encoding="utf-8")
    rows = read_csv_labels(path).rows
    assert isinstance(rows[0], ListEntry) and rows[0].path == "a, b.jpg"
    assert (rows[1].line, rows[1].reason) == (4, "column 'smile': not a number: 'yes'")
    assert rows[2].line == 5 and "column 'smile': empty; pass --allow-missing" in rows[2].reason


def test_path_column_and_columns_pick_and_order_by_name(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("a,file,b,c\n1,x.jpg,2,3\n4,y.jpg,5,6\n")
    got = open_labels([path], path_column="file", columns=("c", "a"))
    assert got.names == ("c", "a") and got.summary.num_labels == 2
    assert [(e.path, e.labels) for e in got.entries()] == [("x.jpg", (3.0, 1.0)), ("y.jpg", (6.0, 4.0))]


def test_a_list_header_line_names_the_labels(tmp_path):
    path = write_list(tmp_path / "list.txt", ["# path cls smile", "a.jpg 1 0", "b.jpg 2 NA"])
    assert header_names(path) == ("cls", "smile")
    got = open_labels([path], allow_missing=True)
    assert got.names == ("cls", "smile")
    assert _same(list(got.entries())[1].labels, (2.0, math.nan))
    strict = list(open_labels([path]).entries())[1]
    assert isinstance(strict, ListLineError) and "--allow-missing" in strict.reason


# --- joined sources ---------------------------------------------------------------------------------


def test_joined_sources_keep_the_first_sources_order_then_new_paths(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("path,x\nq.jpg,1\np.jpg,2\n")
    b = write_list(tmp_path / "b.txt", ["# path y z", "r.jpg 7 8", "p.jpg 5 6"])
    got = open_labels([a, b], allow_missing=True)
    assert got.names == ("x", "y", "z")
    entries = [(e.path, e.labels) for e in got.entries()]
    assert [p for p, _ in entries] == ["q.jpg", "p.jpg", "r.jpg"]
    assert _same(entries[0][1], (1.0, math.nan, math.nan)) and entries[1][1] == (2.0, 5.0, 6.0)
    assert _same(entries[2][1], (math.nan, 7.0, 8.0))
    with pytest.raises(InputError, match=r"b.txt: no row for 'q.jpg'; pass --allow-missing"):
        open_labels([a, b])


def _images(tmp_path: Path, n: int) -> list[str]:
    return [
        write_image(tmp_path / "img" / f"{i}.png", seed=i).relative_to(tmp_path).as_posix() for i in range(n)
    ]


def test_two_sources_combined_equal_the_same_data_written_as_one_list(tmp_path):
    paths = _images(tmp_path, 5)
    a = tmp_path / "attrs.csv"
    a.write_text(
        "path,smile,hat\n" + "".join(f"{p},{i % 2},{'' if i == 2 else 1}\n" for i, p in enumerate(paths))
    )
    b = write_list(tmp_path / "age.txt", ["# path age"] + [f"{p} {20 + i}" for i, p in enumerate(paths[1:])])
    one = write_list(
        tmp_path / "all.txt",
        ["# path smile hat age"]
        + [
            f"{p} {i % 2} {'nan' if i == 2 else 1} {'nan' if i == 0 else 20 + i - 1}"
            for i, p in enumerate(paths)
        ],
    )
    joined = convert(
        ConvertSpec(list_file=a, labels_from=(b,), output=tmp_path / "j", allow_missing=True, workers=1)
    )
    single = convert(ConvertSpec(list_file=one, output=tmp_path / "s", allow_missing=True, workers=1))
    assert joined.manifest["label_names"] == single.manifest["label_names"] == ["smile", "hat", "age"]
    assert joined.manifest["label_stats"] == single.manifest["label_stats"]
    assert joined.manifest["missing_labels"]["by_column"] == [0, 1, 1]
    assert db_items(tmp_path / "j" / "images.lmdb") == db_items(tmp_path / "s" / "images.lmdb")
    # the label LMDBs hold NaN: compare decoded (NaN != NaN bytewise is fine, equal_nan here)
    left, right = open_reader(tmp_path / "j"), open_reader(tmp_path / "s")
    for i in range(5):
        assert left.key(i) == right.key(i)
        np.testing.assert_array_equal(left.labels(i), right.labels(i))
    left.close()
    right.close()


# --- missing labels through convert and the CLI -----------------------------------------------------


def _missing_list(tmp_path: Path) -> Path:
    paths = _images(tmp_path, 4)
    labels = ["0 1 0 0.5", "NA 1 nan 0.25", "2 nan 1 0.75", "1 0 0 nan"]
    return write_list(
        tmp_path / "list.txt",
        ["# path cls a b size"] + [f"{p} {v}" for p, v in zip(paths, labels, strict=True)],
    )


@pytest.mark.parametrize("backend", ["lmdb", "hdf5"])
def test_missing_labels_are_stored_as_nan_counted_and_shown(tmp_path, backend):
    list_file = _missing_list(tmp_path)
    out = tmp_path / "ds"
    result = run("convert", list_file, "-o", out, "--allow-missing", "--backend", backend, "-q", "-j", "1")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["missing"] for s in manifest["label_stats"]] == [1, 1, 1, 1]
    assert manifest["label_stats"][0]["mean"] == pytest.approx(1.0)
    reader = open_reader(out)
    assert np.isnan(reader.labels(1)[0]) and np.isnan(reader.labels(3)[3])
    reader.close()
    info = run("info", out).output.splitlines()
    header = next(line for line in info if line.split()[:1] == ["name"])
    assert header.split() == ["name", "min", "max", "mean", "missing"]
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(
        '[[task]]\nname="cls"\nslice="0:1"\nkind="softmax"\nclasses=3\n'
        '[[task]]\nname="ab"\nslice="1:3"\nkind="sigmoid"\n[[task]]\nname="size"\nslice="3:4"\nkind="euclidean"\n'
    )
    stats = run("stats", out, "--tasks", tasks)
    assert stats.exit_code == 0 and "missing" in stats.output


def test_without_allow_missing_a_missing_value_stays_a_line_numbered_error(tmp_path):
    list_file = _missing_list(tmp_path)
    result = run("convert", list_file, "-o", tmp_path / "ds", "--strict", "-q", "-j", "1")
    assert result.exit_code == 1
    assert f"{list_file}:3: label 1 is 'NA'; labels must be finite numbers" in result.output


def test_a_bad_csv_cell_is_one_line_with_file_line_and_column(tmp_path):
    paths = _images(tmp_path, 2)
    path = tmp_path / "labels.csv"
    path.write_text(f"path,smile\n{paths[0]},1\n{paths[1]},yes\n")
    result = run("convert", path, "-o", tmp_path / "ds", "--strict", "-q", "-j", "1")
    assert result.exit_code == 1
    assert result.output.strip() == f"mtldata: error: {path}:3: column 'smile': not a number: 'yes'"


def _tasks_file(tmp_path: Path, euclidean: bool) -> Path:
    text = (
        '[[task]]\nname="cls"\nslice="0:1"\nkind="softmax"\nclasses=3\n'
        '[[task]]\nname="ab"\nslice="1:3"\nkind="sigmoid"\n'
        f'[[task]]\nname="size"\nslice="3:4"\nkind="{"euclidean" if euclidean else "sigmoid"}"\n'
    )
    path = tmp_path / "tasks.toml"
    path.write_text(text)
    return path


def test_emit_prototxt_stores_missing_classes_and_bits_as_the_recorded_ignore_label(tmp_path):
    paths = _images(tmp_path, 3)
    rows = ["0 1 0 1", "NA 1 nan 0", "2 nan 1 NA"]
    list_file = write_list(tmp_path / "list.txt", [f"{p} {r}" for p, r in zip(paths, rows, strict=True)])
    out = tmp_path / "ds"
    result = run(
        "convert",
        list_file,
        "-o",
        out,
        "--allow-missing",
        "--tasks",
        _tasks_file(tmp_path, False),
        "--emit-prototxt",
        "-q",
        "-j",
        "1",
    )
    assert result.exit_code == 0, result.output
    # what Caffe reads: the ignore value in the label Datum, and the int label of the image Datum
    stored = [datum_labels(parse_datum(v)).tolist() for _, v in db_items(out / "labels.lmdb")]
    assert stored == [[0, 1, 0, 1], [-1, 1, -1, 0], [2, -1, 1, -1]]
    assert parse_datum(db_items(out / "images.lmdb")[1][1]).label == -1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing_labels"]["stored_as"] == {"0": -1.0, "1": -1.0, "2": -1.0, "3": -1.0}
    prototxt = (out / "train_val.prototxt").read_text()
    assert prototxt.count("ignore_label: -1") == 3 and "Missing labels are stored as" in prototxt
    # mtldata reads them back as missing
    reader = open_reader(out)
    labels = reader.labels(2)
    reader.close()
    assert labels[0] == 2 and np.isnan(labels[1]) and np.isnan(labels[3])


def test_emit_prototxt_refuses_a_euclidean_task_with_missing_values(tmp_path):
    paths = _images(tmp_path, 2)
    list_file = write_list(tmp_path / "list.txt", [f"{paths[0]} 0 1 0 0.5", f"{paths[1]} 1 1 0 NA"])
    result = run(
        "convert",
        list_file,
        "-o",
        tmp_path / "ds",
        "--allow-missing",
        "--tasks",
        _tasks_file(tmp_path, True),
        "--emit-prototxt",
        "-q",
        "-j",
        "1",
    )
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "task 'size' is euclidean and its label is missing" in result.output
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()


def test_lmdb_without_allow_missing_is_unchanged_by_header_names(tmp_path):
    paths = _images(tmp_path, 2)
    plain = write_list(tmp_path / "plain.txt", [f"{p} 1 0" for p in paths])
    named = write_list(tmp_path / "named.txt", ["# path a b"] + [f"{p} 1 0" for p in paths])
    convert(ConvertSpec(list_file=plain, output=tmp_path / "p", workers=1))
    result = convert(ConvertSpec(list_file=named, output=tmp_path / "n", workers=1))
    assert result.manifest["label_names"] == ["a", "b"] and result.manifest["missing_labels"] is None
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "p" / db) == db_items(tmp_path / "n" / db)


def test_demo_missing_makes_a_partially_labelled_sample_set(tmp_path):
    result = run("demo", "-d", tmp_path, "-n", 20, "--missing", "0.3", "--no-train", "-q")
    assert result.exit_code == 0, result.output
    assert "(30% of each task's labels missing)" in result.output
    manifest = json.loads((tmp_path / "demo_lmdb" / "manifest.json").read_text())
    assert manifest["missing_labels"]["by_column"] == [6, 6, 6, 6, 6]  # per task, all its columns
    rows = (tmp_path / "list.txt").read_text().splitlines()[1:]
    assert sum(r.split()[1] == "nan" for r in rows) == 6
