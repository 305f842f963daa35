"""Membership inference attacks on an unlearned model's outputs (:mod:`pbu.metrics`)."""

from __future__ import annotations

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
