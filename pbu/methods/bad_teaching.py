"""Bad Teaching: Chundawat, Tarun, Mandal & Kankanhalli, "Can Bad Teaching Induce Forgetting?
Unlearning in Deep Networks Using an Incompetent Teacher", AAAI 2023 (authors' code:
vikram2000b/bad-teaching-unlearning).

The student starts as θ*. Each batch mixes forget and retained samples; the student is
distilled towards the *competent* teacher (θ*, frozen) on retained samples and towards an
*incompetent* teacher (the same architecture, randomly initialised, frozen) on forget samples::

    target_i = softmax(t_bad(x_i)/T)   if x_i is a forget sample
             = softmax(t_good(x_i)/T)  otherwise
    loss     = KL(target ‖ softmax(student(x)/T)), summed over classes, mean over the batch

The authors' ``UnlearnerLoss`` uses ``F.kl_div``'s default elementwise mean, i.e. this loss
divided by the class count; we use the batch mean (the KL as defined), which only rescales the
learning rate. Paper: Adam, lr 1e-4, 1 epoch, batch 256, T = 1, 30 % of the retained data.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.methods import FORGET_AND_RETAIN_SUBSET, MethodResult, Monitor, UnlearnInputs, register
from pbu.methods._common import (
    StepRecorder,
    adam,
    check_positive,
    frozen_copy,
    proportional_loaders,
)

log = logging.getLogger(__name__)


def incompetent_teacher(model: nn.Module, seed: int) -> nn.Module:
    """A frozen, eval-mode copy of ``model`` with every module's parameters re-initialised.

    Calls ``reset_parameters()`` on each submodule that has it (conv, linear, BatchNorm: which
    also resets the running statistics), on the CPU under a seeded, forked CPU generator, so
    the result depends only on ``seed`` and the global RNG stream is left untouched. Parameters
    owned directly by a module without ``reset_parameters`` (e.g. ConvNeXt's ``layer_scale``)
    keep their trained values.
    """
    device = next(model.parameters()).device
    bad = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for m in bad.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return frozen_copy(bad.to(device))


def bad_teacher_targets(
    good_logits: Tensor, bad_logits: Tensor, is_forget: Tensor, temperature: float
) -> Tensor:
    """Per-sample target distributions ``[B, K]``: the incompetent teacher's softened output
    for forget samples (``is_forget`` bool ``[B]``), the competent teacher's for the others."""
    p_good = F.softmax(good_logits / temperature, dim=1)  # [B, K]
    p_bad = F.softmax(bad_logits / temperature, dim=1)  # [B, K]
    return torch.where(is_forget[:, None], p_bad, p_good)


@register(
    "bad_teaching",
    access=FORGET_AND_RETAIN_SUBSET,
    hparams=("epochs", "batch_size", "lr", "temperature"),
    summary="student distilled from the original model on retained data and from a "
    "random teacher on forget data (Chundawat et al., AAAI 2023)",
)
def _bad_teaching(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_positive("bad_teaching", hp, "epochs", "batch_size", "lr", "temperature")
    assert inputs.forget is not None and inputs.retain is not None
    good = frozen_copy(model)
    bad = incompetent_teacher(model, seed)
    forget, retain, steps = proportional_loaders(
        inputs.forget, inputs.retain, hp["batch_size"], seed=seed, device=device
    )
    opt = adam(model, hp["lr"])
    T = hp["temperature"]
    rec = StepRecorder(model, monitor, steps)
    rec.start()
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        for (x_f, _), (x_r, _) in zip(forget, retain):
            x = torch.cat([x_f, x_r])  # [b_f + b_r, C, H, W]
            is_forget = torch.zeros(len(x), dtype=torch.bool, device=device)
            is_forget[: len(x_f)] = True
            with torch.no_grad():
                target = bad_teacher_targets(good(x), bad(x), is_forget, T)  # [B, K]
            log_p_s = F.log_softmax(model(x) / T, dim=1)
            loss = F.kl_div(log_p_s, target, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.record(epoch, kl=loss)
    model.eval()
    return MethodResult(model, rec.history(), rec.info())
