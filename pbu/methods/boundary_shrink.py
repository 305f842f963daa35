"""Boundary Shrink: Chen, Gao, Lin, Ding & Wang, "Boundary Unlearning: Rapid Forgetting of Deep
Networks via Shifting the Decision Space", CVPR 2023.

For each forget sample x (true class c), find its *nearest incorrect class* by a one-step FGSM
perturbation of the original model (frozen, eval mode)::

    x' = clip_[0,1](x + bound · sign ∇x CE(f_θ*(x), c))   (pixel space, then 8-bit rounding)
    y_nbi = argmax_{k ≠ c} f_θ*(x')_k

and fine-tune the model with cross-entropy towards ``y_nbi`` on the *original* x. The forget
class's decision region shrinks into its neighbours. Uses the forget data only.

As the authors' code: FGSM bound 0.1 in [0, 1] pixel units, discretised to 1/255, SGD with
momentum 0.9 (lr 1e-5, 10 epochs: far too slow for our small CPU models, see the config).
One deliberate difference: their label is the plain argmax at x', which is the true class
whenever the attack fails; ours excludes the true class, so the target is always a neighbour
(the fraction of samples where the attack itself crossed the boundary is logged as
``attack_success``). ``bn_mode`` as in PBU: "train" (the authors' code: BatchNorm statistics
from forget-only batches) or "eval".
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.methods import FORGET_ONLY, MethodResult, Monitor, UnlearnInputs, register
from pbu.methods._common import (
    StepRecorder,
    check_bn_mode,
    check_non_negative,
    check_positive,
    frozen_copy,
    set_train_mode,
    sgd,
)

log = logging.getLogger(__name__)


def fgsm_pixel(
    reference: nn.Module, x: Tensor, y: Tensor, bound: float, mean: Tensor, std: Tensor
) -> Tensor:
    """One FGSM step of size ``bound`` in [0, 1] pixel space on normalised inputs ``x``.

    ``x`` ``[B, C, H, W]`` is normalised with ``mean``/``std`` (``[1, C, 1, 1]``); the result is
    clipped to valid pixels, rounded to 8-bit levels and normalised again. The sign of the
    gradient is the same in both spaces (std > 0).
    """
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(reference(x), y)
    (grad,) = torch.autograd.grad(loss, [x])
    pixels = x.detach() * std + mean  # [B, C, H, W] in [0, 1]
    adv = (pixels + bound * grad.sign()).clamp(0.0, 1.0)
    adv = torch.round(adv * 255) / 255
    return (adv - mean) / std


def neighbour_labels(
    reference: nn.Module, x: Tensor, y: Tensor, bound: float, mean: Tensor, std: Tensor
) -> tuple[Tensor, Tensor]:
    """The nearest incorrect class of each sample and whether FGSM alone reached it.

    Returns ``(labels [B] int64, never equal to y; attack_success [B] bool)``. ``reference``
    should be in eval mode (it is not updated).
    """
    x_adv = fgsm_pixel(reference, x, y, bound, mean, std)
    with torch.no_grad():
        logits = reference(x_adv)  # [B, K]
        success = logits.argmax(1) != y
        logits[torch.arange(len(y), device=y.device), y] = float("-inf")
        return logits.argmax(1), success


@register(
    "boundary_shrink",
    access=FORGET_ONLY,
    hparams=("epochs", "batch_size", "lr", "momentum", "bound", "bn_mode"),
    summary="fine-tune forget samples towards their nearest incorrect class found by "
    "FGSM (Chen et al., CVPR 2023)",
)
def _boundary_shrink(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_positive("boundary_shrink", hp, "epochs", "batch_size", "lr", "bound")
    check_non_negative("boundary_shrink", hp, "momentum")
    check_bn_mode("boundary_shrink", hp)
    assert inputs.forget is not None
    spec = inputs.forget.spec
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    reference = frozen_copy(model)
    loader = inputs.forget.loader(hp["batch_size"], shuffle=True, seed=seed, device=device)
    opt = sgd(model, hp["lr"], hp["momentum"], 0.0)
    rec = StepRecorder(model, monitor, len(loader))
    rec.start()
    for epoch in range(1, hp["epochs"] + 1):
        set_train_mode(model, hp["bn_mode"])
        for x, y in loader:
            y_nbr, success = neighbour_labels(reference, x, y, hp["bound"], mean, std)
            loss = F.cross_entropy(model(x), y_nbr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.record(epoch, ce_neighbour=loss, attack_success=success.float().mean())
    model.eval()
    return MethodResult(model, rec.history(), rec.info())
