"""The ``probe`` backend: per-sample squared gradients layer by layer, with autograd.

One forward per chunk with a zero "probe" added to the output of every module that owns
parameters, R backward passes (to the probes only, never to the parameters), then each owner's
Fisher block from the gradient at its output (``pbu.fisher.probe_acc``), never materialising
per-sample gradients where the layer's structure allows. BatchNorm's backward is replaced by
the equivalent per-channel multiply (same values), or skipped after a first layer whose input
needs no gradient (:meth:`ProbePlan._hook`); a first Conv2d→BatchNorm2d→ReLU→MaxPool2d in an
``nn.Sequential`` is cut at the pool's output (``PooledChainAcc``) from
``FisherSettings.pool_min_rank`` cotangents per sample on, below which its gathers cost more
than they save.

It needs every parameter-owning module to be called once per forward with one tensor input and
no parameter shared between modules; otherwise it raises ``Unsupported`` with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pbu.fisher.checks import Unsupported
from pbu.fisher.probe_acc import (
    Acc,
    BatchNormAcc,
    Conv2dAcc,
    LinearAcc,
    ModuleAcc,
    Owner,
    Pooled,
    PooledChainAcc,
    Record,
)
from pbu.fisher.settings import FisherSettings


class ProbePlan:
    """Hooks that add probes to parameter-owning modules, and their Fisher accumulators."""

    def __init__(
        self, model: nn.Module, trainable: dict[str, Tensor], settings: FisherSettings
    ) -> None:
        self.settings = settings
        modules = dict(model.named_modules())
        seen: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.requires_grad and id(p) in seen:
                raise Unsupported(f"parameter shared by {seen[id(p)]} and {name}")
            seen[id(p)] = name
        owners: dict[str, Owner] = {}
        for full in trainable:
            prefix, _, attr = full.rpartition(".")
            mod = modules[prefix]
            if prefix not in owners:
                owners[prefix] = Owner(prefix, mod, self._kind(mod), {})
            owners[prefix].params[attr] = full
        self.owners = owners
        self.by_module = {o.module: o for o in owners.values()}
        self.records: dict[str, Record] = {}
        self.by_out: dict[int, str] = {}  # id of a hooked output -> its owner, during forward
        self.recording = False
        self.handles = [
            o.module.register_forward_hook(self._hook, with_kwargs=True) for o in owners.values()
        ]
        # Conv2d→BatchNorm2d→ReLU→MaxPool2d as consecutive children of a plain nn.Sequential,
        # each module used once in the model: the intermediate tensors are then seen by the next
        # module only, so the chain can be cut at the pool's output (``_pool_hook`` checks at
        # run time that the tensors really flow that way, and the conv's input needs no grad).
        self.chains: dict[nn.Module, tuple[str, str, nn.Module]] = {}  # pool -> conv, bn, relu
        self.links: dict[nn.Module, tuple[Tensor, Tensor]] = {}  # relu -> (input, output)
        self.pooled: dict[nn.Module, Pooled] = {}
        self.rank: int | None = None  # cotangents per sample, when known (None: assume many)
        if settings.pool_shortcut:
            uses: dict[int, int] = {}
            for _, m in model.named_modules(remove_duplicate=False):
                uses[id(m)] = uses.get(id(m), 0) + 1
            for seq in model.modules():
                if (
                    not isinstance(seq, nn.Sequential)
                    or type(seq).forward is not nn.Sequential.forward
                ):
                    continue
                kids = list(seq.children())
                for conv, bn, relu, pool in zip(kids, kids[1:], kids[2:], kids[3:]):
                    oc, ob = self.by_module.get(conv), self.by_module.get(bn)
                    if (
                        oc is not None
                        and oc.kind == "conv2d"
                        and ob is not None
                        and ob.kind == "bn"
                        and isinstance(bn, nn.BatchNorm2d)
                        and type(relu) is nn.ReLU
                        and type(pool) is nn.MaxPool2d
                        and not pool.return_indices
                        and all(uses[id(m)] == 1 for m in (conv, bn, relu, pool))
                    ):
                        self.chains[pool] = (oc.name, ob.name, relu)
                        self.handles.append(relu.register_forward_hook(self._relu_hook))
                        self.handles.append(pool.register_forward_hook(self._pool_hook))

    @staticmethod
    def _kind(mod: nn.Module) -> str:
        if isinstance(mod, nn.Linear) and type(mod).forward is nn.Linear.forward:
            return "linear"
        if (
            isinstance(mod, nn.Conv2d)
            and type(mod).forward is nn.Conv2d.forward
            and mod.groups == 1
            and mod.padding_mode == "zeros"
            and not isinstance(mod.padding, str)
        ):
            return "conv2d"
        if (
            isinstance(mod, _BatchNorm)
            and type(mod).forward is _BatchNorm.forward
            and mod.running_mean is not None
        ):
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

    def _hook(
        self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> Tensor | None:
        if not self.recording:
            return None
        owner = self.by_module[mod]
        if owner.name in self.records:
            raise Unsupported(f"module {owner.name!r} is called more than once per forward")
        if (
            len(args) != 1
            or kwargs
            or not isinstance(args[0], Tensor)
            or not isinstance(out, Tensor)
        ):
            raise Unsupported(f"module {owner.name!r} does not map one tensor to one tensor")
        x = args[0].detach()
        extra: tuple[Any, ...] = ()
        if owner.kind == "bn":  # the statistics it normalised with (swapped ones in train mode)
            extra = (mod.running_mean, mod.running_var, mod.eps)
            src = self.by_out.get(id(args[0]))
            prev = None if src is None else self.records[src]
            if (
                prev is not None
                and prev.out is args[0]
                and not prev.x_grad
                and (
                    self.owners[src].kind == "conv2d"
                    or (self.owners[src].kind == "linear" and args[0].dim() == 2)
                )
            ):
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
                # kernel, several times slower on CPU, which runs R times per chunk.
                a = (mod.weight * torch.rsqrt(mod.running_var + mod.eps)).detach()  # [C]
                shape = [1, -1] + [1] * (x.dim() - 2)
                out = out.detach() + (args[0] - x) * a.view(shape)
        # A zero scalar broadcast to the output: the gradient w.r.t. this view is the
        # gradient at the owner's output, full-shaped, and nothing is allocated for it.
        probe = torch.zeros((), dtype=out.dtype, device=out.device, requires_grad=True).expand_as(
            out
        )
        out = out + probe
        self.records[owner.name] = Record(x, x._version, probe, extra, out, args[0].requires_grad)
        self.by_out[id(out)] = owner.name
        return out

    def _relu_hook(self, mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if self.recording and len(args) == 1:
            self.links[mod] = (args[0], out)

    def _pool_hook(self, mod: nn.Module, args: tuple[Any, ...], out: Any) -> Tensor | None:
        """Cut a Conv2d→BN→ReLU→MaxPool2d chain at the pool's output when the conv's input needs
        no gradient (its BN backward is cut already) and the tensors flowed through the chain
        (see ``PooledChainAcc``); otherwise leave the plain path alone."""
        if (
            not self.recording
            or mod in self.pooled
            or (self.rank is not None and self.rank < self.settings.pool_min_rank)
        ):
            return None
        conv, bn, relu = self.chains[mod]
        crec, brec, link = self.records.get(conv), self.records.get(bn), self.links.get(relu)
        if (
            crec is None
            or brec is None
            or link is None
            or crec.fold is None
            or crec.fold[0] != bn
            or brec.out is None
            or link[0] is not brec.out
            or len(args) != 1
            or link[1] is not args[0]
            or not isinstance(out, Tensor)
            or out.dim() != 4
        ):
            return None
        vals, idx = F.max_pool2d(
            args[0].detach(),
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.dilation,
            ceil_mode=mod.ceil_mode,
            return_indices=True,
        )
        if not torch.equal(vals, out):  # the same kernel, so the same values (and argmaxes)
            return None
        probe = torch.zeros((), dtype=out.dtype, device=out.device, requires_grad=True).expand_as(
            out
        )
        self.pooled[mod] = Pooled(conv, bn, probe, idx, vals)
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
                raise Unsupported(f"the input of {name!r} is modified in place after use")
        missing = [n for n in self.owners if n not in self.records]
        if missing:
            raise Unsupported(f"module {missing[0]!r} was not called by forward")
        return logits

    def _acc(self, owner: Owner, rec: Record, R: int, cache: list[int]) -> Acc:
        if owner.kind == "linear":
            return LinearAcc(owner, rec, R, cache, self.settings)
        if owner.kind == "conv2d":
            return Conv2dAcc(owner, rec, R, cache, self.settings)
        if owner.kind == "bn":
            return BatchNormAcc(owner, rec, R, cache, self.settings)
        return ModuleAcc(owner, rec, R, cache, self.settings, self.paused)

    def chunk(
        self, model: nn.Module, x: Tensor, cot_of: Callable[[Tensor], Tensor]
    ) -> dict[str, Tensor]:
        """Σ over the chunk's samples and cotangents of squared per-sample gradients: one
        forward, then one backward per cotangent (to the probes only), each consumed at once."""
        logits = self.forward(model, x)  # [B, K]
        if logits.dim() != 2:
            raise ValueError(f"model must return logits [B, K], got shape {tuple(logits.shape)}")
        cot = cot_of(logits).to(logits.dtype)  # [B, R, K]
        R = cot.shape[1]
        cache = [self.settings.cache_floats]  # floats of im2col inputs kept across the R passes
        pooled = list(self.pooled.values())
        cut = [n for p in pooled for n in (p.conv, p.bn)]  # their probes must stay unreached
        names = [n for n in self.records if n not in cut]
        accs = [self._acc(self.owners[n], self.records[n], R, cache) for n in names]
        chains = [
            PooledChainAcc(
                self.owners[p.conv],
                self.records[p.conv],
                self.owners[p.bn],
                self.records[p.bn],
                p,
                R,
            )
            for p in pooled
        ]
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
            grads = torch.autograd.grad(
                logits, probes, cot[:, r], retain_graph=r < R - 1, allow_unused=True
            )
            for acc, g in zip(accs, grads):
                if g is not None and id(acc) not in folded:  # None: does not reach the logits
                    acc.add(g)
            if any(g is not None for g in grads[len(names) + len(pooled) :]):
                raise Unsupported("a conv/BN output of a pooled chain is used elsewhere")
            for acc, g in zip(chains, grads[len(names) :]):
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
