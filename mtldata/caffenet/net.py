"""A Caffe net prototxt as a torch module, and its weights as .caffemodel files.

`CaffeNet` runs the layers of one phase in order over a dict of named blobs, as Caffe's Net does:
layers are kept or dropped by their include/exclude rules, Caffe's Split layers are inserted where a
blob feeds several layers (so blob names match pycaffe's `net.blobs`), and in-place layers rebind
their blob. Data layers are not executed: their tops are the net's inputs, fed by the caller (see
`mtldata.caffenet.runner`). Loss tops stay unweighted; `weighted_loss` is Σ loss_weight·top, summed in
float32 in layer order like Net::Forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mtldata.caffe import caffe_pb2
from mtldata.caffe.blob import array_to_blob, blob_shape, blob_to_array
from mtldata.caffe.prototxt import layer_line, read_caffemodel, read_net, write_caffemodel
from mtldata.caffe.upgrade import upgrade_net
from mtldata.caffenet.layers import DATA_LAYER_TYPES, LAYERS, CaffeNetError, Layer
from mtldata.caffenet.netstate import PHASES, layers_in_state
from mtldata.errors import DatasetFormatError

__all__ = [
    "CaffeNet",
    "CaffeNetError",
    "LearnableParam",
    "WeightsReport",
    "caffemodel_proto",
    "filter_net",
    "insert_splits",
    "load_caffemodel",
    "save_caffemodel",
]


def filter_net(
    net: caffe_pb2.NetParameter, phase: str, stages: Sequence[str] = (), level: int = 0
) -> caffe_pb2.NetParameter:
    """The net with the layers Caffe keeps for this state (Net::FilterNet)."""
    try:
        kept = layers_in_state(net, phase, level, stages)
    except ValueError as exc:
        raise CaffeNetError(str(exc)) from None
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in kept:
        out.layer.add().CopyFrom(layer)
    return out


def _split_blob(layer: str, blob: str, top: int, k: int) -> str:
    return f"{blob}_{layer}_{top}_split_{k}"


def insert_splits(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Caffe's InsertSplits: a Split layer after each top consumed more than once (a weighted loss counts)."""
    source: dict[tuple[int, int], tuple[int, int]] = {}  # (layer, bottom) -> (layer, top) producing it
    uses: dict[tuple[int, int], int] = {}
    loss: dict[tuple[int, int], float] = {}
    last_top: dict[str, tuple[int, int]] = {}
    names: dict[int, str] = {-1: "input"}
    for j, blob in enumerate(net.input):
        last_top[blob] = (-1, j)
    for i, layer in enumerate(net.layer):
        names[i] = layer.name
        for j, blob in enumerate(layer.bottom):
            if blob not in last_top:
                raise CaffeNetError(f"layer {layer.name!r}: unknown bottom blob {blob!r} (bottom index {j})")
            source[(i, j)] = last_top[blob]
            uses[last_top[blob]] = uses.get(last_top[blob], 0) + 1
        for j, blob in enumerate(layer.top):
            last_top[blob] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            idx = last_top[layer.top[j]]
            loss[idx] = layer.loss_weight[j]
            if loss[idx]:
                uses[idx] = uses.get(idx, 0) + 1
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}

    def add_split(layer_name: str, blob: str, j: int, count: int, weight: float) -> None:
        split = out.layer.add()
        split.name = f"{blob}_{layer_name}_{j}_split"
        split.type = "Split"
        split.bottom.append(blob)
        for k in range(count):
            split.top.append(_split_blob(layer_name, blob, j, k))
            if k == 0 and weight:
                split.loss_weight.append(weight)

    for j, blob in enumerate(net.input):
        if uses.get((-1, j), 0) > 1:
            add_split("input", blob, j, uses[(-1, j)], 0.0)
    for i, layer in enumerate(net.layer):
        copy = out.layer.add()
        copy.CopyFrom(layer)
        for j, blob in enumerate(copy.bottom):
            idx = source[(i, j)]
            if uses.get(idx, 0) > 1:
                k = next_split.get(idx, 0)
                next_split[idx] = k + 1
                copy.bottom[j] = _split_blob(names[idx[0]], blob, idx[1], k)
        for j, blob in enumerate(copy.top):
            count = uses.get((i, j), 0)
            if count > 1:
                weight = loss.get((i, j), 0.0)
                add_split(layer.name, blob, j, count, weight)
                if weight:
                    copy.ClearField("loss_weight")
                    next_split[(i, j)] = next_split.get((i, j), 0) + 1
    return out


