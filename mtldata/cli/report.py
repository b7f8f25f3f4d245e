"""How the commands report: exit codes, the one-line error, the progress bar."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

EXIT_ERROR = 1
EXIT_SKIPPED = 3  # the dataset is complete, but some samples were skipped (see errors.tsv)
EXIT_INTERRUPTED = 130


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
