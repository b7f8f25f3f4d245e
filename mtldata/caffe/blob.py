"""Caffe `BlobProto` <-> numpy: the arrays of caffemodel weights and of mean files (.binaryproto)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

from mtldata.caffe.caffe_pb2 import BlobProto
from mtldata.durable import write_bytes_atomic
from mtldata.errors import CaffeFileError, DatasetFormatError

_LEGACY_DIMS = ("num", "channels", "height", "width")


def blob_shape(blob: BlobProto) -> tuple[int, ...]:
    """The shape Caffe gives a BlobProto: the legacy 4-D fields if any is set, else `shape.dim`.

    This is Blob::FromProto's rule, so a mean file from compute_image_mean (legacy fields only)
    is (1, C, H, W) and a caffemodel weight is whatever `shape` says, scalar included.
    """
    if any(blob.HasField(name) for name in _LEGACY_DIMS):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def blob_to_array(blob: BlobProto) -> np.ndarray:
    """The values of a BlobProto as a float32 array of its Caffe shape (double_data wins if present)."""
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise DatasetFormatError(f"BlobProto has a negative dimension in shape {shape}")
    # Caffe reads double_data when it holds anything, and data otherwise.
    values = blob.double_data if len(blob.double_data) else blob.data
    count = math.prod(shape)
    if len(values) != count:
        raise DatasetFormatError(f"BlobProto of shape {shape} needs {count} values but holds {len(values)}")
    try:
        return np.array(values, dtype=np.float32).reshape(shape)
    except ValueError as exc:  # e.g. a 0 beside dimensions whose product numpy cannot hold
        raise DatasetFormatError(f"BlobProto shape {shape} does not fit an array ({exc})") from None


def array_to_blob(arr: np.ndarray) -> BlobProto:
    """A BlobProto holding `arr` as float32 `data`, its shape in `shape.dim` (as Caffe's ToProto)."""
    values = np.asarray(arr)
    if values.dtype.kind not in "biuf":
        raise TypeError(f"array_to_blob needs a real numeric array, got dtype {values.dtype}")
    values = values.astype(np.float32, copy=False)
    blob = BlobProto()
    blob.shape.SetInParent()  # a 0-d array still writes an (empty) shape, as Caffe does
    blob.shape.dim.extend(values.shape)
    blob.data.extend(values.ravel().tolist())
    return blob


def read_blob_proto(path: str | Path) -> np.ndarray:
    """Read a binary BlobProto file (.binaryproto) into a float32 array of its Caffe shape."""
    blob = BlobProto()
    try:
        blob.ParseFromString(Path(path).read_bytes())
    except DecodeError as e:
        raise CaffeFileError(path, f"not a binary BlobProto ({e})") from None
    # Caffe's BlobProto uses field numbers 1-9 only; anything else means another message type.
    strays = sorted({f.field_number for f in unknown_fields.UnknownFieldSet(blob)})
    if strays:
        raise CaffeFileError(path, f"not a BlobProto: it holds fields {strays} that BlobProto lacks")
    if not blob.ListFields():
        raise CaffeFileError(path, "empty file or message: no BlobProto fields")
    try:
        return blob_to_array(blob)
    except DatasetFormatError as e:
        raise CaffeFileError(path, str(e)) from None


def read_mean_file(path: str | Path) -> np.ndarray:
    """Read a Caffe mean file (transform_param.mean_file) as a (C, H, W) float32 array.

    The file must be a BlobProto of one image, shape (1, C, H, W), as compute_image_mean writes.
    """
    mean = read_blob_proto(path)
    if mean.ndim != 4 or mean.shape[0] != 1 or min(mean.shape[1:]) < 1:
        raise CaffeFileError(
            path, f"a mean file holds one image, a BlobProto of shape (1, C, H, W); this one is {mean.shape}"
        )
    return mean[0]


def write_blob_proto(path: str | Path, arr: np.ndarray) -> None:
    """Write `arr` as a binary BlobProto file (float32, `shape` set), replacing `path` atomically."""
    write_bytes_atomic(path, array_to_blob(arr).SerializeToString())
