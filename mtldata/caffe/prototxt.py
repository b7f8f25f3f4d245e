"""Caffe net, solver and weight files: prototxt text and binary caffemodels, read with mtldata's schema.

mtldata's caffe.proto holds Caffe's full schema. Fields it lacks (fork extensions) are skipped in
text files and kept as unknown fields in binary ones; either way an `UnknownFieldWarning` names them,
so a net that relies on them does not pass silently.

Legacy files (V0/V1 nets and caffemodels, `input_dim` nets, `solver_type` solvers) are upgraded on
read, silently, as Caffe upgrades them (mtldata.caffe.upgrade); `upgrade=False` reads them as written.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from google.protobuf import descriptor, text_format, unknown_fields
from google.protobuf.message import DecodeError, Message

from mtldata.caffe.blob import blob_to_array
from mtldata.caffe.caffe_pb2 import NetParameter, SolverParameter
from mtldata.caffe.upgrade import V1_TYPE_NAMES, upgrade_net, upgrade_solver
from mtldata.durable import write_bytes_atomic
from mtldata.errors import CaffeFileError, DatasetFormatError, DatasetStateError

M = TypeVar("M", bound=Message)


class UnknownFieldWarning(UserWarning):
    """A Caffe file holds fields that mtldata's schema lacks; they were skipped."""


def read_net(path: str | Path, *, upgrade: bool = True) -> NetParameter:
    """Parse a net prototxt (train/val or deploy) into a NetParameter in the current format."""
    net = _read_text(path, NetParameter())
    if upgrade:
        upgrade_net(net, path)
    return net


def read_solver(path: str | Path, *, upgrade: bool = True) -> SolverParameter:
    """Parse a solver prototxt into a SolverParameter (its `net` path is left as written)."""
    solver = _read_text(path, SolverParameter())
    if upgrade:
        upgrade_solver(solver, path)
    return solver


def read_caffemodel(path: str | Path, *, upgrade: bool = True) -> NetParameter:
    """Parse a binary caffemodel (Caffe's Net::ToProto output) into a NetParameter.

    An upgraded V1 caffemodel keeps its blobs as written (legacy num/channels/height/width included).
    """
    net = NetParameter()
    try:
        net.ParseFromString(Path(path).read_bytes())
    except DecodeError as e:
        raise CaffeFileError(path, f"not a binary NetParameter (caffemodel): {e}") from None
    _check_required(path, net)
    unknown: dict[str, list[str]] = {}
    for key, layer in _unknown_binary_fields(net):
        unknown.setdefault(key, [])
        if layer is not None and layer not in unknown[key]:
            unknown[key].append(layer)
    if unknown:
        _warn_unknown(path, {key: _listed("layer", ls) for key, ls in unknown.items()}, stacklevel=3)
    if upgrade:
        upgrade_net(net, path)
    return net


def write_caffemodel(path: str | Path, net: NetParameter) -> None:
    """Write `net` as a binary caffemodel, replacing `path` atomically."""
    if not isinstance(net, NetParameter):
        raise TypeError(f"write_caffemodel needs a caffe NetParameter, got {type(net).__name__}")
    write_bytes_atomic(path, net.SerializeToString())


@dataclass
class UpgradedFile:
    """What `upgrade_caffe_file` wrote: the kind of file and the legacy forms it upgraded (none: a copy)."""

    path: Path
    kind: str  # "net prototxt", "solver prototxt" or "caffemodel"
    steps: list[str]


def upgrade_caffe_file(source: str | Path, target: str | Path, *, overwrite: bool = False) -> UpgradedFile:
    """Write `source` (net or solver prototxt, or binary caffemodel) in the current format to `target`.

    The kind is recognised from the content; text stays text and binary stays binary (blobs as they
    are, like Caffe's upgrade_net_proto_binary). `target` is replaced atomically, and only with
    `overwrite` if it exists.
    """
    source, target = Path(source), Path(target)
    if target.exists() and not overwrite:
        raise DatasetStateError(f"{target} already exists; pass --overwrite to replace it")
    try:
        data = source.read_bytes()
    except OSError as e:
        raise CaffeFileError(source, f"cannot read: {e.strerror or e}") from None
    kind = _caffe_file_kind(data)
    message: Message
    if kind == "caffemodel":
        message = read_caffemodel(source, upgrade=False)
        steps = upgrade_net(message, source)
        out = message.SerializeToString()
    else:
        if kind == "solver prototxt":
            message = read_solver(source, upgrade=False)
            steps = upgrade_solver(message, source)
        else:
            message = read_net(source, upgrade=False)
            steps = upgrade_net(message, source)
        out = text_format.MessageToString(message).encode()
    write_bytes_atomic(target, out)
    return UpgradedFile(target, kind, steps)


