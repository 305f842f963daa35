"""Evaluate every model of one (dataset, arch, seed, forget class) against the oracle.

Each model's outputs are computed once per split (forget/retain x train/test) and every
output-based metric reads them; only relearn time and the linear probe run a model again.
The oracle's own row is computed the same way, so every method's number sits beside the oracle's.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pbu import metrics as M
from pbu.data import ImageData, class_split, random_subset, stratified_subset
from pbu.models import fuse_for_inference

log = logging.getLogger(__name__)

SPLITS = ("forget_train", "retain_train", "forget_test", "retain_test")

# Units of every metric the evaluation writes (metrics files carry them).
UNITS: dict[str, str] = {
    "acc_forget_test": "%",
    "acc_retain_test": "%",
    "acc_forget_train": "%",
    "acc_retain_train": "%",
    "mia_entropy_svc": "fraction of forget-train predicted member; attack fitted on retain-train "
    "vs test without the forget class (Bad Teaching's attack, PBU paper)",
    "mia_entropy_svc_bad_teaching": "fraction of forget-train predicted member; attack fitted on "
    "retain-train vs the whole test split (Bad Teaching's sets)",
    "mia_efficacy_salun": "fraction of forget-train predicted non-member (SalUn)",
    "mia_loss_acc": "CV accuracy, forget-train vs forget-test (0.5 = no leakage)",
    "mia_loss_auc": "CV ROC AUC, forget-train vs forget-test (0.5 = no leakage)",
    **{
        f"{attack}_valid_{k}": what
        for attack, where in (
            ("mia_entropy_svc", "held-out retain-train vs test without the forget class"),
            ("mia_entropy_svc_bad_teaching", "held-out retain-train vs the whole test split"),
            ("mia_efficacy_salun", "held-out retain-train vs test without the forget class"),
            ("mia_loss", "retain-train vs retain-test, cross-validated"),
        )
        for k, what in (
            ("bacc", f"attack validity: balanced accuracy, {where} (0.5 = chance)"),
            ("bacc_se", "standard error of that balanced accuracy"),
            ("auc", f"attack validity: ROC AUC, {where} (0.5 = chance)"),
        )
    },
    "js_forget_test": "nats, JS divergence to the oracle",
    "js_retain_test": "nats",
    "act_dist_forget_test": "L2 between softmax outputs",
    "act_dist_retain_test": "L2",
    "zrf_forget_test": "1 - mean JS to an incompetent model (Chundawat et al.)",
    "zrf_forget_test_as_coded": "ZRF as coded by Bad Teaching / SSD (reversed KL, / classes)",
    "anamnesis_target": "% forget-test accuracy: within anamnesis_alpha % of the original's",
    "relearn_steps": "Adam steps on forget samples until forget-test accuracy >= anamnesis_target",
    "relearn_reached": "1 if relearn_steps reached the target, 0 if it is a lower bound",
    "anamnesis_index": "relearn_steps / oracle relearn_steps (Chundawat et al., zero-shot)",
    "relearn_steps_fixed": "Adam steps until forget-test accuracy >= relearn_threshold %",
    "relearn_fixed_reached": "1 if relearn_steps_fixed reached its threshold, 0 if a lower bound",
    "relearn_ratio_fixed": "relearn_steps_fixed / oracle relearn_steps_fixed",
    "probe_auc": "ROC AUC of a linear probe (forget vs rest) on penultimate features",
    "probe_acc": "balanced accuracy of that probe",
}


@dataclass(frozen=True)
class EvalSettings:
    """Engineering knobs of the evaluation (sizes, not hyperparameters of any method)."""

    batch_size: int = 1024
    # Samples an SVC attack is fitted on, members and non-members together; the ratio of the
    # full sets is kept (pbu.metrics.mia_fit_sizes). None: all (the fit grows ~quadratically).
    mia_max_samples: int | None = 1000
    # Share of each SVC attack's members and non-members held out (seeded) before it is fitted,
    # to measure its validity (pbu.metrics.validity_split). None: nothing held out, no validity.
    mia_valid_fraction: float | None = 0.25
    relearn_samples: int = 64  # forget-train samples used to relearn
    relearn_batch_size: int = 16
    relearn_lr: float = 1e-3
    relearn_max_steps: int = 100
    anamnesis_alpha: float = 5.0  # Anamnesis Index: within alpha % of the original's accuracy
    relearn_threshold: float = 50.0  # fixed target (%) of relearn_steps_fixed
    probe_train_per_class: int = 100
    probe: bool = True
    relearn: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSettings:
        # the config's evaluation.forget_score belongs to the stage after the evaluations
        # (pbu.jobs.forget_score), not to one group's evaluation
        d = {k: v for k, v in d.items() if k != "forget_score"}
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(
                f"unknown evaluation key(s) {', '.join(bad)}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**d)


@dataclass
class EvalData:
    """The four splits of one forget class, each as its own copy."""

    forget_train: ImageData
    retain_train: ImageData
    forget_test: ImageData
    retain_test: ImageData

    @classmethod
    def build(cls, train: ImageData, test: ImageData, forget_class: int) -> EvalData:
        f_tr, r_tr = class_split(train.labels, forget_class)
        f_te, r_te = class_split(test.labels, forget_class)
        return cls(train.subset(f_tr), train.subset(r_tr), test.subset(f_te), test.subset(r_te))


def model_outputs(
    model: nn.Module,
    data: EvalData,
    settings: EvalSettings,
    device: torch.device,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
    """Logits, labels and penultimate features of ``model`` on each of ``splits`` (one pass
    each), from an inference copy with BatchNorm folded into the convolutions (the same
    eval-mode map)."""
    model = fuse_for_inference(model)
    return {
        s: M.outputs_and_features(
            model, getattr(data, s).loader(settings.batch_size, device=device)
        )
        for s in splits
    }


def _relearn(
    model: nn.Module,
    data: EvalData,
    settings: EvalSettings,
    seed: int,
    device: torch.device,
    threshold: float,
) -> M.RelearnResult:
    """Relearn trajectory of ``model`` on a seeded forget-train sample, run until the forget-test
    accuracy reaches ``threshold`` (or ``relearn_max_steps``)."""
    idx = random_subset(len(data.forget_train), settings.relearn_samples, seed)
    sample = data.forget_train.subset(idx)
    loader = sample.loader(settings.relearn_batch_size, shuffle=True, seed=seed, device=device)
    return M.relearn_time(
        model,
        loader,
        data.forget_test.loader(settings.batch_size, device=device),
        lr=settings.relearn_lr,
        max_steps=settings.relearn_max_steps,
        threshold=threshold,
        seed=seed,
    )


def _relearn_metrics(
    trajectories: dict[str, M.RelearnResult], target: float, settings: EvalSettings
) -> dict[str, dict[str, float]]:
    """Per model: steps to the Anamnesis target and to the fixed threshold, read off one
    trajectory each, and their ratios to the oracle's (``max_steps + 1`` = never reached)."""
    never = settings.relearn_max_steps + 1
    counts: dict[str, dict[str, float]] = {}
    for name, res in trajectories.items():
        counts[name] = {"anamnesis_target": target}
        for key, reached, goal in (
            ("relearn_steps", "relearn_reached", target),
            ("relearn_steps_fixed", "relearn_fixed_reached", settings.relearn_threshold),
        ):
            steps = None if math.isnan(goal) else M.steps_to_reach(res.accuracies, goal)
            counts[name][key] = (
                math.nan if math.isnan(goal) else float(never if steps is None else steps)
            )
            counts[name][reached] = math.nan if math.isnan(goal) else float(steps is not None)
    oracle = counts.get("oracle")
    for steps, reached, ratio in (
        ("relearn_steps", "relearn_reached", "anamnesis_index"),
        ("relearn_steps_fixed", "relearn_fixed_reached", "relearn_ratio_fixed"),
    ):
        # An oracle that never got there gives only a lower bound: no ratio can be stated.
        defined = oracle is not None and oracle[reached] == 1.0
        if oracle is not None and not defined and not math.isnan(oracle[steps]):
            log.warning(
                "the oracle did not relearn within %d steps: %s is undefined (raise "
                "evaluation.relearn_max_steps)",
                settings.relearn_max_steps,
                ratio,
            )
        for c in counts.values():
            c[ratio] = (
                M.anamnesis_index(int(c[steps]), int(oracle[steps]))
                if defined and not math.isnan(c[steps])
                else math.nan
            )
    return counts


