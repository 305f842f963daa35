"""Partially Blinded Unlearning (Panda, Sourav & Prathosh, AAAI 2025).

Minimise, from θ = θ*, with Adam on forget-class training batches only::

    L(θ) = α·(−CE(S_n batch; θ)) + β·Σ_j F_jj (θ_j − θ*_j)² + γ·Σ_j (θ_j − θ*_j)²

where F is the diagonal Fisher at θ* on the forget class (``pbu.fisher_diagonal``). As in the
authors' code: no ½, sums over every trainable parameter, mean CE over the batch.

The method is *blind* to the retained data: its arguments hold the model, the forget-class
training data and the Fisher, nothing else. The same holds for its stopping rule:

- ``stop_rule="forget_acc"`` (default): after every ``check_every`` steps, measure accuracy on
  the forget-class TRAINING set (model in eval mode) and stop as soon as it is
  ``<= stop_threshold`` percent. ``check_samples`` > 0 measures a fixed seeded sample of that
  many forget-training images instead of all of them: the check's cost then stops growing with
  |S_n| (on Fashion-MNIST's 6,000 images per class it cost more than the unlearning steps).
  The authors' own logs show retained accuracy peaking after 1-2 epochs and collapsing
  afterwards (−CE is unbounded), so the rule acts per step, not per epoch.
- ``stop_rule="forget_ce"``: stop once the mean CE on the forget training set reaches
  ``stop_threshold`` nats (e.g. ln K, the loss of a uniform guess).
- ``stop_rule="none"``: the authors' behaviour, a fixed number of epochs.

``epochs`` is always the upper bound on training.

``fisher_scale`` rescales F before training (not in the paper; it asks whether the Fisher term can
matter at all): ``"none"`` uses F as given, the authors' loss; ``"unit_mean"`` uses F / mean(F),
the mean over every entry of every trainable parameter, so that β·F_jj / γ compares the two
stability terms on equal footing. With the authors' β = 100, γ = 4001 and a confident model's
forget-set Fisher (mean ~1e-3 on mnist5k's small CNN) the Fisher term's pull is ~F/40 of the l2
term's, i.e. negligible; rescaled to unit mean it is ~1/40 on average and larger where F is.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.data import random_subset
from pbu.methods import FORGET_ONLY, MethodResult, Monitor, UnlearnInputs, register

log = logging.getLogger(__name__)

STOP_RULES = ("forget_acc", "forget_ce", "none")
BN_MODES = ("train", "eval")
FISHER_SCALES = ("none", "unit_mean")


@dataclass(frozen=True)
class PBUConfig:
    """PBU's hyperparameters. The paper's MNIST/ResNet-18 values: α ∈ {631, 721},
    β ∈ {90, 100}, γ = 4001, Adam lr 1e-4, batch 64, 5 epochs, BN in train mode, F as computed
    (``fisher_scale="none"``)."""

    alpha: float
    beta: float
    gamma: float
    lr: float
    batch_size: int
    epochs: int
    bn_mode: str  # "train" (authors: BN running stats update on forget batches) | "eval"
    stop_rule: str  # "forget_acc" | "forget_ce" | "none"
    stop_threshold: float  # percent for forget_acc, nats for forget_ce; ignored for none
    check_every: int  # steps between stopping-rule checks
    fisher_scale: str  # "none" (authors: F as computed) | "unit_mean" (F / mean F)
    check_samples: int = 0  # forget-train images the rule measures (0: all of them)

    def __post_init__(self) -> None:
        for k in ("alpha", "beta", "gamma"):
            if getattr(self, k) < 0:
                raise ValueError(f"pbu.{k} must be >= 0, got {getattr(self, k)}")
        if not self.lr > 0:
            raise ValueError(f"pbu.lr must be > 0, got {self.lr}")
        if self.batch_size <= 0 or self.epochs <= 0 or self.check_every <= 0:
            raise ValueError("pbu.batch_size, pbu.epochs and pbu.check_every must be > 0")
        if self.check_samples < 0:
            raise ValueError(f"pbu.check_samples must be >= 0, got {self.check_samples}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"pbu.bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        if self.stop_rule not in STOP_RULES:
            raise ValueError(f"pbu.stop_rule must be one of {STOP_RULES}, got {self.stop_rule!r}")
        if self.fisher_scale not in FISHER_SCALES:
            raise ValueError(
                f"pbu.fisher_scale must be one of {FISHER_SCALES}, got {self.fisher_scale!r}"
            )


def scale_fisher(fisher: dict[str, Tensor], how: str) -> dict[str, Tensor]:
    """``fisher`` as the loss uses it: unchanged (``"none"``), or divided by its mean over every
    entry of every tensor (``"unit_mean"``), so the rescaled Fisher averages 1. A new dict; the
    caller's tensors are not modified."""
    if how == "none":
        return dict(fisher)
    if how != "unit_mean":
        raise ValueError(f"fisher_scale must be one of {FISHER_SCALES}, got {how!r}")
    total = sum(float(f.double().sum()) for f in fisher.values())
    count = sum(f.numel() for f in fisher.values())
    mean = total / max(count, 1)
    if not (math.isfinite(mean) and mean > 0):
        raise ValueError(
            f"fisher_scale unit_mean: the Fisher's mean is {mean}, so it cannot be "
            f"rescaled to unit mean (a zero or non-finite Fisher)"
        )
    return {n: f / mean for n, f in fisher.items()}


