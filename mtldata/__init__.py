"""mtldata: multi-task (multi-label) image data for Caffe and PyTorch.

Convert image lists with label vectors into Caffe-compatible LMDB (or HDF5) datasets and read them
back. Importing the package is cheap: torch is imported only by the modules that need it.
"""

from __future__ import annotations

from mtldata.version import __version__

__all__ = [
    "__version__",
    "CaffeNet",
    "ConvertSpec",
    "LabelSlicer",
    "TaskSet",
    "open_dataset",
    "open_reader",
]


def __getattr__(name: str):  # PEP 562: lazy exports keep `import mtldata` light for worker processes
    # `mtldata.convert` is the conversion package (its `convert` function and `ConvertSpec`): the
    # subpackage owns the name, so `from mtldata.convert import convert` is the function's path.
    if name == "ConvertSpec":
        from mtldata.convert.pipeline import ConvertSpec

        return ConvertSpec
    if name == "open_reader":
        from mtldata.storage.backends import open_reader

        return open_reader
    if name == "open_dataset":  # imports torch
        from mtldata.loader.dataset import open_dataset

        return open_dataset
    if name in ("LabelSlicer", "TaskSet"):
        import mtldata.tasks

        return getattr(mtldata.tasks, name)
    if name == "CaffeNet":  # imports torch
        from mtldata.caffenet.net import CaffeNet

        return CaffeNet
    raise AttributeError(f"module 'mtldata' has no attribute {name!r}")
