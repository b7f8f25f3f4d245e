"""The `mtldata` command line: a thin click shell over the library.

Each command turns its options into a spec, calls one library function, and turns the library's
own errors into a one-line message and a non-zero exit code. The commands live in one module per
family (convert, demo, inspect, train, caffe); this module is the group that gathers them.
"""

from __future__ import annotations

import click

from mtldata.cli.caffe import caffe_group
from mtldata.cli.convert import COMMANDS as CONVERT_COMMANDS
from mtldata.cli.demo import demo
from mtldata.cli.inspect import COMMANDS as INSPECT_COMMANDS
from mtldata.cli.report import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_SKIPPED
from mtldata.version import __version__

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_SKIPPED", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mtldata")
def main() -> None:
    """Multi-task image data: Caffe-compatible LMDB/HDF5 conversion and PyTorch loading.

    Start with `mtldata demo`, then `mtldata convert LIST -o OUT` on your own list file.
    """


from mtldata.cli.train import tasks_command, train_command  # noqa: E402  (torch loads only when they run)

for _command in (*CONVERT_COMMANDS, demo, *INSPECT_COMMANDS, train_command, tasks_command, caffe_group):
    main.add_command(_command)

if __name__ == "__main__":
    main()
