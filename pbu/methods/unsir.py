"""UNSIR: Tarun, Chundawat, Mandal & Kankanhalli, "Fast Yet Effective Machine Unlearning",
IEEE TNNLS 2023 (authors' code: vikram2000b/Fast-Machine-Unlearning).

Zero-glance unlearning: the method never sees a forget-class sample, only the class id.

1. **Error-maximising noise.** A batch of images ``N`` (``[noise_samples, C, H, W]``, in the
   model's normalised input space, initialised N(0, 1)) is optimised with Adam to *maximise*
   the model's loss on the forget class, with an l2 penalty that keeps it bounded::

       min_N  −CE(f(N), c) + noise_reg · mean_i Σ_pixels N_i²

   The model is in eval mode and frozen here (our choice: the authors' script ran it on a
   freshly loaded model, i.e. in train mode, which also let the noise batches move the
   BatchNorm running statistics).
2. **Impair.** One pass of Adam (lr ``impair_lr``) over the noise, labelled ``c`` and repeated
   ``noise_repeats`` times, mixed with the retain subset (the authors repeat one noise batch 20
   times).
3. **Repair.** Adam (lr ``repair_lr``) over the retain subset alone.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.methods import CLASS_ID_AND_RETAIN_SUBSET, MethodResult, Monitor, UnlearnInputs, register
from pbu.methods._common import StepRecorder, adam, check_non_negative, check_positive

log = logging.getLogger(__name__)


def learn_error_max_noise(
    model: nn.Module,
    forget_class: int,
    shape: tuple[int, ...],
    *,
    steps: int,
    lr: float,
    reg: float,
    seed: int,
    device: torch.device,
) -> Tensor:
    """Noise ``[shape]`` that maximises the model's cross-entropy for label ``forget_class``.

    The model is used in eval mode with its parameters frozen, and is left exactly as it was
    (mode and ``requires_grad`` restored, no parameter or buffer touched).
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=gen).to(device).requires_grad_(True)  # [N, C, H, W]
    target = torch.full((shape[0],), forget_class, dtype=torch.long, device=device)
    opt = torch.optim.Adam([noise], lr=lr)
    was_training = model.training
    grads_on = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            ce = F.cross_entropy(model(noise), target)
            penalty = noise.pow(2).flatten(1).sum(1).mean()
            loss = -ce + reg * penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p, g in zip(model.parameters(), grads_on):
            p.requires_grad_(g)
        model.train(was_training)
    return noise.detach()


@register(
    "unsir",
    access=CLASS_ID_AND_RETAIN_SUBSET,
    hparams=(
        "noise_samples",
        "noise_steps",
        "noise_lr",
        "noise_reg",
        "noise_repeats",
        "batch_size",
        "impair_epochs",
        "impair_lr",
        "repair_epochs",
        "repair_lr",
    ),
    summary="error-maximising noise for the forget class, impair on noise + retain "
    "subset, repair on the retain subset (Tarun et al., TNNLS 2023)",
)
def _unsir(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    check_positive(
        "unsir",
        hp,
        "noise_samples",
        "noise_steps",
        "noise_lr",
        "noise_repeats",
        "batch_size",
        "impair_epochs",
        "impair_lr",
        "repair_lr",
    )
    check_non_negative("unsir", hp, "noise_reg", "repair_epochs")
    retain = inputs.retain
    assert retain is not None and inputs.forget is None
    spec = retain.spec
    shape = (hp["noise_samples"], spec.channels, spec.image_size, spec.image_size)
    noise = learn_error_max_noise(
        model,
        inputs.forget_class,
        shape,
        steps=hp["noise_steps"],
        lr=hp["noise_lr"],
        reg=hp["noise_reg"],
        seed=seed,
        device=device,
    )
    with torch.no_grad():
        was = model.training
        model.eval()
        noise_ce = F.cross_entropy(
            model(noise), torch.full((len(noise),), inputs.forget_class, device=device)
        ).item()
        model.train(was)
    noise_set = noise.repeat(hp["noise_repeats"], 1, 1, 1)  # [R*N, C, H, W]
    n_noise, n_r, bs = len(noise_set), len(retain), hp["batch_size"]

    # Impair: mixed batches, each with its share of noise and of retained samples.
    target_steps = max(1, math.ceil((n_noise + n_r) / bs))
    impair_retain = retain.loader(
        math.ceil(n_r / target_steps), shuffle=True, seed=seed, device=device
    )
    impair_steps = len(impair_retain)
    repair_retain = retain.loader(bs, shuffle=True, seed=seed + 1, device=device)
    gen = torch.Generator().manual_seed(seed)
    rec = StepRecorder(model, monitor, impair_steps)
    rec.start()

    opt = adam(model, hp["impair_lr"])
    model.train()
    for epoch in range(1, hp["impair_epochs"] + 1):
        chunks = torch.randperm(n_noise, generator=gen).to(device).tensor_split(impair_steps)
        for (x_r, y_r), idx in zip(impair_retain, chunks):
            x = torch.cat([noise_set[idx], x_r])  # [b_noise + b_r, C, H, W]
            y = torch.cat([torch.full((len(idx),), inputs.forget_class, device=device), y_r])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.record(epoch, phase=0.0, ce_impair=loss)

    opt = adam(model, hp["repair_lr"])
    for epoch in range(1, hp["repair_epochs"] + 1):
        for x, y in repair_retain:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.record(hp["impair_epochs"] + epoch, phase=1.0, ce_repair=loss)
    model.eval()
    info = rec.info(noise_ce=noise_ce, impair_steps=hp["impair_epochs"] * impair_steps)
    # Epochs over the data iterated: impair epochs (noise + retain) plus repair epochs.
    info["epochs"] = float(hp["impair_epochs"] + hp["repair_epochs"])
    return MethodResult(model, rec.history(), info)
