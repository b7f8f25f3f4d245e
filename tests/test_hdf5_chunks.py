"""Compressed shard chunks made in threads (hdf5_chunks.py): HDF5 must read them as if its own
filter pipeline had written them."""

from __future__ import annotations

import threading
import zlib

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtldata.storage.backends import hdf5_chunks
from mtldata.storage.backends.hdf5_chunks import GZIP_LEVEL, ChunkWriter, dataset_filters, shuffled


@pytest.mark.parametrize("dtype", ["float32", "uint16", "uint8", "float64"])
def test_shuffled_lays_out_bytes_as_hdf5_s_shuffle_filter_does(tmp_path, dtype):
    chunk = np.random.default_rng(0).integers(0, 255, (2, 3, 5, 4)).astype(dtype)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        data = f.create_dataset("data", chunk.shape, dtype, chunks=chunk.shape, shuffle=True)
        data[...] = chunk
        mask, stored = data.id.read_direct_chunk((0, 0, 0, 0))
    assert mask == 0
    assert shuffled(chunk) == stored


def pixel_rows(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_shard(path, pixels: np.ndarray, dtype: str, rows: int, compression: str, threads: int) -> None:
    with h5py.File(path, "w") as f:
        data = f.create_dataset(
            "data", pixels.shape, dtype, chunks=(rows, *pixels.shape[1:]), **dataset_filters(compression)
        )
        with ChunkWriter(data, rows, threads) as out:
            for sample in pixels:
                out.write(sample)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 9),
    rows=st.integers(1, 4),
    shape=st.tuples(st.sampled_from([1, 3]), st.integers(1, 9), st.integers(1, 9)),
    dtype=st.sampled_from(["float32", "uint8"]),
    threads=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_gzip_chunks_made_in_threads_read_back_through_hdf5(tmp_path, n, rows, shape, dtype, threads, seed):
    rows = min(rows, n)
    pixels = pixel_rows(n, shape, seed)
    path = tmp_path / f"g{seed}-{n}-{rows}.h5"
    write_shard(path, pixels, dtype, rows, "gzip", threads)
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert (data.compression, data.compression_opts, data.shuffle) == ("gzip", GZIP_LEVEL, True)
        np.testing.assert_array_equal(data[...], pixels.astype(dtype))
        assert data.dtype == np.dtype(dtype)
        # Every chunk is stored whole, the edge one padded with zeros, as HDF5 itself stores it.
        last = (n - 1) // rows * rows
        mask, stored = data.id.read_direct_chunk((last, 0, 0, 0))
        edge = np.zeros((rows, *shape), dtype)
        edge[: n - last] = pixels[last:]
        assert mask == 0 and zlib.decompress(stored) == shuffled(edge)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_lzf_chunks_go_through_h5py_and_read_back(tmp_path, dtype):
    pixels = pixel_rows(7, (3, 6, 5), 1)
    write_shard(tmp_path / "l.h5", pixels, dtype, 3, "lzf", 2)
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert (f["data"].compression, f["data"].shuffle) == ("lzf", True)
        np.testing.assert_array_equal(f["data"][...], pixels.astype(dtype))


def test_gzip_chunks_are_deflated_in_the_writer_s_threads(tmp_path, monkeypatch):
    seen: set[str] = set()
    deflate = hdf5_chunks._deflated_chunk

    def spy(*args):
        seen.add(threading.current_thread().name)
        return deflate(*args)

    monkeypatch.setattr(hdf5_chunks, "_deflated_chunk", spy)
    write_shard(tmp_path / "t.h5", pixel_rows(12, (3, 4, 4), 2), "float32", 1, "gzip", 3)
    assert seen and all(name.startswith("mtldata-deflate") for name in seen)
    assert not [t for t in threading.enumerate() if t.name.startswith("mtldata-deflate")]


def test_a_failed_deflate_is_raised_and_the_threads_end(tmp_path, monkeypatch):
    def fail(data, level):
        raise MemoryError("no memory for the chunk")

    monkeypatch.setattr(hdf5_chunks.zlib, "compress", fail)
    with pytest.raises(MemoryError, match="no memory for the chunk"):
        write_shard(tmp_path / "f.h5", pixel_rows(20, (1, 3, 3), 3), "float32", 2, "gzip", 2)
    assert not [t for t in threading.enumerate() if t.name.startswith("mtldata-deflate")]


def test_chunk_writer_refuses_datasets_whose_chunks_it_would_not_write_as_hdf5_does(tmp_path):
    with h5py.File(tmp_path / "r.h5", "w") as f:
        unshuffled = f.create_dataset("a", (4, 1, 2, 2), "float32", chunks=(2, 1, 2, 2), compression="gzip")
        with pytest.raises(ValueError, match="shuffle at level 4"):
            ChunkWriter(unshuffled, 2, 1)
        split = f.create_dataset("b", (4, 1, 2, 2), "float32", chunks=(2, 1, 1, 2), **dataset_filters("gzip"))
        with pytest.raises(ValueError, match="whole samples"):
            ChunkWriter(split, 2, 1)


def test_at_most_two_chunks_a_thread_wait_in_memory(tmp_path):
    pixels = pixel_rows(40, (3, 8, 8), 4)
    most = 0
    with h5py.File(tmp_path / "w.h5", "w") as f:
        data = f.create_dataset(
            "data", pixels.shape, "float32", chunks=(1, 3, 8, 8), **dataset_filters("gzip")
        )
        with ChunkWriter(data, 1, 2) as out:
            for sample in pixels:
                out.write(sample)
                most = max(most, len(out._pending))
        np.testing.assert_array_equal(data[...], pixels)
    assert most == 4
