"""Membership inference attacks on an unlearned model's outputs (:mod:`pbu.metrics`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pbu.metrics.core import (
    ArrayLike,
    _as_tensor,
    per_sample_cross_entropy,
    softmax_entropy,
    true_class_confidence,
)

# The attacker of Bad Teaching's released code (metrics.py, get_membership_attack_prob) and of the
# l1-sparse / SalUn code (evaluation/SVC_MIA.py, SVC_fit_predict): identical settings.
SVC_PARAMS: dict[str, Any] = {"C": 3, "gamma": "auto", "kernel": "rbf"}


@dataclass(frozen=True)
class AttackValidity:
    """How well an attack tells members from non-members it was never fitted on.

    ``bacc``: balanced accuracy (mean of the hit rates on members and on non-members) on the
    held-out split; ``bacc_se``: its standard error (binomial, each side on its own); ``auc``:
    ROC AUC of the attack's score there; ``n_member`` / ``n_non_member``: the held-out sizes.
    When such an attack counts as "at chance" is the report's rule
    (:func:`pbu.report.forget_score.at_chance`).
    """

    bacc: float
    bacc_se: float
    auc: float
    n_member: int
    n_non_member: int


@dataclass(frozen=True)
class AttackResult:
    """An attack's value on its targets, and its validity (None when nothing was held out)."""

    value: float
    validity: AttackValidity | None


def validity_split(
    n_member: int, n_non_member: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded split of the members and the non-members an attack is fitted on: ``(fit_member,
    fit_non_member, held_member, held_non_member)`` index arrays, sorted. Each side holds out
    ``ceil(fraction * n)`` of its samples (at least one, leaving at least one to fit on); the
    held-out samples are never fitted on."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validity fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng([seed, 0x5A11D])  # a stream apart from the fit subsample's
    out = []
    for n in (n_member, n_non_member):
        if n < 2:
            raise ValueError(f"a validity split needs >= 2 samples a side, got {n}")
        k = min(max(math.ceil(fraction * n), 1), n - 1)
        perm = rng.permutation(n)
        out.append((np.sort(perm[k:]), np.sort(perm[:k])))
    (fit_m, held_m), (fit_n, held_n) = out
    return fit_m, fit_n, held_m, held_n


def _bacc(hit_member: np.ndarray, hit_non_member: np.ndarray) -> tuple[float, float]:
    """Balanced accuracy and its standard error from per-sample hits (bool) on each side."""
    tpr, tnr = float(hit_member.mean()), float(hit_non_member.mean())
    var = tpr * (1 - tpr) / len(hit_member) + tnr * (1 - tnr) / len(hit_non_member)
    return 0.5 * (tpr + tnr), 0.5 * math.sqrt(var)


def _auc(score_member: np.ndarray, score_non_member: np.ndarray) -> float:
    """ROC AUC of "member" scores: P(a member scores above a non-member), ties counting half
    (the Mann-Whitney statistic from average ranks, as sklearn's ``roc_auc_score``)."""
    from scipy.stats import rankdata

    n_m, n_n = len(score_member), len(score_non_member)
    ranks = rankdata(np.concatenate([score_member, score_non_member]))
    return float((ranks[:n_m].sum() - n_m * (n_m + 1) / 2) / (n_m * n_n))


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


def _check_sets(member: np.ndarray, non_member: np.ndarray, target: np.ndarray) -> None:
    if len(member) == 0 or len(non_member) == 0 or len(target) == 0:
        raise ValueError(
            f"MIA needs non-empty sets, got {len(member)} members, "
            f"{len(non_member)} non-members, {len(target)} targets"
        )


def _fit_svc(member: np.ndarray, non_member: np.ndarray):
    """The Bad Teaching / SalUn SVC fitted on member (1) vs non-member (0) features."""
    from sklearn.svm import SVC

    x = np.concatenate([member, non_member]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(member)), np.zeros(len(non_member))])
    return SVC(**SVC_PARAMS).fit(x, y)


