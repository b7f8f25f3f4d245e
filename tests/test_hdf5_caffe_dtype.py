"""mtldata's HDF5 parts against what real Caffe's HDF5Data layer read from them.

tests/caffe_made/hdf5_dtype was made by make_hdf5_dtype.py beside it with BVLC Caffe 9b89154 (CPU,
pycaffe): the fixtures' list_multi.txt converted at 32 px, 4 samples a part, with `--hdf5-dtype
float32` and `uint8`, then five forwards of a net of one HDF5Data layer (batch 3) over each. It keeps
the uint8 parts and every blob Caffe gave. Caffe reads integer data as floats (BVLC 84e390c, 2015).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mtldata.caffenet.net import CaffeNet
from mtldata.caffenet.runner import NetFeeder
from mtldata.cli import main

GOLDEN = Path(__file__).resolve().parent / "caffe_made" / "hdf5_dtype"
MADE = json.loads((GOLDEN / "made.json").read_text())  # how make_hdf5_dtype.py made the golden
FORWARDS = MADE["forwards"]
CONVERT = MADE["convert"]  # the flags it converted with, but for --hdf5-dtype


@pytest.fixture(scope="module")
def caffe_blobs() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "caffe_blobs.npz") as z:
        return {name: z[name] for name in z.files}


def test_caffe_gave_the_same_blobs_from_uint8_parts_as_from_float32_parts(caffe_blobs):
    for i in range(FORWARDS):
        for top in ("data", "label"):
            ours, theirs = caffe_blobs[f"uint8_{top}_{i}"], caffe_blobs[f"float32_{top}_{i}"]
            assert ours.dtype == theirs.dtype == np.float32
            np.testing.assert_array_equal(ours, theirs)
    # and the data are the parts' pixels, not zeros: 10 samples, batch 3, round to the first again
    first = np.concatenate([caffe_blobs[f"uint8_data_{i}"] for i in range(FORWARDS)])
    assert first.shape == (15, 3, 32, 32) and first.max() > 100
    np.testing.assert_array_equal(first[10:], first[:5])


def test_the_hdf5data_feed_gives_caffes_batches_from_uint8_parts(caffe_blobs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(GOLDEN, run_dir)  # hdf5_list.txt names the parts relative to the folder
    net = CaffeNet(run_dir / "net.prototxt", "test")
    feeder = NetFeeder(net, [run_dir])
    net.setup(feeder.peek_shapes())
    for i in range(FORWARDS):
        inputs = next(feeder)
        for top in ("data", "label"):
            got = inputs[top].numpy()
            assert got.dtype == np.float32, top
            np.testing.assert_array_equal(got, caffe_blobs[f"uint8_{top}_{i}"], err_msg=f"{top} {i}")


def _parts(folder: Path) -> list[dict[str, np.ndarray]]:
    out = []
    for path in sorted(folder.glob("part-*.h5")):
        with h5py.File(path, "r") as f:
            out.append({name: f[name][...] for name in ("data", "label")} | {"dtype": f["data"].dtype})
    return out


def test_converting_the_fixture_list_writes_the_parts_caffe_read(caffe_fixtures, tmp_path):
    golden = _parts(GOLDEN)
    assert [p["dtype"] for p in golden] == [np.uint8] * 3
    for dtype in ("uint8", "float32"):
        out = tmp_path / dtype
        result = CliRunner().invoke(
            main,
            ["convert", str(caffe_fixtures / "list_multi.txt"), "-o", str(out),
             "--root", str(caffe_fixtures / "images"), "--hdf5-dtype", dtype, *CONVERT],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        parts = _parts(out)
        assert len(parts) == len(golden)
        for ours, theirs in zip(parts, golden, strict=True):
            assert ours["dtype"] == np.dtype(dtype)
            np.testing.assert_array_equal(ours["data"].astype(np.float32), theirs["data"].astype(np.float32))
            np.testing.assert_array_equal(ours["label"], theirs["label"])
