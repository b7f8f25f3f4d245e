"""After training: `evaluate`, `predict` and `export` a run (a run folder or a .pt checkpoint).

Each command turns its options into one call of mtldata.train.evaluate / predict / export and the
library's errors into one line and exit code 1 (3 when predict skipped unreadable images).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mtldata.cli.report import EXIT_SKIPPED, Progress, fail, one_line_failures


def _refuse_existing(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        fail(f"{output}: already exists; pass --overwrite to replace it")
    if output.is_dir():
        fail(f"{output}: is a folder, not a file name")


@click.command("evaluate")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--labels", type=click.Path(path_type=Path), help="The float-label LMDB of an image LMDB DATASET."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout instead of tables."
)
@click.option(
    "--confusion-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where softmax tasks' confusion matrices go (<dataset>_confusion_<task>.csv). [default: the run folder]",
)
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def evaluate_command(
    run: Path,
    dataset: Path,
    labels: Path | None,
    as_json: bool,
    confusion_dir: Path | None,
    batch_size: int,
    quiet: bool,
) -> None:
    """Measure a trained RUN on DATASET, task by task, over the labelled entries only.

    softmax: accuracy and a confusion matrix file; sigmoid: mean error, F1, mA (mean balanced
    accuracy over labels) and AUC, and per label accuracy, balanced accuracy and AUC; euclidean: MAE
    and RMSE. Missing labels (NaN) and ignore_label entries are not counted; "labelled" says how many
    were. RUN is a training run folder (its best.pt, else last.pt) or a checkpoint file.
    """
    from mtldata.train.evaluate import evaluate_run, format_report
    from mtldata.train.run_io import find_checkpoint

    progress = Progress(quiet, "img", "evaluate")
    # The OSError line names confusion_dir as the block works it out (from RUN when not given).
    with one_line_failures(lambda: confusion_dir or ".", closing=progress):
        if confusion_dir is None:
            confusion_dir = find_checkpoint(run).parent
        report = evaluate_run(
            run, dataset, labels=labels, batch_size=batch_size, confusion_dir=confusion_dir, progress=progress
        )
    progress.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(format_report(report))


@click.command("predict")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("source", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="preds.csv / .jsonl",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["csv", "jsonl"]),
    help="[default: jsonl for a .jsonl output name, else csv]",
)
@click.option(
    "--strict", is_flag=True, help="Stop at the first unreadable image (exit 1) instead of skipping it."
)
@click.option(
    "--labels", type=click.Path(path_type=Path), help="The float-label LMDB of an image LMDB INPUT."
)
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def predict_command(
    run: Path,
    source: Path,
    output: Path,
    output_format: str | None,
    strict: bool,
    labels: Path | None,
    batch_size: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Predict every image of INPUT with a trained RUN; one row per image in --output.

    INPUT is a list file (an image path per line, relative to the list's folder; labels after it are
    ignored), a folder of images (searched recursively) or a dataset. Image files are decoded and
    resized as the training dataset's conversion did, then transformed as in training (test phase).
    Columns: softmax TASK (class index), TASK.name, TASK.prob; sigmoid TASK.LABEL (probability);
    euclidean TASK.LABEL (value). Unreadable images are skipped and listed (exit code 3) unless --strict.
    RUN is a training run folder (its best.pt, else last.pt) or a checkpoint file.
    """
    from mtldata.train.predict import predict_run

    _refuse_existing(output, overwrite)
    fmt = output_format or ("jsonl" if output.suffix.lower() == ".jsonl" else "csv")
    progress = Progress(quiet, "img", "predict")
    with one_line_failures(output, interrupted="interrupted; nothing was written", closing=progress):
        result = predict_run(
            run,
            source,
            output,
            output_format=fmt,
            batch_size=batch_size,
            strict=strict,
            labels=labels,
            progress=progress,
        )
    progress.close()
    click.echo(f"wrote {result.count} prediction{'s' * (result.count != 1)} to {result.output}")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} image(s):", err=True)
        for line in result.skipped:
            click.echo(f"  {line}", err=True)
        sys.exit(EXIT_SKIPPED)


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="model.onnx (ONNX, needs the onnx package) or model.pt (TorchScript).",
)
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset version. [default: torch's]")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
def export_command(run: Path, output: Path, opset: int | None, overwrite: bool) -> None:
    """Write a trained RUN's model as ONNX (.onnx) or TorchScript (.pt) for serving.

    One input, "image": float32 (N, C, H, W), already transformed as in training, (pixels - mean) *
    scale in the run's channel order. One output per task, named after it (logits for softmax and
    sigmoid tasks, values for euclidean ones). The transform, input shape and task, label and class
    names are in the file's metadata (ONNX metadata_props; TorchScript extra file mtldata.json).
    RUN is a training run folder (its best.pt, else last.pt) or a checkpoint file.
    """
    from mtldata.train.export import export_run

    _refuse_existing(output, overwrite)
    with one_line_failures(output, interrupted=None):
        path = export_run(run, output, opset=opset)
    click.echo(f"wrote {path}")


COMMANDS = (evaluate_command, predict_command, export_command)
