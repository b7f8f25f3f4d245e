"""`mtldata demo`: the main job end to end on a built-in sample set."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from mtldata.cli.inspect import format_info
from mtldata.cli.report import Progress, one_line_failures
from mtldata.errors import MtlDataError, OutputError

# What the demo writes into its folder (-d): it refuses a folder where these exist and it did not make them.
DEMO_FILES = ("list.txt", "tasks.toml", "images", "run", "demo_lmdb", "demo_lmdb.partial")


def _without_resume(exc: MtlDataError) -> str:
    """The demo has no --resume: an output failure's remedy is to run the demo again."""
    if isinstance(exc, OutputError):
        return str(OutputError(exc.path, exc.reason, " and run the demo again" if exc.remedy else ""))
    return str(exc)


@click.command()
@click.option(
    "-d",
    "--directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to write the sample set (list.txt, images/), tasks.toml, the dataset (demo_lmdb/) and "
    "the run (run/); a folder already holding such files that the demo did not make is refused. "
    "[default: a new temporary folder]",
)
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Number of sample images.",
)
@click.option("--no-train", is_flag=True, help="Stop after converting and summarising (no training run).")
@click.option(
    "--epochs", type=click.IntRange(min=1), default=25, show_default=True, help="Epochs of the training run."
)
@click.option(
    "--missing",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="Share of each task's labels to leave out (written as nan, converted with --allow-missing).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def demo(
    directory: Path | None,
    count: int,
    quiet: bool,
    no_train: bool = False,
    epochs: int = 25,
    missing: float = 0.0,
) -> None:
    """Make a small multi-task sample set (real JPEGs + a list file), convert it and summarise it,
    then train a small model on it for a few epochs, print its per-task metrics, and let it predict
    the sample images (DIRECTORY/preds.csv)."""
    from mtldata.convert.pipeline import ConvertSpec
    from mtldata.convert.pipeline import convert as run_convert
    from mtldata.inspect.info import dataset_info
    from mtldata.storage.output_guard import DEMO_MARKER, claim_folder
    from mtldata.storage.sample_set import LABEL_NAMES, make_sample_set

    directory = directory or Path(tempfile.mkdtemp(prefix="mtldata-demo-"))
    with one_line_failures(directory, interrupted=None):
        # Only into the demo's own files: a folder holding a user's list.txt, tasks.toml, images/
        # or run/ is refused and left as it is.
        claim_folder(directory, DEMO_MARKER, DEMO_FILES, "mtldata demo")
        list_file = make_sample_set(directory, count=count, missing=missing)
    click.echo(
        f"sample set: {count} images and {list_file}"
        + (f" ({missing:.0%} of each task's labels missing)" if missing else "")
    )
    output = directory / "demo_lmdb"
    spec = ConvertSpec(
        list_file=list_file,
        output=output,
        label_names=LABEL_NAMES,
        overwrite=True,
        workers=min(2, os.cpu_count() or 1),
        allow_missing=missing > 0,
    )
    progress = Progress(quiet, "img", "convert")
    with one_line_failures(directory, interrupted=None, closing=progress, mtl_error=_without_resume):
        result = run_convert(spec, progress)
    progress.close()
    click.echo(f"converted {result.count} samples in {result.seconds:.1f} s -> {output}")
    click.echo(format_info(dataset_info(output)))
    if not no_train:
        from mtldata.cli.train import demo_training

        demo_training(directory, output, quiet, epochs)
