"""The file system type of a path, read from /proc/self/mountinfo by device number."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtldata.storage.filesystems import filesystem_type, mount_type

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683780k
30 25 0:23 / /dev/shm rw,relatime shared:7 master:2 - tmpfs shm rw,size=65536k
31 27 0:40 / /mnt/with\\040space rw - fuse.sshfs user@host:/x rw
32 27 8:1 /srv /data rw,relatime - ext4 /dev/sda1 rw
"""


@pytest.mark.parametrize(
    ("major", "minor", "kind"),
    [(8, 1, "ext4"), (0, 23, "tmpfs"), (0, 40, "fuse.sshfs"), (0, 21, "proc"), (9, 9, None)],
)
def test_the_type_is_the_one_mountinfo_gives_for_the_device(major, minor, kind):
    # optional fields ("shared:1") come before the "-"; a bind mount repeats its device's type
    assert mount_type(MOUNTINFO, major, minor) == kind


def test_the_last_mount_of_a_device_wins():
    stacked = MOUNTINFO + "40 25 0:23 / /dev/shm rw - ramfs none rw\n"
    assert mount_type(stacked, 0, 23) == "ramfs"


def test_a_line_without_its_separator_or_type_is_skipped():
    assert mount_type("1 2 0:5 / /x rw tmpfs tmpfs rw\n", 0, 5) is None
    assert mount_type("1 2 0:5 / /x rw - \n", 0, 5) is None


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=400), st.integers(0, 300), st.integers(0, 300))
def test_any_text_gives_a_type_or_none_and_never_raises(text, major, minor):
    found = mount_type(text, major, minor)
    assert found is None or (isinstance(found, str) and found)


@pytest.mark.parametrize("where", ["tmp", "/dev/shm", "/proc", "/"])
def test_the_type_agrees_with_findmnt(tmp_path, where):
    if shutil.which("findmnt") is None:
        pytest.skip("findmnt (util-linux) is not installed")
    path = tmp_path if where == "tmp" else Path(where)
    if not path.exists():
        pytest.skip(f"{path} does not exist here")
    shown = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert filesystem_type(path) == shown[-1]  # mounts stacked on one place: the top one, listed last


def test_a_path_that_does_not_exist_has_no_type(tmp_path):
    assert filesystem_type(tmp_path / "missing") is None
