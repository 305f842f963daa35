"""Per-sample squared products of weights shared over positions (conv pixels, sequence items).

The Fisher block of a weight W used at L positions is Σ_b Σ_r (g_{b,r} u_b)², with g [O, L] the
gradient at the layer's output and u [L, I] its per-sample input (im2col for a conv). Two forms:
a batched GEMM per block of samples (:func:`direct_sq_sum`), or for few positions Gram matrices
summed over samples inside one GEMM (:func:`gram_sq_sum`), chosen by a multiply-add count
(:func:`use_gram`). Blocks are sized in floats by the caller (``FisherSettings.block_floats``).
Shared by the probe and chain backends.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# From this many input channels on a conv's im2col is built as a strided NHWC view
# (unfold_nhwc); below it F.unfold is faster (benchmarks/README.md, "NHWC im2col").
NHWC_MIN_CHANNELS = 4


def use_gram(L: int, R: int) -> bool:
    """Gram form for a weight shared over L positions with R cotangents: its GEMM costs
    L(L+1)/2 per weight entry and sample, the direct one R·L plus writing R per-sample gradients
    (counted as 16 multiply-adds each, memory-bound)."""
    return L > 1 and L * (L + 1) // 2 < R * (L + 16)


def direct_sq_sum(g: Tensor, u: Tensor, block: int) -> Tensor:
    """Σ_b (g[b] @ u[b])² elementwise: g [B, O, L], u [B, L, I] -> [O, I].

    The per-sample gradients of a weight shared over L positions (conv pixels, sequence items)
    come out of one batched GEMM, in blocks of samples so a block stays under ``block`` floats.
    """
    B, O, L = g.shape
    I = u.shape[2]
    flip = I < O  # GEMM orientation: [I, L] @ [L, O] is faster on CPU when I is the small side
    out = g.new_zeros(I, O) if flip else g.new_zeros(O, I)
    step = max(1, block // max(1, O * I + L * (O + I)))
    for s in range(0, B, step):
        gb, ub = g[s : s + step], u[s : s + step]
        if flip:
            per = torch.bmm(ub.transpose(1, 2), gb.transpose(1, 2))  # [b, I, O]
        else:
            per = torch.bmm(gb, ub)  # [b, O, I] per-sample gradients
        out += per.square_().sum(0)
    return out.T if flip else out


def gram_sq_sum(g: Tensor, u: Tensor, block: int) -> Tensor:
    """Σ_b Σ_r (g[b, r] @ u[b])² elementwise, for small L: g [B, R, O, L], u [B, L, I] -> [O, I].

    (Σ_p g_rp u_p)² summed over r is Σ_{p≤q} w_pq (Σ_r g_rp g_rq)(u_p u_q) with w = 1 on the
    diagonal and 2 off it: per-sample L×L Gram matrices, then one GEMM whose inner dimension runs
    over samples and position pairs, so no per-sample gradient is ever held.
    """
    B, R, O, L = g.shape
    I = u.shape[2]
    iu = torch.triu_indices(L, L, device=g.device)  # [2, T]
    tri = iu.shape[1]
    wts = torch.where(iu[0] == iu[1], 1.0, 2.0).to(g.dtype)  # [T]
    out = g.new_zeros(O, I)
    step = max(1, block // max(1, O * L * L + tri * (O + I)))
    for s in range(0, B, step):
        gb, ub = g[s : s + step], u[s : s + step]  # [b, R, O, L], [b, L, I]
        b = gb.shape[0]
        gg = gb.permute(0, 2, 1, 3).reshape(b * O, R, L)  # [b*O, R, L]
        cov = torch.bmm(gg.transpose(1, 2), gg)  # [b*O, L, L] = Σ_r g_rp g_rq
        cov = (cov[:, iu[0], iu[1]] * wts).view(b, O, tri)  # [b, O, T]
        uu = ub[:, iu[0], :] * ub[:, iu[1], :]  # [b, T, I]
        out.addmm_(cov.permute(1, 0, 2).reshape(O, b * tri), uu.reshape(b * tri, I))
    return out


def unfold_nhwc(x: Tensor, mod: nn.Conv2d) -> Tensor:
    """im2col of x [B, C, H, W] for ``mod`` as [B, L, kh·kw·C], columns ordered (kh, kw, C).

    A strided view of the zero-padded input in NHWC order, copied once: several times faster
    than ``F.unfold`` + transpose from a few channels on, and contiguous, which the batched GEMMs
    after it also prefer. :func:`conv_columns` puts a result in these columns back into the
    weight's (C, kh, kw) order.
    """
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = (
        mod.kernel_size,
        mod.padding,
        mod.stride,
        mod.dilation,
    )
    xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous()  # [B, H+2ph, W+2pw, C]
    B, Hp, Wp, C = xp.shape
    ho, wo = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    sb, sy, sx, sc = xp.stride()
    cols = xp.as_strided((B, ho, wo, kh, kw, C), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc))
    return cols.reshape(B, ho * wo, kh * kw * C)


def conv_columns(w: Tensor, mod: nn.Conv2d) -> Tensor:
    """[O, kh·kw·C] in :func:`unfold_nhwc`'s column order -> [O, C, kh, kw], contiguous."""
    kh, kw = mod.kernel_size
    return w.view(w.shape[0], kh, kw, -1).permute(0, 3, 1, 2).contiguous()


def im2col(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A conv's per-sample inputs u [B, L, I]: :func:`unfold_nhwc` from ``NHWC_MIN_CHANNELS``
    input channels on (columns (kh, kw, C)), ``F.unfold`` below (columns (C, kh, kw))."""
    if conv.in_channels >= NHWC_MIN_CHANNELS:
        return unfold_nhwc(x, conv)
    return F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride).transpose(1, 2)


def as_weight(w: Tensor, conv: nn.Conv2d) -> Tensor:
    """[O, I] in :func:`im2col`'s column order -> the weight's shape [O, C, kh, kw], contiguous."""
    if conv.in_channels >= NHWC_MIN_CHANNELS:
        return conv_columns(w.reshape(w.shape[0], -1), conv)
    return w.reshape(conv.weight.shape).contiguous()


def argmax_conv_sq(g_t: Tensor, idx: Tensor, x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Σ_b Σ_r (per-sample conv weight gradient)² when the conv's output gradient is non-zero
    only at one position per channel and pooling window: g_t [B·C, R, Q] holds it at those
    positions, idx [B, C, Q] where they are in each output plane, x is the conv's input.
    The im2col rows of those positions are copied once (index_select of rows, faster than
    gathering columns), then one batched GEMM [R, Q] @ [Q, I] per sample and channel.
    Returns the weight's shape."""
    u = im2col(x, conv)
    B, L, I = u.shape
    C, Q = idx.shape[1], idx.shape[2]
    rows = idx + torch.arange(B, device=idx.device).view(B, 1, 1) * L  # [B, C, Q]
    u_sel = u.reshape(B * L, I).index_select(0, rows.reshape(-1)).view(B * C, Q, I)
    w = torch.bmm(g_t, u_sel).square_().view(B, C, -1, I).sum((0, 2))  # [C, I]
    return as_weight(w, conv)
