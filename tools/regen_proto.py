"""Regenerate mtldata/caffe/caffe_pb2.py from caffe.proto (needs grpcio-tools, a dev-only tool)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

CAFFE_DIR = Path(__file__).resolve().parent.parent / "mtldata" / "caffe"


def main() -> int:
    args = ["protoc", f"-I{CAFFE_DIR}", f"--python_out={CAFFE_DIR}", str(CAFFE_DIR / "caffe.proto")]
    rc = protoc.main(args)
    if rc == 0:
        print(f"wrote {CAFFE_DIR / 'caffe_pb2.py'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
