"""The argument type of a dataset a command reads: an existing path, or one line when it is still
being written (`OUT.partial` beside a missing `OUT`) instead of click's "does not exist"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mtldata.cli.report import fail


class DatasetPath(click.Path):
    """click.Path for a dataset to read; a conversion running in (or interrupted in) OUT.partial is
    reported as such, with what to do, and exit 1."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(path_type=Path, exists=True, **kwargs)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (str, Path)):
            from mtldata.storage.output_guard import not_there_yet

            line = not_there_yet(Path(value))
            if line is not None:
                fail(line)
        return super().convert(value, param, ctx)
