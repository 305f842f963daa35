"""Random-label fine-tuning on the forget data (Golatkar et al., CVPR 2020; SalUn's ``RL``).

Train θ* with cross-entropy on forget samples whose labels are replaced by a uniformly random
*other* class, drawn afresh for every batch, so the forget class loses its support without any
class being pushed up systematically.

Variant choice: forget data only (access "forget"). The common variant (SalUn's ``RL``,
Golatkar's) also mixes in retained data to protect the other classes; keeping this baseline
forget-only makes it comparable with PBU and NegGrad, which see the same data. The retain-mixing
variant is what ``salun`` runs (with its saliency mask).

Unlike SalUn's code (``torch.randint(0, K)``, which can redraw the true class), the relabelling
never assigns the true class (:func:`random_other_labels`). ``bn_mode`` as in PBU: "train"
(BatchNorm statistics from forget-only batches, as the usual code) or "eval".
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
    set_train_mode,
    sgd,
)

log = logging.getLogger(__name__)


def random_other_labels(labels: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """For each label, a class drawn uniformly from the ``num_classes - 1`` *other* classes.

    ``labels`` int64 ``[B]``; the draw happens on the CPU with ``generator`` (seeded, so runs
    repeat) and the result lands on ``labels.device``.
    """
    if num_classes < 2:
        raise ValueError(f"random relabelling needs at least 2 classes, got {num_classes}")
    offset = torch.randint(1, num_classes, labels.shape, generator=generator)  # 1..K-1
    return (labels.cpu() + offset).remainder(num_classes).to(labels.device)


@register(
    "random_labels",
    access=FORGET_ONLY,
    hparams=("epochs", "batch_size", "lr", "momentum", "bn_mode"),
    summary="fine-tune on forget samples relabelled with a random other class",
)
def _random_labels(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_positive("random_labels", hp, "epochs", "batch_size", "lr")
    check_non_negative("random_labels", hp, "momentum")
    check_bn_mode("random_labels", hp)
    assert inputs.forget is not None
    loader = inputs.forget.loader(hp["batch_size"], shuffle=True, seed=seed, device=device)
    gen = torch.Generator().manual_seed(seed)
    opt = sgd(model, hp["lr"], hp["momentum"], 0.0)
    rec = StepRecorder(model, monitor, len(loader))
    rec.start()
    for epoch in range(1, hp["epochs"] + 1):
        set_train_mode(model, hp["bn_mode"])
        for x, y in loader:
            y_rand = random_other_labels(y, inputs.num_classes, gen)  # [B], never == y
            logits = model(x)
            loss = F.cross_entropy(logits, y_rand)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.record(
                epoch,
                ce_random=loss,
                acc_forget_batch=(logits.detach().argmax(1) == y).float().mean() * 100,
            )
    model.eval()
    return MethodResult(model, rec.history(), rec.info())
