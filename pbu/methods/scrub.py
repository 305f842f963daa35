"""SCRUB: Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded Machine
Unlearning", NeurIPS 2023 (authors' code: meghdadk/SCRUB).

Teacher = θ* (frozen, eval mode); student starts at θ*. Each epoch:

- while ``epoch <= msteps``: one *max* pass over the forget data, each step
  ``loss = −KL_T(teacher ‖ student)`` on a forget batch (push the student away from the teacher
  where it must forget);
- then one *min* pass over the retain subset, each step
  ``loss = gamma · CE(student, y) + alpha · KL_T(teacher ‖ student)`` (stay close where it must
  remember).

Both passes share one SGD optimiser (momentum, weight decay), as in the authors' code.
``KL_T`` is the distillation KL at temperature T (× T², batch mean; their ``DistillKL``). Not
implemented: their learning-rate decay epochs (3, 5, 9: beyond the default 3 epochs) and the
SWA smoothing that starts at epoch 10 (``sstart``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.methods import FORGET_AND_RETAIN_SUBSET, MethodResult, Monitor, UnlearnInputs, register
from pbu.methods._common import (
    StepRecorder,
    check_non_negative,
    check_positive,
    distill_kl,
    frozen_copy,
    sgd,
)

log = logging.getLogger(__name__)


def scrub_max_step(
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    opt: torch.optim.Optimizer,
    temperature: float,
) -> Tensor:
    """One max-step: ascend KL_T(teacher ‖ student) on forget inputs ``x``; returns the KL."""
    with torch.no_grad():
        t_logits = teacher(x)
    kl = distill_kl(student(x), t_logits, temperature)
    opt.zero_grad(set_to_none=True)
    (-kl).backward()
    opt.step()
    return kl.detach()


def scrub_min_step(
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    y: Tensor,
    opt: torch.optim.Optimizer,
    temperature: float,
    alpha: float,
    gamma: float,
) -> tuple[Tensor, Tensor]:
    """One min-step on retained ``(x, y)``: descend gamma·CE + alpha·KL_T; returns (CE, KL)."""
    with torch.no_grad():
        t_logits = teacher(x)
    s_logits = student(x)
    ce = F.cross_entropy(s_logits, y)
    kl = distill_kl(s_logits, t_logits, temperature)
    loss = gamma * ce + alpha * kl
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return ce.detach(), kl.detach()


@register(
    "scrub",
    access=FORGET_AND_RETAIN_SUBSET,
    hparams=(
        "epochs",
        "msteps",
        "lr",
        "momentum",
        "weight_decay",
        "temperature",
        "alpha",
        "gamma",
        "forget_batch_size",
        "retain_batch_size",
    ),
    summary="alternate max-steps (KL to the original on forget) and min-steps (CE + KL "
    "on retained) (Kurmanji et al., NeurIPS 2023)",
)
def _scrub(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_positive(
        "scrub", hp, "epochs", "lr", "temperature", "forget_batch_size", "retain_batch_size"
    )
    check_non_negative("scrub", hp, "msteps", "momentum", "weight_decay", "alpha", "gamma")
    assert inputs.forget is not None and inputs.retain is not None
    teacher = frozen_copy(model)
    forget = inputs.forget.loader(hp["forget_batch_size"], shuffle=True, seed=seed, device=device)
    retain = inputs.retain.loader(
        hp["retain_batch_size"], shuffle=True, seed=seed + 1, device=device
    )
    opt = sgd(model, hp["lr"], hp["momentum"], hp["weight_decay"])
    T = hp["temperature"]
    rec = StepRecorder(model, monitor, len(retain))
    rec.start()
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        if epoch <= hp["msteps"]:
            for x, _ in forget:
                kl = scrub_max_step(model, teacher, x, opt, T)
                rec.record(epoch, phase=0.0, kl_forget=kl)
        for x, y in retain:
            ce, kl = scrub_min_step(model, teacher, x, y, opt, T, hp["alpha"], hp["gamma"])
            rec.record(epoch, phase=1.0, ce_retain=ce, kl_retain=kl)
    model.eval()
    info = rec.info(max_epochs=min(hp["msteps"], hp["epochs"]))
    info["epochs"] = float(hp["epochs"])  # passes over the retain subset (the min-steps)
    return MethodResult(model, rec.history(), info)
