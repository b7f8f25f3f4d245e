"""How much of an input file mtldata reads: past these, a sample is bad, refused before any allocation.

Kept apart from storage.image (Pillow, numpy) so the command line can show them without loading those.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

DEFAULT_MAX_FILE_BYTES = 256 << 20  # an image file larger than this is never read (`--max-file-mb`)
DEFAULT_MAX_PIXELS = 100_000_000  # an image of more pixels is never decoded (`--max-pixels`)
DEFAULT_MAX_SAMPLE_BYTES = 1 << 30  # one stored sample (an HDF5 row of `data` or `label`) a reader holds
SAMPLE_LIMIT_ENV = "MTLDATA_MAX_SAMPLE_BYTES"
SAMPLE_LIMIT_FLAG = "mtldata --max-sample-mb N"  # how the command line raises it (named in the error)

_sample_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar("mtldata_max_sample", default=None)


def max_sample_bytes() -> int:
    """The largest stored sample a reader allocates for: set by `sample_limit`, else
    MTLDATA_MAX_SAMPLE_BYTES, else 1 GiB."""
    limit = _sample_limit.get()
    if limit is not None:
        return limit
    value = os.environ.get(SAMPLE_LIMIT_ENV, "")
    return int(value) if value.isdigit() else DEFAULT_MAX_SAMPLE_BYTES


@contextlib.contextmanager
def sample_limit(limit: int | None) -> Iterator[int]:
    """Within the block, readers accept stored samples of up to `limit` bytes (None: keep the current one)."""
    if limit is None:
        yield max_sample_bytes()
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_sample_bytes must be a positive integer, got {limit!r}")
    token = _sample_limit.set(limit)
    try:
        yield limit
    finally:
        _sample_limit.reset(token)
