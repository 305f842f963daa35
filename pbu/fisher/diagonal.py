"""``fisher_diagonal``: the loop over the loader, and the choice of backend."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pbu.fisher.batchnorm import batch_stats, swap_bn_stats
from pbu.fisher.chain import Chain
from pbu.fisher.checks import Unsupported, batchnorms, check_arguments, trainable_parameters
from pbu.fisher.cotangents import cotangents
from pbu.fisher.func import func_chunk
from pbu.fisher.probe import ProbePlan
from pbu.fisher.settings import DEFAULT, FisherSettings, full_fp32

log = logging.getLogger(__name__)


def _cannot(backend: str, err: Unsupported) -> ValueError:
    return ValueError(f"backend {backend!r} cannot handle this model: {err}")


def fisher_diagonal(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    kind: str = "true",
    *,
    bn_mode: str = "eval",
    mc_samples: int = 1,
    chunk_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    backend: str = "auto",
    settings: FisherSettings | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher of a classifier, averaged over the samples of ``loader``.

    ``loader`` yields ``(x [B, ...], y int64 [B])`` on the model's device; ``model(x)`` must
    return logits [B, K] (K follows the model). ``kind`` is "true" (Σ over all classes weighted by
    p(k|x), labels unused), "empirical" (true labels) or "mc" (``mc_samples`` labels drawn from
    p(·|x) with a torch.Generator seeded by ``seed``). ``bn_mode``: "eval" uses running statistics;
    "train" normalises each loader batch with its own statistics and treats them as constants in
    every per-sample gradient (see ``pbu.fisher``). Samples are processed ``chunk_size`` at a
    time, so memory does not grow with the loader.

    ``backend`` picks the code path; all give the same Fisher up to float rounding:

    - "auto" (default): "chain" when the model is one chain of standard layers, else "probe"
      when every parameter-owning module is called once with one tensor, else "func";
    - "chain": a hand-written backward for all cotangents at once (``pbu.fisher.chain``);
    - "probe": autograd to zero probes on each layer's output (``pbu.fisher.probe``);
    - "func": per-sample gradients of the whole model with ``torch.func``, any model.

    A backend given by name that cannot handle the model raises ValueError saying why.
    ``settings`` (a :class:`pbu.fisher.FisherSettings`) sets memory bounds, block sizes and
    shortcuts; the defaults are what the pipeline runs. Returns {name: F [param shape]} for
    every parameter with ``requires_grad``, in ``named_parameters()`` order, in the parameter's
    dtype and device.
    """
    settings = DEFAULT if settings is None else settings
    check_arguments(kind, bn_mode, backend, mc_samples, chunk_size, settings)
    trainable = trainable_parameters(model)
    bns = batchnorms(model)

    modes = {m: m.training for m in model.modules()}
    model.eval()
    paths = _Paths(model, trainable, kind, mc_samples, backend, settings)
    step = chunk_size  # samples per chunk (fewer for a chain whose activations are large)
    acc = {
        n: torch.zeros(p.shape, dtype=torch.float64, device=p.device) for n, p in trainable.items()
    }
    generator: torch.Generator | None = None
    n_seen = 0
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    t0 = time.perf_counter()
    fp32 = contextlib.ExitStack()  # TF32 off on CUDA until the finally below
    fp32.enter_context(full_fp32(next(iter(trainable.values())).device))
    try:
        from tqdm.auto import tqdm

        for x, y in tqdm(
            loader, total=total, desc=f"Fisher ({kind})", unit="batch", disable=not progress
        ):
            uniform = None
            if kind == "mc":  # [B, S] per loader batch, whatever the chunking
                if generator is None:
                    generator = torch.Generator(device=x.device).manual_seed(seed)
                uniform = torch.rand(
                    x.shape[0],
                    mc_samples,
                    generator=generator,
                    device=x.device,
                    dtype=torch.float64,
                )
            stats = batch_stats(model, bns, x) if bn_mode == "train" and bns else {}
            if n_seen == 0 and len(x):  # the chain is decided once, on the first sample
                with swap_bn_stats(bns, stats):
                    step = min(chunk_size, paths.try_chain(x[:1]))
            with swap_bn_stats(bns, stats):
                for s in range(0, x.shape[0], step):
                    uc = None if uniform is None else uniform[s : s + step]
                    part = paths.chunk(x[s : s + step], y[s : s + step], uc)
                    for n, v in part.items():
                        acc[n] += v
                    n_seen += len(x[s : s + step])
    finally:
        fp32.close()
        paths.close()
        for m, mode in modes.items():
            m.train(mode)
    if n_seen == 0:
        raise ValueError("loader yielded no samples")
    log.info(
        "Fisher (%s, bn %s, %s backend): %d samples, %d classes, %.2fs",
        kind,
        bn_mode,
        paths.name,
        n_seen,
        paths.n_classes,
        time.perf_counter() - t0,
    )
    return {n: (acc[n] / n_seen).to(p.dtype) for n, p in trainable.items()}


