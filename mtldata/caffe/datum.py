"""Caffe `Datum` records: the LMDB values Caffe's Data layer reads (images and label vectors)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from mtldata.caffe.caffe_pb2 import Datum


def image_datum(data: bytes | memoryview, label: int, shape: tuple[int, int, int] | None) -> bytes:
    """Serialize an image Datum as convert_imageset writes it.

    `shape` (C, H, W) is given for raw pixels (planar CHW, BGR uint8) and None for encoded file bytes;
    Caffe writes `encoded` explicitly in both cases (false for raw, true for encoded).
    """
    if shape is not None:
        c, h, w = shape
        if len(data) != c * h * w:
            raise ValueError(f"raw image data holds {len(data)} bytes, shape {shape} needs {c * h * w}")
    head, tail = image_datum_frame(len(data), label, shape)
    return b"".join((head, data, tail))


@functools.lru_cache(maxsize=4096)  # a conversion repeats a few sizes and labels: built once each
def image_datum_frame(length: int, label: int, shape: tuple[int, int, int] | None) -> tuple[bytes, bytes]:
    """The wire bytes of an image Datum before and after its `length` bytes of `data`.

    What protobuf's SerializeToString writes for the Datum `image_datum` builds (fields in number
    order: channels, height, width, data, label, encoded; proto2 writes every field that was set),
    written by hand so that a converter can place the pixels between them without protobuf copying
    them twice. `tests/test_datum_wire.py` checks it against protobuf.
    """
    head = bytearray()
    if shape is not None:
        for number, value in zip((1, 2, 3), shape, strict=True):
            head += _tag_varint(number, value)
    head += bytes((_DATA_FIELD_TAG,)) + _encode_varint(length)
    tail = _tag_varint(5, label) + bytes(((7 << 3), 0 if shape is not None else 1))
    return bytes(head), tail


def _tag_varint(number: int, value: int) -> bytes:
    """A varint field (int32: a negative value is written as its 64-bit two's complement)."""
    return bytes((number << 3,)) + _encode_varint(value & 0xFFFFFFFFFFFFFFFF if value < 0 else value)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_LABEL_FIELD = np.dtype([("tag", "u1"), ("value", "<f4")])  # one `float_data` entry: tag 6, wire type 5
_LABEL_HEADS: dict[int, bytes] = {}


def label_datum(labels: Sequence[float] | np.ndarray) -> bytes:
    """Serialize a label vector as the multi-label layout's Datum: channels=K, 1x1, float_data.

    Written by hand, as protobuf writes it (proto2's `repeated float` is not packed: each value is
    its own tag 6, wire type 5, then 4 little-endian bytes); a test compares it with protobuf.
    """
    values = np.asarray(labels, dtype=np.float32).ravel()
    k = values.size
    head = _LABEL_HEADS.get(k)
    if head is None:
        head = _LABEL_HEADS[k] = _tag_varint(1, k) + b"\x10\x01\x18\x01"
    fields = np.empty(k, _LABEL_FIELD)  # packed records: the tag byte, then the value's 4 bytes
    fields["tag"] = (6 << 3) | 5
    fields["value"] = values
    return head + fields.tobytes()


def parse_datum(value: bytes | memoryview) -> Datum:
    """Parse an LMDB value (bytes, or a buffer such as LMDB's `buffers=True` views) into a Datum
    message; the message keeps a copy of what it needs, never the buffer."""
    datum = Datum()
    datum.ParseFromString(value)
    return datum


def split_datum(value: bytes | memoryview) -> tuple[Datum, memoryview]:
    """Parse an LMDB value into a Datum without its `data`, and that data as a view of `value`.

    protobuf's Python API copies a bytes field twice (into its own memory, then out again to a new
    bytes object); for a raw 256 px image that is two 196 KB copies per record, which cost a loader
    more than the rest of the read. Here only the wire position of field 4 is found by hand
    (`data_field_span`); protobuf still parses every other field, from the record with that field
    cut out. A record the scan does not fully understand, or one protobuf would read differently (a
    second `data` field, whose last copy protobuf keeps), is parsed by protobuf whole instead.
    Raises protobuf's DecodeError for a record that is not a Datum.
    """
    found = data_field_span(value)
    if found is not None:
        field_start, start, end = found
        datum = Datum.FromString(b"".join((value[:field_start], value[end:])))
        if not datum.HasField("data"):
            return datum, memoryview(value)[start:end]
    datum = Datum.FromString(value)
    data = datum.data
    datum.ClearField("data")
    return datum, memoryview(data)


_DATA_FIELD_TAG = (4 << 3) | 2  # Datum.data: field 4, wire type 2 (length-delimited)


def data_field_span(value: bytes | memoryview) -> tuple[int, int, int] | None:
    """(where field 4's tag starts, where its bytes start, where they end) in a serialised Datum,
    walking the top-level fields by their wire types; None when absent or anything is unexpected."""
    pos, end = 0, len(value)
    try:
        while pos < end:
            field_start = pos
            tag, pos = _varint(value, pos)
            wire_type = tag & 7
            if wire_type == 0:
                _, pos = _varint(value, pos)
            elif wire_type == 2:
                length, pos = _varint(value, pos)
                if pos + length > end:
                    return None
                if tag == _DATA_FIELD_TAG:
                    return field_start, pos, pos + length
                pos += length
            elif wire_type == 5:
                pos += 4
            elif wire_type == 1:
                pos += 8
            else:  # groups (3, 4) and invalid types: leave them to protobuf
                return None
    except IndexError:  # a varint running off the end, or longer than protobuf allows
        return None
    return None


def _varint(value: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = value[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint longer than 10 bytes")


def datum_labels(datum: Datum) -> np.ndarray:
    """The label vector a Datum carries: its float_data if any, else its int label as one value."""
    values = datum.float_data
    if len(values):
        # through a list: numpy's array-protocol path over the repeated field is several times slower
        return np.array(values[:], dtype=np.float32)
    return np.array([datum.label], dtype=np.float32)


def datum_pixels(datum: Datum) -> np.ndarray:
    """The raw pixels of a non-encoded Datum as a (C, H, W) uint8 array (a copy-free view)."""
    if datum.encoded:
        raise ValueError(
            "datum holds encoded image bytes; decode them with mtldata.storage.image.decode_bytes"
        )
    c, h, w = datum.channels, datum.height, datum.width
    return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
