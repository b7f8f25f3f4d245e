"""Multi-task Caffe nets <-> mtldata tasks: import a train_val.prototxt's data and losses, emit one.

Import reads what a multi-task train_val.prototxt says about the data: the Data / HDF5Data layers
(sources, batch sizes, transform_param) of each phase under Caffe's include/exclude rules, the Slice
layers that cut the label blob, and the loss layers (SoftmaxWithLoss, SigmoidCrossEntropyLoss,
EuclideanLoss) with their loss_weight and ignore_label; these become a TaskSet. The layers between
data and losses (the network itself) are not translated. Emit goes the other way: a NetParameter that
stock Caffe trains on an mtldata dataset (two Data layers, Slice, a small trunk, heads and losses).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from mtldata.caffe.caffe_pb2 import (
    TEST,
    TRAIN,
    DataParameter,
    LayerParameter,
    LossParameter,
    NetParameter,
    TransformationParameter,
)
from mtldata.caffe.prototxt import read_net
from mtldata.caffenet.netstate import layers_in_state
from mtldata.durable import write_bytes_atomic
from mtldata.errors import DatasetFormatError, TaskSpecError
from mtldata.storage.backends import dataset_num_labels, read_manifest
from mtldata.tasks import TaskSet, TaskSpec

__all__ = [
    "LOSS_KINDS",
    "DataSource",
    "NetImportWarning",
    "NetTasks",
    "data_sources",
    "emit_train_val",
    "filter_phase",
    "import_net",
    "net_to_text",
    "prototxt_num_labels",
    "resolve_source_path",
    "source_paths",
    "write_train_val",
]

# Caffe loss layer type <-> task kind.
LOSS_KINDS = {
    "SoftmaxWithLoss": "softmax",
    "SigmoidCrossEntropyLoss": "sigmoid",
    "EuclideanLoss": "euclidean",
}
_LOSS_TYPES = {kind: layer for layer, kind in LOSS_KINDS.items()}
_DATA_TYPES = ("Data", "HDF5Data")
_PASS_THROUGH = ("Flatten", "Reshape", "Split")  # label blobs keep their columns through these
_DEFAULT_NORMALIZATION = {"softmax": LossParameter.VALID, "sigmoid": LossParameter.BATCH_SIZE}
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class NetImportWarning(UserWarning):
    """Something in a prototxt that mtldata does not carry over (a setting it cannot honour)."""


@dataclass(frozen=True)
class DataSource:
    """Where one phase's data comes from, as the prototxt says (paths as written, not resolved).

    `backend` is "lmdb", "leveldb" or "hdf5". For Data layers `images` is the image DB and `labels`
    the float-label DB (None when the labels are the image Datums' own int label); for HDF5Data
    `images` is the list file of .h5 paths and `labels` is None.
    """

    backend: str
    images: str
    labels: str | None
    batch_size: int
    transform: TransformationParameter | None = None
    shuffle: bool = False
    label_top: str = "label"


@dataclass(frozen=True)
class NetTasks:
    """What `import_net` found: the tasks (from the TRAIN losses) and each phase's data source."""

    tasks: TaskSet
    train: DataSource | None
    test: DataSource | None
    name: str = ""


# ---------------------------------------------------------------------------------------------------
# Phases


def filter_phase(
    net: NetParameter, phase: str, level: int = 0, stages: tuple[str, ...] = ()
) -> list[LayerParameter]:
    """The layers Caffe keeps in `phase` ("train" or "test"), as Net::FilterNet decides."""
    return layers_in_state(net, phase, level, stages)


# ---------------------------------------------------------------------------------------------------
# Import


def import_net(
    net: NetParameter | str | Path, *, num_labels: int | None = None, origin: str | None = None
) -> NetTasks:
    """The tasks and data sources of a multi-task train_val prototxt (a path or a parsed NetParameter).

    `num_labels` (the dataset's K) is needed only when the prototxt alone cannot tell it: the last
    Slice piece and a label blob fed whole to a loss get their width from the head that predicts them
    (an InnerProduct's num_output) when it can be found.
    """
    origin = origin or (str(net) if isinstance(net, (str, Path)) else "<net>")
    if not isinstance(net, NetParameter):
        net = read_net(net)
    train, test = data_sources(net, origin)
    if train is None:
        raise TaskSpecError("no Data or HDF5Data layer in the TRAIN phase", file=origin)
    tasks = _tasks(filter_phase(net, "train"), train.label_top, origin, num_labels)
    return NetTasks(tasks=tasks, train=train, test=test, name=net.name)


def data_sources(net: NetParameter, origin: str = "<net>") -> tuple[DataSource | None, DataSource | None]:
    """The (TRAIN, TEST) data sources of a net; None for a phase without data layers."""
    return (
        _data_source(filter_phase(net, "train"), origin, "TRAIN"),
        _data_source(filter_phase(net, "test"), origin, "TEST"),
    )


def _data_source(layers: list[LayerParameter], origin: str, phase: str) -> DataSource | None:
    data = [layer for layer in layers if layer.type in _DATA_TYPES]
    for layer in layers:
        if layer.type in ("ImageData", "WindowData", "MemoryData", "Input", "DummyData", "Python"):
            warnings.warn(
                f"{origin}: {phase} layer {layer.name!r} is a {layer.type} layer, which mtldata does not "
                "read; convert its list with `mtldata convert` and point a Data layer at the result",
                NetImportWarning,
                stacklevel=3,
            )
    if not data:
        return None
    hdf5 = [layer for layer in data if layer.type == "HDF5Data"]
    if hdf5:
        if len(data) > 1:
            raise TaskSpecError(
                f"{phase}: expected one HDF5Data layer and no other data layer, got "
                + ", ".join(repr(layer.name) for layer in data),
                file=origin,
            )
        layer = hdf5[0]
        p = layer.hdf5_data_param
        if len(layer.top) != 2:
            raise TaskSpecError(
                f"{phase}: HDF5Data layer {layer.name!r} has tops {list(layer.top)}; mtldata reads an image "
                "top and one label top holding the whole label vector (cut it with a Slice layer)",
                file=origin,
            )
        if layer.HasField("transform_param"):
            warnings.warn(
                f"{origin}: HDF5Data layer {layer.name!r} has a transform_param, which Caffe rejects; ignored",
                NetImportWarning,
                stacklevel=3,
            )
        return DataSource("hdf5", p.source, None, p.batch_size, None, p.shuffle, layer.top[1])
    if len(data) == 1:
        layer = data[0]
        if len(layer.top) != 2:
            raise TaskSpecError(
                f"{phase}: a single Data layer ({layer.name!r}) needs two tops, the image and its label",
                file=origin,
            )
        return _from_data_layers(layer, None, phase, origin, layer.top[1])
    if len(data) != 2:
        raise TaskSpecError(
            f"{phase}: expected an image Data layer and a label Data layer, got {len(data)} data layers: "
            + ", ".join(repr(layer.name) for layer in data),
            file=origin,
        )
    # The label layer is the one without a transform_param, or else the one whose top is not "data".
    first, second = data
    if first.HasField("transform_param") != second.HasField("transform_param"):
        image, label = (first, second) if first.HasField("transform_param") else (second, first)
    elif "data" in (first.top[:1] + second.top[:1]):
        image, label = (first, second) if first.top[:1] == ["data"] else (second, first)
    else:
        image, label = first, second
    if len(label.top) != 1:
        raise TaskSpecError(f"{phase}: label Data layer {label.name!r} should have one top", file=origin)
    if image.data_param.batch_size != label.data_param.batch_size:
        raise TaskSpecError(
            f"{phase}: the image and label Data layers have batch sizes {image.data_param.batch_size} and "
            f"{label.data_param.batch_size}; they must match for the two DBs to stay aligned",
            file=origin,
        )
    if label.HasField("transform_param"):
        warnings.warn(
            f"{origin}: label Data layer {label.name!r} has a transform_param; mtldata reads labels untransformed",
            NetImportWarning,
            stacklevel=3,
        )
    return _from_data_layers(image, label, phase, origin, label.top[0])


def _from_data_layers(
    image: LayerParameter, label: LayerParameter | None, phase: str, origin: str, label_top: str
) -> DataSource:
    backends = {image.data_param.backend} | ({label.data_param.backend} if label is not None else set())
    backend = "lmdb" if backends == {DataParameter.LMDB} else "leveldb"
    if backend == "leveldb":
        warnings.warn(
            f"{origin}: {phase} Data layer {image.name!r} reads LevelDB (the default backend when none is "
            "set); mtldata reads LMDB only",
            NetImportWarning,
            stacklevel=4,
        )
    transform = TransformationParameter()
    if image.HasField("transform_param"):
        transform.CopyFrom(image.transform_param)
    d = image.data_param
    for old, new in (
        ("scale", "scale"),
        ("mean_file", "mean_file"),
        ("crop_size", "crop_size"),
        ("mirror", "mirror"),
    ):
        if d.HasField(old):  # DataParameter's deprecated copies, which Caffe moves into transform_param
            setattr(transform, new, getattr(d, old))
    return DataSource(
        backend,
        d.source,
        label.data_param.source if label is not None else None,
        d.batch_size,
        transform,
        False,
        label_top,
    )


def _tasks(layers: list[LayerParameter], label_top: str, origin: str, num_labels: int | None) -> TaskSet:
    # Columns (start, stop) of every blob cut from the label vector; stop None: "to the end".
    ranges: dict[str, tuple[int, int | None]] = {label_top: (0, num_labels)}
    producers: dict[str, LayerParameter] = {}
    found: list[
        tuple[LayerParameter, str, int, int | None, int | None]
    ] = []  # layer, kind, start, stop, outs
    for layer in layers:
        if layer.type == "Slice" and layer.bottom and layer.bottom[0] in ranges:
            _slice(layer, ranges, origin)
        elif layer.type in _PASS_THROUGH and layer.bottom and layer.bottom[0] in ranges:
            for top in layer.top:
                ranges[top] = ranges[layer.bottom[0]]
        elif layer.type in LOSS_KINDS:
            if len(layer.bottom) < 2 or layer.bottom[1] not in ranges:
                raise TaskSpecError(
                    f"loss layer {layer.name!r}: its label bottom {list(layer.bottom[1:2])} is not the label "
                    f"blob {label_top!r} or a Slice of it",
                    file=origin,
                )
            start, stop = ranges[layer.bottom[1]]
            outputs = _num_output(producers, layer.bottom[0])
            found.append((layer, LOSS_KINDS[layer.type], start, stop, outputs))
        for top in layer.top:
            if layer.type in ("InnerProduct", "Convolution") or top not in layer.bottom:
                producers[top] = layer  # in-place layers (ReLU, Dropout) keep the producer
    if not found:
        raise TaskSpecError(
            "no SoftmaxWithLoss, SigmoidCrossEntropyLoss or EuclideanLoss layer in the TRAIN phase",
            file=origin,
        )

    specs = []
    names: set[str] = set()
    for layer, kind, start, stop, outputs in found:
        name = _task_name(layer, names)
        names.add(name)
        if kind == "softmax":
            if stop is not None and stop - start != 1:
                raise TaskSpecError(
                    f"SoftmaxWithLoss {layer.name!r} reads {stop - start} label columns; it takes one class index",
                    file=origin,
                    task=name,
                )
            stop = start + 1
            if outputs is None:
                raise TaskSpecError(
                    f"cannot tell the number of classes: the loss's bottom {layer.bottom[0]!r} is not an "
                    "InnerProduct output",
                    file=origin,
                    task=name,
                )
        elif stop is None:
            if outputs is None:
                raise TaskSpecError(
                    f"cannot tell how many label columns loss {layer.name!r} reads; give the dataset's "
                    "number of labels (num_labels)",
                    file=origin,
                    task=name,
                )
            stop = start + outputs
        elif outputs is not None and outputs != stop - start:
            raise TaskSpecError(
                f"loss {layer.name!r} compares {outputs} predictions with {stop - start} label columns",
                file=origin,
                task=name,
            )
        specs.append((layer, kind, name, start, stop, outputs))

    k = num_labels if num_labels is not None else max(stop for *_, stop, _ in specs)
    tasks = []
    for layer, kind, name, start, stop, outputs in specs:
        ignore = None
        p = layer.loss_param
        if p.HasField("ignore_label"):
            if kind == "euclidean":
                warnings.warn(
                    f"{origin}: EuclideanLoss {layer.name!r} has an ignore_label, which Caffe's EuclideanLoss "
                    "does not use either; dropped",
                    NetImportWarning,
                    stacklevel=3,
                )
            else:
                ignore = p.ignore_label
        if kind in _DEFAULT_NORMALIZATION and (p.HasField("normalization") or p.HasField("normalize")):
            default = _DEFAULT_NORMALIZATION[kind]
            mode = (
                p.normalization
                if p.HasField("normalization")
                else (LossParameter.VALID if p.normalize else LossParameter.BATCH_SIZE)
            )
            if mode != default:
                warnings.warn(
                    f"{origin}: loss {layer.name!r} sets normalization "
                    f"{LossParameter.NormalizationMode.Name(mode)}; mtldata uses {layer.type}'s default "
                    f"({LossParameter.NormalizationMode.Name(default)})",
                    NetImportWarning,
                    stacklevel=3,
                )
        weight = layer.loss_weight[0] if layer.loss_weight else 1.0
        tasks.append(
            TaskSpec(
                name=name,
                columns=slice(start, stop),
                kind=kind,
                classes=outputs if kind == "softmax" else None,
                ignore_label=ignore,
                loss_weight=float(weight),
            )
        )
    overlap = any(a.start < b.stop and b.start < a.stop for i, a in enumerate(tasks) for b in tasks[:i])
    try:
        return TaskSet(tuple(tasks), num_labels=k, allow_overlap=overlap)
    except TaskSpecError as e:
        raise TaskSpecError(e.reason, file=origin, task=e.task, field=e.field) from None


def _slice(layer: LayerParameter, ranges: dict[str, tuple[int, int | None]], origin: str) -> None:
    p = layer.slice_param
    axis = p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim
    if axis not in (1, -1):  # -1 is the label axis for an (N, K) blob from HDF5Data
        raise TaskSpecError(
            f"Slice {layer.name!r} cuts axis {axis}; label vectors are cut along axis 1", file=origin
        )
    start, stop = ranges[layer.bottom[0]]
    width = None if stop is None else stop - start
    points = list(p.slice_point)
    tops = list(layer.top)
    if points:
        if len(points) != len(tops) - 1:
            raise TaskSpecError(
                f"Slice {layer.name!r} has {len(points)} slice_point(s) for {len(tops)} tops", file=origin
            )
        edges: list[int | None] = [0, *points, width]
    else:
        if width is None:
            raise TaskSpecError(
                f"Slice {layer.name!r} splits equally, which needs the number of labels (num_labels)",
                file=origin,
            )
        if width % len(tops):
            raise TaskSpecError(
                f"Slice {layer.name!r}: {width} labels do not split into {len(tops)}", file=origin
            )
        size = width // len(tops)
        edges = [i * size for i in range(len(tops) + 1)]
    for top, a, b in zip(tops, edges[:-1], edges[1:], strict=True):
        ranges[top] = (start + a, None if b is None else start + b)


def _num_output(producers: dict[str, LayerParameter], blob: str) -> int | None:
    layer = producers.get(blob)
    if (
        layer is not None
        and layer.type == "InnerProduct"
        and layer.inner_product_param.HasField("num_output")
    ):
        return layer.inner_product_param.num_output
    return None


def _task_name(layer: LayerParameter, taken: set[str]) -> str:
    """A task name from the loss layer's name ("loss_cls" -> "cls") or its label bottom ("label_cls")."""
    candidates = []
    for raw, prefix, suffix in ((layer.name, "loss_", "_loss"), (layer.bottom[1], "label_", "_label")):
        text = raw
        if text.startswith(prefix) and len(text) > len(prefix):
            text = text[len(prefix) :]
        elif text.endswith(suffix) and len(text) > len(suffix):
            text = text[: -len(suffix)]
        text = re.sub(r"[^A-Za-z0-9_.\-]", "_", text).lstrip(".-")
        candidates.append(text)
    for text in candidates:
        if text and _NAME_RE.fullmatch(text) and text not in taken:
            return text
    base = candidates[0] or "task"
    i = 2
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


# ---------------------------------------------------------------------------------------------------
# Sources on disk


def resolve_source_path(path: str, prototxt: str | Path) -> str:
    """A path from a prototxt: relative to the working directory as Caffe reads it, else to the file."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return str(candidate)
    beside = Path(prototxt).parent / candidate
    if beside.exists():
        return str(beside)
    raise DatasetFormatError(
        f"{prototxt}: source {path!r} not found (looked in the working directory, as Caffe does, "
        f"and at {beside})"
    )


def source_paths(source: DataSource, prototxt: str | Path) -> tuple[str, str]:
    """(dataset, labels) to open for a data source: an mtldata dataset directory when the two LMDBs are
    its images.lmdb and labels.lmdb, else the image DB (or HDF5 list) and the label DB ("" if none)."""
    if source.backend == "leveldb":
        raise DatasetFormatError(
            f"{prototxt}: the Data layers read LevelDB; mtldata reads LMDB (set backend: LMDB)"
        )
    images = resolve_source_path(source.images, prototxt)
    if source.labels is None:
        return images, ""
    labels = resolve_source_path(source.labels, prototxt)
    root = Path(images).parent
    if (
        Path(images).name == "images.lmdb"
        and Path(labels).resolve() == (root / "labels.lmdb").resolve()
        and read_manifest(root) is not None
    ):
        return str(root), ""
    return images, labels


def prototxt_num_labels(prototxt: str | Path) -> int | None:
    """K of the TRAIN data a prototxt names, read from the data itself; None if it cannot be opened."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller parses the file again and sees its warnings then
        train, _ = data_sources(read_net(prototxt), str(prototxt))
    if train is None:
        return None
    try:
        dataset, labels = source_paths(train, prototxt)
        return dataset_num_labels(dataset, labels or None)
    except DatasetFormatError:
        return None


# ---------------------------------------------------------------------------------------------------
# Emit


def emit_train_val(
    tasks: TaskSet,
    train: DataSource,
    test: DataSource | None = None,
    *,
    name: str = "mtldata",
    width: int = 32,
) -> NetParameter:
    """A train_val NetParameter that stock Caffe trains on `train` (and tests on `test`).

    Two Data layers (images with the transform, labels), a Slice cutting the label vector at every
    task boundary, a small conv trunk, an InnerProduct head per task and its loss layer with the
    task's loss_weight and ignore_label. Tops are named "label_<task>", heads "fc_<task>" and loss
    layers "loss_<task>", which `import_net` reads back to the same tasks.
    """
    net = NetParameter(name=name)
    phases = [("train", TRAIN, train)] + ([("test", TEST, test)] if test is not None else [])
    for _, phase, source in phases:
        if source.backend == "hdf5":
            layer = net.layer.add(name="data", type="HDF5Data", top=["data", "label"])
            if test is not None:
                layer.include.add(phase=phase)
            layer.hdf5_data_param.source = source.images
            layer.hdf5_data_param.batch_size = source.batch_size
            continue
        if source.backend != "lmdb" or source.labels is None:
            raise ValueError(
                "emit_train_val writes Data layers for an image LMDB and a label LMDB, or HDF5Data"
            )
        for kind, path, top in (("images", source.images, "data"), ("labels", source.labels, "label")):
            layer = net.layer.add(name=top, type="Data")
            layer.top.append(top)
            if test is not None:
                layer.include.add(phase=phase)
            if kind == "images" and source.transform is not None:
                layer.transform_param.CopyFrom(source.transform)
            layer.data_param.source = path
            layer.data_param.batch_size = source.batch_size
            layer.data_param.backend = DataParameter.LMDB

    if any(source.backend == "hdf5" for _, _, source in phases):
        # HDF5Data takes no transform_param: a fixed Scale layer (lr_mult 0) brings pixels to [0, 1).
        scale = net.layer.add(name="scale_data", type="Scale", bottom=["data"], top=["data"])
        scale.param.add(lr_mult=0, decay_mult=0)
        scale.scale_param.filler.type = "constant"
        scale.scale_param.filler.value = 1 / 256

    # One Slice at every task boundary; pieces no task owns get their own (unused) tops.
    k = tasks.num_labels
    for i, a in enumerate(tasks.tasks):
        for b in tasks.tasks[:i]:
            if a.start < b.stop and b.start < a.stop:
                raise ValueError(
                    f"tasks {b.name!r} and {a.name!r} overlap; one Slice layer cannot express that"
                )
    edges = sorted({0, k, *(t.start for t in tasks), *(t.stop for t in tasks)})
    owner = {t.start: t for t in tasks}
    slice_layer = net.layer.add(name="slice_label", type="Slice", bottom=["label"])
    slice_layer.slice_param.axis = 1
    slice_layer.slice_param.slice_point.extend(edges[1:-1])
    for a in edges[:-1]:
        slice_layer.top.append(f"label_{owner[a].name}" if a in owner else f"label_unused_{a}")

    bottom = "data"
    for i, channels in enumerate((width, 2 * width), start=1):
        conv = net.layer.add(name=f"conv{i}", type="Convolution", bottom=[bottom], top=[f"conv{i}"])
        p = conv.convolution_param
        p.num_output = channels
        p.kernel_size.append(3)
        p.pad.append(1)
        p.weight_filler.type = "msra"
        p.bias_filler.type = "constant"
        net.layer.add(name=f"relu{i}", type="ReLU", bottom=[f"conv{i}"], top=[f"conv{i}"])
        pool = net.layer.add(name=f"pool{i}", type="Pooling", bottom=[f"conv{i}"], top=[f"pool{i}"])
        pool.pooling_param.pool = pool.pooling_param.MAX
        pool.pooling_param.kernel_size = 2
        pool.pooling_param.stride = 2
        bottom = f"pool{i}"
    fc = net.layer.add(name="fc1", type="InnerProduct", bottom=[bottom], top=["fc1"])
    fc.inner_product_param.num_output = 4 * width
    fc.inner_product_param.weight_filler.type = "xavier"
    fc.inner_product_param.bias_filler.type = "constant"
    net.layer.add(name="relu_fc1", type="ReLU", bottom=["fc1"], top=["fc1"])
    for task in tasks:
        head = net.layer.add(
            name=f"fc_{task.name}", type="InnerProduct", bottom=["fc1"], top=[f"fc_{task.name}"]
        )
        head.inner_product_param.num_output = task.classes if task.kind == "softmax" else task.width
        head.inner_product_param.weight_filler.type = "xavier"
        head.inner_product_param.bias_filler.type = "constant"
        loss = net.layer.add(
            name=f"loss_{task.name}",
            type=_LOSS_TYPES[task.kind],
            bottom=[f"fc_{task.name}", f"label_{task.name}"],
            top=[f"loss_{task.name}"],
        )
        loss.loss_weight.append(task.loss_weight)
        if task.ignore_label is not None:
            loss.loss_param.ignore_label = task.ignore_label
    return net


def net_to_text(net: NetParameter, header: str = "") -> str:
    """Prototxt text of `net`, after `header` lines turned into # comments."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + text_format.MessageToString(net)


def write_train_val(
    dataset: str | Path, tasks: TaskSet, *, batch_size: int = 32, name: str = "", note: str = ""
) -> Path:
    """Write `train_val.prototxt` into an mtldata dataset directory for stock Caffe; return its path.

    LMDB datasets get two Data layers (images with `scale: 1/256`, labels); HDF5 datasets one HDF5Data
    layer reading `hdf5_list.txt` and a fixed Scale layer of 1/256 (HDF5Data takes no transform).
    Sources are relative to the dataset directory, so Caffe is run from there. `note` adds header lines.
    """
    root = Path(dataset)
    if (root / "hdf5_list.txt").is_file():
        source = DataSource("hdf5", "hdf5_list.txt", None, batch_size)
    else:
        transform = TransformationParameter(scale=1 / 256)
        source = DataSource("lmdb", "images.lmdb", "labels.lmdb", batch_size, transform)
    net = emit_train_val(tasks, source, name=name or root.name)
    header = (
        f"Written by mtldata for the dataset in this folder ({tasks.num_labels} labels; tasks "
        f"{', '.join(tasks.names)}).\nSource paths are relative to this folder: run `caffe train` from here."
    )
    if note:
        header += "\n" + note
    path = root / "train_val.prototxt"
    write_bytes_atomic(path, net_to_text(net, header).encode("utf-8"))
    return path
