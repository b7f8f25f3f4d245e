"""The merge command keeps freed heap memory for its next LMDB transactions (see mtldata/cli/heap.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_errors import run

import mtldata.cli.heap as heap
from mtldata.convert.pipeline import ConvertSpec, convert

# Allocate and free 256 blocks the size of a 196 KB image's overflow pages (50 MB, as a transaction's
# dirty pages are), then print how much of it the process still holds.
CHURN = """
import ctypes, sys
from mtldata.cli.heap import keep_freed_heap
if sys.argv[1] == "keep":
    assert keep_freed_heap()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
before = resident()
for _ in range(3):  # like three transactions
    blocks = [libc.malloc(196_608) for _ in range(256)]
    for b in blocks:
        ctypes.memset(b, 1, 196_608)
    for b in blocks:
        libc.free(b)
print(resident() - before)
"""


def _held_after_free(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, Linux only")
def test_keep_freed_heap_keeps_freed_blocks_resident_for_reuse():
    taken = subprocess.run(
        [sys.executable, "-c", "from mtldata.cli.heap import keep_freed_heap; print(keep_freed_heap())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if taken.stdout.strip() != "True":
        pytest.skip("this C library does not take glibc's mallopt settings (not glibc?)")
    kept, returned = _held_after_free("keep"), _held_after_free("default")
    assert kept >= 40 << 20, kept  # the 50 MB stays for the next round
    assert returned < 10 << 20, returned  # by default glibc hands it back


def test_the_merge_command_keeps_freed_heap(image_set, tmp_path, monkeypatch):
    list_file, _ = image_set
    for i in range(2):
        convert(ConvertSpec(list_file=list_file, output=tmp_path / f"p{i}", num_shards=2, shard_index=i))
    calls = []
    monkeypatch.setattr(heap, "keep_freed_heap", lambda: calls.append(1) or True)
    result = run("merge", tmp_path / "p0", tmp_path / "p1", "-o", tmp_path / "merged", "-q")
    assert result.exit_code == 0, result.output
    assert calls == [1]
