"""Depth of forgetting: relearn time, the Anamnesis Index, and linear probes on frozen
features (:mod:`pbu.metrics`). These need the model itself, not only its outputs."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.data import cycle
from pbu.metrics.core import ArrayLike, Batch, _as_tensor, _EvalMode, accuracy, collect_outputs

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Depth of forgetting: relearn time and linear probes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelearnResult:
    """Outcome of :func:`relearn_time`.

    ``steps``: optimiser steps until the forget accuracy first reached the threshold (0 = already
    there before any step); ``max_steps + 1`` when it never did (then ``reached`` is False, and
    the number is a lower bound). ``accuracies[t]``: forget accuracy (%) after ``t`` steps.
    """

    steps: int
    reached: bool
    accuracies: list[float] = field(default_factory=list)


def relearn_time(
    model: nn.Module,
    forget_loader: Iterable[Batch],
    evaluate: Iterable[Batch] | Callable[[nn.Module], float],
    *,
    lr: float,
    max_steps: int,
    threshold: float,
    optimizer: str = "adam",
    seed: int,
) -> RelearnResult:
    """Relearn time: steps of fine-tuning on forget-class samples until they are recognised again.

    A deep copy of ``model`` is trained (train mode, cross-entropy, one optimiser step per batch
    of ``forget_loader``, cycling through it) with ``optimizer`` = ``"adam"`` (Adam, default
    betas) or ``"sgd"`` (plain SGD, no momentum) at learning rate ``lr``. Before the first step
    and after each step the forget accuracy is measured, either on the loader ``evaluate``
    (eval mode, via :func:`accuracy`) or as ``evaluate(model_copy)`` (a percentage). The count
    stops when it reaches ``threshold`` percent. The caller's model is never modified; the global
    torch RNG state is restored afterwards (``seed`` seeds the copy's dropout etc.).
    """
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    student = copy.deepcopy(model)
    device = next(student.parameters()).device
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(student.parameters(), lr=lr)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: adam, sgd")

    def forget_acc() -> float:
        return evaluate(student) if callable(evaluate) else accuracy(student, evaluate)

    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        accs = [forget_acc()]
        if accs[0] >= threshold:
            return RelearnResult(0, True, accs)
        batches = iter(cycle(forget_loader))
        for step in range(1, max_steps + 1):
            x, y = next(batches)
            student.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(student(x), y).backward()
            opt.step()
            accs.append(forget_acc())
            if accs[-1] >= threshold:
                return RelearnResult(step, True, accs)
    log.warning(
        "relearn_time: forget accuracy %.2f%% < %.2f%% after %d steps",
        accs[-1],
        threshold,
        max_steps,
    )
    return RelearnResult(max_steps + 1, False, accs)


def steps_to_reach(accuracies: list[float], threshold: float) -> int | None:
    """First step ``t`` with ``accuracies[t] >= threshold`` (``accuracies[0]`` is before any
    step, as in :class:`RelearnResult`), or None if the trajectory never gets there.

    A :func:`relearn_time` run to the highest of several thresholds gives each lower one's count
    as well: the trajectory up to its first crossing is the one a run stopping there would have
    taken (same seed, same batches).
    """
    return next((t for t, acc in enumerate(accuracies) if acc >= threshold), None)


def anamnesis_target(original_accuracy: float, alpha: float) -> float:
    """Forget accuracy (%) a model must regain to count as relearned in the Anamnesis Index:
    within ``alpha`` percent of the ORIGINAL model's forget accuracy, ``(1 - alpha/100) * acc``.

    Chundawat et al., "Zero-shot machine unlearning" (IEEE TIFS 2023): r_t(M, M_orig, alpha)
    counts the steps until M comes within alpha % of M_orig's accuracy on the forget class; the
    authors' code (``metrics.ain``, ``error_range=0.05``) uses ``(1 - 0.05) * AccForget``, a
    relative band, with alpha = 5 % by default.
    """
    if not 0.0 <= alpha < 100.0:
        raise ValueError(f"alpha must be in [0, 100) percent, got {alpha}")
    return (1.0 - alpha / 100.0) * original_accuracy


def anamnesis_index(steps_model: int, steps_oracle: int) -> float:
    """Anamnesis Index (Chundawat et al., "Zero-shot machine unlearning", IEEE TIFS 2023).

    ``AIN = r_t(M_u, M_orig, alpha) / r_t(M_s, M_orig, alpha)``: the relearn steps of the
    unlearned model over those of the retrain oracle (trained from scratch without the class),
    both counted by :func:`relearn_time` with the same data, seed and optimiser up to the same
    target, :func:`anamnesis_target`. About 1 = as deeply forgotten as retraining; well below 1
    = the forgotten class comes back quickly (shallow forgetting). NaN when the oracle needs 0
    steps (ratio undefined).
    """
    if steps_model < 0 or steps_oracle < 0:
        raise ValueError(f"step counts must be >= 0, got {steps_model}, {steps_oracle}")
    if steps_oracle == 0:
        log.warning("anamnesis_index: the oracle already reaches the target; AIN undefined")
        return math.nan
    return steps_model / steps_oracle


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear module")
    return linears[-1]


@torch.no_grad()
def penultimate_features(model: nn.Module, loader: Iterable[Batch]) -> Tensor:
    """Frozen penultimate features: the input of the model's classifier layer, float32 ``[N, D]``.

    Rule: the classifier is the LAST ``nn.Linear`` in ``model.modules()`` order (registration
    order); a forward hook captures its input, flattened to ``[B, D]``. Eval mode, ``no_grad``;
    each submodule's mode is restored afterwards.
    """
    captured: list[Tensor] = []
    head = _last_linear(model)
    handle = head.register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0].detach().flatten(1).float().cpu())
    )
    try:
        with _EvalMode(model):
            for x, _y in loader:
                model(x)
    finally:
        handle.remove()
    if not captured:
        raise ValueError("penultimate_features: the loader yielded no batches")
    return torch.cat(captured)


@torch.no_grad()
def outputs_and_features(
    model: nn.Module,
    loader: Iterable[Batch],
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One pass: logits (as :func:`collect_outputs`), labels and penultimate features.

    The features follow :func:`penultimate_features`' rule; they are ``None`` for a model without
    an ``nn.Linear`` head (e.g. All-CNN, whose classifier is a 1x1 convolution).
    """
    captured: list[Tensor] = []
    try:
        head = _last_linear(model)
    except ValueError:
        head = None
    handle = (
        head.register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0].detach().flatten(1).float().cpu())
        )
        if head is not None
        else None
    )
    try:
        logits, labels = collect_outputs(model, loader)
    finally:
        if handle is not None:
            handle.remove()
    return logits, labels, torch.cat(captured) if captured else None


