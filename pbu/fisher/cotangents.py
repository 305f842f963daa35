"""Cotangents: the R vectors c per sample with ∂ log p(·|x)/∂θ contracted as Jᵀc.

All three Fisher kinds are sums of squared vector-Jacobian products: ∂ log p_y/∂θ = Jᵀ(e_y − p)
with J = ∂z/∂θ, z the logits and p = softmax(z). For ``true``, Σ_k p_k (e_k−p)(e_k−p)ᵀ =
diag(p) − ppᵀ has rank K−1 and is factored with a Householder reflection into K−1 cotangents
(:func:`true_cotangents`): as few backward passes as possible, and no cancellation even when p
is one-hot to machine precision (nngeometry's Cholesky factor divides by 1 − cumsum(p), which
then rounds to 0 or below, and returns NaN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def centered(p: Tensor, labels: Tensor) -> Tensor:
    """e_y − p for labels y, the gradient of log p_y w.r.t. the logits.

    p [B, K], labels [B, S] -> [B, S, K]. Component y is 1 − p_y, computed as Σ_{i≠y} p_i so that
    it keeps its relative precision when p_y rounds to 1 (a confident, correct model).
    """
    onehot = F.one_hot(labels, p.shape[1]).to(p.dtype)  # [B, S, K]
    rest = p[:, None, :] * (1 - onehot)  # [B, S, K], p with component y zeroed
    return onehot * rest.sum(-1, keepdim=True) - rest


def true_cotangents(logp: Tensor) -> Tensor:
    """K−1 vectors c_j per sample with Σ_j c_j c_jᵀ = diag(p) − ppᵀ, stably.

    logp [B, K] -> [B, K−1, K]. With s = √p (a unit vector) and m = argmax p,
    diag(p) − ppᵀ = D(I − ssᵀ)D, D = diag(s); the Householder reflection H = I − vvᵀ/(1+s_m),
    v = s + e_m, maps s to −e_m, so I − ssᵀ = Σ_{j≠m} (He_j)(He_j)ᵀ and c_j = s ⊙ He_j =
    s_j e_j − s_j (p + s_m e_m)/(1 + s_m). Every term is a product of non-negative numbers except
    s_j − s_j p_j/(1+s_m) with p_j ≤ 1/2 (j ≠ argmax), so nothing cancels: exact to rounding even
    for probabilities of 1e-30.
    """
    B, K = logp.shape
    p = logp.exp()  # [B, K]
    s = (0.5 * logp).exp()  # [B, K], √p without underflowing p first
    m = logp.argmax(1, keepdim=True)  # [B, 1]
    s_m = s.gather(1, m)  # [B, 1]
    v = p + F.one_hot(m[:, 0], K).to(p.dtype) * s_m  # [B, K] = s ⊙ (s + e_m)
    c = -s[:, :, None] * (v / (1 + s_m))[:, None, :]  # [B, K(j), K]
    c = c + torch.diag_embed(s)  # + s_j e_j
    keep = torch.ones(B, K, dtype=torch.bool, device=logp.device).scatter_(1, m, False)
    return c[keep].view(B, K - 1, K)


def sample_labels(logp: Tensor, uniform: Tensor) -> Tensor:
    """Labels drawn from softmax(logp) by inverse CDF: logp [B, K], uniform [B, S] in [0, 1)
    -> [B, S]. The uniforms are drawn per loader batch, so the labels of a sample do not depend
    on how the batch is cut into chunks."""
    cdf = logp.double().exp().cumsum(1)  # [B, K]
    u = uniform.double() * cdf[:, -1:]  # [B, S], scaled in case Σp rounds below 1
    labels = torch.searchsorted(cdf, u, right=True)  # first k with cdf_k > u: P = p_k
    return labels.clamp_(max=logp.shape[1] - 1)


def cotangents(logits: Tensor, y: Tensor, kind: str, uniform: Tensor | None) -> Tensor:
    """The R cotangents per sample for ``kind``: logits [B, K], y [B] -> [B, R, K]."""
    logp = torch.log_softmax(logits.detach(), dim=1)
    if kind == "true":
        return true_cotangents(logp)  # R = K−1
    if kind == "empirical":
        return centered(logp.exp(), y.view(-1, 1))  # R = 1
    assert uniform is not None
    labels = sample_labels(logp, uniform)  # [B, S]
    return centered(logp.exp(), labels) / math.sqrt(uniform.shape[1])  # R = S, 1/S folded in
