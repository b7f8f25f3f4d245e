"""The training side of the `mtldata` command line: `train`, `tasks`, and the demo's short run.

A thin shell like cli.py: options become a TrainConfig, `mtldata.train.train` runs it, and the
library's errors become one line and a non-zero exit. The progress bars and tables are drawn here.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import click

from mtldata.cli.dataset_path import DatasetPath
from mtldata.cli.report import fail, one_line_failures, os_error_line
from mtldata.errors import MtlDataError


def _show_warnings() -> Any:
    """Library warnings (unknown prototxt fields, settings not carried over) as `mtldata: warning:` lines."""

    def show(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        click.echo(f"mtldata: warning: {message}", err=True)

    warnings.showwarning = show


class CliReporter:
    """Draws a progress bar per epoch and prints each epoch's per-task table (rank 0 only)."""

    def __init__(self, quiet: bool = False, tables: bool = True, bars: bool | None = None) -> None:
        import sys

        self.quiet = quiet
        # bars redraw a line: only on a terminal (a log file gets the per-epoch lines alone)
        self.bars = (not quiet and sys.stderr.isatty()) if bars is None else bars
        self.tables = tables
        self.tasks: Any = None
        self.bar: Any = None
        self.last: dict[str, Any] | None = None

    def message(self, text: str) -> None:
        click.echo(f"mtldata: {text}", err=True)

    def run_start(self, config: Any, tasks: Any, steps_per_epoch: int) -> None:
        self.tasks = tasks
        if not self.quiet:
            click.echo(
                f"training {config.trunk} trunk on {config.dataset} -> {config.out_dir} "
                f"({len(tasks)} tasks, {steps_per_epoch} steps/epoch, weighting {config.weighting})",
                err=True,
            )

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.bars:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=steps, desc=f"epoch {epoch}/{epochs}", unit="step", dynamic_ncols=True, leave=False
        )

    def step(self, step: int, logs: dict[str, Any] | None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if logs is not None:
            self.bar.set_postfix(loss=f"{logs['total']:.4f}", lr=f"{logs['lr']:.3g}", refresh=False)

    def epoch_end(self, record: dict[str, Any]) -> None:
        from mtldata.train.metrics import format_table

        self.close()
        self.last = record
        if self.quiet and not self.tables:  # the demo's quiet run: its final table only
            return
        wait = 100 * record["data_wait_share"]
        best = "  (best)" if record.get("best") else ""
        click.echo(
            f"epoch {record['epoch']}  step {record['step']}  train total {record['train']['total']:.4f}  "
            f"{record['seconds']:.1f} s, {wait:.0f}% waiting for data{best}"
        )
        if self.tables:
            click.echo(format_table(record, self.tasks))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _config(overrides: dict[str, Any], config_file: Path | None) -> Any:
    """Defaults < config file (or, on --resume, the run's saved config.toml) < explicit options."""
    from mtldata.train.config import CONFIG_NAME, TrainConfig

    if config_file is None and overrides.get("resume"):
        saved = Path(overrides.get("out_dir") or TrainConfig().out_dir) / CONFIG_NAME
        if saved.is_file():
            config_file = saved
    return TrainConfig.load(config_file, **overrides)


def _run(cfg: Any, reporter: CliReporter) -> Any:
    from mtldata.train import train

    with one_line_failures(
        interrupted=f"interrupted; continue with the same command plus --resume (from {cfg.out_dir}/last.pt)",
        closing=reporter,
        # out of space, read-only or permission denied in out_dir
        os_error=lambda exc: os_error_line(
            exc, cfg.out_dir, resumable=(Path(cfg.out_dir) / "last.pt").is_file()
        ),
    ):
        return train(cfg, reporter)
    return None


def _opt(*names: str, **kwargs: Any) -> Any:
    return click.option(*names, default=kwargs.pop("default", None), **kwargs)


@click.command("train")
@click.argument("dataset", required=False, type=DatasetPath())
@_opt(
    "--tasks",
    "tasks",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="tasks.toml: the tasks and their loss kinds and weights.",
)
@_opt(
    "--prototxt",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A Caffe train_val.prototxt: its data sources, batch sizes, transform_param, Slice and loss layers (explicit options win).",
)
@_opt(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A TOML file of training settings (the keys are these options' names with '_').",
)
@_opt(
    "--labels",
    type=click.Path(path_type=Path, exists=True),
    help="The float-label LMDB of an image LMDB DATASET (Caffe's multi-label layout).",
)
@_opt("--val", type=DatasetPath(), help="Validation dataset.")
@_opt("--val-labels", type=click.Path(path_type=Path, exists=True), help="The float-label LMDB of --val.")
@_opt(
    "--val-split",
    type=click.FloatRange(0, 1, max_open=True),
    help="Hold out this fraction of DATASET for validation (chosen by --seed).",
)
@_opt(
    "--trunk",
    help="Shared trunk: small, resnet (plain torch), torchvision:NAME, timm:NAME (extras [vision], [timm]), "
    "caffe:NET.prototxt[:LAST_LAYER] (the Caffe net's layers up to LAST_LAYER, default the last one all its "
    "outputs share; weights from --init x.caffemodel) or package.module:factory (returns (nn.Module, feature "
    "size)). [default: small]",
)
@_opt("--width", type=click.IntRange(min=1), help="small/resnet: channels of the first stage. [default: 32]")
@_opt(
    "--resnet-blocks",
    "resnet_blocks",
    type=click.IntRange(min=1),
    multiple=True,
    default=(),
    help="resnet: basic blocks per stage, repeated per stage. [default: 2 2 2 2]",
)
@_opt(
    "--pretrained",
    is_flag=False,
    flag_value="default",
    help="torchvision/timm: start from the library's weights (its local cache: offline, a missing file is "
    "an error saying where to put it); --pretrained FILE loads a state_dict or checkpoint into the trunk.",
)
@_opt(
    "--init",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Start from these weights (a checkpoint or a state_dict); tensors that fit are copied.",
)
@_opt("--freeze-trunk", is_flag=True, help="Train the heads only (feature extraction).")
@_opt(
    "--freeze-until",
    metavar="LAYER",
    help="Freeze the trunk's layers up to and including LAYER (a module name such as layer2, or a Caffe layer name).",
)
@_opt(
    "--head-hidden",
    type=click.IntRange(min=0),
    help="Each head gets a hidden layer of this size with ReLU (0: linear heads). [default: 0]",
)
@_opt(
    "--head-dropout",
    type=click.FloatRange(0, 1, max_open=True),
    help="Dropout on the features a head takes (after the hidden layer if any). [default: 0]",
)
@_opt(
    "--trunk-lr-mult",
    type=click.FloatRange(min=0),
    help="Trunk learning rate = lr x this (fine-tuning). [default: 1]",
)
@_opt("--epochs", type=click.IntRange(min=1), help="Passes over the training set. [default: 10]")
@_opt("--batch-size", "-b", type=click.IntRange(min=1), help="Per process. [default: 32, or the prototxt's]")
@_opt(
    "--grad-accum",
    type=click.IntRange(min=1),
    help="Micro-batches per optimizer step (Caffe's iter_size). [default: 1]",
)
@_opt("--optimizer", type=click.Choice(["sgd", "adamw"]), help="SGD with momentum, or AdamW. [default: sgd]")
@_opt(
    "--lr",
    type=click.FloatRange(min=0),
    help="Base learning rate (heads; trunk x --trunk-lr-mult). [default: 0.01]",
)
@_opt("--momentum", type=click.FloatRange(min=0), help="SGD momentum. [default: 0.9]")
@_opt(
    "--weight-decay",
    type=click.FloatRange(min=0),
    help="L2 (SGD) or decoupled (AdamW) weight decay. [default: 0.0005]",
)
@_opt(
    "--schedule",
    type=click.Choice(["cosine", "step", "constant"]),
    help="lr schedule: cosine decay to 0 over --epochs, x --lr-gamma every --lr-step-epochs, or constant. [default: cosine]",
)
@_opt(
    "--lr-step-epochs",
    type=click.IntRange(min=1),
    help="--schedule step: epochs between lr drops. [default: 10]",
)
@_opt(
    "--lr-gamma",
    type=click.FloatRange(min=0),
    help="--schedule step: the factor of each drop. [default: 0.1]",
)
@_opt("--warmup-steps", type=click.IntRange(min=0), help="Linear lr warm-up. [default: 0]")
@_opt(
    "--clip-grad", type=click.FloatRange(min=0), help="Clip the gradient norm to this (0: off). [default: 0]"
)
@_opt(
    "--max-steps",
    type=click.IntRange(min=0),
    help="Stop after this many steps (the schedule still spans --epochs).",
)
@_opt(
    "--weighting",
    type=click.Choice(["fixed", "uncertainty", "dwa", "gradnorm"]),
    help="How task losses combine beyond loss_weight. [default: fixed]",
)
@_opt(
    "--weighting-lr", type=click.FloatRange(min=0), help="lr of learned task weights (0: --lr). [default: 0]"
)
@_opt(
    "--dwa-temperature",
    type=click.FloatRange(min=0, min_open=True),
    help="--weighting dwa: softmax temperature of the loss ratios. [default: 2]",
)
@_opt(
    "--gradnorm-alpha",
    type=float,
    help="--weighting gradnorm: the restoring force alpha. [default: 1.5]",
)
@_opt(
    "--best-metric",
    help="What picks best.pt: loss (the loss_weight-weighted validation loss, else the training loss) or "
    "TASK/METRIC on validation, e.g. cls/accuracy or attr/f1 (higher is better; loss, mean_error, mae, rmse: "
    "lower). [default: loss]",
)
@_opt("--scale", type=float, help="transform_param scale. [default: 0.00390625]")
@_opt(
    "--mean-value",
    "mean_values",
    multiple=True,
    type=float,
    default=(),
    help="transform_param mean_value (repeat per channel, BGR).",
)
@_opt(
    "--mean-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="transform_param mean_file: a .binaryproto mean image (instead of --mean-value).",
)
@_opt(
    "--crop-size",
    type=click.IntRange(min=0),
    help="transform_param crop_size (random in training, centred in validation).",
)
@_opt(
    "--mirror/--no-mirror", help="transform_param mirror: random horizontal flips in training. [default: off]"
)
@_opt(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="auto: CUDA when there is one. [default: auto]",
)
@_opt("--amp/--no-amp", help="Mixed precision on CUDA (bf16, or fp16 with a GradScaler). [default: on]")
@_opt("--compile", is_flag=True, help="torch.compile the model.")
@_opt("--channels-last/--no-channels-last", help="channels_last memory format on CUDA. [default: on]")
@_opt(
    "--workers",
    "-j",
    "num_workers",
    type=click.IntRange(min=0),
    help="DataLoader worker processes. [default: 2]",
)
@_opt("--seed", type=int, help="Seeds weights, data order, crops and --val-split. [default: 0]")
@_opt(
    "--out-dir",
    "-o",
    type=click.Path(path_type=Path, file_okay=False),
    help="Checkpoints, config.toml, metrics.jsonl. [default: runs/train]",
)
@_opt("--resume", is_flag=True, help="Continue the run in --out-dir from its last.pt.")
@_opt("--log-every", type=click.IntRange(min=1), help="Steps between loss readouts. [default: 10]")
@_opt("--tensorboard", is_flag=True, help="Also write TensorBoard logs (needs the tensorboard package).")
@_opt(
    "--skip-nonfinite",
    is_flag=True,
    help="Skip a step whose loss is NaN or inf (no update) instead of stopping the run with an error.",
)
@_opt(
    "--solver",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A Caffe solver.prototxt: run that whole setup (its net, Data/HDF5Data layers and SGD solver) as `caffe train` does, logging like Caffe; --init is then a .caffemodel.",
)
@_opt(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="With --solver: where snapshots go (snapshot_prefix is relative to it). [default: the current directory]",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (the per-epoch lines and tables stay).")
def train_command(dataset: Path | None, config_file: Path | None, quiet: bool, **options: Any) -> None:
    """Train a shared trunk with one head per task on DATASET.

    The task losses are Caffe's (SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss with Caffe's
    normalisation) combined with each task's loss_weight. Each epoch prints a per-task table and
    appends to OUT_DIR/metrics.jsonl; OUT_DIR/last.pt and best.pt are written atomically.

    \b
    Multi-process (DDP):  torchrun --nproc-per-node N -m mtldata train ...
    Caffe setup:          mtldata train --solver solver.prototxt [--init x.caffemodel]
    """
    _show_warnings()
    solver, workdir = options.pop("solver"), options.pop("workdir")
    if solver is not None:  # the Caffe setup itself: mtldata.cli.caffe
        from mtldata.cli.caffe import run_solver_command

        run_solver_command(
            solver, options["init"], workdir, quiet, {"dataset": dataset, "config": config_file, **options}
        )
        return
    overrides = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    overrides["mean_values"] = list(options["mean_values"]) or None
    overrides["resnet_blocks"] = list(options["resnet_blocks"]) or None
    for flag in ("freeze_trunk", "compile", "resume", "tensorboard", "skip_nonfinite"):
        overrides[flag] = True if options[flag] else None
    if dataset is not None:
        overrides["dataset"] = str(dataset)
    try:
        cfg = _config(overrides, config_file)
    except MtlDataError as exc:
        fail(str(exc))
    reporter = CliReporter(quiet)
    result = _run(cfg, reporter)
    if result is not None and result.rank == 0 and not quiet:
        click.echo(f"done: {result.step} steps, {result.epoch} epochs; checkpoints in {result.out_dir}")


@click.command("tasks")
@click.argument("prototxt_file", required=False, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--from-prototxt",
    "prototxt",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The prototxt, given as an option (the same as PROTOTXT_FILE).",
)
@click.option(
    "--num-labels",
    "-k",
    type=click.IntRange(min=1),
    help="Labels per sample (K), when the prototxt alone cannot tell and its label source cannot be opened.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the tasks.toml here instead of printing it (a new file unless --overwrite).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing file at --output.")
def tasks_command(
    prototxt_file: Path | None,
    prototxt: Path | None,
    num_labels: int | None,
    output: Path | None,
    overwrite: bool = False,
) -> None:
    """Print the tasks.toml a Caffe prototxt's Slice and loss layers describe.

    PROTOTXT_FILE is a Caffe train_val.prototxt (or give it with --from-prototxt). Loss layers become
    tasks (SoftmaxWithLoss: softmax, SigmoidCrossEntropyLoss: sigmoid, EuclideanLoss: euclidean)
    with their loss_weight and ignore_label; Slice layers give their columns.
    """
    from mtldata.caffenet.multitask import import_net, prototxt_num_labels
    from mtldata.tasks import dump_tasks

    if (prototxt_file is None) == (prototxt is None):
        raise click.UsageError("give the prototxt once: as PROTOTXT_FILE or with --from-prototxt")
    prototxt = prototxt or prototxt_file
    assert prototxt is not None
    _show_warnings()
    try:
        if num_labels is None:
            num_labels = prototxt_num_labels(prototxt)
        imported = import_net(prototxt, num_labels=num_labels)
    except MtlDataError as exc:
        fail(str(exc))
    text = dump_tasks(imported.tasks)
    if output is None:
        click.echo(text, nl=False)
    else:
        from mtldata.durable import write_bytes_atomic

        if output.name in ("", ".", "..") or output.is_dir():
            fail(f"{output}: names a folder; give the tasks.toml file to write")
        if output.exists() and output.resolve() == prototxt.resolve():
            fail(f"{output}: is the input prototxt; write the tasks.toml to a new file")
        if output.exists() and not overwrite:
            fail(f"{output}: already exists; pass --overwrite to replace it")
        try:
            write_bytes_atomic(output, text.encode("utf-8"))
        except OSError as exc:  # named as the file asked for, not its temporary sibling
            fail(os_error_line(OSError(exc.errno, exc.strerror, str(output)), output))
        click.echo(f"wrote {output} ({len(imported.tasks)} tasks)", err=True)


def demo_training(directory: Path, dataset: Path, quiet: bool, epochs: int = 25) -> None:
    """The demo's short run on the built-in sample set, then its per-task metrics."""
    from mtldata.storage.output_guard import RUN_MARKER
    from mtldata.storage.sample_set import CLASS_NAMES, LABEL_NAMES
    from mtldata.tasks import TaskSet, TaskSpec, dump_tasks
    from mtldata.train.config import TrainConfig
    from mtldata.train.metrics import format_table

    tasks = TaskSet(
        (
            TaskSpec("shape", slice(0, 1), "softmax", classes=len(CLASS_NAMES), class_names=CLASS_NAMES),
            TaskSpec("attributes", slice(1, 4), "sigmoid", label_names=LABEL_NAMES[1:4]),
            TaskSpec("size", slice(4, 5), "euclidean", label_names=LABEL_NAMES[4:5]),
        ),
        num_labels=len(LABEL_NAMES),
    )
    run_dir = directory / "run"
    if (run_dir / "last.pt").exists() and (run_dir / RUN_MARKER).is_file():
        shutil.rmtree(run_dir)  # the demo's own run (its folder is the demo's): a new demo replaces it
    tasks_file = directory / "tasks.toml"
    tasks_file.write_text(dump_tasks(tasks), encoding="utf-8")
    cfg = TrainConfig(
        dataset=str(dataset),
        tasks=str(tasks_file),
        val_split=0.2,
        epochs=epochs,
        batch_size=16,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=1e-4,
        width=16,
        num_workers=0,
        out_dir=str(run_dir),
        log_every=5,
    )
    if not quiet:
        click.echo(f"training {epochs} epochs with tasks from {tasks_file}:")
    reporter = CliReporter(quiet=quiet, tables=False)
    result = _run(cfg, reporter)
    if result is None or not result.history:
        return
    final = result.history[-1]
    click.echo(f"per-task metrics after {final['epoch']} epochs (validation: {int(0.2 * 100)}% held out):")
    click.echo(format_table(final, result.tasks))
    click.echo(f"checkpoints and metrics.jsonl in {result.out_dir}")
    _demo_predictions(directory, result.out_dir, quiet)


def _demo_predictions(directory: Path, run_dir: Path, quiet: bool) -> None:
    """The demo's last step: the trained model predicts the sample images, as `mtldata predict` does."""
    from mtldata.cli.report import Progress
    from mtldata.train.predict import predict_run
    from mtldata.train.run_io import find_checkpoint

    preds = directory / "preds.csv"
    progress = Progress(quiet, "img", "predict")
    try:
        model = find_checkpoint(run_dir)
        predicted = predict_run(run_dir, directory / "images", preds, progress=progress)
    except MtlDataError as exc:
        progress.close()
        fail(str(exc))
    progress.close()
    head = preds.read_text(encoding="utf-8").splitlines()[:4]
    click.echo(f"model: {model} (evaluate, predict and export take {run_dir})")
    click.echo(f"predictions for {predicted.count} images in {preds}:")
    click.echo("\n".join(f"  {line}" for line in head) + "\n  ...")
