"""The hand-written Datum wire bytes equal what protobuf serialises (the converter's records rely on it)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mtldata.caffe.caffe_pb2 import Datum
from mtldata.caffe.datum import image_datum, label_datum

INT32 = st.integers(-(2**31), 2**31 - 1)


def protobuf_image_datum(data: bytes, label: int, shape: tuple[int, int, int] | None) -> bytes:
    datum = Datum()
    if shape is not None:
        datum.channels, datum.height, datum.width = shape
    datum.data, datum.label, datum.encoded = data, label, shape is None
    return datum.SerializeToString()


@given(
    shape=st.tuples(st.integers(0, 4), st.integers(0, 20), st.integers(0, 300)),
    label=INT32,
    data=st.binary(max_size=64),
)
def test_image_datum_bytes_equal_protobuf(shape, label, data):
    assert image_datum(data, label, None) == protobuf_image_datum(data, label, None)
    pixels = (data * (1 + shape[0] * shape[1] * shape[2]))[: shape[0] * shape[1] * shape[2]]
    if len(pixels) == shape[0] * shape[1] * shape[2]:
        assert image_datum(pixels, label, shape) == protobuf_image_datum(pixels, label, shape)


def test_a_raw_256px_image_datum_equals_protobuf():
    pixels = np.random.default_rng(0).integers(0, 256, 3 * 256 * 256, dtype=np.uint8).tobytes()
    for label in (0, 7, -1, 2**31 - 1):
        assert image_datum(pixels, label, (3, 256, 256)) == protobuf_image_datum(pixels, label, (3, 256, 256))


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=300))
def test_label_datum_bytes_equal_protobuf(values):
    datum = Datum()
    datum.channels, datum.height, datum.width = len(values), 1, 1
    datum.float_data.extend(np.float32(values).tolist())
    assert label_datum(values) == datum.SerializeToString()
