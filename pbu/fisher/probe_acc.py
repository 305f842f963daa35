"""Accumulators of the probe backend: each turns gradients at a module's output into its
Fisher block, layer by layer, without materialising per-sample gradients where the structure
allows.

Linear is (g²)ᵀ(x²) or a shared-weight product, Conv2d goes through im2col and either a batched
GEMM or Gram matrices (``pbu.fisher.conv``), BatchNorm is elementwise, any other module gets
per-sample ``torch.func`` gradients of that module alone. :class:`PooledChainAcc` takes a first
Conv2d→BatchNorm2d→ReLU→MaxPool2d block from the gradient at the pool's output.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from pbu.fisher.conv import argmax_conv_sq, as_weight, direct_sq_sum, gram_sq_sum, im2col, use_gram
from pbu.fisher.settings import FisherSettings


@dataclass
class Owner:
    """A module that directly owns trainable parameters, and how its Fisher block is computed."""

    name: str
    module: nn.Module
    kind: str  # "linear" | "conv2d" | "bn" | "module"
    params: dict[str, str]  # attribute ("weight") -> full parameter name ("fc.weight")


@dataclass
class Record:
    """What the forward hook saw for one owner: its input, a probe on its output, BN stats.

    ``out`` is the tensor the hook returned (the owner's output plus its probe) and ``x_grad``
    whether the owner's input needed a gradient. ``fold`` = (BN name, a [C]) when the owner's
    output goes straight into a BatchNorm whose backward we skip (see ``ProbePlan._hook``): the
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


class Acc:
    """One owner's Fisher block, accumulated over the R cotangents of a chunk.

    ``add(g)`` takes g [B, *out_shape], the gradient of Σ_b <logits_b, c_{b,r}> at the owner's
    output (so g[b] belongs to sample b alone), one r at a time; ``result()`` returns
    {attr: Σ_b Σ_r (per-sample gradient)²}.
    """

    def __init__(
        self, owner: Owner, rec: Record, R: int, cache: list[int], settings: FisherSettings
    ) -> None:
        self.owner, self.rec, self.R, self.settings = owner, rec, R, settings
        self.res: dict[str, Tensor] = {}
        self.stash: list[Tensor] = []

    def _put(self, attr: str, val: Tensor) -> None:
        self.res[attr] = self.res[attr] + val if attr in self.res else val

    def add(self, g: Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Tensor]:
        return self.res


class SharedWeightAcc(Acc):
    """Linear and Conv2d: per-sample weight gradient g u with u [B, L, I] (L positions)."""

    def __init__(
        self, owner: Owner, rec: Record, R: int, cache: list[int], settings: FisherSettings
    ) -> None:
        super().__init__(owner, rec, R, cache, settings)
        self.B = rec.x.shape[0]
        self.L, self.I = self._dims()
        self.gram = use_gram(self.L, R)
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
            w = direct_sq_sum(gl, self.u(), self.settings.block_floats(gl.device))
            self._put("weight", w if sq is None else w * sq[:, None])

    def result(self) -> dict[str, Tensor]:
        w = self.owner.module.weight
        if self.gsq is not None:  # Σ_b Σ_r g² ⊗ u²: one GEMM, no per-sample gradient
            self._put("weight", self.gsq.T @ self.u()[:, 0, :].square())
        elif self.stash:
            g = torch.stack(self.stash, 1)  # [B, R, O, L]
            self._put("weight", gram_sq_sum(g, self.u(), self.settings.block_floats(g.device)))
            self.stash = []
        if "weight" in self.res:
            self.res["weight"] = self.res["weight"].view_as(w)
        return self.res


class LinearAcc(SharedWeightAcc):
    """nn.Linear on x [B, *, in]: L = the product of the middle dims (1 for [B, in])."""

    def _dims(self) -> tuple[int, int]:
        x = self.rec.x
        return x[0].numel() // x.shape[-1], x.shape[-1]

    def _unfold(self) -> Tensor:
        return self.rec.x.reshape(self.B, self.L, self.I)

    def _gl(self, g: Tensor) -> Tensor:
        return g.reshape(self.B, self.L, -1).transpose(1, 2)  # [B, out, L]


class Conv2dAcc(SharedWeightAcc):
    """nn.Conv2d (groups 1, zero padding): u = unfold(x)ᵀ, I = in·kh·kw, L = output pixels."""

    def _dims(self) -> tuple[int, int]:
        mod, x = self.owner.module, self.rec.x
        I = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
        hw = [
            (x.shape[2 + d] + 2 * mod.padding[d] - mod.dilation[d] * (mod.kernel_size[d] - 1) - 1)
            // mod.stride[d]
            + 1
            for d in range(2)
        ]
        return hw[0] * hw[1], I

    def _unfold(self) -> Tensor:
        return im2col(self.rec.x, self.owner.module)  # [B, L, I]

    def result(self) -> dict[str, Tensor]:
        res = super().result()
        if "weight" in res:
            res["weight"] = as_weight(res["weight"], self.owner.module)
        return res

    def _gl(self, g: Tensor) -> Tensor:
        if (
            self.I < g.shape[1]
            and not self.gram
            and not g.is_contiguous()
            and g.is_contiguous(memory_format=torch.channels_last)
        ):
            # channels_last, and direct_sq_sum will want [B, L, out] (its flipped GEMM): that
            # is this view, with no copy; for I > out the copy to [B, out, L] is as fast or
            # faster, so it stays (benchmarks/README.md, "Fisher design choices").
            return g.permute(0, 2, 3, 1).reshape(self.B, -1, g.shape[1]).transpose(1, 2)
        return g.reshape(self.B, g.shape[1], -1)  # [B, out, L]


class BatchNormAcc(Acc):
    """BatchNorm with fixed statistics: per-sample γ gradient Σ_pos g·x̂, β gradient Σ_pos g."""

    def __init__(
        self, owner: Owner, rec: Record, R: int, cache: list[int], settings: FisherSettings
    ) -> None:
        super().__init__(owner, rec, R, cache, settings)
        x = rec.x  # [B, C, *spatial], in the model's memory format (channels_last or not)
        self.dims = tuple(range(2, x.dim()))  # summed over per sample; () for [B, C]
        self.xhat: Tensor | None = None
        if "weight" in owner.params:
            mean, var, eps = rec.extra
            shape = [1, -1] + [1] * (x.dim() - 2)
            # Elementwise from x, so x̂ has x's strides, which are also the gradient's: the
            # product below then streams both in memory order (a reshape to [B, C, L] would copy
            # a channels_last gradient every time, and a mixed-layout product is much slower).
            self.xhat = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)

    def _per_sample(self, t: Tensor) -> Tensor:
        return t.sum(self.dims) if self.dims else t  # [B, C]

    def add(self, g: Tensor) -> None:
        if self.xhat is not None:
            self._put("weight", self._per_sample(g * self.xhat).square().sum(0))
        if "bias" in self.owner.params:
            self._put("bias", self._per_sample(g).square().sum(0))


