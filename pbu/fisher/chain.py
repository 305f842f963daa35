"""The ``chain`` backend: a model that is one chain of standard layers, all cotangents at once.

When the forward is one chain of leaf layers, each consuming the previous one's output
(Conv2d, BatchNorm, ReLU, non-overlapping MaxPool2d, Flatten, Linear, Dropout, Identity: the
small CNN), the backward is written out by hand for all R cotangents at once ([R, B, ...]
tensors), with no autograd graph, probes or layout conversions, and each
Conv2d→BatchNorm2d→ReLU→MaxPool2d block's BatchNorm sums run at the pooled resolution. Any
other model raises ``Unsupported`` in :meth:`Chain.build`, saying why.

On the CPU it loops over the R cotangents for the conv products and input gradients; on the
devices of ``FisherSettings.stack_device_types`` (CUDA) it stacks them into one kernel each,
where the loop would be a string of small launches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pbu.fisher.batchnorm import bn_scale
from pbu.fisher.checks import Unsupported
from pbu.fisher.conv import argmax_conv_sq, as_weight, direct_sq_sum, gram_sq_sum, im2col, use_gram
from pbu.fisher.settings import FisherSettings


def non_overlapping(pool: nn.Module) -> bool:
    """A MaxPool2d whose windows never overlap: its backward is a scatter to the argmaxes."""
    pair = nn.modules.utils._pair
    return (
        type(pool) is nn.MaxPool2d
        and not pool.return_indices
        and not pool.ceil_mode
        and pair(pool.kernel_size) == pair(pool.stride or pool.kernel_size)
        and pair(pool.padding) == (0, 0)
        and pair(pool.dilation) == (1, 1)
    )


class Chain:
    """Models whose forward is one chain of leaf layers, each consuming the previous one's
    output: Conv2d (groups 1, zero padding), BatchNorm2d/1d, ReLU, non-overlapping MaxPool2d,
    Flatten, Linear (on [B, in]), Dropout and Identity (the small CNN; All-CNN's global average
    pooling is left out on purpose: through the chain it measured slower than the probe path).

    One forward records what the backward needs; the backward is written out by hand for all R
    cotangents at once (tensors [R, B, ...]), so there is no autograd graph, no probe, and no
    layout conversion between the R passes. A Conv2d→BatchNorm2d→ReLU→MaxPool2d block is taken
    at the pooled resolution: the gradient at the conv output is the pooled gradient at each
    window's argmax (where the pooled value is > 0, as the ReLU's backward), so the BN sums run
    on a quarter of the positions, and the first such block (input needing no gradient) also
    gets its conv products from the im2col rows of the argmaxes, never at full resolution.
    ``build`` raises ``Unsupported`` for any other model, saying why.
    """

    def __init__(
        self,
        steps: list[tuple[str, tuple[nn.Module, ...]]],
        names: dict[int, str],
        sample_floats: int,
        classes: int,
        settings: FisherSettings,
    ) -> None:
        self.steps, self.names = steps, names  # names: id(parameter) -> full name
        self.settings = settings
        # floats per sample of the largest activation: each [R, B, ...] gradient is R·B times it
        self.sample_floats, self.classes = sample_floats, classes

    @staticmethod
    def build(
        model: nn.Module, trainable: dict[str, Tensor], x: Tensor, settings: FisherSettings
    ) -> Chain:
        """Trace one forward on ``x`` and check that it is a supported chain; raise
        ``Unsupported`` naming the first thing that is not."""
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
            raise Unsupported(
                "the model's output is not the output of its last layer call "
                "(an operation outside the layers, e.g. a functional call)"
            )
        names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
        prev: Any = x
        for mod, args, out in calls:
            if len(args) != 1 or args[0] is not prev or not isinstance(out, Tensor):
                raise Unsupported(
                    f"layer {names[id(mod)]!r} does not take the previous "
                    "layer's output as its only input (a branch, a residual or "
                    "an operation between layers)"
                )
            prev = out
        mods = [m for m, _, _ in calls]
        if len({id(m) for m in mods}) != len(mods):
            raise Unsupported("a layer is called more than once per forward")
        own = [id(p) for m in mods for p in m.parameters(recurse=False)]
        if len(set(own)) != len(own):  # its per-sample gradient is a sum over the layers
            raise Unsupported("a parameter is shared by two layers")
        if any(id(p) not in set(own) for p in model.parameters()):
            raise Unsupported("a parameter is used outside the chain's layers")
        steps: list[tuple[str, tuple[nn.Module, ...]]] = []
        i = 0
        while i < len(mods):
            m = mods[i]
            quad = mods[i : i + 4]
            if (
                len(quad) == 4
                and type(quad[0]) is nn.Conv2d
                and type(quad[1]) is nn.BatchNorm2d
                and type(quad[2]) is nn.ReLU
                and non_overlapping(quad[3])
            ):
                steps.append(("block", tuple(quad)))
                i += 4
                continue
            kind = {
                nn.Conv2d: "conv",
                nn.BatchNorm2d: "bn",
                nn.BatchNorm1d: "bn",
                nn.ReLU: "relu",
                nn.Flatten: "flatten",
                nn.Linear: "linear",
                nn.Dropout: "skip",
                nn.Identity: "skip",
            }.get(type(m))
            if kind is None and non_overlapping(m):
                kind = "pool"
            if kind is None:
                raise Unsupported(
                    f"layer {names[id(m)]!r} ({type(m).__name__}) is not one the "
                    "chain knows (Conv2d, BatchNorm, ReLU, non-overlapping "
                    "MaxPool2d, Flatten, Linear, Dropout, Identity)"
                )
            steps.append((kind, (m,)))
            i += 1
        for kind, ms in steps:
            m = ms[0]
            if isinstance(m, nn.Conv2d) and (
                m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)
            ):
                raise Unsupported(
                    f"conv {names[id(m)]!r} is grouped, pads other than with "
                    "zeros, or has string padding"
                )
            if kind == "flatten" and (m.start_dim != 1 or m.end_dim != -1):
                raise Unsupported(
                    f"Flatten {names[id(m)]!r} does not flatten all but the batch dimension"
                )
            for bn in ms:
                if isinstance(bn, _BatchNorm) and bn.running_mean is None:
                    raise Unsupported(f"BatchNorm {names[id(bn)]!r} has no running statistics")
        for mod, args, _ in calls:
            if isinstance(mod, (nn.Linear, nn.BatchNorm1d)) and args[0].dim() != 2:
                raise Unsupported(
                    f"{type(mod).__name__} {names[id(mod)]!r} gets a "
                    f"{args[0].dim()}-d input, not [B, features]"
                )
        largest = max(max(a[0].numel(), o.numel()) for _, a, o in calls) // len(x)
        return Chain(
            steps, {id(p): n for n, p in trainable.items()}, largest, logits.shape[1], settings
        )

    def max_chunk(self, rank: int) -> int:
        """Samples per chunk that keep each [R, B, ...] gradient under
        ``FisherSettings.chain_floats``."""
        return max(1, self.settings.chain_floats // max(1, rank * self.sample_floats))

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
                rec.update(
                    c=c.contiguous(), a=bn_scale(bn), idx=idx.flatten(2), vals=vals.flatten(2)
                )
                h = vals
            elif kind == "bn":
                rec["a"] = bn_scale(m)
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
            R = g.shape[0]
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
            xhat = (x - bn.running_mean.view(shape)) * torch.rsqrt(
                bn.running_var.view(shape) + bn.eps
            )
            t = g * xhat
            self._put(out, bn.weight, (t.sum(dims) if dims else t).square().sum((0, 1)))
        if self._want(bn.bias):
            self._put(out, bn.bias, (g.sum(dims) if dims else g).square().sum((0, 1)))

    def _conv(
        self, out: dict[str, Tensor], conv: nn.Conv2d, x: Tensor, g: Tensor, bias: bool = True
    ) -> None:
        """Per-sample products of a conv from its output gradient g [R, B, O, H, W]."""
        R, B, O = g.shape[0], g.shape[1], g.shape[2]
        gl = g.reshape(R, B, O, -1)  # [R, B, O, L]
        if bias and self._want(conv.bias):
            self._put(out, conv.bias, gl.sum(3).square().sum((0, 1)))
        if not self._want(conv.weight):
            return
        u = im2col(x, conv)
        block = self.settings.block_floats(gl.device)
        if use_gram(u.shape[1], R):
            w = gram_sq_sum(gl.transpose(0, 1), u, block)
        elif self.settings.stacked(gl.device):  # one GEMM per sample, R cotangents' rows stacked
            L = gl.shape[3]
            w = direct_sq_sum(gl.transpose(0, 1).reshape(B, R * O, L), u, block)
            w = w.reshape(R, O, -1).sum(0)
        else:
            w = sum(direct_sq_sum(gl[r], u, block) for r in range(R))
        self._put(out, conv.weight, as_weight(w, conv))

    def _conv_input(self, conv: nn.Conv2d, x: Tensor, g: Tensor) -> Tensor:
        """The gradient at a conv's input, g [R, B, O, H, W] -> [R, B, C, H_in, W_in]: on the
        CPU one convolution backward per cotangent (one call over R·B images was slower there),
        one for all R·B images on the devices of ``FisherSettings.stack_device_types``."""
        w = conv.weight.contiguous()
        if self.settings.stacked(g.device):  # one convolution backward over all R·B images
            R, B = g.shape[0], g.shape[1]
            gi = torch.nn.grad.conv2d_input(
                (R * B, *x.shape[1:]),
                w,
                g.reshape(R * B, *g.shape[2:]),
                conv.stride,
                conv.padding,
                conv.dilation,
            )
            return gi.view(R, B, *x.shape[1:])
        return torch.stack(
            [
                torch.nn.grad.conv2d_input(
                    x.shape, w, g[r], conv.stride, conv.padding, conv.dilation
                )
                for r in range(g.shape[0])
            ]
        )

    def _block(
        self,
        out: dict[str, Tensor],
        ms: tuple[nn.Module, ...],
        rec: dict[str, Any],
        g: Tensor,
        need_in: bool,
    ) -> Tensor:
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
            self._put(out, conv.weight, argmax_conv_sq(g_t, idx, rec["in"], conv))
        return g
