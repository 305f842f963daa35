"""The development-class protocol, the verdict runs' tuning (``pbu tune-dev``): every method and
variant tuned once per setting (dataset, arch) on a forget class that no verdict run reports,
over several tuning seeds, then frozen (:mod:`pbu.tuned`). The search space, Optuna's samplers
and the trial driver are :mod:`pbu.tune`'s.

For one method (or variant), one development class c and the tuning seeds s:

1. each tuning seed's θ*_s and its oracle for c were trained (``pbu pretrain/oracle --holdout``)
   WITHOUT a seeded, class-stratified ``val_fraction`` of every class of the training set
   (:func:`pbu.tune_splits.held_out_record`); the job checks the digest of that split. So the
   held-out images were never training images of θ*_s, of the oracle or of the method;
2. the method's inputs are built from the rest of the training set exactly as ``pbu unlearn``
   builds them (its declared data access; PBU's Fisher on the forget-class part it trains on);
3. each trial runs the method on every tuning seed and scores it against the oracle, as Deep
   Unlearn does (Cadet et al., xcadet/deepunlearn, ``unlearner_optuna``), all in percent:

   - RA: accuracy on retained-class training images (a seeded, class-stratified sample of
     :data:`RA_SAMPLES`); FA: accuracy on the forget-class training images; VA: accuracy on the
     held-out split (every class);
   - MIA: the ROC AUC of a loss-threshold attack (:func:`loss_attack_auc`: a lower loss means
     "member") telling the forget-class training images from the held-out forget-class images;
     the oracle saw neither, so its value (about 50 %) is the target;
   - loss_s = (|ΔRA| + |ΔFA| + |ΔVA| + |ΔMIA|) / 4, each Δ against the oracle of the same seed.
     Deep Unlearn weighs the attack 1 and each accuracy gap 1/3, with a 5-fold cross-validated
     attack accuracy; here the attack is the threshold AUC (no fitting, so no fold noise) and
     every term weighs 1/4: on mnist5k even θ* is at chance (AUC 45-51 %, measured on the three
     tuning seeds), and the cross-validated accuracy moves by up to 5.5 points with its CV seed
     alone, so at weight 1 noise would pick the hyperparameters;

   the trial's value is the mean of loss_s over the tuning seeds (lower is better);
4. ``budget`` trials per method (the same for every method), in an Optuna study stored in SQLite
   (``storage``), each trial an MLflow child run when the record is tracked;
5. the choice is the trial with the lowest value (the earlier trial on an exact tie). A choice
   is *tied* when another trial with other hyperparameters has the same value (to 1e-9): the
   record says so, and so does each tuning seed's own choice (:func:`tie_report`); the frozen
   config reports the share of tied choices.

Why score against the oracle on held-out images rather than by retained accuracy among
trials that forget: retained accuracy on images θ* was trained on sits near 100 % for every
gentle trial, so choices tied (28 of 99 under ``validation``); the distance to the oracle is
continuous, has a target for forgetting (the oracle's FA) instead of a threshold, and punishes
damage and under-forgetting alike.

"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pbu.tune import (
    EVAL_BATCH,
    UNITS,
    _run_trial,
    _short_info,
    _with_fisher,
    check_space,
    hold_out,
    is_range,
    run_study,
    sampler_text,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor, nn

    from pbu.data import ImageData
    from pbu.methods import MethodSpec, UnlearnInputs

log = logging.getLogger(__name__)

DEV_PROTOCOL = "dev_class"
RULE_DEV = (
    "development-class protocol, every method: per tuning seed, loss = (|dRA| + |dFA| + |dVA| "
    "+ |dMIA|) / 4 against that seed's oracle (RA: retained-class training images, FA: "
    "forget-class training images, VA: the held-out split, MIA: loss-threshold attack ROC AUC, "
    "forget-class training vs held-out images; all in %); value = mean loss over the tuning "
    "seeds; lowest value wins, the earlier trial on an exact tie; failed trials last"
)
OBJECTIVE_DEV = "oracle_gap"
TIE_TOL = 1e-9  #: two trial values closer than this are a tie
#: The weights of the objective's terms (equal; Deep Unlearn's are 1/3, 1/3, 1/3 and 1).
DEV_WEIGHTS = {"RA": 0.25, "FA": 0.25, "VA": 0.25, "MIA": 0.25}
RA_SAMPLES = 1000  #: retained-class training images RA is measured on (engineering bound)
DEV_UNITS = dict(
    UNITS,
    RA="% (accuracy, retained-class training images)",
    FA="% (accuracy, forget-class training images)",
    VA="% (accuracy, held-out split, every class)",
    MIA="% (ROC AUC of the loss-threshold attack, forget-class training vs held-out)",
    loss="percentage points ((|dRA| + |dFA| + |dVA| + |dMIA|) / 4, against the oracle)",
    score="percentage points (the mean loss over the tuning seeds)",
)


def tie_report(values: Sequence[float | None], points: Sequence[Mapping[str, Any]]) -> dict:
    """The best (lowest) value's trial and whether it is tied: ``{"trial", "value", "tied",
    "n_tied", "gap"}``; ``n_tied`` counts the other trials with other hyperparameters whose value
    is within :data:`TIE_TOL` of the best, ``gap`` the distance to the best trial with other
    hyperparameters (None when there is none). Failed trials (None) never win or tie."""
    ok = [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not ok:
        return {"trial": None, "value": None, "tied": False, "n_tied": 0, "gap": None}
    best = min(ok, key=lambda i: (values[i], i))
    others = [i for i in ok if dict(points[i]) != dict(points[best])]
    gaps = [values[i] - values[best] for i in others]
    n_tied = sum(1 for g in gaps if abs(g) <= TIE_TOL)
    return {
        "trial": best,
        "value": values[best],
        "tied": n_tied > 0,
        "n_tied": n_tied,
        "gap": min(gaps) if gaps else None,
    }


@dataclass
class DevSeed:
    """One tuning seed: θ*_s and the development class's oracle, both trained without the
    held-out split of the training set ``train`` (their checkpoints' ``holdout`` digests in
    ``digests``, role -> digest, checked against the split this seed draws)."""

    seed: int
    model: nn.Module
    oracle: nn.Module
    train: ImageData
    digests: dict[str, str | None] = field(default_factory=dict)


@dataclass
class _DevData:
    """What every trial of one tuning seed runs on and is scored on."""

    seed: int
    model: nn.Module
    inputs: UnlearnInputs
    retain_fit: ImageData  # RA's sample of retained-class training images
    forget_fit: ImageData  # FA: the forget-class training images (what the method forgets)
    forget_val: ImageData  # held out: forget-class images (VA, the attack's non-members)
    retain_val: ImageData  # held out: retained-class images (VA)
    oracle: dict[str, float]
    holdout: dict[str, Any]
    fisher: dict[str, Any] | None


def loss_attack_auc(
    member_logits: Tensor, member_labels: Tensor, nonmember_logits: Tensor, nonmember_labels: Tensor
) -> float:
    """ROC AUC (%) of the loss-threshold membership attack (Yeom et al., 2018): the score of an
    image is minus its cross-entropy loss, members are ``member_*``. 50 % = the losses tell
    nothing, 100 % = every member has a lower loss than every non-member. No fitting, so the
    value is a function of the two loss samples alone."""
    from sklearn.metrics import roc_auc_score

    from pbu.metrics.core import per_sample_cross_entropy

    member = per_sample_cross_entropy(member_logits, member_labels).numpy()
    non = per_sample_cross_entropy(nonmember_logits, nonmember_labels).numpy()
    y = [1] * len(member) + [0] * len(non)
    return 100.0 * float(roc_auc_score(y, [-v for v in [*member, *non]]))


def dev_metrics(model: nn.Module, d: _DevData, device: torch.device) -> dict[str, float]:
    """RA, FA, VA and MIA (all %) of ``model`` on one tuning seed's sets (module docstring)."""
    from pbu.metrics.core import accuracy_from_logits, collect_outputs

    ff = collect_outputs(model, d.forget_fit.loader(EVAL_BATCH, device=device))
    fv = collect_outputs(model, d.forget_val.loader(EVAL_BATCH, device=device))
    rv = collect_outputs(model, d.retain_val.loader(EVAL_BATCH, device=device))
    rf = collect_outputs(model, d.retain_fit.loader(EVAL_BATCH, device=device))
    hits = sum((lg.argmax(1) == y).sum().item() for lg, y in (fv, rv))
    return {
        "RA": accuracy_from_logits(*rf),
        "FA": accuracy_from_logits(*ff),
        "VA": 100.0 * hits / (len(fv[1]) + len(rv[1])),
        "MIA": loss_attack_auc(*ff, *fv),
    }


