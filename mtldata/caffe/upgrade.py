"""Legacy Caffe nets and solvers in the current format, upgraded as Caffe upgrades them when it reads them.

The steps, their order and their results are those of Caffe's UpgradeNetAsNeeded and
UpgradeSolverAsNeeded (src/caffe/util/upgrade_proto.cpp): V0 layers become V1 layers (padding layers
folded into the next conv or pool), the deprecated transform fields of V1 data layers move to
transform_param, V1 layers become LayerParameters, net-level inputs become an Input layer, three-param
BatchNorm layers get lr_mult/decay_mult 0, and a solver's `solver_type` enum becomes its `type` string.

Where Caffe aborts, these raise CaffeFileError naming the file. Where Caffe drops a V0 setting that
means nothing for the layer's type and carries on, so do they, with a LegacyUpgradeWarning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from google.protobuf.message import Message

from mtldata.caffe import caffe_pb2
from mtldata.errors import CaffeFileError

__all__ = ["V0_TYPE_NAMES", "V1_TYPE_NAMES", "LegacyUpgradeWarning", "upgrade_net", "upgrade_solver"]

_V1 = caffe_pb2.V1LayerParameter

# V1 LayerType enum -> LayerParameter.type (UpgradeV1LayerType); NONE becomes an empty type.
V1_TYPE_NAMES = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# V0 layer type strings -> V1 LayerType names (UpgradeV0LayerType); "padding" is folded away first.
V0_TYPE_NAMES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

_DATA_SOURCES = {
    "data": "data_param",
    "hdf5_data": "hdf5_data_param",
    "images": "image_data_param",
    "window_data": "window_data_param",
}

# V0 field -> {V0 type: (V1 parameter message, field)}; a V0 field set on any other type is dropped.
_V0_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": ("convolution_param", "num_output"), "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"), "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"), "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"), "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},  # the two PoolMethod enums number alike
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {**{t: (p, "source") for t, p in _DATA_SOURCES.items()}, "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {t: (p, "batch_size") for t, p in _DATA_SOURCES.items()},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "")},  # "" copies the whole message
}  # fmt: skip

# V0 fields that become transform_param fields whatever the layer type.
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}
# V1 data layer types and the parameter whose deprecated transform fields move to transform_param.
_V1_DATA_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
# V1 parameter messages copied as they are (every *_param V1LayerParameter holds).
_V1_PARAMS = tuple(
    f.name for f in _V1.DESCRIPTOR.fields if f.message_type is not None and f.name.endswith("_param")
)

_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                 "ADADELTA": "AdaDelta", "ADAM": "Adam"}  # fmt: skip


class LegacyUpgradeWarning(UserWarning):
    """A V0 setting that means nothing for its layer's type was dropped in the upgrade, as Caffe drops it."""


def upgrade_net(net: caffe_pb2.NetParameter, source: str | Path) -> list[str]:
    """Upgrade `net` in place to the current format; return what was upgraded (empty: nothing).

    `source` names the file in errors and warnings.
    """
    done = []
    if any(layer.HasField("layer") for layer in net.layers):
        _upgrade_v0_net(net, source)
        done.append("V0 layers")
    if _needs_data_upgrade(net):
        _upgrade_data_transformation(net)
        done.append("data layer transform fields")
    if net.layers:
        _upgrade_v1_net(net, source)
        done.append("V1 layers")
    if net.input:
        _upgrade_input(net, source)
        done.append("input fields")
    if _three_param_batch_norms(net):
        for layer in _three_param_batch_norms(net):
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
        done.append("BatchNorm params")
    return done


def upgrade_solver(solver: caffe_pb2.SolverParameter, source: str | Path) -> list[str]:
    """Upgrade `solver` in place (solver_type -> type); return what was upgraded.

    Nets embedded in the solver (net_param, train_net_param, test_net_param) are upgraded too; Caffe
    leaves them as they are and would build no layer from a V1 one.
    """
    done = []
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise CaffeFileError(source, "solver gives both the old solver_type (enum) and type (string)")
        solver.type = _SOLVER_TYPES[caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)]
        solver.ClearField("solver_type")
        done.append("solver_type")
    for name, net in _named_embedded_nets(solver):
        done += [f"{name}: {step}" for step in upgrade_net(net, source)]
    return done


