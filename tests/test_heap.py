"""After each commit the converter hands the heap's freed pages back (storage/heap.py), so that a
long conversion's RSS does not creep up with what LMDB's transactions freed."""

from __future__ import annotations

from pathlib import Path

import pytest

import mtldata.convert.pipeline as convert_module
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.storage import heap


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    pytest.skip("no RssAnon in /proc/self/status")


def test_freed_holes_in_the_heap_go_back_to_the_system():
    if heap._malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim (not glibc)")
    # 40 MB in 20 KB blocks (under glibc's mmap threshold: heap memory), one in 50 kept alive, so
    # that glibc's own trimming of the heap's top cannot return the holes between them.
    blocks = [bytearray(20_000) for _ in range(2000)]
    for block in blocks:
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    kept = blocks[::50]
    del blocks
    before = _rss_anon_kb()
    assert heap.trim_heap() is True
    after = _rss_anon_kb()
    assert before - after > 20_000, (before, after)
    assert len(kept) == 40


def test_the_converter_trims_after_every_commit(image_set, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(convert_module, "trim_heap", lambda: calls.append(1))
    list_file, _ = image_set
    result = convert(ConvertSpec(list_file=list_file, output=tmp_path / "out", workers=1, commit_every=4))
    assert result.count == 12
    assert len(calls) == 3  # 12 samples, a commit every 4