def _scale_folds(plan: Sequence[tuple[Layer, list[str], list[str]]]) -> frozenset[int]:
    """Where a BatchNorm is followed by a Scale that takes its top in place (`bottom: x top: x`,
    one bottom: a learned gamma): the plan indices of such BatchNorms. The pair can run as one
    kernel (BatchNorm.forward_scaled) since no layer and no caller can see the BatchNorm's own top:
    the next layer overwrites it under the same name. A top another layer also reads went through a
    Split (insert_splits), so its Scale reads another name and is left alone."""
    folds = set()
    for i in range(len(plan) - 1):
        (first, _, tops), (second, bottoms, scale_tops) = plan[i], plan[i + 1]
        if (
            hasattr(first, "forward_scaled")
            and second.type_name == "Scale"
            and len(tops) == 1
            and bottoms == tops
            and scale_tops == tops
        ):
            folds.add(i)
    return frozenset(folds)


def _default_loss_weights(layer: caffe_pb2.LayerParameter) -> list[float]:
    if layer.loss_weight:
        if len(layer.loss_weight) != len(layer.top):
            raise CaffeNetError(
                f"layer {layer.name!r}: loss_weight must be given once per top "
                f"({len(layer.top)} tops, {len(layer.loss_weight)} weights)"
            )
        return list(layer.loss_weight)
    if layer.type.endswith("Loss") and layer.top:  # LossLayer: loss_weight 1 on its first top
        return [1.0] + [0.0] * (len(layer.top) - 1)
    return [0.0] * len(layer.top)


@dataclass(frozen=True)
class LearnableParam:
    """One learned blob as the solver sees it: Caffe's `learnable_params` entry with its multipliers."""

    key: str  # "<layer>/<blob index>", the keys of pycaffe's net.params and of iter0_grads.npz
    tensor: nn.Parameter
    lr_mult: float
    decay_mult: float


@dataclass
class WeightsReport:
    """What `load_caffemodel` did: layers copied, source layers without a match, target layers left as they were."""

    copied: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    not_in_file: list[str] = field(default_factory=list)


