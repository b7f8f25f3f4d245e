"""`python -m mtldata` runs the CLI (also what `torchrun -m mtldata` needs)."""

from mtldata.cli import main

main()
