"""mtldata: multi-task (multi-label) image data for Caffe and PyTorch.

Convert image lists with label vectors into Caffe-compatible LMDB (or HDF5) datasets and read them
back. Importing the package is cheap: torch is imported only by the modules that need it.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "ConvertSpec", "open_reader", "open_dataset", "LabelSlicer"]


def __getattr__(name: str):  # PEP 562: lazy exports keep `import mtldata` light for worker processes
    # The convert *function* lives at mtldata.convert.convert: the submodule owns the name.
    if name == "ConvertSpec":
        from mtldata.convert import ConvertSpec

        return ConvertSpec
    if name == "open_reader":
        from mtldata.backends import open_reader

        return open_reader
    if name == "open_dataset":  # imports torch
        from mtldata.dataset import open_dataset

        return open_dataset
    if name == "LabelSlicer":
        from mtldata.tasks import LabelSlicer

        return LabelSlicer
    raise AttributeError(f"module 'mtldata' has no attribute {name!r}")