class CaffeNet(nn.Module):
    """A Caffe NetParameter (or prototxt path) for one phase as a torch module over named blobs.

    `input_shapes` (blob -> shape) sets the net up at once, creating every layer's blobs with Caffe's
    fillers; without it, Input layers and legacy `input_shape`/`input_dim` give the shapes, or the
    first `forward` does. Call `forward({top of a data layer: tensor, ...})` to get every blob.
    `source` names the file a NetParameter came from, so errors can give the layer's line.
    """

    def __init__(
        self,
        net: caffe_pb2.NetParameter | str | Path,
        phase: str = "train",
        *,
        stages: Sequence[str] | None = None,
        level: int | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        source: str | Path | None = None,
    ) -> None:
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        param = net if isinstance(net, caffe_pb2.NetParameter) else read_net(net)
        self.source = Path(source) if source is not None else None
        if not isinstance(net, caffe_pb2.NetParameter):
            self.source = Path(net)
        if param.layers:  # a legacy V1/V0 message built in code: upgrade a copy as a file would be
            param = _upgraded(param, self.source)
        self.net_name = param.name
        self.phase = phase
        stages = list(param.state.stage) if stages is None else list(stages)
        level = param.state.level if level is None else level
        filtered = filter_net(param, phase, stages, level)
        if not filtered.layer:
            where = f"{self.source}: " if self.source is not None else ""
            raise CaffeNetError(
                f"{where}net {param.name!r} has no layer in the {phase.upper()} phase "
                f"({len(param.layer)} layer(s) in all, none kept by their include/exclude rules)"
            )
        self.net_param = insert_splits(filtered)
        for layer in self.net_param.layer:
            if not layer.HasField("phase"):
                layer.phase = PHASES[phase]

        self.data_layers: list[caffe_pb2.LayerParameter] = []
        self.input_blobs: list[str] = list(self.net_param.input)
        known_shapes = self._declared_input_shapes(self.net_param)
        self.layer_list = nn.ModuleList()
        self._plan: list[tuple[Layer, list[str], list[str]]] = []
        self.loss_terms: list[tuple[str, float]] = []
        available: dict[str, None] = dict.fromkeys(self.input_blobs)  # insertion-ordered set
        produced = set(self.input_blobs)
        for layer in self.net_param.layer:
            for j, blob in enumerate(layer.bottom):
                if blob not in produced:
                    raise CaffeNetError(
                        f"layer {layer.name!r}: unknown bottom blob {blob!r} (bottom index {j})"
                    )
                available.pop(blob, None)
            for j, blob in enumerate(layer.top):
                in_place = j < len(layer.bottom) and layer.bottom[j] == blob
                if blob in produced and not in_place:
                    raise CaffeNetError(
                        f"layer {layer.name!r}: top blob {blob!r} is produced by multiple sources"
                    )
                produced.add(blob)
                available[blob] = None
            for blob, weight in zip(layer.top, _default_loss_weights(layer), strict=True):
                if weight:
                    self.loss_terms.append((blob, weight))
            if layer.type in DATA_LAYER_TYPES:
                if layer.bottom:
                    raise CaffeNetError(f"layer {layer.name!r}: a {layer.type} layer takes no bottoms")
                self.data_layers.append(layer)
                self.input_blobs.extend(layer.top)
                if layer.type == "Input":
                    known_shapes.update(self._input_layer_shapes(layer))
                continue
            factory = LAYERS.get(layer.type)
            if factory is None:
                raise CaffeNetError(
                    f"{self.where(layer)}layer {layer.name!r}: unknown layer type {layer.type!r}; mtldata implements "
                    f"{', '.join(sorted(LAYERS))} (and feeds {', '.join(sorted(DATA_LAYER_TYPES))} from data)"
                )
            module = factory(layer, phase)
            module.search_dirs = [Path.cwd(), *([self.source.parent] if self.source else [])]
            self.layer_list.append(module)
            self._plan.append((module, list(layer.bottom), list(layer.top)))
        self.output_blobs = sorted(available)  # Caffe keeps them in a std::set: sorted by name
        self._scale_folds = _scale_folds(self._plan)
        self.blob_loss_weights = dict(self.loss_terms)
        self.is_setup = False
        self._owners: dict[str, tuple[nn.Parameter, caffe_pb2.ParamSpec]] = {}
        shapes = dict(known_shapes)
        shapes.update(input_shapes or {})
        if input_shapes is not None or (self.input_blobs and all(b in shapes for b in self.input_blobs)):
            self.setup(shapes)

    # ---- construction helpers ---------------------------------------------------------------

    def where(self, layer: caffe_pb2.LayerParameter) -> str:
        """The `file:line: ` prefix of a layer in the prototxt the net came from, as far as it is known."""
        if self.source is None:
            return ""
        line = layer_line(self.source, layer.name, layer.type)
        return f"{self.source}:{line}: " if line is not None else f"{self.source}: "

    @staticmethod
    def _declared_input_shapes(param: caffe_pb2.NetParameter) -> dict[str, list[int]]:
        shapes: dict[str, list[int]] = {}
        if param.input_shape:
            for blob, shape in zip(param.input, param.input_shape, strict=False):
                shapes[blob] = list(shape.dim)
        elif param.input_dim:
            for i, blob in enumerate(param.input):
                shapes[blob] = list(param.input_dim[4 * i : 4 * i + 4])
        return shapes

    @staticmethod
    def _input_layer_shapes(layer: caffe_pb2.LayerParameter) -> dict[str, list[int]]:
        given = layer.input_param.shape
        if not given:
            return {}
        if len(given) not in (1, len(layer.top)):
            raise CaffeNetError(f"layer {layer.name!r}: give one input shape, or one per top")
        return {top: list(given[0 if len(given) == 1 else j].dim) for j, top in enumerate(layer.top)}

    # ---- running ----------------------------------------------------------------------------

    def layer(self, name: str) -> Layer:
        """The executed layer called `name`."""
        for module, _, _ in self._plan:
            if module.layer_name == name:
                return module
        raise KeyError(f"net {self.net_name!r} has no executed layer {name!r}")

    def layers(self) -> Iterator[Layer]:
        for module, _, _ in self._plan:
            yield module

    def setup(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Create every layer's blobs for inputs of these shapes (one dry forward on zeros)."""
        missing = [b for b in self.input_blobs if b not in shapes]
        if missing:
            raise CaffeNetError(
                f"net {self.net_name!r}: no shape given for input blob(s) {', '.join(missing)}"
            )
        zeros = {b: torch.zeros([int(d) for d in shapes[b]]) for b in self.input_blobs}
        for module in self.layers():
            module.dry_run = True
        try:
            with torch.no_grad():
                self.forward(zeros)
        finally:
            for module in self.layers():
                module.dry_run = False

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run every layer in order; return all blobs by name (inputs included)."""
        missing = [b for b in self.input_blobs if b not in inputs]
        if missing:
            raise CaffeNetError(f"net {self.net_name!r}: input blob(s) {', '.join(missing)} not given")
        blobs: dict[str, Tensor] = {}
        for name in self.input_blobs:
            t = torch.as_tensor(inputs[name])
            blobs[name] = t if t.dtype == torch.float32 else t.to(torch.float32)  # Caffe blobs are float
        plan, i = self._plan, 0
        while i < len(plan):
            module, bottoms, tops = plan[i]
            args = [blobs[b] for b in bottoms]
            if not module.is_setup:
                self._setup_layer(module, args)
            if i in self._scale_folds and plan[i + 1][0].is_setup:
                scale, _, scale_tops = plan[i + 1]
                fused = self._run_scaled(module, scale, args[0])
                if fused is not None:  # the Scale's top is the BatchNorm's: one blob, the pair's output
                    blobs[scale_tops[0]] = fused
                    i += 2
                    continue
            outs = module.run(args)
            if len(outs) != len(tops):  # an internal invariant: each layer returns one value per top
                raise CaffeNetError(
                    f"layer {module.layer_name!r} made {len(outs)} tops for {len(tops)} names"
                )
            blobs.update(zip(tops, outs, strict=True))
            i += 1
        self.is_setup = True
        return blobs

    @staticmethod
    def _run_scaled(batch_norm: Layer, scale: Layer, x: Tensor) -> Tensor | None:
        try:
            return batch_norm.forward_scaled(x, scale)  # type: ignore[attr-defined]
        except (ValueError, RuntimeError, IndexError) as exc:
            raise batch_norm.error(
                f"{exc} (with {scale.layer_name!r} after it; bottom shape: {tuple(x.shape)})"
            ) from exc

    def _setup_layer(self, module: Layer, bottoms: list[Tensor]) -> None:
        try:
            module.setup(bottoms)
        except CaffeNetError:
            raise
        except (ValueError, RuntimeError) as exc:
            shapes = ", ".join(str(tuple(b.shape)) for b in bottoms)
            raise module.error(f"{exc} (bottom shapes: {shapes})") from exc
        module.is_setup = True
        self._share_params(module)

    def _share_params(self, module: Layer) -> None:
        """ParamSpec names share a blob between layers; the first layer to name it owns it."""
        specs = module.layer_param.param
        for i, (attr, tensor) in enumerate(zip(module.blob_attrs(), module.blobs(), strict=True)):
            if i >= len(specs) or not specs[i].name or module.buffer_blobs:
                continue
            spec = specs[i]
            if spec.name not in self._owners:
                self._owners[spec.name] = (tensor, spec)
                continue
            owner, owner_spec = self._owners[spec.name]
            if owner.shape != tensor.shape:
                # PERMISSIVE share_mode (equal counts, other shapes) is not implemented.
                raise module.error(
                    f"cannot share param {spec.name!r}: owner shape {tuple(owner.shape)}, "
                    f"this layer's blob {i} shape {tuple(tensor.shape)}"
                )
            for mult in ("lr_mult", "decay_mult"):
                if (
                    spec.HasField(mult)
                    and owner_spec.HasField(mult)
                    and getattr(spec, mult) != getattr(owner_spec, mult)
                ):
                    raise module.error(f"shared param {spec.name!r} has a different {mult} than its owner")
            module.set_blob(attr, owner)

    def weighted_loss(self, blobs: Mapping[str, Tensor]) -> Tensor:
        """Σ loss_weight · sum(top) over the weighted tops, accumulated in float32 in layer order."""
        device = blobs[self.loss_terms[0][0]].device if self.loss_terms else None
        total = torch.zeros((), dtype=torch.float32, device=device)
        for blob, weight in self.loss_terms:
            total = total + torch.as_tensor(weight, dtype=torch.float32) * blobs[blob].sum()
        return total

    def forward_loss(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward, then the weighted total loss: (total, blobs)."""
        blobs = self.forward(inputs)
        return self.weighted_loss(blobs), blobs

    # ---- parameters -------------------------------------------------------------------------

    def learnable_params(self) -> list[LearnableParam]:
        """Caffe's learnable params in net order with their lr_mult/decay_mult (shared blobs once)."""
        if not self.is_setup:
            raise CaffeNetError(f"net {self.net_name!r} is not set up yet: run a forward or setup() first")
        seen: set[int] = set()
        out = []
        for module in self.layers():
            specs = module.layer_param.param
            for i, tensor in enumerate(module.blobs()):
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                owner_spec = self._owners.get(specs[i].name, (None, specs[i]))[1] if i < len(specs) else None
                spec = owner_spec if owner_spec is not None else caffe_pb2.ParamSpec()
                # BatchNorm's statistics are learnable params to Caffe's solver with lr_mult forced to 0
                # (decay_mult keeps its value): they get no update, but adaptive solvers keep a
                # history for them, and a .solverstate holds one blob per param.
                lr_mult = 0.0 if module.buffer_blobs else spec.lr_mult
                out.append(LearnableParam(f"{module.layer_name}/{i}", tensor, lr_mult, spec.decay_mult))
        return out

    def params_by_layer(self) -> dict[str, list[Tensor]]:
        """Every layer's blobs (BatchNorm statistics included) by layer name, as pycaffe's net.params."""
        return {m.layer_name: m.blobs() for m in self.layers() if m.blobs()}

    def share_weights_from(self, other: CaffeNet) -> None:
        """Use `other`'s blobs for every layer of the same name (Caffe's ShareTrainedLayersWith)."""
        theirs = {m.layer_name: m for m in other.layers()}
        for module in self.layers():
            source = theirs.get(module.layer_name)
            if source is None or not source.blobs():
                continue
            if len(source.blobs()) != len(module.blobs()):
                raise module.error(
                    f"cannot share weights: {len(source.blobs())} blobs in the other net, {len(module.blobs())} here"
                )
            for attr, mine, src in zip(module.blob_attrs(), module.blobs(), source.blobs(), strict=True):
                if mine.shape != src.shape:
                    raise module.error(
                        f"cannot share {attr}: shape {tuple(src.shape)} in the other net, {tuple(mine.shape)} here"
                    )
                module.set_blob(attr, src)


# --------------------------------------------------------------------------------------------
# .caffemodel weights
# --------------------------------------------------------------------------------------------


def _upgraded(param: caffe_pb2.NetParameter, source: Path | None) -> caffe_pb2.NetParameter:
    """A current-format copy of a legacy NetParameter message."""
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(param)
    upgrade_net(copy, source if source is not None else "(NetParameter)")
    return copy


def _legacy_shape_matches(target: Sequence[int], blob: caffe_pb2.BlobProto) -> bool:
    """Blob::ShapeEquals for a proto with legacy num/channels/height/width: compare padded to 4-D."""
    if len(target) > 4:
        return False
    padded = [1] * (4 - len(target)) + list(target)
    return padded == [blob.num, blob.channels, blob.height, blob.width]


def load_caffemodel(net: CaffeNet, source: str | Path | caffe_pb2.NetParameter) -> WeightsReport:
    """Copy weights into `net` by layer name, as Caffe's CopyTrainedLayersFrom.

    Source layers the net lacks are ignored; a layer's blob count and every blob's shape must match
    (legacy 4-D blobs match any shape that pads to them). Tensors are copied in place, so optimizers
    and nets sharing them see the new values.
    """
    if not net.is_setup:
        raise CaffeNetError(
            f"net {net.net_name!r} is not set up yet: give input_shapes or run a forward first"
        )
    proto = source if isinstance(source, caffe_pb2.NetParameter) else read_caffemodel(source)
    where = "" if isinstance(source, caffe_pb2.NetParameter) else f"{source}: "
    if proto.layers:  # a legacy V1/V0 message built in code
        proto = _upgraded(proto, None)
    if not proto.layer and len(proto.ListFields()) == 0:
        raise CaffeNetError(f"{where}the caffemodel holds no layers")
    targets = {m.layer_name: m for m in net.layers()}
    known = {layer.name for layer in net.net_param.layer}
    report = WeightsReport()
    done = set()
    for layer in proto.layer:
        module = targets.get(layer.name)
        if layer.name not in known:
            report.ignored.append(layer.name)
        if module is None or (not layer.blobs and not module.blobs()):
            continue
        blobs = module.blobs()
        if len(blobs) != len(layer.blobs):
            raise CaffeNetError(
                f"{where}layer {layer.name!r}: incompatible number of blobs: {len(layer.blobs)} in the file, "
                f"{len(blobs)} in the net"
            )
        for j, (tensor, blob) in enumerate(zip(blobs, layer.blobs, strict=True)):
            legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
            ok = (
                _legacy_shape_matches(tensor.shape, blob)
                if legacy
                else list(blob_shape(blob)) == list(tensor.shape)
            )
            if not ok:
                raise CaffeNetError(
                    f"{where}cannot copy param {j} weights from layer {layer.name!r}; shape mismatch: source "
                    f"shape {list(blob_shape(blob))}, target shape {list(tensor.shape)}. To learn this layer's "
                    f"parameters from scratch rather than copying them, rename the layer"
                )
            try:
                values = blob_to_array(blob)
            except DatasetFormatError as exc:
                raise CaffeNetError(f"{where}layer {layer.name!r} blob {j}: {exc}") from None
            with torch.no_grad():
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(values)).reshape(tensor.shape))
        report.copied.append(layer.name)
        done.add(layer.name)
    report.not_in_file = [m.layer_name for m in net.layers() if m.blobs() and m.layer_name not in done]
    return report


