"""Selective Synaptic Dampening: Foster, Schoepf & Brintrup, AAAI 2024 (authors' code:
if-loops/selective-synaptic-dampening, ``ssd.py`` / ``ParameterPerturber``).

Retraining-free: one pass to measure how important each parameter is for the forget set and for
the whole training set, then a multiplicative shrink of the parameters that matter much more to
the forget set::

    select  i  where  I_Df,i > alpha · I_D,i
    θ_i ← β_i · θ_i   with   β_i = min(lambda · I_D,i / I_Df,i, 1)

Paper defaults for ResNet-18 on CIFAR: alpha = 10, lambda = 1 (ViT: alpha 5).

Importance, as SSD defines it in code (not :func:`pbu.fisher.fisher_diagonal`, which
averages per-sample squared gradients): the model in eval mode, cross-entropy with the true
labels, and the *mean over batches of the squared batch-mean gradient*,
``I = (1/#batches) Σ_b (∇θ CE_b)²``, which depends on the batch size. For D, SSD iterates an
unshuffled ``ConcatDataset(retain, forget)``; we reuse the forget batches already computed, so
``I_D = (Σ_retain batches + Σ_forget batches) / (#retain + #forget batches)``: identical except
for the one batch that straddles the boundary in SSD's loader, and one pass over D instead of
one and a bit.

With K balanced classes and this I_D, ``I_Df <= (#D batches / #forget batches) · I_D ≈ K · I_D``
elementwise, so nothing can be selected unless alpha < ≈K: the paper's alpha = 10 (set for
CIFAR-100 / CIFAR-20) selects nothing on a 10-class dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.methods import FULL_TRAIN, MethodResult, Monitor, UnlearnInputs, register
from pbu.methods._common import StepRecorder, check_non_negative, check_positive, trainable

log = logging.getLogger(__name__)


def squared_grad_sums(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[dict[str, Tensor], int]:
    """Σ over batches of the squared gradient of the batch-mean cross-entropy, per parameter,
    and the number of batches. The model is put in eval mode (as SSD does) and left so."""
    model.eval()
    named = trainable(model)
    sums = {n: torch.zeros_like(p) for n, p in named}
    count = 0
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [p for _, p in named])
        for (n, _), g in zip(named, grads):
            sums[n] += g.pow(2)
        count += 1
    return sums, count


@torch.no_grad()
def ssd_dampen(
    model: nn.Module,
    global_imp: dict[str, Tensor],
    forget_imp: dict[str, Tensor],
    alpha: float,
    lam: float,
) -> dict[str, int]:
    """Apply SSD's selection and dampening in place; return how many entries each parameter
    had selected (``{name: count}``)."""
    selected = {}
    for n, p in trainable(model):
        i_d, i_f = global_imp[n], forget_imp[n]
        sel = i_f > alpha * i_d  # bool, shape of p; implies i_f > 0
        beta = (lam * i_d / i_f.clamp_min(torch.finfo(i_f.dtype).tiny)).clamp(max=1.0)
        p.copy_(torch.where(sel, p * beta, p))
        selected[n] = int(sel.sum())
    return selected


@register(
    "ssd",
    access=FULL_TRAIN,
    hparams=("alpha", "lambda", "batch_size"),
    summary="dampen parameters far more important to the forget set than to the "
    "training set (Foster et al., AAAI 2024)",
)
def _ssd(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_positive("ssd", hp, "batch_size")
    check_non_negative("ssd", hp, "alpha", "lambda")
    assert inputs.forget is not None and inputs.retain is not None
    rec = StepRecorder(model, monitor, 1)
    rec.start()
    forget = inputs.forget.loader(hp["batch_size"], device=device)  # unshuffled, as SSD
    retain = inputs.retain.loader(hp["batch_size"], device=device)
    sums_f, n_f = squared_grad_sums(model, forget)
    sums_r, n_r = squared_grad_sums(model, retain)
    forget_imp = {n: s / n_f for n, s in sums_f.items()}
    global_imp = {n: (sums_f[n] + sums_r[n]) / (n_f + n_r) for n in sums_f}
    selected = ssd_dampen(model, global_imp, forget_imp, hp["alpha"], hp["lambda"])
    total = sum(p.numel() for _, p in trainable(model))
    n_sel = sum(selected.values())
    log.info("ssd: dampened %d of %d parameters (%.2f%%)", n_sel, total, 100 * n_sel / total)
    rec.record(1, dampened=float(n_sel), dampened_fraction=n_sel / total)
    model.eval()
    # One update; the importance pass visits every training sample once (one epoch over D).
    info = rec.info(importance_batches=n_f + n_r, dampened=n_sel, dampened_per_param=selected)
    info["epochs"] = 1.0
    return MethodResult(model, rec.history(), info)
