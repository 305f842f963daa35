"""SalUn: Fan, Liu, Zhang, Wei, Wong & Liu, "SalUn: Empowering Machine Unlearning via Gradient-
based Weight Saliency in Both Image Classification and Generation", ICLR 2024 (authors' code:
OPTML-Group/Unlearn-Saliency, ``generate_mask.py`` and ``unlearn/RL.py``).

1. **Saliency mask.** At θ*, model in eval mode, the gradient of the forget loss
   ``g = ∇θ Σ_batches CE(forget batch)`` (the authors sum batch-mean gradients). The mask keeps
   the ``mask_fraction`` of all trainable weights with the largest ``|g|``, ranked globally
   across layers (the paper's hard threshold ``|g| ≥ γ``; its default γ is the median, i.e.
   ``mask_fraction = 0.5``).
2. **Masked random-label fine-tuning.** SGD on mixed batches of forget samples relabelled with a
   random other class and retain-subset samples with their true labels, updating only the
   masked weights: gradients are multiplied by the mask and every unmasked weight is restored
   bitwise after each step (so weight decay and momentum cannot move it either). BatchNorm
   running statistics are buffers, not weights, and still update in train mode, as in the
   authors' code.

Differences from the authors' code: their mask script ranks ascending and keeps ``rank <
fraction·n`` and takes SGD steps while accumulating the gradient; we follow the paper's
definition (largest magnitudes, gradient at θ*). Their ``RL`` draws labels with
``randint(0, K)``, which can redraw the true class; ours never does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.methods import FORGET_AND_RETAIN_SUBSET, MethodResult, Monitor, UnlearnInputs, register
from pbu.methods._common import (
    StepRecorder,
    check_fraction,
    check_non_negative,
    check_positive,
    proportional_loaders,
    sgd,
    trainable,
)
from pbu.methods.random_labels import random_other_labels

log = logging.getLogger(__name__)


def saliency_mask(
    model: nn.Module, forget_batches: Iterable[tuple[Tensor, Tensor]], fraction: float
) -> dict[str, Tensor]:
    """Boolean masks (keyed like ``named_parameters``) selecting the ``fraction`` of all
    trainable weights with the largest |∇ forget CE| at the current θ (ties broken by topk).

    The model is put in eval mode; its parameters are not changed.
    """
    was = model.training
    model.eval()
    named = trainable(model)
    grad_sum = [torch.zeros_like(p) for _, p in named]
    for x, y in forget_batches:
        loss = F.cross_entropy(model(x), y)
        for acc, g in zip(grad_sum, torch.autograd.grad(loss, [p for _, p in named])):
            acc += g
    model.train(was)
    flat = torch.cat([g.abs().flatten() for g in grad_sum])  # [P]
    k = int(round(fraction * flat.numel()))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    masks, start = {}, 0
    for n, p in named:
        masks[n] = keep[start : start + p.numel()].view_as(p)
        start += p.numel()
    return masks


@register(
    "salun",
    access=FORGET_AND_RETAIN_SUBSET,
    hparams=("mask_fraction", "epochs", "batch_size", "lr", "momentum", "weight_decay"),
    summary="random-label + retain fine-tuning of only the weights most salient for the "
    "forget loss (Fan et al., ICLR 2024)",
)
def _salun(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_fraction("salun", hp, "mask_fraction")
    check_positive("salun", hp, "epochs", "batch_size", "lr")
    check_non_negative("salun", hp, "momentum", "weight_decay")
    assert inputs.forget is not None and inputs.retain is not None
    masks = saliency_mask(
        model, inputs.forget.loader(hp["batch_size"], device=device), hp["mask_fraction"]
    )
    named = trainable(model)
    theta0 = {n: p.detach().clone() for n, p in named}
    forget, retain, steps = proportional_loaders(
        inputs.forget, inputs.retain, hp["batch_size"], seed=seed, device=device
    )
    gen = torch.Generator().manual_seed(seed)
    opt = sgd(model, hp["lr"], hp["momentum"], hp["weight_decay"])
    rec = StepRecorder(model, monitor, steps)
    rec.start()
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        for (x_f, y_f), (x_r, y_r) in zip(forget, retain):
            x = torch.cat([x_f, x_r])  # [b_f + b_r, C, H, W]
            y = torch.cat([random_other_labels(y_f, inputs.num_classes, gen), y_r])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for n, p in named:
                if p.grad is not None:
                    p.grad.mul_(masks[n])
            opt.step()
            with torch.no_grad():
                for n, p in named:
                    p.copy_(torch.where(masks[n], p, theta0[n]))
            rec.record(epoch, ce=loss)
    model.eval()
    total = sum(m.numel() for m in masks.values())
    n_mask = sum(int(m.sum()) for m in masks.values())
    return MethodResult(model, rec.history(), rec.info(masked=n_mask, mask_total=total))
