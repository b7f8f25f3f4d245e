"""Caffe's neuron layers: elementwise activations and Dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtldata.caffenet.layers.base import Layer, register


class ReLU(Layer):
    type_name = "ReLU"

    def forward(self, x):
        slope = self.layer_param.relu_param.negative_slope
        # Caffe's gradient at 0 is the negative slope: leaky_relu's, not relu's (whose is 0 too for slope 0).
        return [F.relu(x) if slope == 0 else F.leaky_relu(x, slope)]


class Sigmoid(Layer):
    type_name = "Sigmoid"

    def forward(self, x):
        return [torch.sigmoid(x)]


class TanH(Layer):
    type_name = "TanH"

    def forward(self, x):
        return [torch.tanh(x)]


class Dropout(Layer):
    """In TRAIN, zero each value with probability p and scale the rest by 1/(1-p); identity in TEST."""

    type_name = "Dropout"

    def forward(self, x):
        ratio = self.layer_param.dropout_param.dropout_ratio
        if not 0 <= ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {ratio}")
        if self.phase != "train" or self.dry_run or ratio == 0:
            return [x]
        keep = torch.rand_like(x) >= ratio
        return [x * keep.to(x.dtype) * (1.0 / (1.0 - ratio))]


LAYERS = register(
    ReLU,
    Sigmoid,
    TanH,
    Dropout,
)
