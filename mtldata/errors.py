"""The library's exception types; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations

from pathlib import Path


class MtlDataError(Exception):
    """Base of every error mtldata raises on purpose (bad input, bad state, bad options)."""


class InputError(MtlDataError):
    """A problem with one line of an input file, located by file and line number."""

    def __init__(self, file: str | Path, line: int | None, reason: str) -> None:
        self.file = str(file)
        self.line = line
        self.reason = reason
        where = f"{self.file}:{line}" if line is not None else self.file
        super().__init__(f"{where}: {reason}")


class DatasetStateError(MtlDataError):
    """The output location is in a state the requested operation cannot proceed from."""


class DatasetFormatError(MtlDataError):
    """A dataset on disk is not in a format mtldata can read, or is damaged."""


class SampleRejectedError(MtlDataError):
    """A backend cannot store a sample as converted (e.g. HDF5 holds one image size); the run stops.

    The writer does not know the list line; the converter re-raises it as an InputError naming it.
    """


class MissingDependencyError(MtlDataError):
    """An optional package a feature needs is not installed; the message says how to install it."""


class CaffeFileError(DatasetFormatError):
    """A Caffe protobuf file (prototxt, caffemodel, binaryproto) that cannot be read as its message.

    `line` and `column` are protobuf's 1-based position of a text-format error, None for binary files.
    """

    def __init__(self, file: str | Path, reason: str, line: int | None = None, column: int | None = None):
        self.file = str(file)
        self.reason = reason
        self.line = line
        self.column = column
        where = self.file
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keeps the error picklable across worker processes
        return (type(self), (self.file, self.reason, self.line, self.column))


class TaskSpecError(MtlDataError):
    """A task definition (tasks.toml or a TaskSpec), or a label that breaks it.

    The message names whatever is known of: the file, the task, the field, the sample (index and key).
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | Path | None = None,
        task: str | None = None,
        field: str | None = None,
        sample: int | None = None,
        key: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = None if file is None else str(file)
        self.task = task
        self.field = field
        self.sample = sample
        self.key = key
        where = []
        if self.file is not None:
            where.append(self.file)
        if task is not None:
            where.append(f"task {task!r}")
        if field is not None:
            where.append(f"field {field!r}")
        if sample is not None:
            where.append(f"sample {sample}" + (f" (key {key!r})" if key is not None else ""))
        super().__init__(": ".join([*where, reason]))

    def __reduce__(self):  # keeps the error picklable across worker processes
        import functools

        kwargs = dict(file=self.file, task=self.task, field=self.field, sample=self.sample, key=self.key)
        return (functools.partial(type(self), self.reason, **kwargs), ())


class WorkerDataError(DatasetFormatError):
    """A dataset error raised inside a DataLoader worker, kept to its one line on the way out.

    torch re-raises a worker's exception in the main process as `type(exc)(text)`, the text being
    the worker's whole formatted traceback; this type takes its own message back out of that text.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def shorten(text: str, limit: int = 160) -> str:
    """`text` as a message quotes it: whole when short, else its head and tail around an ellipsis."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]}[...]{text[-keep:]}"


def path_kind_problem(exc: OSError) -> str | None:
    """What is wrong with an OSError's path when a file stands where a folder is needed (ENOTDIR;
    EEXIST from making the folder), in words; None for any other error."""
    import errno

    if exc.errno == errno.ENOTDIR:
        return "a part of this path is a file, not a folder"
    if exc.errno == errno.EEXIST and exc.filename and Path(exc.filename).is_file():
        return "is a file where a folder is needed"
    return None


class OutputError(MtlDataError):
    """Writing the output failed (no space, quota, I/O error, read-only or permission denied).

    The message names the path and the remedy; `resumable` adds "run the same command with --resume".
    """

    def __init__(self, path: str | Path, reason: str, remedy: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.remedy = remedy  # e.g. " and run the same command with --resume"
        super().__init__(f"{shorten(self.path)}: {reason}{remedy}")

    def __reduce__(self):  # keeps the error picklable across worker processes
        return (type(self), (self.path, self.reason, self.remedy))

    @classmethod
    def from_os_error(cls, exc: OSError, fallback: str | Path, resumable: bool = False) -> OutputError:
        """The one-line form of an OSError met while writing `fallback` (or the file it names)."""
        import errno

        path = exc.filename if exc.filename not in (None, "") else fallback
        resume = " and run the same command with --resume" if resumable else ""
        code = exc.errno
        if code == errno.ENOSPC:
            reason = "no space left on the device; free space"
        elif code == errno.EDQUOT:
            reason = "disk quota exceeded; free space or raise the quota"
        elif code == errno.EFBIG:
            reason = "file too large for this file system or process limit (ulimit -f)"
        elif code == errno.EROFS:
            reason = "the file system is read-only; write the output somewhere writable"
        elif code in (errno.EACCES, errno.EPERM):
            reason = "permission denied; make the folder writable or write the output elsewhere"
        elif code == errno.EIO:
            reason = "input/output error (a failing disk or a lost network mount)"
        elif code == errno.ENAMETOOLONG:
            reason, resume = "file name too long", ""
        elif (where := path_kind_problem(exc)) is not None:
            reason, resume = where, ""
        else:
            reason = f"{exc.strerror or exc}"
        if code in (errno.EROFS, errno.EACCES, errno.EPERM):
            resume = ""  # a new output folder, not a resume of this one
        return cls(path, reason, resume)
