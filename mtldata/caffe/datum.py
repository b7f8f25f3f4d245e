"""Caffe `Datum` records: the LMDB values Caffe's Data layer reads (images and label vectors)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtldata.caffe.caffe_pb2 import Datum


def image_datum(data: bytes, label: int, shape: tuple[int, int, int] | None) -> bytes:
    """Serialize an image Datum as convert_imageset writes it.

    `shape` (C, H, W) is given for raw pixels (planar CHW, BGR uint8) and None for encoded file bytes;
    Caffe writes `encoded` explicitly in both cases (false for raw, true for encoded).
    """
    datum = Datum()
    if shape is not None:
        c, h, w = shape
        if len(data) != c * h * w:
            raise ValueError(f"raw image data holds {len(data)} bytes, shape {shape} needs {c * h * w}")
        datum.channels, datum.height, datum.width = c, h, w
    datum.data = data
    datum.label = label
    datum.encoded = shape is None
    return datum.SerializeToString()


def label_datum(labels: Sequence[float] | np.ndarray) -> bytes:
    """Serialize a label vector as the multi-label layout's Datum: channels=K, 1x1, float_data."""
    values = np.asarray(labels, dtype=np.float32).ravel()
    datum = Datum()
    datum.channels, datum.height, datum.width = int(values.size), 1, 1
    datum.float_data.extend(values.tolist())
    return datum.SerializeToString()


def parse_datum(value: bytes | memoryview) -> Datum:
    """Parse an LMDB value (bytes, or a buffer such as LMDB's `buffers=True` views) into a Datum
    message; the message keeps a copy of what it needs, never the buffer."""
    datum = Datum()
    datum.ParseFromString(value)
    return datum


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
        raise ValueError("datum holds encoded image bytes; decode them with mtldata.image.decode_bytes")
    c, h, w = datum.channels, datum.height, datum.width
    return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
