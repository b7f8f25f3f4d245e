"""LMDB maps: environments are written by a copy at commit (never through the map), the converter
drops its maps every REMAP_EVERY commits and a pass over a reader every ITER_WINDOW bytes, so that
pages do not pile up in the RSS (merge's transactions are bounded in bytes too)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from conftest import db_items

import mtldata.convert.merge as merge_module
import mtldata.convert.pipeline as pipeline
import mtldata.storage.backends.lmdb as lmdb_backend
from mtldata.convert.merge import merge
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.storage.backends import WriterOptions, open_reader
from mtldata.storage.backends.lmdb import LmdbWriter
from mtldata.storage.filesystems import filesystem_type


def test_environments_are_written_by_a_copy_at_commit_not_through_the_map_on_tmpfs_too(tmp_path):
    """MDB_WRITEMAP cost 7-9% more CPU on tmpfs on one VM (issue 15) and turns a full file system
    into SIGBUS: every environment is opened without it, wherever it is."""
    places = [tmp_path]
    shm = Path("/dev/shm")
    if filesystem_type(shm) == "tmpfs" and os.access(shm, os.W_OK):
        places.append(shm)
    for place in places:
        with tempfile.TemporaryDirectory(dir=place, prefix="mtldata-test-") as where:
            staging = Path(where) / "staging"
            staging.mkdir()
            writer = LmdbWriter(staging, WriterOptions(num_labels=3))
            try:
                assert not writer.images.env.flags()["writemap"] and not writer.labels.env.flags()["writemap"]
            finally:
                writer.close()


def count_calls(monkeypatch, cls, name: str) -> dict[str, int]:
    calls = {"n": 0}
    real = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def test_the_converter_remaps_every_remap_every_commits_and_writes_the_same(image_set, tmp_path, monkeypatch):
    list_file, _ = image_set
    reference = convert(ConvertSpec(list_file=list_file, output=tmp_path / "ref", workers=1))
    monkeypatch.setattr(pipeline, "COMMIT_BYTES", 1)  # a commit after every sample
    commits = count_calls(monkeypatch, LmdbWriter, "commit")
    remaps = count_calls(monkeypatch, LmdbWriter, "remap")
    result = convert(ConvertSpec(list_file=list_file, output=tmp_path / "often", workers=1))
    assert result.count == 12 and commits["n"] >= 12
    assert remaps["n"] == (commits["n"] - 1) // pipeline.REMAP_EVERY > 0  # close() commits once more
    assert result.manifest["checksums"] == reference.manifest["checksums"]
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "often" / db) == db_items(tmp_path / "ref" / db)


def _two_parts(list_file: Path, where: Path) -> list[Path]:
    """The list converted as two shards, ready to merge."""
    parts = []
    for i in range(2):
        spec = ConvertSpec(list_file=list_file, output=where / f"p{i}", num_shards=2, shard_index=i)
        convert(spec)
        parts.append(spec.output)
    return parts


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
