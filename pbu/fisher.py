"""Diagonal Fisher information of a classifier, per parameter, exact and fast.

PBU's β-term weighs each parameter by the diagonal of the Fisher at θ* on the forget class. The
authors computed the "true" (expected) Fisher with nngeometry; this module computes the same
quantity without nngeometry, never NaN for confident models (nngeometry 0.4 returns NaN for about
60% of the entries of a trained small CNN), more accurately in float32, and faster: on one CPU
core about 2.9-3.0x nngeometry's throughput on the small CNN and 3-4x on ResNet-18; the ``mc``
kind with one sample about 9-10x on the small CNN (``benchmarks/bench_fisher.py``; numbers and
commands in benchmarks/README.md). On an H200: 6.96x on the small CNN, 2.31x on ResNet-18.

On a GPU it differs from the CPU in three places, each measured there side by side:

- blocks of per-sample products are 2^26 floats instead of a CPU cache's 2^20
  (``_block_floats``): 4.1x on ResNet-18, which was launch-bound before;
- the chain backend stacks its R cotangents into one kernel instead of looping over them
  (``_STACK_DEVICE_TYPES``): 1.16-1.19x on the small CNN;
- TF32 is off while it runs (``_full_fp32``): cuDNN's TF32 default put the result 2.5e-3 from
  float64.

Headroom, measured (one thread, the 2-core AMD EPYC VM of benchmarks/README.md, whose fp32 GEMM
peaks at ~45-47 GMAC/s): an exact ``true`` Fisher needs at least a forward, K−1 backward passes
to the layer outputs and K−1 per-sample weight products per image, i.e. 19.4 M multiply-adds
per small-CNN image (forward 1.1, backward 9.0, products 9.3) and 10.5 G per ResNet-18 32x32
image (0.56, 4.98, 4.93). ResNet-18 runs at ~36-39 GMAC/s here, 80-85 % of the GEMM peak; the
small CNN took 0.50-0.55 s CPU for 400 images (~14-15 GMAC/s), the rest being memory-bound
elementwise work on the 28x28 maps (max-pool/ReLU backward, BatchNorm sums) and small GEMMs
(profile in benchmarks/README.md); the pooled shortcut for its first conv block
(``_PooledChainAcc``: no backward or per-sample work at 28x28 any more, and the first conv's
products on a quarter of the positions) brought that to 0.42-0.45 s, 10-13 % less than the plain
layer path measured side by side (0.44 vs 0.50 s channels_last, 0.45 vs 0.51 s contiguous),
and the chain path (``_Chain``, below) to 0.35 s. Even at the GEMM peak with nothing else,
400 small-CNN images take 0.17 s, while 10x nngeometry's
throughput (1.0-1.3 s CPU for those images, by machine load) means 0.10-0.13 s; on ResNet-18
it would take ~2.5x the GEMM peak. 10x is out of reach for any exact method with this
decomposition on this CPU, on either model.

Three kinds, N samples x with logits z(x) ∈ R^K and p = softmax(z):

- ``true``:      F_j = 1/N Σ_x Σ_k p_k (∂ log p_k/∂θ_j)²           (labels unused; the authors')
- ``empirical``: F_j = 1/N Σ_x (∂ log p_y/∂θ_j)²                    (true labels y)
- ``mc``:        F_j = 1/N Σ_x 1/S Σ_s (∂ log p_{ŷ_s}/∂θ_j)²,  ŷ_s ~ p  (seeded sampling)

All three are sums of squared vector-Jacobian products: ∂ log p_y/∂θ = Jᵀ(e_y − p) with
J = ∂z/∂θ. For ``true``, Σ_k p_k (e_k−p)(e_k−p)ᵀ = diag(p) − ppᵀ has rank K−1 and we factor it
with a Householder reflection into K−1 cotangent vectors c_j (``_true_cotangents``), so
F_j = 1/N Σ_x Σ_{j<K} (Jᵀc_j)_j²: K−1 backward passes per sample, as few as possible, and with no
cancellation even when p is one-hot to machine precision (nngeometry's Cholesky factor divides by
1 − cumsum(p), which then rounds to 0 or below, and returns NaN).

Two backends give the same numbers (tests check them against each other and a brute force),
and the layer one has a faster path for chains:

- ``generic``: per-sample gradients with ``torch.func`` (functional_call + vjp + vmap) over any
  model; memory ~ b × R × n_params floats (R cotangents per sample, b ≤ chunk_size samples at a
  time, fewer when the model is large), so it is the slow path for big models.
- ``layers``: one forward per chunk with a zero "probe" added to the output of every module that
  owns parameters, R backward passes (to the probes only, never to the parameters), then the
  per-sample squared gradients layer by layer without materialising them where the structure
  allows: Linear is (g²)ᵀ(x²), Conv2d goes through im2col (``_unfold_nhwc``, a strided NHWC
  view, from ``_NHWC_MIN_CHANNELS`` input channels on: ~5 % less time for the whole small-CNN
  Fisher, interleaved A/B in one process) and either a batched GEMM or, for small
  feature maps, Gram matrices that sum over samples inside one GEMM; BatchNorm is elementwise
  (and its backward is replaced by the equivalent per-channel multiply, same values, or skipped
  altogether after a first layer whose input needs no gradient, see ``_LayerPlan._hook``).
  A first Conv2d→BatchNorm2d→ReLU→MaxPool2d in an ``nn.Sequential`` (the small CNN's first block)
  is cut at the pool's output: its conv and BN blocks come from the pooled gradient at each
  window's argmax, gathered once per chunk (``_PooledChainAcc``), when there are at least
  ``_POOL_MIN_RANK`` cotangents per sample (below that its gathers cost more than it saves).
  Measured and dropped: taking the BN sums of a later such block (whose input needs a gradient)
  at the pooled resolution too (no gain with ``true``, 13-21 % slower with ``mc``). Not built:
  gathering a later block's conv inputs per argmax (4x fewer multiply-adds, but micro-benchmarks
  put the gather of its [B, C, I, Q] columns at about the cost of the dense GEMM it replaces).
  Measured and rejected (no gain on CPU): one backward for all K−1 cotangents
  (``is_grads_batched``, i.e. vmap over the vjp: 2x slower), stacking the K−1 gradients into one
  GEMM per sample, a grouped convolution (groups = batch) instead of unfold + GEMM, and other
  chunk sizes (16-64 within noise; smaller ones pay per-op overhead).
  Any other parameter-owning module gets per-sample ``torch.func`` gradients of that module alone.
  It needs every parameter-owning module to be called once per forward with one tensor input;
  otherwise ``auto`` falls back to ``generic``.
- the chain path of ``layers`` (``_Chain``): when the forward is one chain of standard layers
  (Conv2d, BatchNorm, ReLU, non-overlapping MaxPool2d, Flatten, Linear, Dropout, Identity; the
  small CNN), the backward is written out by hand for all R cotangents at once, with no autograd
  graph, probes or layout conversions, and each Conv2d→BatchNorm2d→ReLU→MaxPool2d block's BN
  sums run at the pooled resolution. 1.26-1.29x the probe path on the small CNN (interleaved in
  one process, ``bench_fisher.py --layers``); any other model takes the probe path. Measured and
  not taken: All-CNN through the chain (with its global average pooling added): 0.92-0.96x the
  probe path (16 CIFAR-sized images, 2 s each), its wide convs' backward is faster in autograd's
  channels_last layout than in the chain's contiguous one, and converting cost more.

BatchNorm (``bn_mode``): "eval" (default, the authors' choice) normalises with the running
statistics, so each sample's gradient is well defined. "train" normalises each loader batch with
its own batch statistics (mean and biased variance, as ``BatchNorm`` does in train mode), and takes
every per-sample gradient with those statistics held constant: the path through the batch mean and
variance, which couples the samples of a batch, is dropped. Results then depend on the loader's
batch composition, not on ``chunk_size``. In both modes the running statistics are left untouched
and every module's train/eval flag is restored; dropout is always off.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)

KINDS = ("true", "empirical", "mc")
BN_MODES = ("eval", "train")
BACKENDS = ("auto", "layers", "generic")

# Engineering knobs (they bound memory and set block sizes, never change results), in floats:
# - a block of per-sample gradients or Gram products: small enough to stay in cache while it is
#   squared and summed (measured ~2x faster than one big block on a CPU for ResNet-18 layers);
# - the im2col copies of conv inputs kept across the R backward passes of a chunk;
# - a torch.func per-sample gradient batch [b, R, n_params].
_BLOCK_FLOATS = 1 << 20
_CACHE_FLOATS = 1 << 27
_VMAP_FLOATS = 1 << 25
# On a GPU the cache argument does not hold and each block is a few kernel launches: with the
# CPU block a ResNet-18 layer1 conv took one batched GEMM per sample and cotangent, and the whole
# Fisher was launch-bound (0.39x nngeometry on an H100, benchmarks/README.md). 256 MiB of float32.
_BLOCK_FLOATS_GPU = 1 << 26


# Device types on which the chain backend stacks its R cotangents into one kernel where the CPU
# runs one per cotangent: the conv's per-sample products as one GEMM with R·O output rows, and
# the conv input gradient as one convolution backward over R·B images. On the CPU both were
# slower or no faster (1.5x slower for the convolution backward, module docstring); on a GPU the
# per-cotangent loop is a string of small launches. bench_fisher.py --unstacked measures it.
_STACK_DEVICE_TYPES = frozenset({"cuda"})


def _stacked(t: Tensor) -> bool:
    return t.device.type in _STACK_DEVICE_TYPES


def _block_floats(t: Tensor) -> int:
    """Floats per block of per-sample products on ``t``'s device."""
    return _BLOCK_FLOATS if t.device.type == "cpu" else _BLOCK_FLOATS_GPU


