"""Evaluation metrics for class unlearning, computed from each model's outputs once per split.

The pipeline runs :func:`collect_outputs` once per (model, split) and feeds the logits/labels to
the outputs-based functions below, so no metric runs a model again. Only the "depth of
forgetting" metrics (:func:`relearn_time`, :func:`penultimate_features`) need the model itself.

Names say which published definition each number follows, because the unlearning literature uses
"MIA" and "ZRF" for different things:

- :func:`mia_entropy_svc` -- Bad Teaching's attack (Chundawat et al., AAAI 2023), the one the PBU
  paper reports: fraction of forget-class TRAIN samples predicted "member" (lower = less leakage;
  compare with the retrain oracle's value). Non-members: the test split without the forget
  class; :func:`mia_entropy_svc_bad_teaching` is the same attack with Bad Teaching's own
  non-members, the whole test split.
- :func:`mia_efficacy_salun` -- "MIA-efficacy" of l1-sparse (Jia et al., NeurIPS 2023) / SalUn
  (Fan et al., ICLR 2024), confidence feature: fraction of forget-class TRAIN samples predicted
  "non-member" (higher = more forgetting).
- :func:`mia_loss_lr` -- a loss-threshold style attack with cross-validated logistic regression,
  forget-class train vs forget-class test: accuracy/AUC, 0.5 = no leakage.
- :func:`zrf` (the formula of the paper) and :func:`zrf_as_coded` (what the Bad Teaching / SSD
  code computes: KL reversed and element-averaged, i.e. divided by the class count).
- :func:`anamnesis_index` -- the Anamnesis Index of Chundawat et al. (zero-shot unlearning):
  relearn steps until within alpha % of the ORIGINAL model's forget accuracy
  (:func:`anamnesis_target`), over the retrain oracle's steps to the same target.

Everything that takes logits works in float64 on the CPU and in log space, so one-hot or extreme
outputs give finite numbers instead of NaN.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.data import cycle

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
ArrayLike = Tensor | np.ndarray
T = TypeVar("T")

LN2 = math.log(2.0)

# The attacker of Bad Teaching's released code (metrics.py, get_membership_attack_prob) and of the
# l1-sparse / SalUn code (evaluation/SVC_MIA.py, SVC_fit_predict): identical settings.
SVC_PARAMS: dict[str, Any] = {"C": 3, "gamma": "auto", "kernel": "rbf"}


# --------------------------------------------------------------------------------------------
# Outputs and accuracy
# --------------------------------------------------------------------------------------------


class _EvalMode:
    """Put every module in eval mode and restore each module's own mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, training in self.modes:
            m.training = training


@torch.no_grad()
def collect_outputs(model: nn.Module, loader: Iterable[Batch]) -> tuple[Tensor, Tensor]:
    """Run ``model`` once over ``loader``: logits float64 ``[N, K]`` and labels int64 ``[N]``, CPU.

    The model runs in eval mode under ``no_grad`` (BatchNorm uses and keeps its running
    statistics); every submodule's train/eval mode is restored afterwards. Batches are expected on
    the model's device, in a fixed order (``shuffle=False``) when outputs of two models are to be
    compared sample by sample.
    """
    logits, labels = [], []
    with _EvalMode(model):
        for x, y in loader:
            logits.append(model(x).detach().to("cpu", torch.float64))
            labels.append(y.detach().to("cpu", torch.long))
    if not logits:
        raise ValueError("collect_outputs: the loader yielded no batches")
    return torch.cat(logits), torch.cat(labels)