def _svc_attack(
    member: np.ndarray,
    non_member: np.ndarray,
    target: np.ndarray,
    seed: int,
    fit_sizes: Callable[[int, int], tuple[int, int]],
    valid_fraction: float | None,
) -> AttackResult:
    """The SVC attack and its validity.

    ``valid_fraction`` of each side is held out first (:func:`validity_split`);
    ``fit_sizes(n_member, n_non_member)`` says how many of the rest the SVC is fitted on (a
    seeded subsample). The fitted SVC is applied to ``target`` (the value: its rate of
    "member") and scored on the held-out samples (balanced accuracy of its predictions, AUC of
    its decision function). Without ``valid_fraction`` every sample may be fitted on, as in the
    original code, and the validity is None.
    """
    _check_sets(member, non_member, target)
    rng = np.random.default_rng(seed)
    held = None
    if valid_fraction is not None:
        fit_m, fit_n, held_m, held_n = validity_split(
            len(member), len(non_member), valid_fraction, seed
        )
        held = member[held_m].reshape(-1, 1), non_member[held_n].reshape(-1, 1)
        member, non_member = member[fit_m], non_member[fit_n]
    k_member, k_non = fit_sizes(len(member), len(non_member))
    member, non_member = _subsample(member, k_member, rng), _subsample(non_member, k_non, rng)
    clf = _fit_svc(member, non_member)
    value = float(clf.predict(target.reshape(-1, 1)).mean())
    if held is None:
        return AttackResult(value, None)
    hm, hn = held
    # one pass of the SVC per side: its prediction is the sign of its decision function
    # (> 0: classes_[1], "member"), so the decision values give both numbers
    score_m, score_n = clf.decision_function(hm), clf.decision_function(hn)
    bacc, se = _bacc(score_m > 0, score_n <= 0)
    auc = _auc(score_m, score_n)
    return AttackResult(value, AttackValidity(bacc, se, auc, len(hm), len(hn)))


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
    return entropy_svc_attack(
        retain_train_logits, test_logits, forget_train_logits, seed, max_samples=max_samples
    ).value


def entropy_svc_attack(
    retain_train_logits: ArrayLike,
    test_logits: ArrayLike,
    forget_train_logits: ArrayLike,
    seed: int,
    *,
    max_samples: int | None = None,
    valid_fraction: float | None = None,
) -> AttackResult:
    """:func:`mia_entropy_svc` and, with ``valid_fraction``, its validity: that share of the
    members and of the non-members is held out (seeded, :func:`validity_split`) before the
    attack is fitted (``max_samples`` then caps the rest), and the fitted attack's balanced
    accuracy and AUC on the held-out samples say whether it can tell members from non-members
    at all (:class:`AttackValidity`)."""
    member = softmax_entropy(retain_train_logits).numpy()
    non_member = softmax_entropy(test_logits).numpy()
    target = softmax_entropy(forget_train_logits).numpy()
    return _svc_attack(
        member,
        non_member,
        target,
        seed,
        lambda m, n: mia_fit_sizes(m, n, max_samples),
        valid_fraction,
    )


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
    return entropy_svc_bad_teaching_attack(
        retain_train_logits,
        retain_test_logits,
        forget_test_logits,
        forget_train_logits,
        seed,
        max_samples=max_samples,
    ).value


