"""The `mtldata` command line: one module per command family over one library call each."""

from mtldata.cli.main import main

__all__ = ["main"]