def _named_embedded_nets(solver: caffe_pb2.SolverParameter) -> list[tuple[str, caffe_pb2.NetParameter]]:
    nets = [(f, getattr(solver, f)) for f in ("net_param", "train_net_param") if solver.HasField(f)]
    return nets + [(f"test_net_param[{i}]", net) for i, net in enumerate(solver.test_net_param)]


def _three_param_batch_norms(net: caffe_pb2.NetParameter) -> list[caffe_pb2.LayerParameter]:
    # The first BatchNorm declared three ParamSpecs to freeze its statistics blobs.
    return [layer for layer in net.layer if layer.type == "BatchNorm" and len(layer.param) == 3]


# ---- V0 -> V1 ---------------------------------------------------------------------------------


def _upgrade_v0_net(net: caffe_pb2.NetParameter, source: str | Path) -> None:
    """UpgradeV0Net: fold padding layers, then rewrite every layer; keep only name, inputs, force_backward."""
    for i, conn in enumerate(net.layers):
        if not conn.HasField("layer"):
            where = f"layers[{i}]" + (f" {conn.name!r}" if conn.name else "")
            raise CaffeFileError(
                source, f"{where} is a V1 layer in a net of V0 layers; Caffe cannot upgrade the mix"
            )
    folded = _fold_v0_padding(net, source)
    kept = caffe_pb2.NetParameter()
    if net.HasField("name"):
        kept.name = net.name
    for conn in folded:
        _upgrade_v0_layer(conn, kept.layers.add(), source)
    kept.input.extend(net.input)
    kept.input_dim.extend(net.input_dim)
    if net.HasField("force_backward"):
        kept.force_backward = net.force_backward
    net.CopyFrom(kept)


def _fold_v0_padding(net: caffe_pb2.NetParameter, source: str | Path) -> list[caffe_pb2.V1LayerParameter]:
    """UpgradeV0PaddingLayers: a padding layer's pad moves into the conv or pool layer it feeds."""
    last_top = dict.fromkeys(net.input, -1)  # blob -> index of the layer that last wrote it
    out: list[caffe_pb2.V1LayerParameter] = []
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            copy = _V1()
            copy.CopyFrom(conn)
            out.append(copy)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise CaffeFileError(source, f"V0 layer {v0.name!r}: unknown bottom blob {blob!r}")
            producer = last_top[blob]
            if producer == -1 or net.layers[producer].layer.type != "padding":
                continue
            pad = net.layers[producer]
            if v0.type not in ("conv", "pool"):
                raise CaffeFileError(
                    source,
                    f"V0 layer {v0.name!r}: a padding layer feeds a {v0.type!r} layer, not conv or pool",
                )
            if len(conn.bottom) != 1 or len(pad.bottom) != 1 or len(pad.top) != 1:
                raise CaffeFileError(
                    source, f"V0 layer {v0.name!r}: padding folds only between one-bottom, one-top layers"
                )
            out[-1].layer.pad = pad.layer.pad
            out[-1].bottom[j] = pad.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return out


def _upgrade_v0_layer(
    conn: caffe_pb2.V1LayerParameter, layer: caffe_pb2.V1LayerParameter, source: str | Path
) -> None:
    """UpgradeV0LayerParameter: the flat V0 settings into the V1 layer's typed parameter messages."""
    layer.bottom.extend(conn.bottom)
    layer.top.extend(conn.top)
    v0 = conn.layer
    if v0.HasField("name"):
        layer.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_TYPE_NAMES:
            raise CaffeFileError(source, f"V0 layer {v0.name!r}: unknown V0 layer type {kind!r}")
        layer.type = _V1.LayerType.Value(V0_TYPE_NAMES[kind])
    layer.blobs.extend(v0.blobs)
    layer.blobs_lr.extend(v0.blobs_lr)
    layer.weight_decay.extend(v0.weight_decay)
    dropped = []
    for field, value in v0.ListFields():
        name = field.name
        if name in _V0_TRANSFORM:
            setattr(layer.transform_param, _V0_TRANSFORM[name], value)
        elif name in _V0_FIELDS:
            target = _V0_FIELDS[name].get(kind)
            if target is None:
                dropped.append(name)
                continue
            param = getattr(layer, target[0])
            if not target[1]:
                param.CopyFrom(value)
            elif isinstance(value, Message):
                getattr(param, target[1]).CopyFrom(value)
            elif param.DESCRIPTOR.fields_by_name[target[1]].is_repeated:
                getattr(param, target[1]).append(value)
            else:
                setattr(param, target[1], value)
    if dropped:
        warnings.warn(
            f"{source}: V0 layer {v0.name!r} of type {kind!r}: dropped {', '.join(dropped)} "
            "(meaningless for this type; Caffe drops them too)",
            LegacyUpgradeWarning,
            stacklevel=2,
        )


