"""Slow, independent references for checking ``fisher_diagonal``; not for production use.

- :func:`float64_fisher`: our Fisher on a float64 copy of the model and data, the judge of
  float32 results (ours and nngeometry's) in benchmarks/bench_fisher.py and tests/unit/test_cuda.py;
- :func:`brute_force`: plain ``torch.autograd.grad`` looped over samples and classes, sharing no
  code with the backends, which tests/unit/test_fisher.py compares every backend against.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from pbu.fisher.diagonal import fisher_diagonal


def float64_fisher(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], kind: str = "true", **kwargs: Any
) -> dict[str, Tensor]:
    """``fisher_diagonal`` of a float64 copy of ``model`` on ``loader``'s images cast to float64
    (same device, same memory format); ``model`` is left untouched. Returns float64 tensors."""
    model64 = copy.deepcopy(model).double()

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in loader:
            yield x.double(), y

    return fisher_diagonal(model64, batches(), kind, **kwargs)


def brute_force(model: nn.Module, x: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """1/N Σ_x Σ_k weights[x, k] (∂ log p(k|x)/∂θ)², one autograd.grad per (sample, class) with
    a non-zero weight, for every parameter with requires_grad. x [N, ...], weights [N, K]:
    softmax(model(x)) gives the ``true`` Fisher, one-hot labels the ``empirical`` one. N·K
    backward passes: for small models and a few samples. Call it with the model in eval mode."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {n: torch.zeros_like(p) for n, p in named}
    for i in range(len(x)):
        logp = torch.log_softmax(model(x[i : i + 1]), dim=1)[0]  # [K]
        for k in range(logp.shape[0]):
            if weights[i, k] == 0:
                continue
            grads = torch.autograd.grad(logp[k], [p for _, p in named], retain_graph=True)
            for (n, _), g in zip(named, grads, strict=True):
                out[n] += weights[i, k] * g.square()
    return {n: v / len(x) for n, v in out.items()}
