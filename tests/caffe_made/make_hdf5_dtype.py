"""Make tests/caffe_made/hdf5_dtype: what real Caffe's HDF5Data layer reads from mtldata's HDF5 output.

usage: python tests/caffe_made/make_hdf5_dtype.py CAFFE_PREFIX
  CAFFE_PREFIX is a build of ../shared/tools/build-caffe.sh (BVLC Caffe 9b89154, CPU, pycaffe).

Converts the shared fixtures' list_multi.txt (32x32, 4 samples a file) with `mtldata convert --backend
hdf5`, once with `--hdf5-dtype float32` and once with `uint8`, then lets pycaffe run a net made of
one HDF5Data layer over each (batch 3, five forwards: across the files and round to the first again)
and saves every forward's `data` and `label` blobs. Keeps the uint8 files and Caffe's blobs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "hdf5_dtype"
FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "caffe"
FORWARDS = 5
BATCH = 3
NET = """name: "hdf5_dtype"
layer {
  name: "data"
  type: "HDF5Data"
  top: "data"
  top: "label"
  hdf5_data_param { source: "hdf5_list.txt" batch_size: %d }
}
"""
CONVERT = ["--backend", "hdf5", "--resize-width", "32", "--resize-height", "32", "--shard-size", "4", "-q"]


def caffe_worker(folder: str, out: str) -> None:
    """Run under pycaffe's interpreter, in `folder` (Caffe resolves `source` against the cwd)."""
    import caffe  # only in the pycaffe environment
    import numpy as np

    os.chdir(folder)
    caffe.set_mode_cpu()
    net = caffe.Net("net.prototxt", caffe.TEST)
    blobs = {}
    for i in range(FORWARDS):
        net.forward()
        blobs[f"data_{i}"] = net.blobs["data"].data.copy()
        blobs[f"label_{i}"] = net.blobs["label"].data.copy()
    np.savez(out, **blobs)


def main(prefix: Path) -> None:
    python = prefix / "pyvenv" / "bin" / "python"
    env = {
        **os.environ,
        "PYTHONPATH": str(prefix / "src" / "python"),
        "GLOG_minloglevel": "2",
        "OPENBLAS_NUM_THREADS": "1",
    }
    shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir(parents=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "uint8"):
            out = Path(tmp) / dtype
            subprocess.run(
                [
                    "mtldata",
                    "convert",
                    str(FIXTURES / "list_multi.txt"),
                    "-o",
                    str(out),
                    "--root",
                    str(FIXTURES / "images"),
                    "--hdf5-dtype",
                    dtype,
                    *CONVERT,
                ],
                check=True,
            )
            parts = sorted(p.name for p in out.glob("part-*.h5"))
            (out / "hdf5_list.txt").write_text("".join(f"{p}\n" for p in parts))  # relative: cwd
            (out / "net.prototxt").write_text(NET % BATCH)
            npz = Path(tmp) / f"caffe_{dtype}.npz"
            subprocess.run([str(python), __file__, "--caffe-worker", str(out), str(npz)], env=env, check=True)
            results[dtype] = npz
            if dtype == "uint8":
                for name in [*parts, "hdf5_list.txt", "net.prototxt"]:
                    shutil.copy(out / name, HERE / name)
        import numpy as np

        merged = {}
        for dtype, npz in results.items():
            with np.load(npz) as z:
                merged.update({f"{dtype}_{k}": z[k] for k in z.files})
        np.savez_compressed(HERE / "caffe_blobs.npz", **merged)
    version = subprocess.run([str(prefix / "bin" / "caffe"), "--version"], capture_output=True, text=True)
    (HERE / "made.json").write_text(
        json.dumps(
            {
                "caffe": (version.stdout or version.stderr).strip(),
                "caffe_commit": "9b891540183ddc834a02b2bd81b31afae71b2153",
                "convert": CONVERT,
                "list": "shared/fixtures/caffe/list_multi.txt",
                "forwards": FORWARDS,
                "batch_size": BATCH,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--caffe-worker"]:
        caffe_worker(sys.argv[2], sys.argv[3])
    else:
        main(Path(sys.argv[1]).resolve())
