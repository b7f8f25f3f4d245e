"""Atomic, durable file writes: the old file or the whole new one, never a torn one or a stray temp."""

from __future__ import annotations

import json

import pytest

from mtldata.durable import replace_atomically, write_bytes_atomic, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    write_bytes_atomic(path, b"old")

    def broken(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_json_round_trips_and_replaces(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_write_that_cannot_start_names_the_file_asked_for_not_its_temporary(tmp_path):
    (tmp_path / "a_file").write_bytes(b"x")
    target = tmp_path / "a_file" / "out.json"
    with pytest.raises(NotADirectoryError) as caught:
        write_json_atomic(target, {"a": 1})
    assert caught.value.filename == str(target)


def test_a_rename_that_fails_names_the_file_asked_for(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()  # a folder stands where the file goes: the rename fails
    with pytest.raises(OSError) as caught:
        write_bytes_atomic(target, b"data")
    assert caught.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
