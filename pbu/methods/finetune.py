"""Fine-tuning on the retained data: the PBU paper's "fine-tuning" baseline.

Continue training θ* with cross-entropy on every retained training sample for a few epochs
(Golatkar et al., CVPR 2020, "Eternal Sunshine of the Spotless Net", used it as the naive
baseline; SalUn's ``FT`` is the same). Forgetting comes only from catastrophic interference: the
forget class is never seen, so its logit loses support. The method never receives the forget
data, only the class id (which it does not need either).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from pbu.methods import RETAIN_ONLY, MethodResult, Monitor, UnlearnInputs, register
from pbu.methods._common import StepRecorder, check_non_negative, check_positive, sgd

log = logging.getLogger(__name__)


@register(
    "finetune",
    access=RETAIN_ONLY,
    hparams=("epochs", "batch_size", "lr", "momentum", "weight_decay"),
    summary="SGD on all retained data for a few epochs (fine-tuning baseline)",
)
def _finetune(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_positive("finetune", hp, "epochs", "batch_size", "lr")
    check_non_negative("finetune", hp, "momentum", "weight_decay")
    assert inputs.retain is not None
    loader = inputs.retain.loader(hp["batch_size"], shuffle=True, seed=seed, device=device)
    opt = sgd(model, hp["lr"], hp["momentum"], hp["weight_decay"])
    rec = StepRecorder(model, monitor, len(loader))
    rec.start()
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        for x, y in loader:  # x [B, C, H, W], y [B]: retained classes only
            logits = model(x)  # [B, K]
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.record(epoch, ce_retain=loss)
    model.eval()
    return MethodResult(model, rec.history(), rec.info())
