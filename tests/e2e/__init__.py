"""End-to-end tests: the real snakemake, pbu CLI processes, SLURM, the MLflow UI (all slow)."""
