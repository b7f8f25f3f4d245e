"""Sharded conversion (--num-shards/--shard-index) and `mtldata merge`, on real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import db_items, write_list

from mtldata.cli import main
from mtldata.convert.merge import merge
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.errors import DatasetFormatError, DatasetStateError, MtlDataError
from mtldata.storage.backends import open_reader


def h5_contents(path: Path) -> list[dict[str, np.ndarray]]:
    out = []
    for shard in sorted(path.glob("part-*.h5")):
        with h5py.File(shard, "r") as f:
            out.append({name: f[name][:] for name in f})
    return out


@pytest.fixture
def list_with_gaps(image_set, tmp_path) -> Path:
    """The 12-image list with two bad lines, so keys have gaps and errors.tsv has rows."""
    list_file, rows = image_set
    lines = list_file.read_text().splitlines()
    lines.insert(3, "images/missing.jpg 1 0 0 0")
    lines.insert(9, "images/img00.jpg 1 0 zero 0")
    return write_list(tmp_path / "gaps.txt", lines)


def run(list_file: Path, out: Path, backend: str, **kw) -> None:
    kw.setdefault("workers", 1)
    if backend == "hdf5":
        kw.setdefault("backend_options", {"shard_size": 5})
    convert(ConvertSpec(list_file=list_file, output=out, backend=backend, **kw))


def comparable(manifest: dict) -> dict:
    drop = ("created", "source", "checksums", "files")
    return {k: v for k, v in manifest.items() if k not in drop}


@pytest.mark.parametrize("backend", ["lmdb", "hdf5"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shard_then_merge_equals_a_single_conversion(list_with_gaps, tmp_path, backend, shuffle):
    opts = {"shuffle": shuffle, "seed": 7}
    run(list_with_gaps, tmp_path / "single", backend, **opts)
    parts = []
    for i in (2, 0, 1):  # any order
        part = tmp_path / f"part{i}"
        run(list_with_gaps, part, backend, num_shards=3, shard_index=i, **opts)
        parts.append(part)
    result = merge(parts, tmp_path / "merged")
    single, merged = tmp_path / "single", tmp_path / "merged"
    assert result.count == 12 and result.skipped == 2 and result.parts == 3
    if backend == "lmdb":
        for db in ("images.lmdb", "labels.lmdb"):
            assert db_items(merged / db) == db_items(single / db)  # keys, values and order, byte for byte
    else:
        left, right = h5_contents(single), h5_contents(merged)
        assert len(left) == len(right) == 3
        for a, b in zip(left, right, strict=True):
            assert set(a) == set(b)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name])
        assert (merged / "hdf5_list.txt").read_text().split()[0] == str(merged.resolve() / "part-00000.h5")
    a, b = open_reader(single), open_reader(merged)
    assert [(s.key, s.image, s.labels.tolist()) for s in a] == [
        (s.key, s.image, s.labels.tolist()) for s in b
    ]
    ma = json.loads((single / "manifest.json").read_text())
    mb = json.loads((merged / "manifest.json").read_text())
    assert comparable(ma) == comparable(mb)  # counts, label stats, image shapes, errors, options
    assert mb["shard"] is None and mb["source"]["merged_from"] == [
        str(tmp_path / f"part{i}") for i in range(3)
    ]
    assert (merged / "errors.tsv").read_text() == (single / "errors.tsv").read_text()
    if backend == "lmdb":
        assert mb["checksums"] == ma["checksums"]
    assert not (tmp_path / "merged.partial").exists()


def test_parts_are_contiguous_ranges_keyed_by_global_position(list_with_gaps, tmp_path):
    keys = []
    for i in range(3):
        run(list_with_gaps, tmp_path / f"p{i}", "lmdb", num_shards=3, shard_index=i)
        manifest = json.loads((tmp_path / f"p{i}" / "manifest.json").read_text())
        assert manifest["shard"] == {"index": i, "count": 3, "positions": [i * 14 // 3, (i + 1) * 14 // 3]}
        keys.append([k.decode()[:8] for k, _ in db_items(tmp_path / f"p{i}" / "images.lmdb")])
    assert keys[1][0] == "00000004" and "00000003" not in keys[0]  # line 4 (position 3) is missing
    assert sum(len(k) for k in keys) == 12


def test_more_parts_than_samples_gives_empty_parts_that_still_merge(image_set, tmp_path):
    list_file, _ = image_set
    two = write_list(tmp_path / "two.txt", list_file.read_text().splitlines()[:2])
    for i in range(3):
        run(two, tmp_path / f"p{i}", "hdf5", num_shards=3, shard_index=i)
    assert json.loads((tmp_path / "p0" / "manifest.json").read_text())["count"] == 0
    result = merge([tmp_path / f"p{i}" for i in range(3)], tmp_path / "merged")
    assert result.count == 2 and len(open_reader(tmp_path / "merged")) == 2


def test_merge_refuses_parts_that_do_not_belong_together(image_set, tmp_path):
    list_file, _ = image_set
    for i in range(3):
        run(list_file, tmp_path / f"p{i}", "lmdb", num_shards=3, shard_index=i)
    p0, p1, p2 = (tmp_path / f"p{i}" for i in range(3))
    with pytest.raises(MtlDataError, match=r"part\(s\) 2 of 3 missing"):
        merge([p0, p1], tmp_path / "m")
    with pytest.raises(MtlDataError, match="are both part 1 of 3"):
        merge([p0, p1, p1, p2], tmp_path / "m")
    run(list_file, tmp_path / "seeded", "lmdb", num_shards=3, shard_index=2, shuffle=True, seed=1)
    with pytest.raises(MtlDataError, match="does not belong with .*option shuffle is True there, False here"):
        merge([p0, p1, tmp_path / "seeded"], tmp_path / "m")
    run(list_file, tmp_path / "h5part", "hdf5", num_shards=3, shard_index=2)
    with pytest.raises(MtlDataError, match="backend is 'hdf5' there, 'lmdb' here"):
        merge([p0, p1, tmp_path / "h5part"], tmp_path / "m")
    run(list_file, tmp_path / "whole", "lmdb")
    with pytest.raises(DatasetFormatError, match="not a part of a sharded conversion"):
        merge([p0, p1, tmp_path / "whole"], tmp_path / "m")
    with pytest.raises(DatasetFormatError, match="no manifest.json"):
        merge([p0, p1, tmp_path / "images"], tmp_path / "m")
    with pytest.raises(MtlDataError, match="is one of the inputs"):
        merge([p0, p1, p2], p2)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()
    merge([p0, p1, p2], tmp_path / "m")
    with pytest.raises(DatasetStateError, match="--overwrite"):
        merge([p0, p1, p2], tmp_path / "m")
    shutil.copytree(tmp_path / "m", tmp_path / "m.partial")
    assert merge([p0, p1, p2], tmp_path / "m", overwrite=True).count == 12


def test_cli_shards_with_default_names_and_merges(image_set, tmp_path, monkeypatch):
    list_file, _ = image_set
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for i in range(2):
        args = ["convert", str(list_file), "--backend", "hdf5", "--num-shards", "2", "--shard-index", str(i)]
        result = runner.invoke(main, [*args, "-j", "1", "-q"])
        assert result.exit_code == 0, result.output
    parts = sorted(str(p) for p in tmp_path.glob("list_hdf5.part-*-of-00002"))
    assert parts == [f"{tmp_path}/list_hdf5.part-0000{i}-of-00002" for i in range(2)]
    result = runner.invoke(main, ["merge", *parts, "-o", "merged", "-q"])
    assert result.exit_code == 0, result.output
    assert "merged 2 parts, 12 samples" in result.output
    result = runner.invoke(main, ["info", "merged"])
    assert "samples:   12" in result.output and "hdf5 (mtldata)" in result.output
    result = runner.invoke(main, ["merge", parts[0], "-o", "again"])
    assert result.exit_code == 1 and "part(s) 1 of 2 missing" in result.output
    result = runner.invoke(main, ["convert", str(list_file), "--num-shards", "2", "--shard-index", "2"])
    assert result.exit_code == 1 and "--shard-index must be in 0..1" in result.output
