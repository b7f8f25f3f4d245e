"""Caffe layer types as torch modules, one module per family, behind one registry (`LAYERS`).

A layer is a `Layer` subclass registered in its family module's `LAYERS = register(...)`; this
package joins the families into the type name -> builder map the net uses.
"""

from __future__ import annotations

from mtldata.caffenet.layers import activations, data, losses, normalization, structure, vision
from mtldata.caffenet.layers.base import CaffeNetError, Layer, LayerFactory
from mtldata.caffenet.layers.data import DATA_LAYER_TYPES
from mtldata.caffenet.layers.fillers import fill
from mtldata.caffenet.layers.vision import caffe_pool2d

__all__ = ["DATA_LAYER_TYPES", "LAYERS", "CaffeNetError", "Layer", "LayerFactory", "caffe_pool2d", "fill"]


def _join(*families: dict[str, LayerFactory]) -> dict[str, LayerFactory]:
    joined: dict[str, LayerFactory] = {}
    for family in families:
        for name, factory in family.items():
            if name in joined:
                raise RuntimeError(f"layer type {name!r} is registered twice")  # a programming error
            joined[name] = factory
    return joined


LAYERS: dict[str, LayerFactory] = _join(
    vision.LAYERS, activations.LAYERS, normalization.LAYERS, structure.LAYERS, losses.LAYERS, data.LAYERS
)