def pbu_loss_terms(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    anchor: dict[str, Tensor],
    fisher: dict[str, Tensor],
    cfg: PBUConfig,
) -> dict[str, Tensor]:
    """The three terms of the PBU loss on one forget batch (each a scalar tensor)."""
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    fisher_term = logits.new_zeros(())
    l2_term = logits.new_zeros(())
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        d2 = (p - anchor[name]).pow(2)
        fisher_term = fisher_term + (fisher[name] * d2).sum()
        l2_term = l2_term + d2.sum()
    return {
        "ce_forget": ce,
        "term_forget": -cfg.alpha * ce,
        "term_fisher": cfg.beta * fisher_term,
        "term_l2": cfg.gamma * l2_term,
        "acc_forget_batch": (logits.argmax(1) == y).float().mean() * 100,
    }


@torch.no_grad()
def _forget_stats(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """Accuracy (%) and mean CE on the forget training set, eval mode."""
    was = model.training
    model.eval()
    correct, ce_sum, n = 0, 0.0, 0
    for x, y in loader:
        logits = model(x)
        correct += (logits.argmax(1) == y).sum().item()
        ce_sum += F.cross_entropy(logits, y, reduction="sum").item()
        n += len(y)
    model.train(was)
    return 100.0 * correct / max(n, 1), ce_sum / max(n, 1)


def unlearn_pbu(
    model: nn.Module,
    forget_loader: Iterable[tuple[Tensor, Tensor]],
    fisher: dict[str, Tensor],
    cfg: PBUConfig,
    *,
    check_loader: Iterable[tuple[Tensor, Tensor]] | None = None,
    monitor: Monitor | None = None,
    inplace: bool = False,
) -> MethodResult:
    """Apply PBU to ``model`` (θ*) with forget-class batches from ``forget_loader``.

    ``forget_loader`` is any re-iterable of ``(x, y)`` batches on the model's device (shuffled
    per epoch by the caller's loader). ``check_loader`` (default: ``forget_loader``) is what the
    stopping rule measures; it must hold forget-class data only. ``fisher`` is keyed like
    ``model.named_parameters()``. Returns the unlearned model (a copy unless ``inplace``), the
    per-step history of the loss terms and where/why training stopped.
    """
    if not inplace:
        model = copy.deepcopy(model)
    check_loader = forget_loader if check_loader is None else check_loader
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, _ in named if n not in fisher]
    if missing:
        raise ValueError(f"Fisher lacks {len(missing)} trainable parameter(s), e.g. {missing[0]}")
    anchor = {n: p.detach().clone() for n, p in named}
    device = named[0][1].device
    fisher = {
        n: fisher[n].detach().to(device=device, dtype=named[i][1].dtype)
        for i, (n, _) in enumerate(named)
    }
    fisher = scale_fisher(fisher, cfg.fisher_scale)  # over the trainable parameters it covers
    opt = torch.optim.Adam([p for _, p in named], lr=cfg.lr)
    steps_per_epoch = max(1, len(forget_loader)) if hasattr(forget_loader, "__len__") else None

    history: list[dict[str, float]] = []
    info: dict = {"stop_rule": cfg.stop_rule, "stop_reason": "max_epochs", "stop_step": None}

    def check(step: int) -> bool:
        if cfg.stop_rule == "none":
            return False
        acc, ce = _forget_stats(model, check_loader)
        history[-1].update(acc_forget_train=acc, ce_forget_train=ce)
        hit = (
            acc <= cfg.stop_threshold if cfg.stop_rule == "forget_acc" else ce >= cfg.stop_threshold
        )
        if hit:
            info.update(stop_reason=f"{cfg.stop_rule} reached {cfg.stop_threshold}", stop_step=step)
        return hit

    step = 0
    if monitor is not None:
        monitor(model, 0)
    done = False
    for epoch in range(1, cfg.epochs + 1):
        model.train(cfg.bn_mode == "train")
        for x, y in forget_loader:
            terms = pbu_loss_terms(model, x, y, anchor, fisher, cfg)
            loss = terms["term_forget"] + terms["term_fisher"] + terms["term_l2"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            row = {k: v.item() for k, v in terms.items()}
            row.update(step=step, epoch=epoch, loss_total=loss.item())
            if not math.isfinite(row["loss_total"]):
                raise FloatingPointError(
                    f"PBU loss became {row['loss_total']} at step {step}; lower alpha or lr"
                )
            history.append(row)
            if step % cfg.check_every == 0 and check(step):
                done = True
            if monitor is not None:
                monitor(model, step)
            if done:
                break
        if done:
            break
    if not done and cfg.stop_rule != "none" and step % cfg.check_every != 0:
        check(step)  # record the final state
    for row in history:
        row["stopped"] = float(row["step"] == info["stop_step"])
    info["steps"] = step
    info["epochs"] = step / steps_per_epoch if steps_per_epoch else float(epoch)
    model.eval()
    return MethodResult(model=model, history=history, info=info)


@register(
    "pbu",
    access=FORGET_ONLY,
    needs_fisher=True,
    hparams=(
        "alpha",
        "beta",
        "gamma",
        "lr",
        "batch_size",
        "epochs",
        "bn_mode",
        "stop_rule",
        "stop_threshold",
        "check_every",
        "check_samples",
        "fisher_scale",
    ),
    summary="gradient ascent on the forget class held near θ* by the forget-set Fisher "
    "and an l2 term (Panda et al., AAAI 2025)",
)
def _pbu(
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: dict,
    *,
    device: torch.device,
    seed: int,
    monitor: Monitor | None = None,
) -> MethodResult:
    cfg = PBUConfig(**hp)
    assert inputs.forget is not None and inputs.fisher is not None
    loader = inputs.forget.loader(cfg.batch_size, shuffle=True, seed=seed, device=device)
    check_data = inputs.forget
    if 0 < cfg.check_samples < len(check_data):  # a fixed seeded sample of S_n, still blind
        check_data = check_data.subset(random_subset(len(check_data), cfg.check_samples, seed))
    check = check_data.loader(256, device=device)  # 256: see pbu/jobs/unlearn.py MONITOR_BATCH
    return unlearn_pbu(
        model, loader, inputs.fisher, cfg, check_loader=check, monitor=monitor, inplace=True
    )
