"""The test suite: unit/ (fast, in-process; one file per module), e2e/ (snakemake, CLI
processes, SLURM, the browser), bench/ (the benchmark scripts)."""
