"""Tests of the benchmark scripts (benchmarks/): their bookkeeping on tiny inputs."""