@contextlib.contextmanager
def _full_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off for CUDA convolutions and matmuls while the Fisher runs, restored after.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for float32 convolutions by default; the
    Fisher squares and sums gradients whose entries span many orders of magnitude, and with TF32
    on an H100 ours came out 2.5e-3 (per tensor) from the float64 result instead of ~1e-6.
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

# Private switch for the pooled shortcut of a first Conv2d→BatchNorm2d→ReLU→MaxPool2d chain
# (``_PooledChainAcc``); tests and benchmarks/bench_fisher.py turn it off to compare with the
# plain layer path. Read when a plan is built. Its gathers cost a fixed amount per chunk and it
# saves a fixed amount per cotangent: measured break-even at ~3 cotangents per sample on the
# small CNN (mc with 1 sample: 16-18 % slower; mc with 5: 5-6 % faster; true, 9: 10-15 %
# faster), so it is used from _POOL_MIN_RANK cotangents on.
_POOL_SHORTCUT = True
_POOL_MIN_RANK = 3


class _Unsupported(Exception):
    """The layer-structured backend cannot handle this model exactly (fall back to generic)."""


# --------------------------------------------------------------------------------------------
# Cotangents: the vectors c with ∂ log p(·|x)/∂θ contracted as Jᵀc.
# --------------------------------------------------------------------------------------------

def _centered(p: Tensor, labels: Tensor) -> Tensor:
    """e_y − p for labels y, the gradient of log p_y w.r.t. the logits.

    p [B, K], labels [B, S] -> [B, S, K]. Component y is 1 − p_y, computed as Σ_{i≠y} p_i so that
    it keeps its relative precision when p_y rounds to 1 (a confident, correct model).
    """
    onehot = F.one_hot(labels, p.shape[1]).to(p.dtype)  # [B, S, K]
    rest = p[:, None, :] * (1 - onehot)  # [B, S, K], p with component y zeroed
    return onehot * rest.sum(-1, keepdim=True) - rest


def _true_cotangents(logp: Tensor) -> Tensor:
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


def _sample_labels(logp: Tensor, uniform: Tensor) -> Tensor:
    """Labels drawn from softmax(logp) by inverse CDF: logp [B, K], uniform [B, S] in [0, 1)
    -> [B, S]. The uniforms are drawn per loader batch, so the labels of a sample do not depend
    on how the batch is cut into chunks."""
    cdf = logp.double().exp().cumsum(1)  # [B, K]
    u = uniform.double() * cdf[:, -1:]  # [B, S], scaled in case Σp rounds below 1
    labels = torch.searchsorted(cdf, u, right=True)  # first k with cdf_k > u: P = p_k
    return labels.clamp_(max=logp.shape[1] - 1)


def _cotangents(logits: Tensor, y: Tensor, kind: str, uniform: Tensor | None) -> Tensor:
    """The R cotangents per sample for ``kind``: logits [B, K], y [B] -> [B, R, K]."""
    logp = torch.log_softmax(logits.detach(), dim=1)
    if kind == "true":
        return _true_cotangents(logp)  # R = K−1
    if kind == "empirical":
        return _centered(logp.exp(), y.view(-1, 1))  # R = 1
    assert uniform is not None
    labels = _sample_labels(logp, uniform)  # [B, S]
    return _centered(logp.exp(), labels) / math.sqrt(uniform.shape[1])  # R = S, 1/S folded in


