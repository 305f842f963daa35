"""Engineering knobs of the Fisher: memory bounds and code-path switches, never the quantity.

Every field bounds memory, sets a block size or turns a measured shortcut on or off; the result
is the same Fisher whatever the values (up to float rounding, since blocks change the order of
summation). The defaults are what the pipeline runs; benchmarks/bench_fisher.py and the tests
pass other values to ``fisher_diagonal(..., settings=...)`` to compare code paths side by side
(the measurements behind each default are in benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FisherSettings:
    """Knobs of :func:`pbu.fisher.fisher_diagonal`, in floats where they are sizes.

    - ``block_floats_cpu``: a block of per-sample products (or Gram products) on the CPU, small
      enough to stay in cache while it is squared and summed.
    - ``block_floats_gpu``: the same on any other device, where each block is a few kernel
      launches and the cache argument does not hold (256 MiB of float32).
    - ``cache_floats``: the probe backend's im2col copies of conv inputs kept across the R
      backward passes of a chunk.
    - ``vmap_floats``: a torch.func per-sample gradient batch [b, R, n_params].
    - ``chain_floats``: the chain backend holds all R cotangents' gradients at once; chunks
      shrink so that one [R, B, ...] tensor stays under this.
    - ``stack_device_types``: device types on which the chain backend stacks its R cotangents
      into one kernel (conv products as one GEMM with R·O rows, the conv input gradient as one
      backward over R·B images) where the CPU loops over them.
    - ``pool_shortcut``: the probe backend cuts a first Conv2d→BatchNorm2d→ReLU→MaxPool2d at the
      pool's output (``probe_acc.PooledChainAcc``) ...
    - ``pool_min_rank``: ... from this many cotangents per sample on (its gathers cost a fixed
      amount per chunk and it saves a fixed amount per cotangent).
    """

    block_floats_cpu: int = 1 << 20
    block_floats_gpu: int = 1 << 26
    cache_floats: int = 1 << 27
    vmap_floats: int = 1 << 25
    chain_floats: int = 1 << 26
    stack_device_types: frozenset[str] = frozenset({"cuda"})
    pool_shortcut: bool = True
    pool_min_rank: int = 3

    def __post_init__(self) -> None:
        for name in (
            "block_floats_cpu",
            "block_floats_gpu",
            "cache_floats",
            "vmap_floats",
            "chain_floats",
            "pool_min_rank",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"FisherSettings.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"FisherSettings.{name} must be >= 0, got {value}")
        if not isinstance(self.stack_device_types, frozenset):
            raise TypeError(
                "FisherSettings.stack_device_types must be a frozenset of device "
                f"types, got {self.stack_device_types!r}"
            )

    def block_floats(self, device: torch.device) -> int:
        """Floats per block of per-sample products on ``device``."""
        return self.block_floats_cpu if device.type == "cpu" else self.block_floats_gpu

    def stacked(self, device: torch.device) -> bool:
        """Whether the chain backend stacks its R cotangents into one kernel on ``device``."""
        return device.type in self.stack_device_types


DEFAULT = FisherSettings()


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off for CUDA convolutions and matmuls while the Fisher runs, restored after.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for float32 convolutions by default; the
    Fisher squares and sums gradients whose entries span many orders of magnitude, and TF32
    puts it orders of magnitude further from the float64 result than float32 does.
    """
    if device.type != "cuda":
        yield
        return
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
