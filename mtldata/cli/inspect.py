"""The commands that look at a dataset or a run: info, verify, show, stats, plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mtldata.cli.dataset_path import DatasetPath
from mtldata.cli.report import EXIT_ERROR, Progress, fail, one_line_failures
from mtldata.errors import MtlDataError

_DATASET = click.argument("dataset", type=DatasetPath())
_LABELS = click.option(
    "--labels",
    type=click.Path(path_type=Path, exists=True),
    help="A float-label LMDB to pair with an image LMDB (Caffe's multi-label layout).",
)
_TASKS = click.option(
    "--tasks",
    "tasks_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="tasks.toml: describe the labels per task (class names, ignore_label, kinds).",
)


def format_info(info: dict[str, Any]) -> str:
    """The text `mtldata info` prints for a dataset summary."""
    lines = [
        f"dataset:   {info['path']}",
        f"format:    {info['backend']} ({info['layout']})",
        f"samples:   {info['count']}",
    ]
    image = info.get("image") or {}
    if image.get("shape"):
        lines.append(f"image:     {'x'.join(map(str, image['shape']))} (CxHxW)")
    elif image.get("shapes"):
        shapes = ", ".join(f"{s} ({n})" for s, n in list(image["shapes"].items())[:5])
        more = " ..." if len(image["shapes"]) > 5 else ""
        lines.append(f"images:    {len(image['shapes'])} sizes: {shapes}{more}")
    if image.get("formats"):
        lines.append("encoding:  " + ", ".join(f"{f} ({n})" for f, n in image["formats"].items()))
    if image.get("color_order"):
        lines.append(f"colour:    {image['color_order']}, {image.get('layout', 'CHW')}")
    lines.append(f"labels:    K={info.get('num_labels')}")
    stats = info.get("label_stats") or []
    if stats:
        width = max(len(s["name"]) for s in stats)
        missing = any(s.get("missing") for s in stats)  # a column only for datasets with missing labels
        lines.append(
            f"  {'name':<{width}}  {'min':>10}  {'max':>10}  {'mean':>10}"
            + (f"  {'missing':>10}" if missing else "")
        )
        for s in stats:
            figures = "  ".join(
                f"{s[c]:>10.4g}" if s[c] is not None else f"{'-':>10}" for c in ("min", "max", "mean")
            )
            lines.append(
                f"  {s['name']:<{width}}  {figures}" + (f"  {s.get('missing', 0):>10}" if missing else "")
            )
    errors = info.get("errors")
    if errors is not None:
        lines.append(
            f"errors:    {errors['count']} skipped sample(s)"
            + (f", listed in {errors['file']}" if errors["count"] else "")
        )
    if info.get("source"):
        lines.append(
            f"source:    {info['source']['list_file']} (sha256 {info['source']['list_sha256'][:12]}...)"
        )
    return "\n".join(lines)


@click.command()
@click.argument("dataset", type=DatasetPath())
@click.option(
    "--labels",
    type=click.Path(path_type=Path, exists=True),
    help="A float-label LMDB to pair with an image LMDB (Caffe's multi-label layout).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(dataset: Path, labels: Path | None, as_json: bool) -> None:
    """Summarise a dataset: count, shapes, K, label names and statistics, errors.

    DATASET is an mtldata dataset directory, a Caffe LMDB made by convert_imageset, or an image
    LMDB given together with --labels. It may also be an .h5 file, an HDF5Data source list
    (a .txt of .h5 paths) or a folder holding hdf5_list.txt.
    """
    from mtldata.inspect.info import dataset_info

    try:
        summary = dataset_info(dataset, labels)
    except MtlDataError as exc:
        fail(str(exc))
    if as_json:
        import json

        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_info(summary))


@click.command()
@_DATASET
@_LABELS
@click.option(
    "--max-problems",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many problems to list.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def verify(dataset: Path, labels: Path | None, max_problems: int, quiet: bool) -> None:
    """Check a dataset record by record.

    Every record decodes, the counts match the manifest, the image and label DBs hold the same keys
    in the same order, and the manifest's checksums hold. Exits with 1, listing the first bad keys,
    when anything does not.
    """
    from mtldata.inspect.verify import format_report, verify_dataset

    progress = Progress(quiet, "rec", "verify")
    try:
        report = verify_dataset(dataset, labels, limit=max(100, max_problems), progress=progress)
    except MtlDataError as exc:
        progress.close()
        fail(str(exc))
    progress.close()
    click.echo(format_report(report, show=max_problems))
    if not report.ok:
        sys.exit(EXIT_ERROR)


@click.command()
@_DATASET
@click.option(
    "-n", "--count", type=click.IntRange(min=1), default=64, show_default=True, help="Samples to show."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default="samples.png",
    show_default=True,
    help="Image file to write (PNG, JPEG, ...).",
)
@_TASKS
@_LABELS
@click.option("--columns", type=click.IntRange(min=1), help="Tiles per row. [default: a square grid]")
@click.option(
    "--tile", type=click.IntRange(min=16), default=128, show_default=True, help="Tile size in pixels."
)
@click.option("--seed", type=int, help="Pick the samples at random with this seed. [default: the first N]")
def show(
    dataset: Path,
    count: int,
    output: Path,
    tasks_file: Path | None,
    labels: Path | None,
    columns: int | None,
    tile: int,
    seed: int | None,
) -> None:
    """Write a contact sheet of samples, each with its labels under it.

    Labels are named from the manifest, or per task with --tasks (class names where given).
    """
    from mtldata.inspect.viz import save_contact_sheet

    with one_line_failures(output):
        layout = save_contact_sheet(
            dataset, output, count, tasks=tasks_file, labels=labels, columns=columns, tile=tile, seed=seed
        )
    click.echo(f"wrote {output}: {layout.count} samples in {layout.rows} rows of {layout.columns}")


@click.command()
@_DATASET
@_TASKS
@_LABELS
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also draw the figures into this image file (needs matplotlib: pip install 'mtldata[viz]').",
)
@click.option("--bins", type=click.IntRange(min=1), default=20, show_default=True, help="Histogram bins.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def stats(
    dataset: Path,
    tasks_file: Path | None,
    labels: Path | None,
    plot_file: Path | None,
    bins: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Label figures per task: class balance, positive rates, value histograms, ignored and missing.

    Without --tasks each label column is described on its own.
    """
    from mtldata.inspect.stats import dataset_stats, format_stats

    progress = Progress(quiet, "rec", "stats")
    try:
        if plot_file is not None:
            from mtldata.inspect.viz import require_matplotlib

            require_matplotlib()  # before reading every label, not after
        figures = dataset_stats(dataset, tasks_file, labels, bins=bins, progress=progress)
    except MtlDataError as exc:
        progress.close()
        fail(str(exc))
    progress.close()
    if as_json:
        import json

        click.echo(json.dumps(figures.to_dict(), indent=2))
    else:
        click.echo(format_stats(figures))
    if plot_file is not None:
        from mtldata.inspect.viz import plot_stats

        with one_line_failures(plot_file):
            plot_stats(figures, plot_file)
        click.echo(f"wrote {plot_file}", err=as_json)
    if figures.label_problem is not None:  # the figures above count it; the labels break the tasks
        fail(figures.label_problem)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Image file to write. [default: curves.png in RUN_DIR]",
)
def plot(run_dir: Path, output: Path | None) -> None:
    """Draw a training run's curves from its metrics.jsonl.

    Per-task losses and metrics (train and val) and the task weights over time. RUN_DIR is the run
    directory or the metrics.jsonl file itself. Needs matplotlib: pip install 'mtldata[viz]'.
    """
    from mtldata.inspect.viz import plot_curves

    output = output or (run_dir if run_dir.is_dir() else run_dir.parent) / "curves.png"
    with one_line_failures(output):
        layout = plot_curves(run_dir, output)
    for note in layout.notes:
        click.echo(f"mtldata: note: {note}", err=True)
    click.echo(f"wrote {output}: {', '.join(layout.panels)}")


COMMANDS = (info, verify, show, stats, plot)
