"""The ``func`` backend: per-sample gradients of the whole model with ``torch.func``.

functional_call + vjp + vmap over any model, so it handles every model the other backends
refuse (shared parameters, modules called twice, anything without one-tensor-in, one-tensor-out
layers). Memory is ~ b × R × n_params floats (R cotangents per sample, b samples at a time,
fewer when the model is large): the slow path for big models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap


def func_chunk(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    cot_of: Callable[[Tensor], Tensor],
    vmap_floats: int,
) -> dict[str, Tensor]:
    """Σ_b Σ_r (J_bᵀ c_{b,r})² per parameter for one chunk x [B, ...]; ``cot_of`` maps the
    logits [B, K] to the cotangents [B, R, K]. At most ``vmap_floats`` per-sample gradient
    floats are held at once."""
    with torch.no_grad():
        logits = functional_call(model, params, (x,))
    cot = cot_of(logits)

    def per_sample(xb: Tensor, cb: Tensor) -> dict[str, Tensor]:  # xb [...], cb [R, K]
        def logits_of(prm: dict[str, Tensor]) -> Tensor:
            return functional_call(model, prm, (xb.unsqueeze(0),)).squeeze(0)  # [K]

        _, vjp_fn = vjp(logits_of, params)
        grads = vmap(vjp_fn)(cb)[0]  # name -> [R, *shape]
        return {n: g.square().sum(0) for n, g in grads.items()}

    n_par = sum(p.numel() for p in params.values())
    step = max(1, vmap_floats // max(1, cot.shape[1] * n_par))  # bounds [b, R, n_params]
    res: dict[str, Tensor] = {}
    for s in range(0, x.shape[0], step):
        part = vmap(per_sample)(x[s : s + step], cot[s : s + step])  # name -> [b, *shape]
        for n, g in part.items():
            res[n] = res[n] + g.sum(0) if n in res else g.sum(0)
    return res