class ModuleAcc(Acc):
    """Any other module: per-sample gradients of its own parameters with torch.func, from its
    recorded input and the output cotangents of all R vectors at once."""

    def __init__(
        self,
        owner: Owner,
        rec: Record,
        R: int,
        cache: list[int],
        settings: FisherSettings,
        paused: Callable[[], AbstractContextManager[None]],
    ) -> None:
        super().__init__(owner, rec, R, cache, settings)
        self.paused = paused  # the probe plan's: hooks off while the module runs again

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

        step = max(1, self.settings.vmap_floats // max(1, self.R * n_par))
        with self.paused():  # the recomputed forward must not record probes
            for s in range(0, x.shape[0], step):
                part = vmap(per_sample)(x[s : s + step], g[s : s + step])  # attr -> [b, *shape]
                for a, t in part.items():
                    self._put(a, t.sum(0))
        return self.res


@dataclass
class Pooled:
    """A first Conv2d→BatchNorm2d→ReLU→MaxPool2d chain cut at the pool's output (see
    ``PooledChainAcc``): the owners' names, the probe on the pooled output, the pool's argmax
    indices into each conv output plane and the pooled values, both [B, C, h, w]."""

    conv: str
    bn: str
    probe: Tensor
    idx: Tensor
    vals: Tensor


class PooledChainAcc:
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

    def __init__(
        self, conv: Owner, conv_rec: Record, bn: Owner, bn_rec: Record, pooled: Pooled, R: int
    ) -> None:
        self.conv, self.conv_rec, self.bn, self.bn_rec = conv, conv_rec, bn, bn_rec
        self.pooled = pooled
        B, C, h, w = pooled.idx.shape
        self.B, self.C, self.Q = B, C, h * w
        self.R = R
        self.buf: Tensor | None = None  # [R, B, C, h, w], each r in the gradient's own layout
        self.r = 0

    def add(self, g: Tensor) -> None:
        """g [B, C, h, w]: gradient at the pooled output for one cotangent, copied as it is laid
        out (a plain memcpy; reordering it r by r was slower)."""
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
        one transposition feeds the conv weight's batched GEMM.
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
            w = argmax_conv_sq(g_t, idx.transpose(1, 2), self.conv_rec.x, conv.module)
            out[conv.params["weight"]] = w * a2.view(-1, 1, 1, 1)
        return out
