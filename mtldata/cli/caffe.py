"""`mtldata train --solver solver.prototxt`: run a whole Caffe setup, logging as `caffe train` does.

Kept apart from cli_train.py (the TrainConfig-based training) so that command only routes here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mtldata.cli.report import EXIT_ERROR, EXIT_INTERRUPTED, os_error_line
from mtldata.errors import MtlDataError


def run_solver_command(
    solver: Path, init: str | Path | None, workdir: Path | None, quiet: bool, others: dict[str, Any]
) -> None:
    """Train with a Caffe solver prototxt; `others` are the train options that must stay unset."""
    clashing = sorted(
        "--" + name.replace("_", "-")
        for name, value in others.items()
        if value not in (None, False, (), []) and name not in ("init", "solver", "workdir")
    )
    if clashing:
        click.echo(
            f"mtldata: error: --solver runs the solver's own net, data and settings; drop {', '.join(clashing)}",
            err=True,
        )
        sys.exit(EXIT_ERROR)
    from mtldata.caffenet.runner import train_from_solver

    log = None if quiet else click.echo
    try:
        finished = train_from_solver(solver, init=init, workdir=workdir, log=log)
    except KeyboardInterrupt:
        click.echo("mtldata: error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except MtlDataError as exc:
        click.echo(f"mtldata: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except OSError as exc:  # snapshots into a full, read-only or forbidden --workdir
        click.echo(f"mtldata: error: {os_error_line(exc, workdir or Path.cwd())}", err=True)
        sys.exit(EXIT_ERROR)
    saved = f"; weights in {finished.snapshots[-1]}" if finished.snapshots else ""
    click.echo(f"done: {finished.iter} iterations{saved}", err=not quiet)