def _as_tensor(a: ArrayLike, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.as_tensor(a).detach().to("cpu", dtype)


def _check_pair(logits: Tensor, labels: Tensor, what: str) -> None:
    if logits.dim() != 2 or labels.dim() != 1 or len(logits) != len(labels):
        raise ValueError(
            f"{what}: expected logits [N, K] and labels [N], got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def accuracy_from_logits(logits: ArrayLike, labels: ArrayLike) -> float:
    """Percentage (0-100) of samples whose arg-max logit is the label."""
    logits, labels = _as_tensor(logits), _as_tensor(labels, torch.long)
    _check_pair(logits, labels, "accuracy")
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return 100.0 * (logits.argmax(1) == labels).double().mean().item()


def accuracy(
    model_or_logits: nn.Module | ArrayLike, loader_or_labels: Iterable[Batch] | ArrayLike
) -> float:
    """Accuracy in percent (0-100), from ``(model, loader)`` or from ``(logits, labels)``."""
    if isinstance(model_or_logits, nn.Module):
        return accuracy_from_logits(*collect_outputs(model_or_logits, loader_or_labels))
    return accuracy_from_logits(model_or_logits, loader_or_labels)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Per-sample features of the softmax output
# --------------------------------------------------------------------------------------------


def _xlogy_terms(p: Tensor, log_p: Tensor, log_r: Tensor) -> Tensor:
    """Elementwise ``p * (log p - log r)`` with the convention ``0 * anything = 0``."""
    return torch.where(p > 0, p * (log_p - log_r), torch.zeros_like(p))


def softmax_entropy(logits: ArrayLike) -> Tensor:
    """Per-sample Shannon entropy (nats) of ``softmax(logits)``: float64 ``[N]``."""
    log_p = torch.log_softmax(_as_tensor(logits), dim=1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1)


def true_class_confidence(logits: ArrayLike, labels: ArrayLike) -> Tensor:
    """Per-sample softmax probability of the labelled class: float64 ``[N]``."""
    logits, labels = _as_tensor(logits), _as_tensor(labels, torch.long)
    _check_pair(logits, labels, "true_class_confidence")
    return torch.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)


def per_sample_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Tensor:
    """Per-sample cross-entropy loss (nats): float64 ``[N]``."""
    logits, labels = _as_tensor(logits), _as_tensor(labels, torch.long)
    _check_pair(logits, labels, "per_sample_cross_entropy")
    return F.cross_entropy(logits, labels, reduction="none")


def _subsample(x: np.ndarray, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``k`` rows of ``x`` drawn without replacement (all of them when ``k`` is None)."""
    if k is None or len(x) <= k:
        return x
    return x[np.sort(rng.choice(len(x), size=k, replace=False))]


def mia_fit_sizes(n_member: int, n_non_member: int, max_samples: int | None) -> tuple[int, int]:
    """How many members and non-members an attack fits on when at most ``max_samples`` in all.

    Both sides shrink by the same factor, so the member:non-member ratio of the full sets is
    kept (to rounding; each side keeps at least one sample). An SVC fitted without class
    weights leans towards the larger side, so its answers depend on that ratio: a cap that
    changed it (e.g. 500:500 from 3,600:900) would change the attack, not just its cost.
    ``None`` (or sets already small enough) keeps every sample.
    """
    total = n_member + n_non_member
    if max_samples is None or total <= max_samples:
        return n_member, n_non_member
    if max_samples < 2:
        raise ValueError(
            f"max_samples must be >= 2 (one member, one non-member), got {max_samples}"
        )
    k_member = min(max(round(max_samples * n_member / total), 1), max_samples - 1)
    return k_member, max_samples - k_member


def _svc_member_rate(member: np.ndarray, non_member: np.ndarray, target: np.ndarray) -> float:
    """Fit the Bad Teaching / SalUn SVC on member (1) vs non-member (0); rate of 1 on target."""
    from sklearn.svm import SVC

    if len(member) == 0 or len(non_member) == 0 or len(target) == 0:
        raise ValueError(
            f"MIA needs non-empty sets, got {len(member)} members, "
            f"{len(non_member)} non-members, {len(target)} targets"
        )
    x = np.concatenate([member, non_member]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(member)), np.zeros(len(non_member))])
    clf = SVC(**SVC_PARAMS).fit(x, y)
    return float(clf.predict(target.reshape(-1, 1)).mean())


# --------------------------------------------------------------------------------------------
# Membership inference attacks
# --------------------------------------------------------------------------------------------


def mia_entropy_svc(
    retain_train_logits: ArrayLike,
    test_logits: ArrayLike,
    forget_train_logits: ArrayLike,
    seed: int,
    *,
    max_samples: int | None = None,
) -> float:
    """The PBU paper's MIA, as defined by Bad Teaching (Chundawat et al., AAAI 2023).

    Follows ``get_membership_attack_prob`` of the Bad Teaching code (also used by SSD):

    - feature: entropy of the softmax output (one number per sample);
    - attacker: ``sklearn.svm.SVC(C=3, gamma='auto', kernel='rbf')`` fitted on the
      members (``retain_train_logits``, label 1) and the non-members (``test_logits``,
      label 0), without class balancing (as in the original);
    - target: ``forget_train_logits``, the forget-class TRAIN samples;
    - returned: the fraction of targets predicted "member", in [0, 1]. Lower means less leakage;
      the retrain oracle's value is the reference, not 0.

    Which test samples are the non-members is the caller's choice, and it changes the number:
    the pipeline reports this function twice, as ``mia_entropy_svc`` (non-members = the test
    split WITHOUT the forget class, the same classes as the members) and, through
    :func:`mia_entropy_svc_bad_teaching`, with Bad Teaching's own sets (the whole test split).
    The function only sees arrays; the authors' released code rebuilt every loader from
    ``.dataset`` and so used the full test set for all three -- the call site is tested.

    ``max_samples`` (optional) caps the attack's TRAINING set, members and non-members
    together; when the two sets hold more, both are subsampled (seeded, without replacement)
    by the same factor, keeping their ratio (:func:`mia_fit_sizes`). An SVC fit grows faster
    than quadratically with the sample count, so this keeps large retain sets tractable without
    changing what the unbalanced attacker learns. ``None`` uses every sample, like the original.
    The targets are never subsampled.
    """
    rng = np.random.default_rng(seed)
    member = softmax_entropy(retain_train_logits).numpy()
    non_member = softmax_entropy(test_logits).numpy()
    k_member, k_non = mia_fit_sizes(len(member), len(non_member), max_samples)
    member, non_member = _subsample(member, k_member, rng), _subsample(non_member, k_non, rng)
    target = softmax_entropy(forget_train_logits).numpy()
    return _svc_member_rate(member, non_member, target)


def mia_entropy_svc_bad_teaching(
    retain_train_logits: ArrayLike,
    retain_test_logits: ArrayLike,
    forget_test_logits: ArrayLike,
    forget_train_logits: ArrayLike,
    seed: int,
    *,
    max_samples: int | None = None,
) -> float:
    """:func:`mia_entropy_svc` with the sets of Bad Teaching's own experiments.

    Bad Teaching's ``get_membership_attack_prob(retain, forget, test, model)`` takes one "test"
    loader, and the harness that reuses it for class forgetting (SSD, Foster et al., AAAI 2024:
    ``get_metric_scores`` passes ``valid_dl``) hands it the WHOLE test split, the forgotten
    class included: here ``retain_test_logits`` and ``forget_test_logits`` together. A model
    that still recognises the forgotten class gives its test images low entropy, so they pull
    the non-member side towards the forget-train targets. Members are
    the retained classes' training samples, targets the forget class's; ``max_samples`` as in
    :func:`mia_entropy_svc` (the ratio of the full sets is kept).
    """
    test = torch.cat([_as_tensor(retain_test_logits), _as_tensor(forget_test_logits)])
    return mia_entropy_svc(
        retain_train_logits, test, forget_train_logits, seed, max_samples=max_samples
    )


def mia_efficacy_salun(
    retain_train_logits: ArrayLike,
    retain_train_labels: ArrayLike,
    test_logits: ArrayLike,
    test_labels: ArrayLike,
    forget_train_logits: ArrayLike,
    forget_train_labels: ArrayLike,
    seed: int,
    *,
    max_samples: int | None = None,
) -> float:
    """MIA-efficacy of l1-sparse (Jia et al., NeurIPS 2023) and SalUn (Fan et al., ICLR 2024).

    Follows ``SVC_MIA`` in their ``evaluation/SVC_MIA.py`` with the ``confidence`` feature, called
    as ``SVC_MIA(shadow_train=retain subset, shadow_test=test, target_train=None,
    target_test=forget)``:

    - feature: softmax probability of the TRUE class (labels are needed);
    - attacker: ``SVC(C=3, gamma='auto', kernel='rbf')`` fitted on shadow-train = retain-class
      TRAIN samples (member, 1) vs shadow-test = TEST samples (non-member, 0), with equal sizes:
      the larger side is subsampled (seeded, without replacement) to the smaller side's size
      (their code takes the first ``len(test)`` retain samples; we draw them at random). The
      recommended test set is the test split without the forget class;
    - target: the forget-class TRAIN samples;
    - returned: the fraction of targets predicted NON-member, in [0, 1]; higher = more forgetting
      (``1 - mean(predict)`` in their code).

    ``max_samples`` (optional) caps the two shadow sides together (at most ``max_samples // 2``
    each), so the 1:1 ratio of their recipe is kept.
    """
    rng = np.random.default_rng(seed)
    member = true_class_confidence(retain_train_logits, retain_train_labels).numpy()
    non_member = true_class_confidence(test_logits, test_labels).numpy()
    target = true_class_confidence(forget_train_logits, forget_train_labels).numpy()
    k = min(len(member), len(non_member))
    if max_samples is not None:
        k = min(k, max(max_samples // 2, 1))
    member, non_member = _subsample(member, k, rng), _subsample(non_member, k, rng)
    return 1.0 - _svc_member_rate(member, non_member, target)


def mia_loss_lr(
    forget_train_logits: ArrayLike,
    forget_train_labels: ArrayLike,
    forget_test_logits: ArrayLike,
    forget_test_labels: ArrayLike,
    seed: int,
    folds: int = 5,
) -> dict[str, float]:
    """Loss-based MIA on the forget class: can its train samples be told from its test samples?

    - feature: per-sample cross-entropy loss (nats);
    - data: forget-class TRAIN samples (member, 1) vs forget-class TEST samples (non-member, 0),
      balanced by subsampling the larger side to the smaller one's size (seeded);
    - attacker: standardised logistic regression, scored by stratified ``folds``-fold
      cross-validation (shuffled with ``seed``);
    - returned: ``{"acc": mean CV accuracy, "auc": mean CV ROC AUC}``, both in [0, 1]; about 0.5
      means the losses leak no membership (what a retrain oracle shows), 1 means full leakage.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    member = per_sample_cross_entropy(forget_train_logits, forget_train_labels).numpy()
    non_member = per_sample_cross_entropy(forget_test_logits, forget_test_labels).numpy()
    k = min(len(member), len(non_member))
    if k < folds:
        raise ValueError(
            f"mia_loss_lr needs at least folds={folds} samples per side, got "
            f"{len(member)} train and {len(non_member)} test"
        )
    member, non_member = _subsample(member, k, rng), _subsample(non_member, k, rng)
    x = np.concatenate([member, non_member]).reshape(-1, 1)
    y = np.concatenate([np.ones(k), np.zeros(k)])
    clf = make_pipeline(StandardScaler(), LogisticRegression())
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_validate(clf, x, y, cv=cv, scoring=("accuracy", "roc_auc"))
    return {
        "acc": float(np.mean(scores["test_accuracy"])),
        "auc": float(np.mean(scores["test_roc_auc"])),
    }


# --------------------------------------------------------------------------------------------
# Distances between output distributions
# --------------------------------------------------------------------------------------------


def _log_softmax_pair(logits_a: ArrayLike, logits_b: ArrayLike) -> tuple[Tensor, Tensor]:
    a, b = _as_tensor(logits_a), _as_tensor(logits_b)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"expected two [N, K] logit tensors of one shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    return torch.log_softmax(a, dim=1), torch.log_softmax(b, dim=1)


def js_divergence_per_sample(logits_a: ArrayLike, logits_b: ArrayLike) -> Tensor:
    """Per-sample Jensen-Shannon divergence (nats, in [0, ln 2]) of the two softmax outputs.

    ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``, computed in log
    space (``log m = logsumexp(log p, log q) - ln 2``). Logits may be ``-inf`` (pass
    ``log(probs)`` to give probabilities directly).
    """
    log_p, log_q = _log_softmax_pair(logits_a, logits_b)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - LN2
    kl_pm = _xlogy_terms(log_p.exp(), log_p, log_m).sum(1)
    kl_qm = _xlogy_terms(log_q.exp(), log_q, log_m).sum(1)
    return (0.5 * (kl_pm + kl_qm)).clamp(0.0, LN2)


def js_divergence(logits_a: ArrayLike, logits_b: ArrayLike) -> float:
    """Mean over samples of the per-sample JS divergence (nats, in [0, ln 2]) of the softmaxes."""
    return js_divergence_per_sample(logits_a, logits_b).mean().item()


def activation_distance(logits_a: ArrayLike, logits_b: ArrayLike) -> float:
    """Mean over samples of ``||softmax(a) - softmax(b)||_2`` (Chundawat et al., ``actv_dist``)."""
    log_p, log_q = _log_softmax_pair(logits_a, logits_b)
    return (log_p.exp() - log_q.exp()).norm(dim=1).mean().item()


def zrf(model_logits: ArrayLike, incompetent_logits: ArrayLike) -> float:
    """Zero Retrain Forgetting score as the Bad Teaching paper defines it (Chundawat et al. 2023).

    ``ZRF = 1 - (1/n) sum_i JS(M(x_i), T_d(x_i))`` with ``T_d`` a randomly initialised
    (incompetent) model and JS the true Jensen-Shannon divergence of :func:`js_divergence`
    (natural log), so ZRF lies in ``[1 - ln 2, 1]``; 1 = the model behaves like the incompetent
    teacher on these samples.
    """
    return 1.0 - js_divergence(model_logits, incompetent_logits)


def js_divergence_as_coded(logits_a: ArrayLike, logits_b: ArrayLike) -> float:
    """The "JSDiv" of the Bad Teaching / SSD public code, reproduced on purpose (not a true JS).

    Their code is ``m = (p+q)/2; 0.5*F.kl_div(log p, m) + 0.5*F.kl_div(log q, m)`` on the whole
    ``[N, K]`` softmax matrices with the default ``reduction='mean'``. ``F.kl_div(input, target)``
    is ``target * (log target - input)`` elementwise, so this is

        JS_coded = (1 / (N K)) sum_i [ KL(m_i || p_i) / 2 + KL(m_i || q_i) / 2 ]

    i.e. the KL direction reversed (``m`` against ``p``, not ``p`` against ``m``) and an element
    mean, which divides the per-sample value by the class count ``K``. Unbounded when ``p`` has an
    exact zero where ``q`` does not (``inf``, as in the original).
    """
    log_p, log_q = _log_softmax_pair(logits_a, logits_b)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - LN2
    m = log_m.exp()
    terms = 0.5 * _xlogy_terms(m, log_m, log_p) + 0.5 * _xlogy_terms(m, log_m, log_q)
    return terms.mean().item()  # mean over all N*K elements


def zrf_as_coded(model_logits: ArrayLike, incompetent_logits: ArrayLike) -> float:
    """ZRF as coded by Bad Teaching / SSD (``UnLearningScore``): ``1 - JS_coded``.

    JS_coded is :func:`js_divergence_as_coded`: reversed KL, element-mean (i.e. divided by the
    class count). Reported only to compare with numbers published from that code; :func:`zrf` is
    the paper's definition.
    """
    return 1.0 - js_divergence_as_coded(model_logits, incompetent_logits)


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


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_call(fn: Callable[[], T], device: str | torch.device) -> tuple[T, float]:
    """Run ``fn()`` and return ``(result, wall seconds)``; on CUDA, synchronise before and after.

    Time only the method: build loaders and evaluate outside ``fn``.
    """
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start