def linear_probe(
    train_features: ArrayLike,
    train_is_forget: ArrayLike,
    test_features: ArrayLike,
    test_is_forget: ArrayLike,
    seed: int,
) -> dict[str, float]:
    """Linear probe for residual forget-class information in frozen features.

    Standardised logistic regression (``class_weight='balanced'``, since the forget class is a
    minority) fitted on ``train_features`` to predict ``train_is_forget`` (forget class vs
    rest), scored on the test features: ``{"auc": ROC AUC, "acc": balanced accuracy}``, both in
    [0, 1]. High values after unlearning mean the class is still linearly decodable.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_tr, x_te = _as_tensor(train_features).numpy(), _as_tensor(test_features).numpy()
    y_tr = _as_tensor(train_is_forget, torch.long).numpy()
    y_te = _as_tensor(test_is_forget, torch.long).numpy()
    for name, y in (("train", y_tr), ("test", y_te)):
        if len(np.unique(y)) != 2:
            raise ValueError(f"linear_probe: {name} labels must contain both forget and rest")
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed),
    )
    clf.fit(x_tr, y_tr)
    score = clf.predict_proba(x_te)[:, 1]
    return {
        "auc": float(roc_auc_score(y_te, score)),
        "acc": float(balanced_accuracy_score(y_te, clf.predict(x_te))),
    }