def _probe(
    out: dict[str, tuple[Tensor, Tensor, Tensor | None]],
    forget_class: int,
    settings: EvalSettings,
    seed: int,
) -> dict[str, float]:
    """Linear probe on frozen penultimate features: forget class vs the rest.

    Fitted on a class-balanced sample of the training split (``probe_train_per_class`` per
    class), scored on the whole test split; features come from the evaluation pass.
    """
    if any(out[s][2] is None for s in SPLITS):
        return {"auc": math.nan, "acc": math.nan}
    k = settings.probe_train_per_class
    f_idx = random_subset(len(out["forget_train"][1]), k, seed)
    r_idx = stratified_subset(out["retain_train"][1], k, seed)
    train_x = torch.cat([out["forget_train"][2][f_idx], out["retain_train"][2][r_idx]])
    train_y = torch.cat([out["forget_train"][1][f_idx], out["retain_train"][1][r_idx]])
    test_x = torch.cat([out["forget_test"][2], out["retain_test"][2]])
    test_y = torch.cat([out["forget_test"][1], out["retain_test"][1]])
    return M.linear_probe(
        train_x, train_y == forget_class, test_x, test_y == forget_class, seed=seed
    )


def evaluate_models(
    models: dict[str, nn.Module],
    oracle: nn.Module,
    incompetent: nn.Module,
    data: EvalData,
    forget_class: int,
    *,
    settings: EvalSettings,
    seed: int,
    device: str | torch.device = "cpu",
    per_example: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics for every model in ``models`` (plus ``"oracle"``), keyed by model name.

    ``incompetent`` is a randomly initialised model of the same architecture (for ZRF).
    ``models["original"]``, the model before unlearning, sets the Anamnesis Index's target
    (its forget-test accuracy); without it the relearn metrics other than the fixed-threshold
    ones are NaN. ``per_example``, when given, is filled with every model's logit-scaled
    confidence of the true class on each forget-class training image (float64, in the order of
    ``data.forget_train``; :func:`pbu.metrics.logit_confidence`), what the per-example forget
    score compares across models.
    """
    device = torch.device(device)
    everyone = {"oracle": oracle, **{k: v for k, v in models.items() if k != "oracle"}}
    outs = {name: model_outputs(m, data, settings, device) for name, m in everyone.items()}
    if per_example is not None:
        for name, out in outs.items():
            per_example[name] = M.logit_confidence(*out["forget_train"][:2])
    inc_forget = M.collect_outputs(
        incompetent, data.forget_test.loader(settings.batch_size, device=device)
    )[0]
    relearn: dict[str, dict[str, float]] = {}
    if settings.relearn:
        target = math.nan
        if "original" in outs:
            target = M.anamnesis_target(
                M.accuracy_from_logits(*outs["original"]["forget_test"][:2]),
                settings.anamnesis_alpha,
            )
        else:
            log.warning("no 'original' model: the Anamnesis target is undefined")
        # One trajectory per model, run until it reaches both targets (or the step limit).
        threshold = (
            settings.relearn_threshold
            if math.isnan(target)
            else max(settings.relearn_threshold, target)
        )
        relearn = _relearn_metrics(
            {
                name: _relearn(m, data, settings, seed, device, threshold)
                for name, m in everyone.items()
            },
            target,
            settings,
        )
    o = outs["oracle"]
    fraction = settings.mia_valid_fraction
    rows: dict[str, dict[str, float]] = {}
    for name in everyone:
        out = outs[name]
        (ftr, ftr_y, _), (rtr, rtr_y, _) = out["forget_train"], out["retain_train"]
        (fte, fte_y, _), (rte, rte_y, _) = out["forget_test"], out["retain_test"]
        row = {f"acc_{s}": M.accuracy_from_logits(*out[s][:2]) for s in SPLITS}
        # Members = retain-train; non-members = the test split WITHOUT the forget class (ours)
        # or the whole test split (Bad Teaching's sets); targets = forget-train.
        # Each SVC attack also reports its validity on members and non-members held out of its
        # fit (settings.mia_valid_fraction); the loss attack's validity is on the retained
        # classes, where every model has members (pbu.metrics.loss_attack_validity).
        svc = {"max_samples": settings.mia_max_samples, "valid_fraction": fraction}
        for name_, attack in (
            ("mia_entropy_svc", M.entropy_svc_attack(rtr, rte, ftr, seed=seed, **svc)),
            (
                "mia_entropy_svc_bad_teaching",
                M.entropy_svc_bad_teaching_attack(rtr, rte, fte, ftr, seed=seed, **svc),
            ),
            (
                "mia_efficacy_salun",
                M.efficacy_salun_attack(rtr, rtr_y, rte, rte_y, ftr, ftr_y, seed=seed, **svc),
            ),
        ):
            row[name_] = attack.value
            row.update(_validity(name_, attack.validity))
        loss_mia = M.mia_loss_lr(ftr, ftr_y, fte, fte_y, seed=seed)
        row["mia_loss_acc"], row["mia_loss_auc"] = loss_mia["acc"], loss_mia["auc"]
        if fraction is not None:
            row.update(_validity("mia_loss", M.loss_attack_validity(rtr, rtr_y, rte, rte_y, seed)))
        row["js_forget_test"] = M.js_divergence(fte, o["forget_test"][0])
        row["js_retain_test"] = M.js_divergence(rte, o["retain_test"][0])
        row["act_dist_forget_test"] = M.activation_distance(fte, o["forget_test"][0])
        row["act_dist_retain_test"] = M.activation_distance(rte, o["retain_test"][0])
        row["zrf_forget_test"] = M.zrf(fte, inc_forget)
        row["zrf_forget_test_as_coded"] = M.zrf_as_coded(fte, inc_forget)
        row.update(relearn.get(name, {}))
        if settings.probe:
            p = _probe(out, forget_class, settings, seed)
            row["probe_auc"], row["probe_acc"] = p["auc"], p["acc"]
        rows[name] = row
    return rows


def _validity(attack: str, v: M.AttackValidity | None) -> dict[str, float]:
    """An attack's validity as metric columns: ``<attack>_valid_bacc`` / ``_bacc_se`` /
    ``_auc``; none when nothing was held out."""
    if v is None:
        return {}
    return {
        f"{attack}_valid_bacc": v.bacc,
        f"{attack}_valid_bacc_se": v.bacc_se,
        f"{attack}_valid_auc": v.auc,
    }


def data_record(
    path: str | Path, train: ImageData, test: ImageData, forget_class: int
) -> dict[str, Any]:
    """What the evaluation ran on, for the MLflow dataset inputs: the dataset's name, a digest
    of the prepared file's bytes (sha256, 16 hex digits), its class count and every split's
    size."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    f_tr, r_tr = class_split(train.labels, forget_class)
    f_te, r_te = class_split(test.labels, forget_class)
    return {
        "name": train.spec.name,
        "file": str(path),
        "digest": digest.hexdigest()[:16],
        "num_classes": train.spec.num_classes,
        "splits": {
            "train": len(train),
            "test": len(test),
            "forget_train": len(f_tr),
            "retain_train": len(r_tr),
            "forget_test": len(f_te),
            "retain_test": len(r_te),
        },
    }
