"""Unit tests of pbu/methods/: the harness and baselines, and PBU itself."""
