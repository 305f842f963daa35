"""Negative-gradient baselines.

- ``neggrad``: gradient *ascent* on the cross-entropy of the forget data only (Golatkar et al.,
  CVPR 2020; SalUn's ``GA``). Blind to the retained data, like PBU, but with nothing that keeps
  θ near θ*: PBU without its Fisher and l2 terms (PBU's α-term alone). ``bn_mode`` as in PBU:
  "train" (the usual code: BatchNorm statistics from forget-only batches) or "eval".
  Unbounded ascent has no natural end, so it takes PBU's blind stopping rule too
  (``stop_rule="forget_acc"``: stop once accuracy on the forget TRAINING set, eval mode, is
  ``<= stop_threshold`` percent, checked after every step; ``"none"``: fixed epochs). With it,
  ``neggrad`` is PBU with β = γ = 0 and SGD instead of Adam: the ablation of PBU's stability
  terms.
- ``neggrad_plus``: "NegGrad+" of Kurmanji et al. (NeurIPS 2023, "Towards Unbounded Machine
  Unlearning"): per step, descent on a retained batch and ascent on a forget batch,
  ``loss = alpha · CE(retain) − (1 − alpha) · CE(forget)``. As in the SCRUB authors' code, the
  loop runs over the retained batches and cycles the forget batches alongside them, so an
  "epoch" is one pass over the retain subset.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from pbu.methods import (
    FORGET_AND_RETAIN_SUBSET,
    FORGET_ONLY,
    MethodResult,
    Monitor,
    UnlearnInputs,
    register,
)
from pbu.methods._common import (
    STOP_RULES,
    StepRecorder,
    accuracy_on,
    check_bn_mode,
    check_fraction,
    check_non_negative,
    check_positive,
    cycle,
    set_train_mode,
    sgd,
)

log = logging.getLogger(__name__)


@register(
    "neggrad",
    access=FORGET_ONLY,
    hparams=("epochs", "batch_size", "lr", "momentum", "bn_mode", "stop_rule", "stop_threshold"),
    summary="gradient ascent on the forget-class cross-entropy (NegGrad / GA)",
)
def _neggrad(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_positive("neggrad", hp, "epochs", "batch_size", "lr")
    check_non_negative("neggrad", hp, "momentum")
    check_bn_mode("neggrad", hp)
    if hp["stop_rule"] not in STOP_RULES:
        raise ValueError(f"neggrad.stop_rule must be one of {STOP_RULES}, got {hp['stop_rule']!r}")
    assert inputs.forget is not None
    loader = inputs.forget.loader(hp["batch_size"], shuffle=True, seed=seed, device=device)
    check = inputs.forget.loader(256, device=device)  # 256: see pbu/jobs/unlearn.py MONITOR_BATCH
    opt = sgd(model, hp["lr"], hp["momentum"], 0.0)
    rec = StepRecorder(model, monitor, len(loader))
    rec.start()
    stop_step = None
    for epoch in range(1, hp["epochs"] + 1):
        set_train_mode(model, hp["bn_mode"])
        for x, y in loader:  # forget class only
            ce = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            (-ce).backward()  # ascent
            opt.step()
            row: dict = {"ce_forget": ce}
            if hp["stop_rule"] == "forget_acc":
                row["acc_forget_train"] = accuracy_on(model, check)
                if row["acc_forget_train"] <= hp["stop_threshold"]:
                    stop_step = rec.step + 1
            rec.record(epoch, **row)
            if stop_step is not None:
                break
        if stop_step is not None:
            break
    model.eval()
    info = rec.info(
        stop_rule=hp["stop_rule"],
        stop_step=stop_step,
        stop_reason="max_epochs"
        if stop_step is None
        else f"forget_acc reached {hp['stop_threshold']}",
    )
    return MethodResult(model, rec.history(), info)


@register(
    "neggrad_plus",
    access=FORGET_AND_RETAIN_SUBSET,
    hparams=(
        "epochs",
        "batch_size",
        "forget_batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "alpha",
    ),
    summary="descent on retained + ascent on forget batches, weighted alpha / 1-alpha "
    "(NegGrad+, Kurmanji et al. 2023)",
)
def _neggrad_plus(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_positive("neggrad_plus", hp, "epochs", "batch_size", "forget_batch_size", "lr")
    check_non_negative("neggrad_plus", hp, "momentum", "weight_decay")
    check_fraction("neggrad_plus", hp, "alpha")
    assert inputs.forget is not None and inputs.retain is not None
    retain = inputs.retain.loader(hp["batch_size"], shuffle=True, seed=seed, device=device)
    forget = cycle(
        inputs.forget.loader(hp["forget_batch_size"], shuffle=True, seed=seed + 1, device=device)
    )
    opt = sgd(model, hp["lr"], hp["momentum"], hp["weight_decay"])
    a = hp["alpha"]
    rec = StepRecorder(model, monitor, len(retain))
    rec.start()
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        for x_r, y_r in retain:
            x_f, y_f = next(forget)
            ce_r = F.cross_entropy(model(x_r), y_r)
            ce_f = F.cross_entropy(model(x_f), y_f)
            loss = a * ce_r - (1 - a) * ce_f
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.record(epoch, ce_retain=ce_r, ce_forget=ce_f, loss=loss)
    model.eval()
    return MethodResult(model, rec.history(), rec.info())
