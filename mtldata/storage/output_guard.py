"""Which folders a command may write or replace, and one writer per staging folder.

mtldata replaces only what it made: a complete dataset (its manifest says so), its own `.partial`
staging (marked by STAGING_MARKER), a training run folder (RUN_MARKER) or a demo folder
(DEMO_MARKER); never a folder that holds the command's inputs. A writer holds an advisory lock
(flock) on its staging folder for its whole life; the kernel releases it when the process dies,
so a second writer is refused while the first runs and a killed run can be resumed at once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mtldata.durable import write_json_atomic
from mtldata.errors import DatasetStateError, OutputError, shorten

PARTIAL_SUFFIX = ".partial"
STAGING_MARKER = ".mtldata-staging"  # JSON {"command": "convert" | "merge", "pid": N}
RUN_MARKER = ".mtldata-run"  # a training run folder `mtldata train -o` made
DEMO_MARKER = ".mtldata-demo"  # a folder `mtldata demo -d` filled


def staging_path(output: Path) -> Path:
    """The `.partial` folder a writer of `output` works in."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def check_output_path(output: Path, inputs: Iterable[Path] = (), flag: str = "-o") -> None:
    """Refuse, before any work, an output that names no new folder or holds one of `inputs`."""
    if output.name in ("", ".", ".."):
        raise DatasetStateError(
            f"{flag} {shorten(str(output)) or repr('')}: names no new folder (the current folder, a "
            f"parent or the root); give the name of the folder to create"
        )
    try:
        resolved = output.resolve()
        held = [(p, p.resolve()) for p in inputs]
    except OSError as exc:
        raise OutputError.from_os_error(exc, output) from None
    except ValueError:  # a NUL byte
        raise DatasetStateError(
            f"{shorten(repr(str(output)))}: a path with a NUL byte names no file"
        ) from None
    for target in (resolved, staging_path(resolved)):
        for given, path in held:
            if path == target or target in path.parents:
                how = "is one of the inputs" if path == target else "holds the input"
                raise DatasetStateError(
                    f"{shorten(str(output))}: {how} ({shorten(str(given))}); write the output to a new folder"
                )


def is_complete_dataset(path: Path) -> bool:
    """Whether `path` is a dataset mtldata published (a folder whose manifest says so)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("format") == "mtldata"
        and manifest.get("complete") is True
    )


def is_staging(path: Path) -> bool:
    """Whether `path` is mtldata's own staging folder (marked, or an older convert's with progress.json)."""
    if not path.is_dir() or path.is_symlink():
        return False
    marked = (path / STAGING_MARKER).is_file() or (path / "progress.json").is_file()
    return marked or is_complete_dataset(path) or not any(path.iterdir())


def check_replaceable(output: Path) -> None:
    """Refuse --overwrite of anything but a complete mtldata dataset."""
    if output.is_symlink() or not output.is_dir() or not is_complete_dataset(output):
        raise DatasetStateError(
            f"{shorten(str(output))}: exists and is not a dataset mtldata made (no complete mtldata "
            f"manifest.json); --overwrite replaces only those: choose another output or remove it yourself"
        )


def staging_owner(staging: Path) -> dict:
    """What the staging marker records: the command that made it and the last writer's pid."""
    try:
        data = json.loads((staging / STAGING_MARKER).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


@dataclass
class WriterLock:
    """An exclusive flock on a staging folder, held while one writer works in it."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, staging: Path, command: str) -> WriterLock:
        """Create `staging` if missing, lock it, and mark it as `command`'s (refused while another runs)."""
        try:
            staging.mkdir(parents=True, exist_ok=True)
            fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise OutputError.from_os_error(exc, staging) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = staging_owner(staging)
            pid = f" (pid {owner['pid']})" if isinstance(owner.get("pid"), int) else ""
            what = owner.get("command", "conversion")
            raise DatasetStateError(
                f"{shorten(str(staging))}: another {what} is running{pid} and writing here; "
                f"wait for it to finish (or stop it, then run the same command with --resume)"
            ) from None
        lock = cls(staging, fd)
        try:
            write_json_atomic(staging / STAGING_MARKER, {"command": command, "pid": os.getpid()})
        except OSError as exc:
            lock.release()
            raise OutputError.from_os_error(exc, staging) from None
        return lock

    def clear(self) -> None:
        """Empty the locked staging folder (keeping the lock and its marker): start over."""
        for child in self.path.iterdir():
            if child.name == STAGING_MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_staging(output: Path, overwrite: bool, command: str, takes: str) -> tuple[Path, bool, WriterLock]:
    """Lock `output`'s staging folder for `command`: (staging, whether it existed, the lock).

    Refused, before anything is touched: an existing `output` without `overwrite` (or one mtldata
    did not make), and a staging folder that is not mtldata's; `takes` says whose staging the
    command would take over ("a conversion", "a conversion or merge").
    """
    staging = staging_path(output)
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise DatasetStateError(f"{shorten(str(output))}: already exists; pass --overwrite to replace it")
        check_replaceable(output)
    existed = staging.exists() or staging.is_symlink()
    if existed and not is_staging(staging):
        raise DatasetStateError(
            f"{shorten(str(staging))}: exists and is not {takes} mtldata started; "
            f"it is left untouched: move it away or choose another output"
        )
    return staging, existed, WriterLock.acquire(staging, command)


def staging_status(staging: Path, where: Path | None = None) -> str:
    """`info`'s account of a staging folder: running (with its pid) or interrupted, and what to do.

    `where` names the folder in the account (for a reader that was given the output's own name).
    """
    owner = staging_owner(staging)
    command = owner.get("command", "convert")
    try:
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        return f"cannot open ({exc.strerror})"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        running = False
    except OSError as exc:
        running = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    at = "" if where is None else f" in {shorten(str(where))}"
    if running:
        pid = f" (pid {owner['pid']})" if isinstance(owner.get("pid"), int) else ""
        return f"a {command} is running{pid}{at}; it is renamed into place when complete"
    if command == "merge":
        return f"an interrupted merge{at}; run the same `mtldata merge` command again (with --overwrite)"
    return f"an interrupted conversion{at}; run the same `mtldata convert` command with --resume"


def not_there_yet(path: Path) -> str | None:
    """For an output that is missing while mtldata's own `path.partial` sits beside it: one line
    saying so (running or interrupted, and what to do); None for any other path."""
    if path.name.endswith(PARTIAL_SUFFIX) or path.name in ("", ".", "..") or os.path.lexists(path):
        return None
    staging = staging_path(path)
    if not is_staging(staging):
        return None
    return f"{shorten(str(path))}: not there yet: {staging_status(staging, where=staging)}"


def claim_folder(directory: Path, marker: str, owned_names: Iterable[str], command: str) -> None:
    """Make `directory` `command`'s own folder, or refuse when it holds files of the same names
    that `command` did not make (no marker): they are the user's, and are never replaced."""
    if (directory / marker).is_file():
        return
    foreign = [name for name in owned_names if (directory / name).exists() or (directory / name).is_symlink()]
    if foreign:
        raise DatasetStateError(
            f"{shorten(str(directory / foreign[0]))}: exists and was not made by {command}; "
            f"it is left untouched: choose a new or empty folder"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / marker).write_text(f"made by {command}\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError.from_os_error(exc, directory) from None
