"""BatchNorm helpers shared by the backends.

``bn_mode="eval"`` normalises with the running statistics; ``"train"`` normalises each loader
batch with its own statistics, swapped in as if they were the running ones
(:func:`swap_bn_stats`), so every backend sees BatchNorm as a fixed per-channel affine map
y = a·x + b, a = γ/√(var + ε) (:func:`bn_scale`), and no backend ever updates the model's
running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def swap_bn_stats(
    bns: dict[str, _BatchNorm], stats: dict[str, tuple[Tensor, Tensor]]
) -> Iterator[None]:
    """Temporarily replace BN running mean/var buffers (restored as the same tensors)."""
    saved = {name: (bn.running_mean, bn.running_var) for name, bn in bns.items()}
    try:
        for name, (mean, var) in stats.items():
            bns[name].running_mean, bns[name].running_var = mean, var
        yield
    finally:
        for name, (mean, var) in saved.items():
            bns[name].running_mean, bns[name].running_var = mean, var


@torch.no_grad()
def batch_stats(
    model: nn.Module, bns: dict[str, _BatchNorm], x: Tensor
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-BN (mean, biased var) of its input on batch x, as train-mode BN would normalise with.

    Runs one forward with only the BN modules in train mode, on clones of their running
    buffers, so the model's running statistics are not updated.
    """
    stats: dict[str, tuple[Tensor, Tensor]] = {}
    names = {bn: name for name, bn in bns.items()}

    def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
        inp = args[0]  # [B, C, *spatial]
        dims = [d for d in range(inp.dim()) if d != 1]
        stats[names[mod]] = (inp.mean(dims), inp.var(dims, unbiased=False))

    clones = {n: (bn.running_mean.clone(), bn.running_var.clone()) for n, bn in bns.items()}
    counts = {n: bn.num_batches_tracked for n, bn in bns.items()}
    handles = [bn.register_forward_pre_hook(hook) for bn in bns.values()]
    try:
        for name, bn in bns.items():
            count = counts[name]
            bn.num_batches_tracked = None if count is None else count.clone()
            bn.train()
        with swap_bn_stats(bns, clones):
            model(x)
    finally:
        for h in handles:
            h.remove()
        for name, bn in bns.items():
            bn.eval()
            bn.num_batches_tracked = counts[name]
    return stats


def bn_scale(bn: _BatchNorm) -> Tensor:
    """a = γ/√(var + ε) per channel: with fixed statistics (the running ones, which
    ``swap_bn_stats`` replaces by batch statistics in bn_mode="train") BatchNorm's backward is a
    multiply by a."""
    a = torch.rsqrt(bn.running_var + bn.eps)
    return (a * bn.weight if bn.weight is not None else a).detach()
