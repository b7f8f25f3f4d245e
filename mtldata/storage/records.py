"""The in-memory shape of one sample as it moves between the image codec, the converter and backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ImagePayload:
    """An image ready for storage: raw planar CHW BGR uint8 bytes, or encoded file bytes.

    `shape` is (C, H, W) of the decoded pixels in both cases (for encoded payloads it is what the
    bytes decode to under the conversion's options, kept for the manifest and size checks).
    `data` is bytes, or (raw pixels an LMDB reader read) a read-only memoryview of the record it
    came in, which saves copying every image once more; `bytes(data)` gives bytes either way.
    """

    data: bytes | memoryview
    encoded: bool
    shape: tuple[int, int, int]
    # "raw", or the encoded format: "jpeg", "png", ...; "float32": `data` holds float32 CHW values
    # (already-transformed HDF5 data mtldata did not write; see Hdf5Reader.image_array).
    format: str = "raw"
    # Set by a backend's encode_payload (run in the decode workers): `data` is then the record
    # exactly as that backend stores it (for LMDB, the serialised Datum), not the pixels.
    stored: bool = False
    stored_digest: bytes | None = None  # record digest of `data` when `stored` (record_digests.ALGORITHM)

    def with_data(
        self, data: bytes | memoryview, stored: bool | None = None, stored_digest: bytes | None = None
    ) -> ImagePayload:
        """This payload with other `data` (and, given, `stored` and its digest): what
        dataclasses.replace does, at a fifth of its cost, on the converter's per-image path."""
        return ImagePayload(
            data,
            self.encoded,
            self.shape,
            self.format,
            self.stored if stored is None else stored,
            self.stored_digest if stored is None else stored_digest,
        )


@dataclass(frozen=True)
class Sample:
    """One stored sample: its key, image and float32 label vector."""

    index: int
    key: str
    image: ImagePayload
    labels: np.ndarray


def missing_stored_as(manifest: dict[str, Any] | None) -> dict[int, float]:
    """Label column -> the ignore value a manifest says stands for a missing label there ({} if none)."""
    entry = (manifest or {}).get("missing_labels") or {}
    return {int(c): float(v) for c, v in (entry.get("stored_as") or {}).items()}


def restore_missing(labels: np.ndarray, stored_as: dict[int, float]) -> np.ndarray:
    """A stored label vector with each ignore value of a mapped column read back as missing (NaN)."""
    if not stored_as:
        return labels
    out = np.array(labels, dtype=np.float32)
    for column, value in stored_as.items():
        if column < out.size and out[column] == value:
            out[column] = np.nan
    return out
