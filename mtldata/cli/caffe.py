"""Caffe commands: `mtldata train --solver solver.prototxt` runs a whole Caffe setup, logging as
`caffe train` does; the `mtldata caffe` group works on Caffe files (`caffe upgrade`).

The solver run is kept apart from cli/train.py (the TrainConfig-based training) so that command only
routes here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mtldata.cli.report import EXIT_ERROR, fail, one_line_failures
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
    # OSError: snapshots into a full, read-only or forbidden --workdir
    with one_line_failures(workdir or Path.cwd()):
        finished = train_from_solver(solver, init=init, workdir=workdir, log=log)
    saved = f"; weights in {finished.snapshots[-1]}" if finished.snapshots else ""
    click.echo(f"done: {finished.iter} iterations{saved}", err=not quiet)


@click.group("caffe")
def caffe_group() -> None:
    """Work on Caffe files: nets, solvers and caffemodels."""


@caffe_group.command("upgrade")
@click.argument("source", metavar="IN", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("target", metavar="OUT", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def upgrade_command(source: Path, target: Path, overwrite: bool) -> None:
    """Write a legacy net prototxt, solver prototxt or caffemodel in the current format.

    Does what Caffe's upgrade_net_proto_text, upgrade_net_proto_binary and upgrade_solver_proto_text
    do: V0/V1 layers become `layer` entries, blobs_lr/weight_decay become param { lr_mult decay_mult },
    net inputs an Input layer, solver_type a type string. Text stays text, binary stays binary.
    """
    from mtldata.caffe.prototxt import upgrade_caffe_file

    try:
        done = upgrade_caffe_file(source, target, overwrite=overwrite)
    except MtlDataError as exc:
        fail(str(exc))
    what = f"upgraded {', '.join(done.steps)}" if done.steps else "already in the current format"
    click.echo(f"wrote {done.path} ({done.kind}; {what})")