_LOSS_LAYERS = {"SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss"}


def caffemodel_proto(net: CaffeNet, write_diff: bool = False) -> caffe_pb2.NetParameter:
    """The NetParameter Caffe's Net::ToProto writes: every layer (Splits included), blobs after setup."""
    if not net.is_setup:
        raise CaffeNetError(f"net {net.net_name!r} is not set up yet: nothing to save")
    modules = {m.layer_name: m for m in net.layers()}
    out = caffe_pb2.NetParameter()
    out.name = net.net_name
    for layer in net.net_param.layer:
        copy = out.layer.add()
        copy.CopyFrom(layer)
        del copy.blobs[:]
        # What Caffe's layers add to their own parameter at setup, and ToProto therefore writes.
        if (layer.type in _LOSS_LAYERS or layer.type.endswith("Loss")) and not copy.loss_weight:
            copy.loss_weight.append(1.0)
        if layer.type == "BatchNorm":
            while len(copy.param) < 3:
                copy.param.add().lr_mult = 0.0
        module = modules.get(layer.name)
        for tensor in module.blobs() if module is not None else []:
            blob = array_to_blob(tensor.detach().cpu().numpy())
            if write_diff:
                grad = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
                blob.diff.extend(grad.detach().cpu().numpy().ravel().tolist())
            copy.blobs.append(blob)
    return out


def save_caffemodel(net: CaffeNet, path: str | Path, write_diff: bool = False) -> Path:
    """Write the net's weights as a binary .caffemodel (Caffe's snapshot format); returns the path."""
    write_caffemodel(path, caffemodel_proto(net, write_diff))
    return Path(path)
