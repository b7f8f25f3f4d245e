"""How the commands report: exit codes, the one-line error, the progress bar."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

EXIT_ERROR = 1
EXIT_SKIPPED = 3  # the dataset is complete, but some samples were skipped (see errors.tsv)
EXIT_INTERRUPTED = 130

if TYPE_CHECKING:
    from mtldata.errors import MtlDataError


def os_error_line(exc: OSError, output: str | Path, resumable: bool = False) -> str:
    """The one line of an OSError: as an output failure (with its remedy) when it is about `output`,
    else the file and the system's reason."""
    from mtldata.errors import OutputError, path_kind_problem, shorten

    name = exc.filename
    inside = name in (None, "")
    if not inside:
        try:
            target = Path(output).resolve()
            inside = Path(name).resolve() == target or target in Path(name).resolve().parents
        except (OSError, ValueError):
            inside = False
    if inside:
        return str(OutputError.from_os_error(exc, output, resumable))
    return f"{shorten(str(name))}: {path_kind_problem(exc) or exc.strerror or exc}"


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print `mtldata: error: message` on stderr and exit with `code`."""
    click.echo(f"mtldata: error: {message}", err=True)
    sys.exit(code)


class Progress:
    """Adapts the library's progress callback to a tqdm bar (or to nothing with --quiet)."""

    def __init__(self, quiet: bool, unit: str, desc: str) -> None:
        self.quiet = quiet
        self.unit = unit
        self.desc = desc
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, desc=self.desc, dynamic_ncols=True, smoothing=0.1)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def one_line_failures(
    output: str | Path | Callable[[], str | Path] = ".",
    *,
    interrupted: str | None = "interrupted",
    closing: Any = None,
    os_error: Callable[[OSError], str] | None = None,
    mtl_error: Callable[[MtlDataError], str] | None = None,
) -> Iterator[None]:
    """Turn what the guarded library call raises into the command's one line, closing `closing`
    (a progress bar, a reporter) first: Ctrl-C -> `interrupted`, exit 130 (None: not caught);
    MtlDataError -> its message (or `mtl_error(exc)`); OSError -> `os_error_line(exc, output)` (or
    `os_error(exc)`). `output` may be a callable, for a path the block itself works out."""
    from mtldata.errors import MtlDataError

    def close() -> None:
        if closing is not None:
            closing.close()

    try:
        yield
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        close()
        fail(interrupted, EXIT_INTERRUPTED)
    except MtlDataError as exc:
        close()
        fail(mtl_error(exc) if mtl_error is not None else str(exc))
    except OSError as exc:
        close()
        if os_error is not None:
            fail(os_error(exc))
        fail(os_error_line(exc, output() if callable(output) else output))