# --------------------------------------------------------------------------------------------
# BatchNorm handling: batch statistics for bn_mode="train", and never touching running stats.
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _swap_bn_stats(bns: dict[str, _BatchNorm],
                   stats: dict[str, tuple[Tensor, Tensor]]) -> Iterator[None]:
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
def _batch_stats(model: nn.Module, bns: dict[str, _BatchNorm],
                 x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
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
        with _swap_bn_stats(bns, clones):
            model(x)
    finally:
        for h in handles:
            h.remove()
        for name, bn in bns.items():
            bn.eval()
            bn.num_batches_tracked = counts[name]
    return stats


# --------------------------------------------------------------------------------------------
# Generic backend: per-sample gradients of the whole model with torch.func.
# --------------------------------------------------------------------------------------------

def _generic_chunk(model: nn.Module, params: dict[str, Tensor], x: Tensor,
                   cot: Tensor) -> dict[str, Tensor]:
    """Σ_b Σ_r (J_bᵀ c_{b,r})² per parameter for one chunk: x [B, ...], cot [B, R, K]."""

    def per_sample(xb: Tensor, cb: Tensor) -> dict[str, Tensor]:  # xb [...], cb [R, K]
        def logits_of(prm: dict[str, Tensor]) -> Tensor:
            return functional_call(model, prm, (xb.unsqueeze(0),)).squeeze(0)  # [K]

        _, vjp_fn = vjp(logits_of, params)
        grads = vmap(vjp_fn)(cb)[0]  # name -> [R, *shape]
        return {n: g.square().sum(0) for n, g in grads.items()}

    n_par = sum(p.numel() for p in params.values())
    step = max(1, _VMAP_FLOATS // max(1, cot.shape[1] * n_par))  # bounds [b, R, n_params]
    res: dict[str, Tensor] = {}
    for s in range(0, x.shape[0], step):
        part = vmap(per_sample)(x[s:s + step], cot[s:s + step])  # name -> [b, *shape]
        for n, g in part.items():
            res[n] = res[n] + g.sum(0) if n in res else g.sum(0)
    return res


# --------------------------------------------------------------------------------------------
# Layer-structured backend.
# --------------------------------------------------------------------------------------------

def _use_gram(L: int, R: int) -> bool:
    """Gram form for a weight shared over L positions with R cotangents: its GEMM costs
    L(L+1)/2 per weight entry and sample, the direct one R·L plus writing R per-sample gradients
    (counted as 16 multiply-adds each, memory-bound)."""
    return L > 1 and L * (L + 1) // 2 < R * (L + 16)


def _direct_sq_sum(g: Tensor, u: Tensor) -> Tensor:
    """Σ_b (g[b] @ u[b])² elementwise: g [B, O, L], u [B, L, I] -> [O, I].

    The per-sample gradients of a weight shared over L positions (conv pixels, sequence items)
    come out of one batched GEMM, in blocks of samples so a block stays under _BLOCK_FLOATS.
    """
    B, O, L = g.shape
    I = u.shape[2]
    flip = I < O  # GEMM orientation: [I, L] @ [L, O] is faster on CPU when I is the small side
    out = g.new_zeros(I, O) if flip else g.new_zeros(O, I)
    step = max(1, _block_floats(g) // max(1, O * I + L * (O + I)))
    for s in range(0, B, step):
        gb, ub = g[s:s + step], u[s:s + step]
        if flip:
            per = torch.bmm(ub.transpose(1, 2), gb.transpose(1, 2))  # [b, I, O]
        else:
            per = torch.bmm(gb, ub)  # [b, O, I] per-sample gradients
        out += per.square_().sum(0)
    return out.T if flip else out


def _gram_sq_sum(g: Tensor, u: Tensor) -> Tensor:
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
    step = max(1, _block_floats(g) // max(1, O * L * L + tri * (O + I)))
    for s in range(0, B, step):
        gb, ub = g[s:s + step], u[s:s + step]  # [b, R, O, L], [b, L, I]
        b = gb.shape[0]
        gg = gb.permute(0, 2, 1, 3).reshape(b * O, R, L)  # [b*O, R, L]
        cov = torch.bmm(gg.transpose(1, 2), gg)  # [b*O, L, L] = Σ_r g_rp g_rq
        cov = (cov[:, iu[0], iu[1]] * wts).view(b, O, tri)  # [b, O, T]
        uu = ub[:, iu[0], :] * ub[:, iu[1], :]  # [b, T, I]
        out.addmm_(cov.permute(1, 0, 2).reshape(O, b * tri), uu.reshape(b * tri, I))
    return out


def _unfold_nhwc(x: Tensor, mod: nn.Conv2d) -> Tensor:
    """im2col of x [B, C, H, W] for ``mod`` as [B, L, kh·kw·C], columns ordered (kh, kw, C).

    A strided view of the zero-padded input in NHWC order, copied once: for 16 input channels
    it took 0.8 ms where ``F.unfold`` (+ transpose) took 4.2-5.6 ms (B=64, 14x14, one thread), and
    the result is contiguous, which the batched GEMMs after it also prefer (~25 % faster).
    ``_conv_columns`` puts a result in these columns back into the weight's (C, kh, kw) order.
    """
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = (mod.kernel_size, mod.padding, mod.stride,
                                              mod.dilation)
    xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous()  # [B, H+2ph, W+2pw, C]
    B, Hp, Wp, C = xp.shape
    ho, wo = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    sb, sy, sx, sc = xp.stride()
    cols = xp.as_strided((B, ho, wo, kh, kw, C), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc))
    return cols.reshape(B, ho * wo, kh * kw * C)


def _conv_columns(w: Tensor, mod: nn.Conv2d) -> Tensor:
    """[O, kh·kw·C] in ``_unfold_nhwc``'s column order -> [O, C, kh, kw], contiguous."""
    kh, kw = mod.kernel_size
    return w.view(w.shape[0], kh, kw, -1).permute(0, 3, 1, 2).contiguous()


# Below this many input channels F.unfold's (C, kh, kw) columns are built faster (Cin = 1: 0.97
# vs 1.29 ms for MNIST's first conv); from it on the NHWC view is (Cin = 16: 0.8 vs 4.2 ms).
_NHWC_MIN_CHANNELS = 4


def _im2col(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A conv's per-sample inputs u [B, L, I]: ``_unfold_nhwc`` from ``_NHWC_MIN_CHANNELS``
    input channels on (columns (kh, kw, C)), ``F.unfold`` below (columns (C, kh, kw))."""
    if conv.in_channels >= _NHWC_MIN_CHANNELS:
        return _unfold_nhwc(x, conv)
    return F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride).transpose(1, 2)


def _as_weight(w: Tensor, conv: nn.Conv2d) -> Tensor:
    """[O, I] in ``_im2col``'s column order -> the weight's shape [O, C, kh, kw], contiguous."""
    if conv.in_channels >= _NHWC_MIN_CHANNELS:
        return _conv_columns(w.reshape(w.shape[0], -1), conv)
    return w.reshape(conv.weight.shape).contiguous()


def _argmax_conv_sq(g_t: Tensor, idx: Tensor, x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Σ_b Σ_r (per-sample conv weight gradient)² when the conv's output gradient is non-zero
    only at one position per channel and pooling window: g_t [B·C, R, Q] holds it at those
    positions, idx [B, C, Q] where they are in each output plane, x is the conv's input.
    The im2col rows of those positions are copied once (index_select of rows: ~2.5x faster
    than gathering columns), then one batched GEMM [R, Q] @ [Q, I] per sample and channel.
    Returns the weight's shape."""
    u = _im2col(x, conv)
    B, L, I = u.shape
    C, Q = idx.shape[1], idx.shape[2]
    rows = idx + torch.arange(B, device=idx.device).view(B, 1, 1) * L  # [B, C, Q]
    u_sel = u.reshape(B * L, I).index_select(0, rows.reshape(-1)).view(B * C, Q, I)
    w = torch.bmm(g_t, u_sel).square_().view(B, C, -1, I).sum((0, 2))  # [C, I]
    return _as_weight(w, conv)


@dataclass
class _Owner:
    """A module that directly owns trainable parameters, and how its Fisher block is computed."""

    name: str
    module: nn.Module
    kind: str  # "linear" | "conv2d" | "bn" | "module"
    params: dict[str, str]  # attribute ("weight") -> full parameter name ("fc.weight")


@dataclass
class _Record:
    """What the forward hook saw for one owner: its input, a probe on its output, BN stats.

    ``out`` is the tensor the hook returned (the owner's output plus its probe) and ``x_grad``
    whether the owner's input needed a gradient. ``fold`` = (BN name, a [C]) when the owner's
    output goes straight into a BatchNorm whose backward we skip (see ``_LayerPlan._hook``): the
    gradient at this owner's output is then a ⊙ (gradient at the BN's output), plus whatever
    autograd brings from any other consumer.
    """

    x: Tensor
    version: int
    probe: Tensor
    extra: tuple[Any, ...] = ()
    out: Tensor | None = None
    x_grad: bool = True
    fold: tuple[str, Tensor] | None = None


class _Acc:
    """One owner's Fisher block, accumulated over the R cotangents of a chunk.

    ``add(g)`` takes g [B, *out_shape], the gradient of Σ_b <logits_b, c_{b,r}> at the owner's
    output (so g[b] belongs to sample b alone), one r at a time; ``result()`` returns
    {attr: Σ_b Σ_r (per-sample gradient)²}.
    """

    def __init__(self, owner: _Owner, rec: _Record, R: int, cache: list[int]) -> None:
        self.owner, self.rec, self.R = owner, rec, R
        self.res: dict[str, Tensor] = {}
        self.stash: list[Tensor] = []

    def _put(self, attr: str, val: Tensor) -> None:
        self.res[attr] = self.res[attr] + val if attr in self.res else val

    def add(self, g: Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Tensor]:
        return self.res


class _SharedWeightAcc(_Acc):
    """Linear and Conv2d: per-sample weight gradient g u with u [B, L, I] (L positions)."""

    def __init__(self, owner: _Owner, rec: _Record, R: int, cache: list[int]) -> None:
        super().__init__(owner, rec, R, cache)
        self.B = rec.x.shape[0]
        self.L, self.I = self._dims()
        self.gram = _use_gram(self.L, R)
        self.gsq: Tensor | None = None  # L == 1: Σ_r g² [B, O]
        self._u: Tensor | None = None
        need = self.B * self.L * self.I
        self.keep_u = "weight" in owner.params and need <= cache[0]
        if self.keep_u:
            cache[0] -= need

    def _dims(self) -> tuple[int, int]:
        raise NotImplementedError

    def _unfold(self) -> Tensor:
        raise NotImplementedError

    def _gl(self, g: Tensor) -> Tensor:
        raise NotImplementedError

    def u(self) -> Tensor:
        """The weight's per-sample input u [B, L, I] (im2col for conv), cached if it fits."""
        if self._u is not None:
            return self._u
        u = self._unfold()
        if self.keep_u:
            self._u = u
        return u

    def add(self, g: Tensor, scale: Tensor | None = None) -> None:
        """g [B, *out]; ``scale`` [O]: the gradient at the output is scale ⊙ g (a folded
        BatchNorm), applied to the small squared sums rather than to g where that is exact."""
        gl = self._gl(g)  # [B, O, L]
        if scale is not None and (self.L == 1 or self.gram):  # kept per sample: scale g itself
            gl, scale = gl * scale.view(1, -1, 1), None
        sq = None if scale is None else scale.square()  # (a·G)² = a²·G², per output row
        if "bias" in self.owner.params:
            bias = gl.sum(2).square().sum(0)
            self._put("bias", bias if sq is None else bias * sq)
        if "weight" not in self.owner.params:
            return
        if self.L == 1:
            gsq = gl[:, :, 0].square()  # [B, O]
            self.gsq = gsq if self.gsq is None else self.gsq.add_(gsq)
        elif self.gram:
            self.stash.append(gl)
        else:
            w = _direct_sq_sum(gl, self.u())
            self._put("weight", w if sq is None else w * sq[:, None])

    def result(self) -> dict[str, Tensor]:
        w = self.owner.module.weight
        if self.gsq is not None:  # Σ_b Σ_r g² ⊗ u²: one GEMM, no per-sample gradient
            self._put("weight", self.gsq.T @ self.u()[:, 0, :].square())
        elif self.stash:
            self._put("weight", _gram_sq_sum(torch.stack(self.stash, 1), self.u()))
            self.stash = []
        if "weight" in self.res:
            self.res["weight"] = self.res["weight"].view_as(w)
        return self.res


class _LinearAcc(_SharedWeightAcc):
    """nn.Linear on x [B, *, in]: L = the product of the middle dims (1 for [B, in])."""

    def _dims(self) -> tuple[int, int]:
        x = self.rec.x
        return x[0].numel() // x.shape[-1], x.shape[-1]

    def _unfold(self) -> Tensor:
        return self.rec.x.reshape(self.B, self.L, self.I)

    def _gl(self, g: Tensor) -> Tensor:
        return g.reshape(self.B, self.L, -1).transpose(1, 2)  # [B, out, L]


class _Conv2dAcc(_SharedWeightAcc):
    """nn.Conv2d (groups 1, zero padding): u = unfold(x)ᵀ, I = in·kh·kw, L = output pixels."""

    def _dims(self) -> tuple[int, int]:
        mod, x = self.owner.module, self.rec.x
        I = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
        hw = [(x.shape[2 + d] + 2 * mod.padding[d] - mod.dilation[d] * (mod.kernel_size[d] - 1)
               - 1) // mod.stride[d] + 1 for d in range(2)]
        return hw[0] * hw[1], I

    def _unfold(self) -> Tensor:
        return _im2col(self.rec.x, self.owner.module)  # [B, L, I]

    def result(self) -> dict[str, Tensor]:
        res = super().result()
        if "weight" in res:
            res["weight"] = _as_weight(res["weight"], self.owner.module)
        return res

    def _gl(self, g: Tensor) -> Tensor:
        if self.I < g.shape[1] and not self.gram and not g.is_contiguous() \
                and g.is_contiguous(memory_format=torch.channels_last):
            # channels_last, and _direct_sq_sum will want [B, L, out]: that is this view, with
            # no copy (measured: ~25 % faster for the small CNN's first conv; for I > out the
            # copy to [B, out, L] is as fast or faster, so it stays).
            return g.permute(0, 2, 3, 1).reshape(self.B, -1, g.shape[1]).transpose(1, 2)
        return g.reshape(self.B, g.shape[1], -1)  # [B, out, L]


class _BatchNormAcc(_Acc):
    """BatchNorm with fixed statistics: per-sample γ gradient Σ_pos g·x̂, β gradient Σ_pos g."""

    def __init__(self, owner: _Owner, rec: _Record, R: int, cache: list[int]) -> None:
        super().__init__(owner, rec, R, cache)
        x = rec.x  # [B, C, *spatial], in the model's memory format (channels_last or not)
        self.dims = tuple(range(2, x.dim()))  # summed over per sample; () for [B, C]
        self.xhat: Tensor | None = None
        if "weight" in owner.params:
            mean, var, eps = rec.extra
            shape = [1, -1] + [1] * (x.dim() - 2)
            # Elementwise from x, so x̂ has x's strides, which are also the gradient's: the
            # product below then streams both in memory order (a reshape to [B, C, L] would copy
            # a channels_last gradient every time, and the mixed-layout product is ~3x slower).
            self.xhat = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)

    def _per_sample(self, t: Tensor) -> Tensor:
        return t.sum(self.dims) if self.dims else t  # [B, C]

    def add(self, g: Tensor) -> None:
        if self.xhat is not None:
            self._put("weight", self._per_sample(g * self.xhat).square().sum(0))
        if "bias" in self.owner.params:
            self._put("bias", self._per_sample(g).square().sum(0))


class _ModuleAcc(_Acc):
    """Any other module: per-sample gradients of its own parameters with torch.func, from its
    recorded input and the output cotangents of all R vectors at once."""

    def __init__(self, owner: _Owner, rec: _Record, R: int, cache: list[int],
                 plan: _LayerPlan) -> None:
        super().__init__(owner, rec, R, cache)
        self.plan = plan

    def add(self, g: Tensor) -> None:
        self.stash.append(g)

    def result(self) -> dict[str, Tensor]:
        if not self.stash:
            return self.res
        mod, x = self.owner.module, self.rec.x
        g = torch.stack(self.stash, 1)  # [B, R, *out]
        self.stash = []
        direct = {a: mod._parameters[a].detach() for a in self.owner.params}
        n_par = sum(p.numel() for p in direct.values())

        def per_sample(xb: Tensor, gb: Tensor) -> dict[str, Tensor]:  # xb [...], gb [R, *out]
            def out_of(prm: dict[str, Tensor]) -> Tensor:
                return functional_call(mod, prm, (xb.unsqueeze(0),)).squeeze(0)

            _, vjp_fn = vjp(out_of, direct)
            grads = vmap(vjp_fn)(gb)[0]  # attr -> [R, *shape]
            return {a: t.square().sum(0) for a, t in grads.items()}

        step = max(1, _VMAP_FLOATS // max(1, self.R * n_par))
        with self.plan.paused():  # the recomputed forward must not record probes
            for s in range(0, x.shape[0], step):
                part = vmap(per_sample)(x[s:s + step], g[s:s + step])  # attr -> [b, *shape]
                for a, t in part.items():
                    self._put(a, t.sum(0))
        return self.res


@dataclass
class _Pooled:
    """A first Conv2d→BatchNorm2d→ReLU→MaxPool2d chain cut at the pool's output (see
    ``_PooledChainAcc``): the owners' names, the probe on the pooled output, the pool's argmax
    indices into each conv output plane and the pooled values, both [B, C, h, w]."""

    conv: str
    bn: str
    probe: Tensor
    idx: Tensor
    vals: Tensor


class _PooledChainAcc:
    """Fisher blocks of a first conv and its BatchNorm (fixed statistics: running ones, or the
    batch ones of bn_mode="train") from the gradient at the output of the ReLU→MaxPool2d that
    follows them, never at the conv's resolution.

    With y = a·conv(x) + b (the BN with fixed statistics), r = relu(y) and max pooling, the
    gradient at the conv output is a·(pooled gradient G) at each window's argmax (the index
    max_pool2d returns, the one autograd scatters to), times the ReLU mask there, which is
    (pooled value > 0) exactly as autograd's ReLU backward (zero where its output is <= 0), and
    zero elsewhere. So per sample, for channel c and pooled position q, with p = idx[c, q]:
    conv weight  a_c Σ_q G[c,q] m[c,q] unfold(x)[:, p],   conv bias / BN β  (a_c) Σ_q G m,
    BN γ  Σ_q G[c,q] m[c,q] x̂[c,p].
    The conv weight's is one batched GEMM per chunk for all R cotangents, [I, Q] @ [Q, R] per
    sample and channel, on im2col columns gathered once per chunk (Q = pooled positions, a
    quarter of the conv's for 2x2 pooling); the backward passes stop at the pooled tensor: no
    max-pool, ReLU or BN backward at full resolution.
    """

    def __init__(self, conv: _Owner, conv_rec: _Record, bn: _Owner, bn_rec: _Record,
                 pooled: _Pooled, R: int) -> None:
        self.conv, self.conv_rec, self.bn, self.bn_rec = conv, conv_rec, bn, bn_rec
        self.pooled = pooled
        B, C, h, w = pooled.idx.shape
        self.B, self.C, self.Q = B, C, h * w
        self.R = R
        self.buf: Tensor | None = None  # [R, B, C, h, w], each r in the gradient's own layout
        self.r = 0

    def add(self, g: Tensor) -> None:
        """g [B, C, h, w]: gradient at the pooled output for one cotangent, copied as it is laid
        out (a plain memcpy; reordering it r by r was ~3x slower)."""
        if self.buf is None:
            B, C, h, w = g.shape
            if g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous():
                self.buf = g.new_empty(self.R, B, h, w, C).permute(0, 1, 4, 2, 3)
            else:
                self.buf = g.new_empty(self.R, B, C, h, w)
        self.buf[self.r].copy_(g)
        self.r += 1

    def result(self) -> dict[str, Tensor]:
        """{full parameter name: Σ_b Σ_r (per-sample gradient)²} for the conv and the BN.

        Everything is laid out [.., Q, C] (pooled position, then channel), which is how a
        channels_last gradient arrives, so the masking and the BN sums stream through memory;
        one transposition feeds the conv weight's batched GEMM. (An earlier [B, C, R, Q] layout
        did the masking as a strided copy; the whole small-CNN Fisher is within 3 % either way,
        interleaved A/B in one process. Tried too: the ReLU mask, β and γ as extra GEMM
        columns, ~10 % slower for this block, since elementwise work on a last dimension of 9-11
        runs far below memory speed.)
        """
        if self.r == 0:
            return {}
        conv, bn, rec = self.conv, self.bn, self.bn_rec
        B, C, Q, R = self.B, self.C, self.Q, self.r
        assert self.buf is not None

        def qc(t: Tensor) -> Tensor:  # [..., C, h, w] -> [..., Q, C] (a view when channels_last)
            return t.flatten(-2).transpose(-1, -2)

        # ReLU at the argmax: 1 where the pooled value is > 0, as autograd's ReLU backward
        mask = qc(self.pooled.vals > 0)  # [B, Q, C]
        gm = qc(self.buf[:R]) * mask  # [R, B, Q, C]: gradient at each argmax of the conv output
        self.buf = None
        idx = qc(self.pooled.idx)  # [B, Q, C], positions in each conv output plane
        out: dict[str, Tensor] = {}
        if "bias" in bn.params or "bias" in conv.params:
            beta = gm.sum(2).square_().sum((0, 1))  # [C]
            if "bias" in bn.params:
                out[bn.params["bias"]] = beta
            if "bias" in conv.params:
                out[conv.params["bias"]] = beta * self.conv_rec.fold[1].square()
        if "weight" in bn.params:
            mean, var, eps = rec.extra
            c_sel = qc(rec.x).gather(1, idx)  # [B, Q, C] conv outputs at the argmaxes
            xhat = (c_sel - mean) * torch.rsqrt(var + eps)
            out[bn.params["weight"]] = (gm * xhat).sum(2).square_().sum((0, 1))
        if "weight" in conv.params:
            g_t = gm.permute(1, 3, 0, 2).reshape(B * C, R, Q)  # one transposition
            a2 = self.conv_rec.fold[1].square()  # [C]: conv output gradient = a ⊙ BN's
            w = _argmax_conv_sq(g_t, idx.transpose(1, 2), self.conv_rec.x, conv.module)
            out[conv.params["weight"]] = w * a2.view(-1, 1, 1, 1)
        return out


class _LayerPlan:
    """Hooks that add probes to parameter-owning modules, and their Fisher accumulators."""

    def __init__(self, model: nn.Module, trainable: dict[str, Tensor]) -> None:
        modules = dict(model.named_modules())
        seen: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.requires_grad and id(p) in seen:
                raise _Unsupported(f"parameter shared by {seen[id(p)]} and {name}")
            seen[id(p)] = name
        owners: dict[str, _Owner] = {}
        for full in trainable:
            prefix, _, attr = full.rpartition(".")
            mod = modules[prefix]
            if prefix not in owners:
                owners[prefix] = _Owner(prefix, mod, self._kind(mod), {})
            owners[prefix].params[attr] = full
        self.owners = owners
        self.by_module = {o.module: o for o in owners.values()}
        self.records: dict[str, _Record] = {}
        self.by_out: dict[int, str] = {}  # id of a hooked output -> its owner, during forward
        self.recording = False
        self.handles = [o.module.register_forward_hook(self._hook, with_kwargs=True)
                        for o in owners.values()]
        # Conv2d→BatchNorm2d→ReLU→MaxPool2d as consecutive children of a plain nn.Sequential,
        # each module used once in the model: the intermediate tensors are then seen by the next
        # module only, so the chain can be cut at the pool's output (``_pool_hook`` checks at
        # run time that the tensors really flow that way, and the conv's input needs no grad).
        self.chains: dict[nn.Module, tuple[str, str, nn.Module]] = {}  # pool -> conv, bn, relu
        self.links: dict[nn.Module, tuple[Tensor, Tensor]] = {}  # relu -> (input, output)
        self.pooled: dict[nn.Module, _Pooled] = {}
        self.rank: int | None = None  # cotangents per sample, when known (None: assume many)
        if _POOL_SHORTCUT:
            uses: dict[int, int] = {}
            for _, m in model.named_modules(remove_duplicate=False):
                uses[id(m)] = uses.get(id(m), 0) + 1
            for seq in model.modules():
                if not isinstance(seq, nn.Sequential) or type(seq).forward is not \
                        nn.Sequential.forward:
                    continue
                kids = list(seq.children())
                for conv, bn, relu, pool in zip(kids, kids[1:], kids[2:], kids[3:]):
                    oc, ob = self.by_module.get(conv), self.by_module.get(bn)
                    if (oc is not None and oc.kind == "conv2d" and ob is not None
                            and ob.kind == "bn" and isinstance(bn, nn.BatchNorm2d)
                            and type(relu) is nn.ReLU and type(pool) is nn.MaxPool2d
                            and not pool.return_indices
                            and all(uses[id(m)] == 1 for m in (conv, bn, relu, pool))):
                        self.chains[pool] = (oc.name, ob.name, relu)
                        self.handles.append(relu.register_forward_hook(self._relu_hook))
                        self.handles.append(pool.register_forward_hook(self._pool_hook))

    @staticmethod
    def _kind(mod: nn.Module) -> str:
        if isinstance(mod, nn.Linear) and type(mod).forward is nn.Linear.forward:
            return "linear"
        if (isinstance(mod, nn.Conv2d) and type(mod).forward is nn.Conv2d.forward
                and mod.groups == 1 and mod.padding_mode == "zeros"
                and not isinstance(mod.padding, str)):
            return "conv2d"
        if (isinstance(mod, _BatchNorm) and type(mod).forward is _BatchNorm.forward
                and mod.running_mean is not None):
            return "bn"
        return "module"

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        was, self.recording = self.recording, False
        try:
            yield
        finally:
            self.recording = was

    def _hook(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
              out: Any) -> Tensor | None:
        if not self.recording:
            return None
        owner = self.by_module[mod]
        if owner.name in self.records:
            raise _Unsupported(f"module {owner.name!r} is called more than once per forward")
        if len(args) != 1 or kwargs or not isinstance(args[0], Tensor) \
                or not isinstance(out, Tensor):
            raise _Unsupported(f"module {owner.name!r} does not map one tensor to one tensor")
        x = args[0].detach()
        extra: tuple[Any, ...] = ()
        if owner.kind == "bn":  # the statistics it normalised with (swapped ones in train mode)
            extra = (mod.running_mean, mod.running_var, mod.eps)
            src = self.by_out.get(id(args[0]))
            prev = None if src is None else self.records[src]
            if prev is not None and prev.out is args[0] and not prev.x_grad \
                    and (self.owners[src].kind == "conv2d"
                         or (self.owners[src].kind == "linear" and args[0].dim() == 2)):
                # The BN's input is the output of a Linear/Conv2d whose own input needs no
                # gradient (the first layer): nothing upstream needs the backward through this
                # BN, so it is cut, and that layer's output gradient is a ⊙ (this BN's output
                # gradient), a = γ/√(var+ε), folded in as a² after squaring. That saves a
                # full-size multiply per cotangent on the largest feature map.
                a = torch.rsqrt(mod.running_var + mod.eps)
                if mod.weight is not None:
                    a = a * mod.weight
                prev.fold = (owner.name, a.detach())
                out = out.detach()
            elif mod.weight is not None and args[0].requires_grad:
                # With fixed statistics BN is x ↦ a·x + b per channel. Same value (x − x is
                # exactly 0), but the backward is one multiply by a instead of the BN backward
                # kernel, which took ~5x longer on CPU and runs R times per chunk.
                a = (mod.weight * torch.rsqrt(mod.running_var + mod.eps)).detach()  # [C]
                shape = [1, -1] + [1] * (x.dim() - 2)
                out = out.detach() + (args[0] - x) * a.view(shape)
        # A zero scalar broadcast to the output: the gradient w.r.t. this view is the
        # gradient at the owner's output, full-shaped, and nothing is allocated for it.
        probe = torch.zeros((), dtype=out.dtype, device=out.device,
                            requires_grad=True).expand_as(out)
        out = out + probe
        self.records[owner.name] = _Record(x, x._version, probe, extra, out,
                                           args[0].requires_grad)
        self.by_out[id(out)] = owner.name
        return out

    def _relu_hook(self, mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if self.recording and len(args) == 1:
            self.links[mod] = (args[0], out)

    def _pool_hook(self, mod: nn.Module, args: tuple[Any, ...], out: Any) -> Tensor | None:
        """Cut a Conv2d→BN→ReLU→MaxPool2d chain at the pool's output when the conv's input needs
        no gradient (its BN backward is cut already) and the tensors flowed through the chain
        (see ``_PooledChainAcc``); otherwise leave the plain path alone."""
        if not self.recording or mod in self.pooled \
                or (self.rank is not None and self.rank < _POOL_MIN_RANK):
            return None
        conv, bn, relu = self.chains[mod]
        crec, brec, link = self.records.get(conv), self.records.get(bn), self.links.get(relu)
        if (crec is None or brec is None or link is None or crec.fold is None
                or crec.fold[0] != bn or brec.out is None or link[0] is not brec.out
                or len(args) != 1 or link[1] is not args[0] or not isinstance(out, Tensor)
                or out.dim() != 4):
            return None
        vals, idx = F.max_pool2d(args[0].detach(), mod.kernel_size, mod.stride, mod.padding,
                                 mod.dilation, ceil_mode=mod.ceil_mode, return_indices=True)
        if not torch.equal(vals, out):  # the same kernel, so the same values (and argmaxes)
            return None
        probe = torch.zeros((), dtype=out.dtype, device=out.device,
                            requires_grad=True).expand_as(out)
        self.pooled[mod] = _Pooled(conv, bn, probe, idx, vals)
        return out.detach() + probe

    def forward(self, model: nn.Module, x: Tensor) -> Tensor:
        """Forward with a probe on every owner's output and its input recorded."""
        self.records, self.by_out, self.pooled = {}, {}, {}
        self.recording = True
        try:
            with torch.enable_grad():
                logits = model(x)
        finally:
            self.recording = False
            self.by_out, self.links = {}, {}
        for name, rec in self.records.items():
            if rec.x._version != rec.version:  # autograd would refuse this model too
                raise _Unsupported(f"the input of {name!r} is modified in place after use")
        missing = [n for n in self.owners if n not in self.records]
        if missing:
            raise _Unsupported(f"module {missing[0]!r} was not called by forward")
        return logits

    def _acc(self, owner: _Owner, rec: _Record, R: int, cache: list[int]) -> _Acc:
        if owner.kind == "linear":
            return _LinearAcc(owner, rec, R, cache)
        if owner.kind == "conv2d":
            return _Conv2dAcc(owner, rec, R, cache)
        if owner.kind == "bn":
            return _BatchNormAcc(owner, rec, R, cache)
        return _ModuleAcc(owner, rec, R, cache, self)

    def chunk(self, model: nn.Module, x: Tensor,
              cot_of: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """Σ over the chunk's samples and cotangents of squared per-sample gradients: one
        forward, then one backward per cotangent (to the probes only), each consumed at once."""
        logits = self.forward(model, x)  # [B, K]
        if logits.dim() != 2:
            raise ValueError(f"model must return logits [B, K], got shape {tuple(logits.shape)}")
        cot = cot_of(logits).to(logits.dtype)  # [B, R, K]
        R = cot.shape[1]
        cache = [_CACHE_FLOATS]  # floats of im2col inputs kept across the R backward passes
        pooled = list(self.pooled.values())
        cut = [n for p in pooled for n in (p.conv, p.bn)]  # their probes must stay unreached
        names = [n for n in self.records if n not in cut]
        accs = [self._acc(self.owners[n], self.records[n], R, cache) for n in names]
        chains = [_PooledChainAcc(self.owners[p.conv], self.records[p.conv], self.owners[p.bn],
                                  self.records[p.bn], p, R) for p in pooled]
        probes = [self.records[n].probe for n in names]
        probes += [p.probe for p in pooled] + [self.records[n].probe for n in cut]
        index = {n: i for i, n in enumerate(names)}
        folds = []  # (acc, index of the BN probe, a) for outputs feeding a cut BatchNorm
        for acc, n in zip(accs, names):
            fold = self.records[n].fold
            if fold is not None:
                folds.append((acc, index[fold[0]], fold[1]))
        folded = {id(acc) for acc, _, _ in folds}
        for r in range(R):
            grads = torch.autograd.grad(logits, probes, cot[:, r], retain_graph=r < R - 1,
                                        allow_unused=True)
            for acc, g in zip(accs, grads):
                if g is not None and id(acc) not in folded:  # None: does not reach the logits
                    acc.add(g)
            if any(g is not None for g in grads[len(names) + len(pooled):]):
                raise _Unsupported("a conv/BN output of a pooled chain is used elsewhere")
            for acc, g in zip(chains, grads[len(names):]):
                if g is not None:
                    acc.add(g)
            for acc, i, a in folds:
                own, g_bn = grads[index[acc.owner.name]], grads[i]
                if g_bn is None:
                    if own is not None:
                        acc.add(own)
                elif own is None:  # the BN is the only consumer (the usual case)
                    acc.add(g_bn, scale=a)
                else:  # other consumers too: their part plus the BN's
                    acc.add(own + g_bn * a.view([1, -1] + [1] * (g_bn.dim() - 2)))
            del grads
        out: dict[str, Tensor] = {}
        for n, acc in zip(names, accs):
            for attr, val in acc.result().items():
                out[self.owners[n].params[attr]] = val
        for chain in chains:
            out.update(chain.result())
        self.records, self.pooled = {}, {}
        return out


# --------------------------------------------------------------------------------------------
# Chain backend: a model that is one chain of standard layers, all cotangents at once.
# --------------------------------------------------------------------------------------------

# Private switch: tests and benchmarks/bench_fisher.py (--plain) turn it off to compare with the
# probe-and-autograd layer path. Read when fisher_diagonal starts.
_CHAIN = True
# The chain holds all R cotangents' gradients at once, R times the probe path's: chunks shrink
# so that one such [R, B, ...] tensor stays under this many floats (the small CNN's largest,
# 9 x 64 x 16 x 28 x 28 = 7 M, is far below).
_CHAIN_FLOATS = 1 << 26


def _non_overlapping(pool: nn.Module) -> bool:
    """A MaxPool2d whose windows never overlap: its backward is a scatter to the argmaxes."""
    pair = nn.modules.utils._pair
    return (type(pool) is nn.MaxPool2d and not pool.return_indices and not pool.ceil_mode
            and pair(pool.kernel_size) == pair(pool.stride or pool.kernel_size)
            and pair(pool.padding) == (0, 0) and pair(pool.dilation) == (1, 1))


def _bn_scale(bn: _BatchNorm) -> Tensor:
    """a = γ/√(var + ε) per channel: with fixed statistics (the running ones, which
    ``_swap_bn_stats`` replaces by batch statistics in bn_mode="train") BatchNorm's backward is a
    multiply by a."""
    a = torch.rsqrt(bn.running_var + bn.eps)
    return (a * bn.weight if bn.weight is not None else a).detach()


class _Chain:
    """Models whose forward is one chain of leaf layers, each consuming the previous one's
    output: Conv2d (groups 1, zero padding), BatchNorm2d/1d, ReLU, non-overlapping MaxPool2d,
    Flatten, Linear (on [B, in]), Dropout and Identity (the small CNN; All-CNN's global average
    pooling is left out on purpose, see the module docstring).

    One forward records what the backward needs; the backward is written out by hand for all R
    cotangents at once (tensors [R, B, ...]), so there is no autograd graph, no probe, and no
    layout conversion between the R passes. A Conv2d→BatchNorm2d→ReLU→MaxPool2d block is taken
    at the pooled resolution: the gradient at the conv output is the pooled gradient at each
    window's argmax (where the pooled value is > 0, as the ReLU's backward), so the BN sums run
    on a quarter of the positions, and the first such block (input needing no gradient) also
    gets its conv products from the im2col rows of the argmaxes, never at full resolution.
    ``build`` returns None for any other model, which then takes the layer path.
    """

    def __init__(self, steps: list[tuple[str, tuple[nn.Module, ...]]], names: dict[int, str],
                 sample_floats: int, classes: int) -> None:
        self.steps, self.names = steps, names  # names: id(parameter) -> full name
        # floats per sample of the largest activation: each [R, B, ...] gradient is R·B times it
        self.sample_floats, self.classes = sample_floats, classes

    @staticmethod
    def build(model: nn.Module, trainable: dict[str, Tensor], x: Tensor) -> _Chain | None:
        """Trace one forward on ``x`` and check that it is a supported chain."""
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        calls: list[tuple[nn.Module, tuple[Any, ...], Any]] = []

        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            calls.append((mod, args, out))

        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with torch.no_grad():
                logits = model(x)
        finally:
            for h in handles:
                h.remove()
        if not calls or logits is not calls[-1][2]:
            return None
        prev: Any = x
        for mod, args, out in calls:
            if len(args) != 1 or args[0] is not prev or not isinstance(out, Tensor):
                return None
            prev = out
        mods = [m for m, _, _ in calls]
        if len({id(m) for m in mods}) != len(mods):
            return None
        own = [id(p) for m in mods for p in m.parameters(recurse=False)]
        if len(set(own)) != len(own):
            return None  # a parameter shared by two layers: its per-sample gradient is a sum
        if any(id(p) not in set(own) for p in model.parameters()):
            return None  # a parameter used outside the chain's layers
        steps: list[tuple[str, tuple[nn.Module, ...]]] = []
        i = 0
        while i < len(mods):
            m = mods[i]
            quad = mods[i:i + 4]
            if (len(quad) == 4 and type(quad[0]) is nn.Conv2d
                    and type(quad[1]) is nn.BatchNorm2d and type(quad[2]) is nn.ReLU
                    and _non_overlapping(quad[3])):
                steps.append(("block", tuple(quad)))
                i += 4
                continue
            kind = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.BatchNorm1d: "bn",
                    nn.ReLU: "relu", nn.Flatten: "flatten", nn.Linear: "linear",
                    nn.Dropout: "skip", nn.Identity: "skip"}.get(type(m))
            if kind is None and _non_overlapping(m):
                kind = "pool"
            if kind is None:
                return None
            steps.append((kind, (m,)))
            i += 1
        for kind, ms in steps:
            m = ms[0]
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"
                                             or isinstance(m.padding, str)):
                return None
            if kind == "flatten" and (m.start_dim != 1 or m.end_dim != -1):
                return None
            for bn in ms:
                if isinstance(bn, _BatchNorm) and bn.running_mean is None:
                    return None
        for mod, args, _ in calls:
            if isinstance(mod, nn.Linear) and args[0].dim() != 2:
                return None
            if isinstance(mod, nn.BatchNorm1d) and args[0].dim() != 2:
                return None
        largest = max(max(a[0].numel(), o.numel()) for _, a, o in calls) // len(x)
        return _Chain(steps, {id(p): n for n, p in trainable.items()}, largest, logits.shape[1])

    def max_chunk(self, rank: int) -> int:
        """Samples per chunk that keep each [R, B, ...] gradient under ``_CHAIN_FLOATS``."""
        return max(1, _CHAIN_FLOATS // max(1, rank * self.sample_floats))

    def _put(self, out: dict[str, Tensor], p: Tensor | None, val: Tensor) -> None:
        name = None if p is None else self.names.get(id(p))
        if name is not None:
            out[name] = out[name] + val if name in out else val

    def _want(self, p: Tensor | None) -> bool:
        return p is not None and id(p) in self.names

    @torch.no_grad()
    def chunk(self, x: Tensor, cot_of: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """Σ over the chunk's samples and cotangents of squared per-sample gradients."""
        recs: list[dict[str, Any]] = []
        h = x
        # The forward calls the model's own modules on the model's own layout, so activations
        # round exactly as in model(x) (a BN written out as (x − mean)·a + β differs in the last
        # bits, and near-zero activations then move the float32 Fisher by 1e-3 relative); what
        # the backward reads is kept contiguous.
        for kind, ms in self.steps:
            m = ms[0]
            rec: dict[str, Any] = {"in": h}
            if kind == "block":
                conv, bn, relu, pool = ms
                c = conv(h)
                r = relu(bn(c))
                vals, idx = F.max_pool2d(r, pool.kernel_size, pool.stride, return_indices=True)
                rec.update(c=c.contiguous(), a=_bn_scale(bn), idx=idx.flatten(2),
                           vals=vals.flatten(2))
                h = vals
            elif kind == "bn":
                rec["a"] = _bn_scale(m)
                h = m(h)
            elif kind == "relu":
                h = m(h)
                rec["live"] = (h > 0).contiguous()
            elif kind == "pool":
                h, idx = F.max_pool2d(h, m.kernel_size, m.stride, return_indices=True)
                rec["idx"] = idx.flatten(2)
            else:  # conv, flatten, linear, skip
                h = m(h)
            recs.append(rec)
        logits = h
        if logits.dim() != 2:
            raise ValueError(f"model must return logits [B, K], got shape {tuple(logits.shape)}")
        g = cot_of(logits).to(logits.dtype).transpose(0, 1).contiguous()  # [R, B, K]
        out: dict[str, Tensor] = {}
        first = 0
        while first < len(self.steps) and self.steps[first][0] == "skip":
            first += 1
        for i in range(len(self.steps) - 1, -1, -1):
            kind, ms = self.steps[i]
            rec, m = recs[i], ms[0]
            need_in = i > first  # the chain's input needs no gradient
            R, B = g.shape[0], g.shape[1]
            if kind == "linear":
                x_in = rec["in"]
                g2 = g.square().sum(0)  # [B, out]: Σ_r g², then one GEMM with x²
                if self._want(m.weight):
                    self._put(out, m.weight, g2.T @ x_in.square())
                if self._want(m.bias):
                    self._put(out, m.bias, g2.sum(0))
                if need_in:
                    g = g @ m.weight
            elif kind == "relu":
                g = g * rec["live"]
            elif kind == "flatten":
                g = g.reshape(R, *rec["in"].shape)
            elif kind == "pool":
                g = self._scatter(g, rec["idx"], rec["in"].shape)
            elif kind == "bn":
                self._bn(out, m, rec["in"], g)
                if need_in:
                    g = g * rec["a"].view([1, 1, -1] + [1] * (g.dim() - 3))
            elif kind == "conv":
                self._conv(out, m, rec["in"], g)
                if need_in:
                    g = self._conv_input(m, rec["in"], g)
            elif kind == "block":
                g = self._block(out, ms, rec, g, need_in)
        return out

    @staticmethod
    def _scatter(g: Tensor, idx: Tensor, shape: torch.Size) -> Tensor:
        """Max-pool backward for non-overlapping windows: g [R, B, C, h, w] at the argmaxes
        idx [B, C, Q] of planes of ``shape`` [B, C, H, W] -> [R, B, C, H, W]."""
        R, B, C = g.shape[0], g.shape[1], g.shape[2]
        full = g.new_zeros(R, B, C, shape[2] * shape[3])
        full.scatter_(3, idx.expand(R, *idx.shape), g.reshape(R, B, C, -1))
        return full.view(R, B, C, shape[2], shape[3])

    def _bn(self, out: dict[str, Tensor], bn: _BatchNorm, x: Tensor, g: Tensor) -> None:
        dims = tuple(range(3, g.dim()))  # positions, summed per sample
        if self._want(bn.weight):
            shape = [1, -1] + [1] * (x.dim() - 2)
            xhat = (x - bn.running_mean.view(shape)) * torch.rsqrt(bn.running_var.view(shape)
                                                                  + bn.eps)
            t = g * xhat
            self._put(out, bn.weight, (t.sum(dims) if dims else t).square().sum((0, 1)))
        if self._want(bn.bias):
            self._put(out, bn.bias, (g.sum(dims) if dims else g).square().sum((0, 1)))

    def _conv(self, out: dict[str, Tensor], conv: nn.Conv2d, x: Tensor, g: Tensor,
              bias: bool = True) -> None:
        """Per-sample products of a conv from its output gradient g [R, B, O, H, W]."""
        R, B, O = g.shape[0], g.shape[1], g.shape[2]
        gl = g.reshape(R, B, O, -1)  # [R, B, O, L]
        if bias and self._want(conv.bias):
            self._put(out, conv.bias, gl.sum(3).square().sum((0, 1)))
        if not self._want(conv.weight):
            return
        u = _im2col(x, conv)
        if _use_gram(u.shape[1], R):
            w = _gram_sq_sum(gl.transpose(0, 1), u)
        elif _stacked(gl):  # one GEMM per sample with the R cotangents' rows stacked: [R·O, I]
            L = gl.shape[3]
            w = _direct_sq_sum(gl.transpose(0, 1).reshape(B, R * O, L), u)
            w = w.reshape(R, O, -1).sum(0)
        else:
            w = sum(_direct_sq_sum(gl[r], u) for r in range(R))
        self._put(out, conv.weight, _as_weight(w, conv))

    @staticmethod
    def _conv_input(conv: nn.Conv2d, x: Tensor, g: Tensor) -> Tensor:
        """The gradient at a conv's input, g [R, B, O, H, W] -> [R, B, C, H_in, W_in]: on the
        CPU one convolution backward per cotangent (one call over R·B images was ~1.5x slower
        there), stacked on the devices of ``_STACK_DEVICE_TYPES``."""
        w = conv.weight.contiguous()
        if _stacked(g):  # one convolution backward over all R·B images
            R, B = g.shape[0], g.shape[1]
            gi = torch.nn.grad.conv2d_input((R * B, *x.shape[1:]), w,
                                            g.reshape(R * B, *g.shape[2:]), conv.stride,
                                            conv.padding, conv.dilation)
            return gi.view(R, B, *x.shape[1:])
        return torch.stack([torch.nn.grad.conv2d_input(x.shape, w, g[r], conv.stride,
                                                       conv.padding, conv.dilation)
                            for r in range(g.shape[0])])

    def _block(self, out: dict[str, Tensor], ms: tuple[nn.Module, ...], rec: dict[str, Any],
               g: Tensor, need_in: bool) -> Tensor:
        """Conv2d→BatchNorm2d→ReLU→MaxPool2d from the gradient g [R, B, C, h, w] at the pool's
        output; returns the gradient at the conv's input if ``need_in``."""
        conv, bn = ms[0], ms[1]
        R, B, C = g.shape[0], g.shape[1], g.shape[2]
        idx, c = rec["idx"], rec["c"]  # [B, C, Q]; the conv output [B, C, H, W]
        gm = g.reshape(R, B, C, -1) * (rec["vals"] > 0)  # [R, B, C, Q] at the argmaxes
        if self._want(bn.weight):
            mean, var = bn.running_mean.view(1, -1, 1), bn.running_var.view(1, -1, 1)
            xhat = (c.flatten(2).gather(2, idx) - mean) * torch.rsqrt(var + bn.eps)
            self._put(out, bn.weight, (gm * xhat).sum(3).square().sum((0, 1)))
        if self._want(bn.bias):
            self._put(out, bn.bias, gm.sum(3).square().sum((0, 1)))
        gc = gm * rec["a"].view(1, 1, -1, 1)  # the gradient at the conv output, at the argmaxes
        if self._want(conv.bias):
            self._put(out, conv.bias, gc.sum(3).square().sum((0, 1)))
        if need_in:  # back to full resolution: the conv's products and its input gradient
            full = self._scatter(gc, idx, c.shape)
            self._conv(out, conv, rec["in"], full, bias=False)  # its bias is counted above
            return self._conv_input(conv, rec["in"], full)
        if self._want(conv.weight):  # im2col rows of the argmaxes only, one batched GEMM
            g_t = gc.permute(1, 2, 0, 3).reshape(B * C, R, -1)  # [B·C, R, Q]
            self._put(out, conv.weight, _argmax_conv_sq(g_t, idx, rec["in"], conv))
        return g


# --------------------------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------------------------

def fisher_diagonal(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], kind: str = "true",
                    *, bn_mode: str = "eval", mc_samples: int = 1, chunk_size: int = 64,
                    seed: int = 0, progress: bool = False,
                    backend: str = "auto") -> dict[str, Tensor]:
    """Diagonal Fisher of a classifier, averaged over the samples of ``loader``.

    ``loader`` yields ``(x [B, ...], y int64 [B])`` on the model's device; ``model(x)`` must
    return logits [B, K] (K follows the model). ``kind`` is "true" (Σ over all classes weighted by
    p(k|x), labels unused), "empirical" (true labels) or "mc" (``mc_samples`` labels drawn from
    p(·|x) with a torch.Generator seeded by ``seed``). ``bn_mode``: "eval" uses running statistics;
    "train" normalises each loader batch with its own statistics and treats them as constants in
    every per-sample gradient (see the module docstring). Samples are processed ``chunk_size`` at
    a time, so memory does not grow with the loader. ``backend``: "layers", "generic", or "auto"
    (layers when the model allows it). Returns {name: F [param shape]} for every parameter with
    ``requires_grad``, in ``named_parameters()`` order, in the parameter's dtype and device.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown Fisher kind {kind!r}; allowed: {', '.join(KINDS)}")
    if bn_mode not in BN_MODES:
        raise ValueError(f"unknown bn_mode {bn_mode!r}; allowed: {', '.join(BN_MODES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if kind == "mc" and mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError("model has no parameter with requires_grad=True")
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    untracked = [n for n, m in bns.items() if m.running_mean is None]
    if untracked:
        raise NotImplementedError(
            f"BatchNorm {untracked[0]!r} has no running statistics (track_running_stats=False); "
            "its output then depends on the whole batch and per-sample gradients are undefined")

    modes = {m: m.training for m in model.modules()}
    model.eval()
    plan: _LayerPlan | None = None
    if backend != "generic":
        try:
            plan = _LayerPlan(model, trainable)
        except _Unsupported as err:
            if backend == "layers":
                raise ValueError(f"backend 'layers' cannot handle this model: {err}") from err
            log.info("Fisher: layer backend unsupported (%s); using torch.func generic", err)
    if plan is not None:  # cotangents per sample (true: K−1, set once K is known)
        plan.rank = {"empirical": 1, "mc": mc_samples}.get(kind)
    chain: _Chain | None = None
    try_chain = backend != "generic" and _CHAIN
    step = chunk_size  # samples per chunk (fewer for a chain whose activations are large)
    params = {n: p.detach() for n, p in trainable.items()}
    acc = {n: torch.zeros(p.shape, dtype=torch.float64, device=p.device)
           for n, p in trainable.items()}
    generator: torch.Generator | None = None
    n_seen, n_classes = 0, None
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    t0 = time.perf_counter()
    fp32 = contextlib.ExitStack()  # TF32 off on CUDA until the finally below
    fp32.enter_context(_full_fp32(next(iter(trainable.values())).device))
    try:
        from tqdm.auto import tqdm

        for x, y in tqdm(loader, total=total, desc=f"Fisher ({kind})", unit="batch",
                         disable=not progress):
            uniform = None
            if kind == "mc":  # [B, S] per loader batch, whatever the chunking
                if generator is None:
                    generator = torch.Generator(device=x.device).manual_seed(seed)
                uniform = torch.rand(x.shape[0], mc_samples, generator=generator,
                                     device=x.device, dtype=torch.float64)
            stats = _batch_stats(model, bns, x) if bn_mode == "train" and bns else {}
            if try_chain:  # decided once, on the first sample
                try_chain = False
                with _swap_bn_stats(bns, stats):
                    chain = _Chain.build(model, trainable, x[:1])
                if chain is not None:
                    if plan is not None:
                        plan.remove()
                        plan = None
                    rank = {"true": chain.classes - 1, "empirical": 1}.get(kind, mc_samples)
                    step = min(chunk_size, chain.max_chunk(rank))
            with _swap_bn_stats(bns, stats):
                for s in range(0, x.shape[0], step):
                    xc, yc = x[s:s + step], y[s:s + step]
                    uc = None if uniform is None else uniform[s:s + step]

                    def cot_of(logits: Tensor) -> Tensor:
                        nonlocal n_classes
                        if n_classes is None:
                            n_classes = logits.shape[1]
                            if n_classes < 2:
                                raise ValueError(f"need >= 2 classes, model returns {n_classes}")
                            if plan is not None and kind == "true":
                                plan.rank = n_classes - 1
                        return _cotangents(logits, yc, kind, uc)

                    part: dict[str, Tensor] | None = None
                    if chain is not None:
                        part = chain.chunk(xc, cot_of)
                    elif plan is not None:
                        try:
                            part = plan.chunk(model, xc, cot_of)
                        except _Unsupported as err:
                            if backend == "layers":
                                raise ValueError(
                                    f"backend 'layers' cannot handle this model: {err}") from err
                            log.info("Fisher: layer backend unsupported (%s); using torch.func "
                                     "generic", err)
                            plan.remove()
                            plan = None
                    if part is None:
                        with torch.no_grad():
                            logits = functional_call(model, params, (xc,))
                        part = _generic_chunk(model, params, xc, cot_of(logits))
                    for n, v in part.items():
                        acc[n] += v
                    n_seen += xc.shape[0]
    finally:
        fp32.close()
        if plan is not None:
            plan.remove()
        for m, mode in modes.items():
            m.train(mode)
    if n_seen == 0:
        raise ValueError("loader yielded no samples")
    log.info("Fisher (%s, bn %s, %s backend): %d samples, %d classes, %.2fs", kind, bn_mode,
             "chain" if chain is not None else "layers" if plan is not None else "generic",
             n_seen, n_classes,
             time.perf_counter() - t0)
    return {n: (acc[n] / n_seen).to(p.dtype) for n, p in trainable.items()}
