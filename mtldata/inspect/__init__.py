"""Looking at datasets and runs: info, verify, stats and pictures."""