_SOLVER_ONLY = set(SolverParameter.DESCRIPTOR.fields_by_name) - set(NetParameter.DESCRIPTOR.fields_by_name)


def _caffe_file_kind(data: bytes) -> str:
    """The kind of Caffe file `data` holds: binary protobuf is a caffemodel, text with a solver's field a solver."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "caffemodel"
    if any(ch < " " and ch not in "\t\n\r\f\v" for ch in text):
        return "caffemodel"  # binary protobuf: tags and lengths are control characters
    try:
        fields = _top_level_fields(text)
    except text_format.ParseError:
        return "net prototxt"  # reading it as a net reports the syntax error
    return "solver prototxt" if fields & _SOLVER_ONLY else "net prototxt"


def _top_level_fields(text: str) -> set[str]:
    """The names of the fields at the outermost level of a text protobuf."""
    tok = text_format.Tokenizer(text.split("\n"))
    names, depth, expect_name = set(), 0, True
    while not tok.AtEnd():
        token = tok.token
        tok.NextToken()
        if token in ("{", "<"):
            depth, expect_name = depth + 1, True
        elif token in ("}", ">"):
            depth, expect_name = depth - 1, True
        elif token == ":":
            expect_name = False
        elif depth == 0 and expect_name and (token[:1].isalpha() or token[:1] == "_"):
            names.add(token)
        else:
            expect_name = True  # a value ends; the next identifier names a field
    return names


def caffemodel_weights(net: NetParameter) -> dict[str, list[np.ndarray]]:
    """The learned blobs of each layer that has any, by layer name, as float32 arrays in blob order.

    Layers without blobs (data, ReLU, the Split layers Caffe inserts, losses) are left out.
    """
    weights: dict[str, list[np.ndarray]] = {}
    for layer in net.layer:
        if not layer.blobs:
            continue
        if layer.name in weights:
            raise DatasetFormatError(f"two layers named {layer.name!r} carry weights")
        try:
            weights[layer.name] = [blob_to_array(blob) for blob in layer.blobs]
        except DatasetFormatError as e:
            raise DatasetFormatError(f"layer {layer.name!r}: {e}") from None
    return weights


def layer_line(path: str | Path, name: str, layer_type: str | None = None) -> int | None:
    """The line of the layer `name` in the prototxt at `path` (its `type:` line), or None if not found.

    Layers of nets embedded in a solver count too. Of several layers with that name, the first whose
    type is `layer_type` (a V1 enum name counts as its upgraded type) wins, else the first.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
        entries = [e for e in _layer_entries(text) if e[0] == name]
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        return None
    if not entries:
        return None
    for _, entry_type, line in entries:
        if layer_type is not None and layer_type in (entry_type, V1_TYPE_NAMES.get(entry_type or "")):
            return line
    return entries[0][2]


def _layer_entries(text: str) -> list[tuple[str | None, str | None, int]]:
    """(name, type as written, line) of each `layer`/`layers` block; the line is that of `type:`, else of the block.

    A V0 layer's name and type sit in the `layer { }` inside its `layers { }` block.
    """
    tok = text_format.Tokenizer(text.split("\n"))
    entries: list[list] = []
    stack: list[tuple[str, list | None]] = []  # per open block: its kind and the layer entry it belongs to
    nets = ("net_param", "train_net_param", "test_net_param")
    while not tok.AtEnd():
        if tok.TryConsume("}") or tok.TryConsume(">"):
            if stack:
                stack.pop()
            continue
        if not (tok.token[:1].isalpha() or tok.token[:1] == "_"):
            tok.NextToken()  # a value, or punctuation of a list
            continue
        line = tok.ParseError("").GetLine()
        ident = tok.token
        tok.NextToken()
        tok.TryConsume(":")
        kind, entry = stack[-1] if stack else ("net", None)
        if tok.TryConsume("{") or tok.TryConsume("<"):
            if ident in ("layer", "layers") and kind == "net":
                entries.append([None, None, line, None])
                stack.append((ident, entries[-1]))
            elif ident == "layer" and kind == "layers":
                stack.append(("v0", entry))
            else:
                stack.append(("net" if ident in nets else "other", None))
            continue
        if entry is not None and kind in ("layer", "layers", "v0") and ident in ("name", "type"):
            if tok.token[:1] in ("'", '"'):
                value = tok.ConsumeString()
            else:
                value = tok.token
                tok.NextToken()
            if ident == "name":
                entry[0] = value
            else:
                entry[1], entry[3] = value, line
    return [(name, kind, type_line or line) for name, kind, line, type_line in entries]


