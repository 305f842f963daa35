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
- Attack validity: each attack's balanced accuracy and AUC on members and non-members it was
  not fitted on (:func:`entropy_svc_attack` and its siblings with ``valid_fraction``;
  :func:`loss_attack_validity`).
- :func:`forgetting_score` -- the per-example forgetting score of the NeurIPS 2023 unlearning
  challenge (Triantafillou et al.): per forget example, the ε of the best threshold test
  telling N unlearned models' :func:`logit_confidence` from N retrained models', bucketed
  (:mod:`pbu.metrics.forget_score`).
- :func:`zrf` (the formula of the paper) and :func:`zrf_as_coded` (what the Bad Teaching / SSD
  code computes: KL reversed and element-averaged, i.e. divided by the class count).
- :func:`anamnesis_index` -- the Anamnesis Index of Chundawat et al. (zero-shot unlearning):
  relearn steps until within alpha % of the ORIGINAL model's forget accuracy
  (:func:`anamnesis_target`), over the retrain oracle's steps to the same target.

The package's modules: :mod:`pbu.metrics.core` (outputs, accuracy, softmax features, timing),
:mod:`pbu.metrics.mia`, :mod:`pbu.metrics.distance` (JS, activation distance, ZRF) and
:mod:`pbu.metrics.depth` (relearn time, Anamnesis Index, linear probe) and
:mod:`pbu.metrics.forget_score` (the per-example forgetting score). Every public name is
importable from ``pbu.metrics`` itself.

Everything that takes logits works in float64 on the CPU and in log space, so one-hot or extreme
outputs give finite numbers instead of NaN.
"""

from __future__ import annotations

from pbu.metrics.core import (
    LN2,
    ArrayLike,
    Batch,
    accuracy,
    accuracy_from_logits,
    collect_outputs,
    per_sample_cross_entropy,
    softmax_entropy,
    time_call,
    true_class_confidence,
)
from pbu.metrics.depth import (
    RelearnResult,
    anamnesis_index,
    anamnesis_target,
    linear_probe,
    outputs_and_features,
    penultimate_features,
    relearn_time,
    steps_to_reach,
)
from pbu.metrics.distance import (
    activation_distance,
    js_divergence,
    js_divergence_as_coded,
    js_divergence_per_sample,
    zrf,
    zrf_as_coded,
)
from pbu.metrics.forget_score import (
    EpsilonResult,
    bucket_points,
    epsilon,
    epsilon_one,
    forgetting_score,
    logit_confidence,
    max_epsilon,
    offsets,
)
from pbu.metrics.mia import (
    SVC_PARAMS,
    AttackResult,
    AttackValidity,
    efficacy_salun_attack,
    entropy_svc_attack,
    entropy_svc_bad_teaching_attack,
    loss_attack_validity,
    mia_efficacy_salun,
    mia_entropy_svc,
    mia_entropy_svc_bad_teaching,
    mia_fit_sizes,
    mia_loss_lr,
    validity_split,
)

__all__ = [
    "Batch",
    "ArrayLike",
    "LN2",
    "collect_outputs",
    "accuracy_from_logits",
    "accuracy",
    "softmax_entropy",
    "true_class_confidence",
    "per_sample_cross_entropy",
    "time_call",
    "SVC_PARAMS",
    "mia_fit_sizes",
    "mia_entropy_svc",
    "mia_entropy_svc_bad_teaching",
    "mia_efficacy_salun",
    "mia_loss_lr",
    "AttackResult",
    "AttackValidity",
    "validity_split",
    "entropy_svc_attack",
    "entropy_svc_bad_teaching_attack",
    "efficacy_salun_attack",
    "loss_attack_validity",
    "logit_confidence",
    "EpsilonResult",
    "epsilon_one",
    "epsilon",
    "max_epsilon",
    "bucket_points",
    "forgetting_score",
    "offsets",
    "js_divergence_per_sample",
    "js_divergence",
    "activation_distance",
    "zrf",
    "js_divergence_as_coded",
    "zrf_as_coded",
    "RelearnResult",
    "relearn_time",
    "steps_to_reach",
    "anamnesis_target",
    "anamnesis_index",
    "penultimate_features",
    "outputs_and_features",
    "linear_probe",
]