class _Paths:
    """The backends one ``fisher_diagonal`` call may use, and which one computes each chunk."""

    def __init__(
        self,
        model: nn.Module,
        trainable: dict[str, Tensor],
        kind: str,
        mc_samples: int,
        backend: str,
        settings: FisherSettings,
    ) -> None:
        self.model, self.trainable, self.kind, self.mc_samples = model, trainable, kind, mc_samples
        self.backend, self.settings = backend, settings
        self.params = {n: p.detach() for n, p in trainable.items()}
        self.n_classes: int | None = None
        self.chain: Chain | None = None
        self.plan: ProbePlan | None = None
        if backend in ("auto", "probe"):
            try:
                self.plan = ProbePlan(model, trainable, settings)
            except Unsupported as err:
                if backend == "probe":
                    raise _cannot(backend, err) from err
                log.info("Fisher: probe backend unsupported (%s); using torch.func", err)
        if self.plan is not None:  # cotangents per sample (true: K−1, set once K is known)
            self.plan.rank = {"empirical": 1, "mc": mc_samples}.get(kind)

    @property
    def name(self) -> str:
        """The backend that computed the last chunk."""
        return "chain" if self.chain is not None else "probe" if self.plan is not None else "func"

    def try_chain(self, x: Tensor) -> int:
        """Take the chain backend if allowed and the model is a chain (traced on ``x``, one
        sample). Returns the most samples per chunk the chosen path allows."""
        if self.backend not in ("auto", "chain"):
            return 1 << 62
        try:
            self.chain = Chain.build(self.model, self.trainable, x, self.settings)
        except Unsupported as err:
            if self.backend == "chain":
                raise _cannot(self.backend, err) from err
            log.debug("Fisher: not a chain (%s)", err)
            return 1 << 62
        if self.plan is not None:
            self.plan.remove()
            self.plan = None
        rank = {"true": self.chain.classes - 1, "empirical": 1}.get(self.kind, self.mc_samples)
        return self.chain.max_chunk(rank)

    def cotangents(self, logits: Tensor, y: Tensor, uniform: Tensor | None) -> Tensor:
        """The chunk's cotangents [B, R, K]; checks K on the first call."""
        if self.n_classes is None:
            self.n_classes = logits.shape[1]
            if self.n_classes < 2:
                raise ValueError(f"need >= 2 classes, model returns {self.n_classes}")
            if self.plan is not None and self.kind == "true":
                self.plan.rank = self.n_classes - 1
        return cotangents(logits, y, self.kind, uniform)

    def chunk(self, x: Tensor, y: Tensor, uniform: Tensor | None) -> dict[str, Tensor]:
        """Σ over the chunk's samples and cotangents of squared per-sample gradients."""
        cot_of = functools.partial(self.cotangents, y=y, uniform=uniform)
        if self.chain is not None:
            return self.chain.chunk(x, cot_of)
        if self.plan is not None:
            try:
                return self.plan.chunk(self.model, x, cot_of)
            except Unsupported as err:
                if self.backend == "probe":
                    raise _cannot(self.backend, err) from err
                log.info("Fisher: probe backend unsupported (%s); using torch.func", err)
                self.plan.remove()
                self.plan = None
        return func_chunk(self.model, self.params, x, cot_of, self.settings.vmap_floats)

    def close(self) -> None:
        """Remove the probe hooks, if any."""
        if self.plan is not None:
            self.plan.remove()