# ---- V1 data transform fields -------------------------------------------------------------------


def _needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    for layer in net.layers:
        param = _V1_DATA_PARAMS.get(_V1.LayerType.Name(layer.type))
        if param and any(getattr(layer, param).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def _upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """UpgradeNetDataTransformation: scale, mean_file, crop_size, mirror move to transform_param."""
    for layer in net.layers:
        param_name = _V1_DATA_PARAMS.get(_V1.LayerType.Name(layer.type))
        if param_name is None:
            continue
        # Caffe touches both messages of every such layer, so both become present even if empty.
        param = getattr(layer, param_name)
        param.SetInParent()
        layer.transform_param.SetInParent()
        for name in _TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(layer.transform_param, name, getattr(param, name))
                param.ClearField(name)


# ---- V1 -> current ----------------------------------------------------------------------------


def _upgrade_v1_net(net: caffe_pb2.NetParameter, source: str | Path) -> None:
    """UpgradeV1Net: every `layers` entry becomes a `layer` entry; the rest of the net is kept."""
    if net.layer:
        raise CaffeFileError(
            source,
            "the net has both 'layer' (current) and 'layers' (legacy V1) entries; Caffe refuses to upgrade "
            "such a mix: write every layer in one format",
        )
    for old in net.layers:  # blobs are copied once; the V1 entries go right after
        _upgrade_v1_layer(old, net.layer.add())
    net.ClearField("layers")


def _upgrade_v1_layer(old: caffe_pb2.V1LayerParameter, layer: caffe_pb2.LayerParameter) -> None:
    """UpgradeV1LayerParameter: type enum -> string, blobs_lr/weight_decay/param -> ParamSpec."""
    layer.bottom.extend(old.bottom)
    layer.top.extend(old.top)
    if old.HasField("name"):
        layer.name = old.name
    layer.include.extend(old.include)
    layer.exclude.extend(old.exclude)
    if old.HasField("type"):
        layer.type = V1_TYPE_NAMES[_V1.LayerType.Name(old.type)]
    layer.blobs.extend(old.blobs)

    def spec(i: int) -> caffe_pb2.ParamSpec:
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(old.param):
        spec(i).name = name
    for i, mode in enumerate(old.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(_V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(old.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(old.weight_decay):
        spec(i).decay_mult = decay
    layer.loss_weight.extend(old.loss_weight)
    for name in _V1_PARAMS:
        if old.HasField(name):
            getattr(layer, name).CopyFrom(getattr(old, name))


# ---- net-level inputs ---------------------------------------------------------------------------


def _upgrade_input(net: caffe_pb2.NetParameter, source: str | Path) -> None:
    """UpgradeNetInput: input + input_shape/input_dim become a first Input layer named "input".

    Inputs without any shape (old caffemodels) are simply dropped.
    """
    inputs = list(net.input)
    if net.input_shape or net.input_dim:
        if net.input_shape and len(net.input_shape) < len(inputs):
            raise CaffeFileError(
                source,
                f"{len(inputs)} net inputs but {len(net.input_shape)} input_shape entries; give one per input",
            )
        if not net.input_shape and len(net.input_dim) < 4 * len(inputs):
            raise CaffeFileError(
                source,
                f"{len(inputs)} net inputs need {4 * len(inputs)} input_dim values (4 each); the net gives {len(net.input_dim)}",
            )
        layer = caffe_pb2.LayerParameter(name="input", type="Input", top=inputs)
        for i in range(len(inputs)):
            shape = layer.input_param.shape.add()
            if net.input_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i : 4 * i + 4])
        net.layer.insert(0, layer)  # first, so that the layers after it find their bottoms
    for name in ("input", "input_shape", "input_dim"):
        net.ClearField(name)
