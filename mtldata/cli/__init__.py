"""The `mtldata` command line: one module per command family over one library call each."""

import os

# Before numpy is imported: its OpenBLAS starts a thread per core that spins for about 0.1 s of CPU
# waiting for work, and mtldata gives numpy none (its matrix products run in torch, on MKL). On two
# cores that is a tenth of a short conversion. The CLI keeps one BLAS thread unless the user set it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from mtldata.cli.main import main  # noqa: E402

__all__ = ["main"]
