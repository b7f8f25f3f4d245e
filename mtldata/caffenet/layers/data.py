"""Caffe's data layers: their tops come from outside the net, so the net does not run them.

The runner (`mtldata.caffenet.runner`) feeds Data and HDF5Data; Input tops are given by the caller.
"""

from __future__ import annotations

# Layers whose tops come from outside the net: the runner (or the caller) feeds them.
DATA_LAYER_TYPES = frozenset({"Data", "HDF5Data", "ImageData", "Input", "MemoryData", "WindowData"})
