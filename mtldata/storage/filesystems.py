"""Which file system holds a path, for the few choices that are right on one kind and wrong on another."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["filesystem_type", "mount_type"]

MOUNTINFO = Path("/proc/self/mountinfo")


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the file system holding `path` ("ext4", "tmpfs", ...); None when unknown (not Linux,
    or `path` cannot be stat'ed)."""
    try:
        device = os.stat(path).st_dev
        text = MOUNTINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return mount_type(text, os.major(device), os.minor(device))


def mount_type(mountinfo: str, major: int, minor: int) -> str | None:
    """The file system type /proc/self/mountinfo gives for the device `major:minor` (the last mount
    of it wins, as a mount stacked on another hides it); None when no line names it.

    A line reads: mount id, parent id, major:minor, root, mount point, options, optional fields,
    "-", type, source, super options. Matching the device rather than the mount point needs no
    unescaping of paths and follows symlinks and bind mounts.
    """
    found = None
    device = f"{major}:{minor}"
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 9 or fields[2] != device:
            continue
        try:
            separator = fields.index("-", 6)
        except ValueError:
            continue
        if separator + 1 < len(fields) and fields[separator + 1]:
            found = fields[separator + 1]
    return found
