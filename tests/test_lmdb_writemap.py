"""LMDB maps: environments on tmpfs are written through LMDB's map (MDB_WRITEMAP), with the same
records, digests and files as a write() at commit and file space reserved before every page is
written; maps are dropped after every such commit, and every ITER_WINDOW bytes of a pass over a
reader, so that pages do not pile up in the RSS (merge's transactions are bounded in bytes too)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from conftest import db_items
from test_lmdb_writer import samples

import mtldata.convert.merge as merge_module
import mtldata.convert.pipeline as pipeline
import mtldata.storage.backends.lmdb as lmdb_backend
from mtldata.convert.merge import merge
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.storage.backends import WriterOptions, open_reader
from mtldata.storage.backends.lmdb import LmdbWriter, check_data_file
from mtldata.storage.filesystems import filesystem_type


@pytest.fixture
def writemap_here(tmp_path, monkeypatch):
    """Make tmp_path's file system one that LMDB environments are written through the map on."""
    kind = filesystem_type(tmp_path)
    if kind is None:
        pytest.skip("no file system type for the test folder (/proc/self/mountinfo unreadable?)")
    monkeypatch.setattr(lmdb_backend, "WRITEMAP_FILESYSTEMS", frozenset({kind}))


def write(staging: Path, batches) -> LmdbWriter:
    staging.mkdir()
    writer = LmdbWriter(staging, WriterOptions(num_labels=3, extra={"initial_map_size": 64 * 1024}))
    for batch in batches:
        writer.put_many(batch)
        writer.commit()
        writer.remap()
    writer.close()
    return writer


def test_writing_through_the_map_stores_what_a_write_at_commit_stores(tmp_path, monkeypatch):
    data = samples(40)  # a 64 KB map, grown several times while written through
    batches = [data[:7], data[7:8], data[8:40]]
    plain = write(tmp_path / "plain", batches)
    assert not plain.images.writemap
    monkeypatch.setattr(lmdb_backend, "WRITEMAP_FILESYSTEMS", frozenset({filesystem_type(tmp_path)}))
    mapped = write(tmp_path / "mapped", batches)
    assert mapped.images.writemap and mapped.labels.writemap and mapped.remap_every == 1
    assert mapped.checksums == plain.checksums
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "mapped" / db) == db_items(tmp_path / "plain" / db)
        journal = db + ".digests"
        assert (tmp_path / "mapped" / journal).read_bytes() == (tmp_path / "plain" / journal).read_bytes()
        # LMDB stretches a written-through file to its map size: it is cut back to its pages at close
        check_data_file(tmp_path / "mapped" / db)
        size = (tmp_path / "mapped" / db / "data.mdb").stat().st_size
        assert size == (tmp_path / "plain" / db / "data.mdb").stat().st_size


def test_environments_on_tmpfs_are_written_through_the_map_and_others_are_not(tmp_path):
    shm = Path("/dev/shm")
    if filesystem_type(shm) != "tmpfs" or not os.access(shm, os.W_OK):
        pytest.skip("no writable tmpfs at /dev/shm")
    with tempfile.TemporaryDirectory(dir=shm, prefix="mtldata-test-") as where:
        staging = Path(where) / "staging"
        staging.mkdir()
        writer = LmdbWriter(staging, WriterOptions(num_labels=3))
        try:
            assert writer.images.writemap and writer.labels.writemap
        finally:
            writer.close()
    if filesystem_type(tmp_path) != "tmpfs":
        (tmp_path / "staging").mkdir()
        writer = LmdbWriter(tmp_path / "staging", WriterOptions(num_labels=3))
        assert not writer.images.writemap and writer.remap_every is None
        writer.close()


def count_calls(monkeypatch, cls, name: str) -> dict[str, int]:
    calls = {"n": 0}
    real = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def test_the_converter_remaps_after_every_commit_written_through_the_map(
    image_set, tmp_path, monkeypatch, writemap_here
):
    list_file, _ = image_set
    monkeypatch.setattr(pipeline, "COMMIT_BYTES", 1)  # a commit after every sample
    commits = count_calls(monkeypatch, LmdbWriter, "commit")
    remaps = count_calls(monkeypatch, LmdbWriter, "remap")
    result = convert(ConvertSpec(list_file=list_file, output=tmp_path / "mapped", workers=1))
    assert result.count == 12
    # every commit the converter asks for is followed by a remap (and close() commits once more)
    assert commits["n"] >= 12 and remaps["n"] == commits["n"] - 1
    monkeypatch.setattr(lmdb_backend, "WRITEMAP_FILESYSTEMS", frozenset())
    remaps["n"] = commits["n"] = 0
    plain = convert(ConvertSpec(list_file=list_file, output=tmp_path / "plain", workers=1))
    assert remaps["n"] == (commits["n"] - 1) // pipeline.REMAP_EVERY  # the default cadence
    assert result.manifest["checksums"] == plain.manifest["checksums"]
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "mapped" / db) == db_items(tmp_path / "plain" / db)


def _two_parts(list_file: Path, where: Path) -> list[Path]:
    """The list converted as two shards, ready to merge."""
    parts = []
    for i in range(2):
        spec = ConvertSpec(list_file=list_file, output=where / f"p{i}", num_shards=2, shard_index=i)
        convert(spec)
        parts.append(spec.output)
    return parts


def test_merge_remaps_after_every_commit_written_through_the_map(
    image_set, tmp_path, monkeypatch, writemap_here
):
    list_file, _ = image_set
    parts = _two_parts(list_file, tmp_path)
    remaps = count_calls(monkeypatch, LmdbWriter, "remap")
    merge(parts, tmp_path / "merged", commit_every=2)
    assert remaps["n"] == 6  # 12 samples, a commit every 2
    whole = convert(ConvertSpec(list_file=list_file, output=tmp_path / "whole"))
    assert whole.count == 12
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "merged" / db) == db_items(tmp_path / "whole" / db)


def test_a_pass_over_a_reader_drops_its_maps_as_it_goes_and_reads_the_same(image_set, tmp_path, monkeypatch):
    list_file, _ = image_set
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "ds"))
    reader = open_reader(tmp_path / "ds")
    whole = [(s.key, bytes(s.image.data), s.labels.tolist()) for s in reader]
    reader.close()
    monkeypatch.setattr(lmdb_backend, "ITER_WINDOW", 1)  # after every sample
    unmaps = count_calls(monkeypatch, lmdb_backend.LmdbReader, "_unmap")
    reader = open_reader(tmp_path / "ds")
    windowed = [(s.key, bytes(s.image.data), s.labels.tolist()) for s in reader]
    reader.close()
    assert windowed == whole and len(whole) == 12
    assert unmaps["n"] == 12 + 1  # one a sample, and close()


def test_merge_commits_by_bytes_too(image_set, tmp_path, monkeypatch):
    list_file, _ = image_set
    parts = _two_parts(list_file, tmp_path)
    monkeypatch.setattr(merge_module, "COMMIT_BYTES", 1)  # every sample's bytes fill a transaction
    commits = count_calls(monkeypatch, LmdbWriter, "commit")
    merge(parts, tmp_path / "merged")
    assert commits["n"] == 12 + 2  # a commit a sample, the final one and close()'s