def entropy_svc_bad_teaching_attack(
    retain_train_logits: ArrayLike,
    retain_test_logits: ArrayLike,
    forget_test_logits: ArrayLike,
    forget_train_logits: ArrayLike,
    seed: int,
    *,
    max_samples: int | None = None,
    valid_fraction: float | None = None,
) -> AttackResult:
    """:func:`mia_entropy_svc_bad_teaching` and its validity (as :func:`entropy_svc_attack`;
    the held-out non-members come from the whole test split, its own non-members)."""
    test = torch.cat([_as_tensor(retain_test_logits), _as_tensor(forget_test_logits)])
    return entropy_svc_attack(
        retain_train_logits,
        test,
        forget_train_logits,
        seed,
        max_samples=max_samples,
        valid_fraction=valid_fraction,
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
    return efficacy_salun_attack(
        retain_train_logits,
        retain_train_labels,
        test_logits,
        test_labels,
        forget_train_logits,
        forget_train_labels,
        seed,
        max_samples=max_samples,
    ).value


def efficacy_salun_attack(
    retain_train_logits: ArrayLike,
    retain_train_labels: ArrayLike,
    test_logits: ArrayLike,
    test_labels: ArrayLike,
    forget_train_logits: ArrayLike,
    forget_train_labels: ArrayLike,
    seed: int,
    *,
    max_samples: int | None = None,
    valid_fraction: float | None = None,
) -> AttackResult:
    """:func:`mia_efficacy_salun` (the value: the share called NON-member) and, with
    ``valid_fraction``, its validity as :func:`entropy_svc_attack` (held out before the 1:1
    subsample of the rest)."""
    member = true_class_confidence(retain_train_logits, retain_train_labels).numpy()
    non_member = true_class_confidence(test_logits, test_labels).numpy()
    target = true_class_confidence(forget_train_logits, forget_train_labels).numpy()

    def one_to_one(n_member: int, n_non_member: int) -> tuple[int, int]:
        k = min(n_member, n_non_member)
        if max_samples is not None:
            k = min(k, max(max_samples // 2, 1))
        return k, k

    res = _svc_attack(member, non_member, target, seed, one_to_one, valid_fraction)
    return AttackResult(1.0 - res.value, res.validity)


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
    member = per_sample_cross_entropy(forget_train_logits, forget_train_labels).numpy()
    non_member = per_sample_cross_entropy(forget_test_logits, forget_test_labels).numpy()
    acc, auc, _ = _loss_cv(member, non_member, seed, folds, "mia_loss_lr")
    return {"acc": acc, "auc": auc}


def loss_attack_validity(
    retain_train_logits: ArrayLike,
    retain_train_labels: ArrayLike,
    retain_test_logits: ArrayLike,
    retain_test_labels: ArrayLike,
    seed: int,
    folds: int = 5,
) -> AttackValidity:
    """Whether the loss attack of :func:`mia_loss_lr` can see membership in this model at all.

    Its own number is already a held-out one (cross-validated), but on the forget class, where
    a model that never trained on it has no members: an attack at 0.5 there means either
    "forgotten" or "this attack sees nothing". So the same attack (the same features, balancing
    and folds) is run where every model has members: the retained classes' TRAIN samples
    against their TEST samples. Each sample is scored by the fold that held it out; the
    balanced accuracy (the sides are balanced) and AUC are the folds' means.
    """
    member = per_sample_cross_entropy(retain_train_logits, retain_train_labels).numpy()
    non_member = per_sample_cross_entropy(retain_test_logits, retain_test_labels).numpy()
    acc, auc, k = _loss_cv(member, non_member, seed, folds, "loss_attack_validity")
    return AttackValidity(acc, math.sqrt(acc * (1 - acc) / (2 * k)), auc, k, k)


def _loss_cv(
    member: np.ndarray, non_member: np.ndarray, seed: int, folds: int, what: str
) -> tuple[float, float, int]:
    """Cross-validated logistic regression on the loss, member (1) vs non-member (0), balanced
    by subsampling the larger side (seeded): mean accuracy, mean AUC and the per-side size."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(seed)
    k = min(len(member), len(non_member))
    if k < folds:
        raise ValueError(
            f"{what} needs at least folds={folds} samples per side, got "
            f"{len(member)} members and {len(non_member)} non-members"
        )
    member, non_member = _subsample(member, k, rng), _subsample(non_member, k, rng)
    x = np.concatenate([member, non_member]).reshape(-1, 1)
    y = np.concatenate([np.ones(k), np.zeros(k)])
    # What sklearn's cross_validate(make_pipeline(StandardScaler(), LogisticRegression()), cv,
    # scoring=("accuracy", "roc_auc")) computes, fold by fold, without its per-call machinery
    # (which was half of an evaluation's CPU; tests/unit/test_metrics.py compares the two).
    acc, auc = [], []
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in cv.split(x, y):
        mean, std = x[train].mean(), x[train].std()
        scale = std if std > 0 else 1.0  # StandardScaler leaves a constant feature unscaled
        clf = LogisticRegression().fit((x[train] - mean) / scale, y[train])
        score = clf.decision_function((x[test] - mean) / scale)
        acc.append(float(np.mean((score > 0) == (y[test] == 1))))
        auc.append(_auc(score[y[test] == 1], score[y[test] == 0]))
    return float(np.mean(acc)), float(np.mean(auc)), k
