"""Durable file writes: a reader sees the old file or the whole new one, and a crash loses neither."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file or a directory (a rename or a new entry in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Let `write` fill a temporary file beside `path`, sync it, rename it over `path`, sync the folder.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide the mode, as a plain open() would.
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:  # named as the file asked for: the temporary name means nothing to a user
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        context = exc.__context__
        if not isinstance(exc, OSError) and isinstance(context, OSError):
            # A writer that wraps the system's error in its own (torch.save raises RuntimeError on a
            # full disk): the OSError, naming the file, is what the caller can act on.
            raise OSError(context.errno, context.strerror, str(target)) from exc
        if isinstance(exc, OSError) and exc.filename == str(tmp):
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        raise
    fsync_path(target.parent)
    return target


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """`data` into `path`, atomically and durably."""
    return replace_atomically(path, lambda fh: fh.write(data))


def write_json_atomic(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """`payload` as indented JSON into `path`, atomically and durably."""
    text = json.dumps(payload, indent=2) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))