def _read_text(path: str | Path, message: M) -> M:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM some editors add is not content
    except UnicodeDecodeError as e:
        raise CaffeFileError(path, f"not UTF-8 text (byte {e.start})") from None
    try:
        # The strict parse is the fast path: it only fails on unknown fields or real errors.
        text_format.Parse(text, message)
        _check_required(path, message)
        return message
    except text_format.ParseError:
        message.Clear()
    try:
        text_format.Parse(text, message, allow_unknown_field=True)
    except text_format.ParseError as e:
        raise _text_error(path, e) from None
    _check_required(path, message)
    try:
        unknown = _unknown_text_fields(text, message.DESCRIPTOR)
    except text_format.ParseError:  # cannot happen for text protobuf just accepted; stay useful anyway
        unknown = {}
    _warn_unknown(path, unknown or {"(fields protobuf skipped but could not be listed)": ""}, stacklevel=4)
    return message


def _check_required(path: str | Path, message: Message) -> None:
    """Refuse a message missing a `required` field (clip_param's min/max), as Caffe's parsers do."""
    if not message.IsInitialized():
        missing = ", ".join(message.FindInitializationErrors())
        raise CaffeFileError(path, f"missing required field(s): {missing}")


def _text_error(path: str | Path, error: text_format.ParseError) -> CaffeFileError:
    # ParseError's text starts with "line:col : "; the error class carries the position instead.
    reason = re.sub(r"^\d+(:\d+)? : ", "", str(error))
    return CaffeFileError(path, reason, line=error.GetLine(), column=error.GetColumn())


def _warn_unknown(path: str | Path, unknown: dict[str, str], stacklevel: int) -> None:
    """Warn once for a file, naming each unknown field with where it was."""
    parts = []
    for key, where in unknown.items():
        parts.append(f"{key} ({where})" if where else key)
    warnings.warn(
        f"{path}: ignored {len(unknown)} field(s) unknown to mtldata's Caffe schema: {', '.join(parts)}",
        UnknownFieldWarning,
        stacklevel=stacklevel,
    )


def _listed(noun: str, items: list[str]) -> str:
    """Items after a noun: "line 3", "lines 3, 9", or "" when there are none."""
    if not items:
        return ""
    return f"{noun}{'s' if len(items) > 1 else ''} {', '.join(items)}"


def _unknown_text_fields(text: str, root: descriptor.Descriptor) -> dict[str, str]:
    """The fields of `text` that `root` does not define: {"caffe.Type.name": "lines a, b"}, in file order.

    Walks the tokens alongside the descriptors; the contents of an unknown field are not reported.
    """
    tok = text_format.Tokenizer(text.split("\n"))
    lines: dict[str, list[int]] = {}

    def value(desc: descriptor.Descriptor | None) -> None:
        if tok.TryConsume("{"):
            fields(desc, "}")
        elif tok.TryConsume("<"):
            fields(desc, ">")
        elif tok.token[:1] in ("'", '"'):
            tok.ConsumeByteString()  # adjacent string literals are one value
        else:
            tok.NextToken()

    def fields(desc: descriptor.Descriptor | None, closer: str | None) -> None:
        while not tok.AtEnd() and not (closer and tok.LookingAt(closer)):
            line = tok.ParseError("").GetLine()
            if tok.TryConsume("["):  # extension or Any type URL: never in Caffe's schema
                parts = []
                while not tok.TryConsume("]"):
                    parts.append(tok.token)
                    tok.NextToken()
                name, field = "[" + "".join(parts) + "]", None
            else:
                name = tok.ConsumeIdentifierOrNumber()
                field = desc.fields_by_name.get(name) if desc is not None else None
            if desc is not None and field is None:
                lines.setdefault(f"{desc.full_name}.{name}", []).append(line)
            sub = field.message_type if field is not None else None
            tok.TryConsume(":")
            if tok.TryConsume("["):  # short repeated form: [v1, v2] or [{...}, {...}]
                while not tok.TryConsume("]"):
                    value(sub)
                    tok.TryConsume(",")
            else:
                value(sub)
            if not tok.TryConsume(","):
                tok.TryConsume(";")
        if closer:
            tok.Consume(closer)

    fields(root, None)
    return {name: _listed("line", [str(n) for n in at]) for name, at in lines.items()}


def _unknown_binary_fields(message: Message, layer: str | None = None) -> Iterator[tuple[str, str | None]]:
    """("Type field N", layer name or None) for each unknown field binary parsing kept in `message`."""
    if message.DESCRIPTOR.full_name == "caffe.LayerParameter":
        layer = repr(message.name)
    for field in unknown_fields.UnknownFieldSet(message):
        yield f"{message.DESCRIPTOR.full_name} field {field.field_number}", layer
    for fd, value in message.ListFields():
        if fd.message_type is None:
            continue
        for sub in value if fd.is_repeated else (value,):
            yield from _unknown_binary_fields(sub, layer)
