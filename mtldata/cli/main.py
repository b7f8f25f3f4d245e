"""The `mtldata` command line: a thin click shell over the library.

Each command turns its options into a spec, calls one library function, and turns the library's
own errors into a one-line message and a non-zero exit code. The commands live in one module per
family (convert, demo, inspect, train, caffe, deploy); this module is the group that gathers them.
"""

from __future__ import annotations

import click

from mtldata.cli.caffe import caffe_group
from mtldata.cli.convert import COMMANDS as CONVERT_COMMANDS
from mtldata.cli.demo import demo
from mtldata.cli.deploy import COMMANDS as DEPLOY_COMMANDS
from mtldata.cli.inspect import COMMANDS as INSPECT_COMMANDS
from mtldata.cli.report import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_SKIPPED
from mtldata.version import __version__

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_SKIPPED", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mtldata")
@click.option(
    "--max-sample-mb",
    type=click.IntRange(min=1),
    help="Largest stored sample (an HDF5 row) any command reads, in MiB; a dataset declaring larger "
    "ones is refused before any allocation. [default: 1024, or MTLDATA_MAX_SAMPLE_BYTES]",
)
@click.option(
    "--max-classes",
    type=click.IntRange(min=2),
    help="Most classes a softmax task in tasks.toml (or a run's tasks) may have. [default: 16777216 "
    "(2^24, what float32 labels index exactly)]",
)
@click.pass_context
def main(ctx: click.Context, max_sample_mb: int | None, max_classes: int | None) -> None:
    """Multi-task image data: Caffe-compatible LMDB/HDF5 conversion and PyTorch loading.

    Start with `mtldata demo`, then `mtldata convert LIST -o OUT` on your own list file.
    The limits (--max-sample-mb, --max-classes) go before the command: `mtldata --max-classes N train ...`.
    """
    if max_sample_mb is not None:
        from mtldata.storage.read_limits import sample_limit

        ctx.with_resource(sample_limit(max_sample_mb << 20))
    if max_classes is not None:
        from mtldata.tasks import classes_limit

        ctx.with_resource(classes_limit(max_classes))


from mtldata.cli.train import tasks_command, train_command  # noqa: E402  (torch loads only when they run)

for _command in (
    *CONVERT_COMMANDS,
    demo,
    *INSPECT_COMMANDS,
    train_command,
    tasks_command,
    caffe_group,
    *DEPLOY_COMMANDS,
):
    main.add_command(_command)

if __name__ == "__main__":
    main()
