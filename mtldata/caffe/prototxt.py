"""Caffe net, solver and weight files: prototxt text and binary caffemodels, read with mtldata's schema.

mtldata's caffe.proto holds Caffe's full schema. Fields it lacks (fork extensions) are skipped in
text files and kept as unknown fields in binary ones; either way an `UnknownFieldWarning` names them,
so a net that relies on them does not pass silently.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
from google.protobuf import descriptor, text_format, unknown_fields
from google.protobuf.message import DecodeError, Message

from mtldata.caffe.blob import blob_to_array
from mtldata.caffe.caffe_pb2 import NetParameter, SolverParameter
from mtldata.durable import write_bytes_atomic
from mtldata.errors import CaffeFileError, DatasetFormatError

M = TypeVar("M", bound=Message)


class UnknownFieldWarning(UserWarning):
    """A Caffe file holds fields that mtldata's schema lacks; they were skipped."""


def read_net(path: str | Path) -> NetParameter:
    """Parse a net prototxt (train/val or deploy) into a NetParameter."""
    return _read_text(path, NetParameter())


def read_solver(path: str | Path) -> SolverParameter:
    """Parse a solver prototxt into a SolverParameter (its `net` path is left as written)."""
    return _read_text(path, SolverParameter())


def read_caffemodel(path: str | Path) -> NetParameter:
    """Parse a binary caffemodel (Caffe's Net::ToProto output) into a NetParameter."""
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
    return net


def write_caffemodel(path: str | Path, net: NetParameter) -> None:
    """Write `net` as a binary caffemodel, replacing `path` atomically."""
    if not isinstance(net, NetParameter):
        raise TypeError(f"write_caffemodel needs a caffe NetParameter, got {type(net).__name__}")
    write_bytes_atomic(path, net.SerializeToString())


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
