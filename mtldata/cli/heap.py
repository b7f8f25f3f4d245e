"""glibc's malloc settings for the commands that write LMDB in the main thread (merge).

LMDB gives each page a write transaction dirties its own malloc'd memory (a 196 KB image's overflow
pages in one block) and frees it all at commit. By default glibc hands that memory back to the
kernel at once (its trim threshold follows its mmap threshold, a few hundred KB), so every 64 MB
transaction faults its pages in and zeroes them again: a third of `mtldata merge`'s CPU, measured
for issue 15 (10,000 raw 256 px samples: 3.62-3.68 s, 2.46-2.51 s with these settings). A process
setting, so the CLI sets it for its own process; the library leaves its caller's malloc alone.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): blocks below it come from the heap.
MMAP_THRESHOLD = 32 << 20
# Freed memory kept for the next transactions: a transaction holds at most about 64 MB (COMMIT_BYTES),
# twice that for its branch pages and the reader's copies, with room to spare.
TRIM_THRESHOLD = 512 << 20


def keep_freed_heap() -> bool:
    """Let glibc keep freed heap memory for reuse instead of returning it to the kernel at once.

    Returns whether the C library took both settings (False off glibc, e.g. macOS or musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
