"""Per-record digest files: every record's key and value digest, kept beside what a conversion wrote.

`images.lmdb.digests`, `part-00000.h5.digests`, ...: entries of (4-byte little-endian key length,
key, digest), in write order. `mtldata verify` recomputes each record's digest and names the key of
one that changed. Digests are XXH3-128 (16 bytes): it hashes a 196 KB image in 0.011 ms against
sha256's 0.16 ms (measured for issue 15), and catches a changed byte as surely for this purpose;
it guards against damage, not against someone forging a record. Datasets written before it carry
sha256 digests (32 bytes), which are still read: the manifest names the algorithm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

ALGORITHM = "xxh3_128"
SIZES = {"xxh3_128": 16, "sha256": 32}  # the algorithms a manifest may name, and their digest sizes
SIZE = SIZES[ALGORITHM]
SUFFIX = ".digests"

Buffer = bytes | bytearray | memoryview


def hasher(algorithm: str = ALGORITHM) -> Callable[[Buffer], bytes]:
    """The function that digests one record's bytes with `algorithm` (one of SIZES)."""
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128_digest
    if algorithm == "sha256":
        return lambda data: hashlib.sha256(data).digest()
    raise ValueError(f"unknown record digest {algorithm!r} (known: {', '.join(SIZES)})")


def digest(data: Buffer, algorithm: str = ALGORITHM) -> bytes:
    """One record's digest."""
    return hasher(algorithm)(data)


def entry(key: bytes, value_digest: bytes) -> bytes:
    """One entry of a digests file."""
    return len(key).to_bytes(4, "little") + key + value_digest


def entries(data: bytes, size: int = SIZE) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(start, end, key, digest) of each whole entry of a digests file's bytes (a torn tail is left out)."""
    pos = 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos : pos + 4], "little")
        end = pos + 4 + n + size
        if end > len(data):  # a torn tail from an interruption
            return
        yield pos, end, data[pos + 4 : pos + 4 + n], data[pos + 4 + n : end]
        pos = end


def whole_entries(data: bytes, size: int = SIZE) -> tuple[int, int]:
    """(number of whole entries, where they end) in a digests file's bytes: `entries` without
    building each one, for a count over a large file."""
    pos = count = 0
    total = len(data)
    while pos + 4 <= total:
        end = pos + 4 + int.from_bytes(data[pos : pos + 4], "little") + size
        if end > total:
            break
        pos = end
        count += 1
    return count, pos


def parse(data: bytes, algorithm: str = ALGORITHM) -> dict[bytes, bytes]:
    """key -> digest of a digests file's bytes, written with `algorithm` (a torn tail is left out)."""
    return {key: value for _, _, key, value in entries(data, SIZES[algorithm])}


def pixels_and_labels(pixels: Buffer, labels: bytes, algorithm: str = ALGORITHM) -> bytes:
    """The digest of a record stored as pixels plus a label row (HDF5): of both, in turn."""
    if algorithm == "xxh3_128":
        import xxhash

        state = xxhash.xxh3_128()
    else:
        state = hashlib.new(algorithm)
    state.update(pixels)
    state.update(labels)
    return state.digest()