def dev_loss(metrics: Mapping[str, float], oracle: Mapping[str, float]) -> float:
    """The development-class objective of one seed: Σ weight · |metric − oracle's| over RA, FA,
    VA and MIA with :data:`DEV_WEIGHTS` (percentage points; 0 = behaves as the oracle)."""
    return float(sum(w * abs(metrics[k] - oracle[k]) for k, w in DEV_WEIGHTS.items()))


def _prepare_dev_seed(
    spec: MethodSpec,
    s: DevSeed,
    forget_class: int,
    num_classes: int,
    *,
    val_fraction: float,
    retain_subset: int,
    fisher_settings: Mapping[str, Any] | None,
    device: torch.device,
) -> _DevData:
    from pbu import methods
    from pbu.data import class_split, stratified_subset

    held = hold_out(s.train, val_fraction, s.seed, forget_class)
    for role, digest in s.digests.items():
        if digest != held.record["digest"]:
            raise ValueError(
                f"tuning seed {s.seed}: the {role} was not trained without this split "
                f"(its holdout digest {digest}, the split's {held.record['digest']}); train it "
                f"with pbu pretrain/oracle --holdout {val_fraction} --seed {s.seed}"
            )
    inputs = methods.build_inputs(
        spec,
        held.fit,
        forget_class,
        num_classes,
        retain_subset=retain_subset,
        seed=s.seed,
        fisher={} if spec.needs_fisher else None,
    )
    inputs = methods.UnlearnInputs(
        inputs.forget_class, inputs.num_classes, inputs.forget, inputs.retain, None
    )
    model = s.model.to(device).eval()
    inputs, fisher = _with_fisher(spec, model, inputs, fisher_settings, s.seed, device)
    forget_idx, retain_idx = class_split(held.fit.labels, forget_class)
    retain_all = held.fit.subset(retain_idx)
    per_class = -(-RA_SAMPLES // max(num_classes - 1, 1))
    retain_fit = retain_all.subset(stratified_subset(retain_all.labels.cpu(), per_class, s.seed))
    d = _DevData(
        seed=s.seed,
        model=model,
        inputs=inputs,
        retain_fit=retain_fit,
        forget_fit=held.fit.subset(forget_idx),
        forget_val=held.forget_val,
        retain_val=held.retain_val,
        oracle={},
        holdout=held.record,
        fisher=fisher,
    )
    d.oracle = dev_metrics(s.oracle.to(device).eval(), d, device)
    return d


def tune_dev_class(
    method: str,
    seeds: Sequence[DevSeed],
    forget_class: int,
    num_classes: int,
    *,
    base_hparams: Mapping[str, Any],
    space: Mapping[str, Any],
    budget: int,
    sampler_seed: int,
    val_fraction: float,
    retain_subset: int,
    fisher_settings: Mapping[str, Any] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Tune ``method`` on the development class ``forget_class`` over the tuning ``seeds``
    (the module docstring's development-class protocol): ``budget`` trials of a seeded Optuna
    study over ``space`` (stored in ``storage`` under ``study_name`` when given), each run on
    every seed and valued by the mean distance to that seed's oracle. ``base_hparams`` are the
    method's (or variant's) full hyperparameters; each trial overrides the names in ``space``.
    Returns the JSON record (every trial with its per-seed metrics, the choice, the ties)."""
    import torch
    from tqdm.auto import tqdm

    from pbu import methods

    if not seeds:
        raise ValueError("development-class tuning needs at least one tuning seed")
    started = time.perf_counter()
    device = torch.device(device)
    spec = methods.get_method(method)
    base = methods.check_hparams(spec, base_hparams)
    space = {k: (dict(v) if is_range(v) else list(v)) for k, v in space.items()}
    check_space(method, spec.hparams, space, budget)
    data = [
        _prepare_dev_seed(
            spec,
            s,
            forget_class,
            num_classes,
            val_fraction=val_fraction,
            retain_subset=retain_subset,
            fisher_settings=fisher_settings,
            device=device,
        )
        for s in seeds
    ]
    trials: list[dict[str, Any]] = []
    bar = tqdm(total=budget, desc=f"tune {method} (dev class {forget_class})", disable=not progress)

    def evaluate(i: int, point: dict[str, Any]) -> float | None:
        hp = dict(base, **point)
        trial: dict[str, Any] = {"trial": i, "varied": point, "hparams": hp, "per_seed": {}}
        trials.append(trial)
        bar.update()
        spent = spent_eval = 0.0
        for d in data:
            ran = _run_trial(method, d.model, d.inputs, hp, device, d.seed)
            if isinstance(ran, str):
                trial.update(score=None, metrics={}, error=f"seed {d.seed}: {ran}")
                trial.update(time_s=None, eval_time_s=None, feasible=False)
                return None
            result, elapsed = ran
            t0 = time.perf_counter()
            m = dev_metrics(result.model, d, device)
            spent_eval += time.perf_counter() - t0
            spent += elapsed
            trial["per_seed"][str(d.seed)] = dict(
                m, loss=dev_loss(m, d.oracle), time_s=elapsed, info=_short_info(result.info)
            )
        per_seed = trial["per_seed"].values()
        value = float(sum(p["loss"] for p in per_seed) / len(data))
        means = {k: sum(p[k] for p in per_seed) / len(data) for k in DEV_WEIGHTS}
        trial.update(
            score=value,
            metrics=dict(means, loss=value),
            feasible=True,
            time_s=spent,
            eval_time_s=spent_eval,
        )
        log.info(
            "%s trial %d %s: loss %.3f (%s)",
            method,
            i,
            point,
            value,
            ", ".join(f"{k} {v:.1f}" for k, v in means.items()),
        )
        return value

    sampling = run_study(
        space,
        budget,
        sampler_seed,
        evaluate,
        direction="minimize",
        storage=storage,
        study_name=study_name,
    )
    bar.close()
    points = [t["varied"] for t in trials]
    choice = tie_report([t.get("score") for t in trials], points)
    if choice["trial"] is None:
        raise FloatingPointError(f"every trial of {method!r} failed; see the log")
    per_seed_choices = {
        str(d.seed): tie_report(
            [(t["per_seed"].get(str(d.seed)) or {}).get("loss") for t in trials], points
        )
        for d in data
    }
    order = sorted(
        range(len(trials)),
        key=lambda i: (trials[i].get("score") is None, trials[i].get("score") or 0.0, i),
    )
    for rank, i in enumerate(order, start=1):
        trials[i]["rank"] = rank
    best = trials[choice["trial"]]
    return {
        "method": method,
        "forget": forget_class,
        "seeds": [d.seed for d in data],
        "protocol": DEV_PROTOCOL,
        "data_access": spec.access.label,
        "rule": {
            "text": RULE_DEV,
            "objective": OBJECTIVE_DEV,
            "weights": DEV_WEIGHTS,
            "ra_samples": RA_SAMPLES,
        },
        "budget": budget,
        "sampling": sampling,
        "sampler": sampler_text(sampling, sampler_seed),
        "sampler_seed": sampler_seed,
        "storage": storage,
        "study_name": study_name,
        "space": space,
        "val_fraction": val_fraction,
        "retain_subset": retain_subset,
        "holdout": {str(d.seed): d.holdout for d in data},
        "split": {
            str(d.seed): {
                "retain_fit_eval": len(d.retain_fit),
                "forget_fit": len(d.forget_fit),
                "forget_val": len(d.forget_val),
                "retain_val": len(d.retain_val),
            }
            for d in data
        },
        "fisher": {str(d.seed): d.fisher for d in data} if spec.needs_fisher else None,
        "oracle": {str(d.seed): d.oracle for d in data},
        "base_hparams": base,
        "trials": trials,
        "chosen": {
            "trial": best["trial"],
            "hparams": best["hparams"],
            "varied": best["varied"],
            "score": best["score"],
            "metrics": best["metrics"],
            "tied": choice["tied"],
            "n_tied": choice["n_tied"],
            "gap": choice["gap"],
        },
        "per_seed_choices": per_seed_choices,
        "total_time_s": time.perf_counter() - started,
        "units": DEV_UNITS,
    }
