"""Hyperparameter tuning under two protocols, every method with the same budget, never on test data.

``blind`` (the default): a method is tuned only on data it may see. ``validation`` (what most
unlearning papers do for their baselines): the experimenter holds out a seeded, class-stratified
validation split of the TRAINING set (:func:`hold_out`), with forget-class and retained-class
images; the method never receives it, neither in a trial nor in the unlearn job that uses the
choice (``pbu unlearn --holdout``, and PBU's Fisher: ``pbu fisher --holdout``), and every method
is scored on it by one rule. The split is held out from the unlearning method only: the original
model and the oracle are trained on the full training set, so pretraining is the same under
both protocols (and without tuning).

For one method, one trained model θ* and one forget class, :func:`tune_method` under ``blind``

1. builds the method's inputs with :func:`pbu.methods.build_inputs`, so its declared data access
   is enforced exactly as in ``pbu unlearn``;
2. carves a seeded, class-stratified validation split out of *what the method received*, and of
   nothing else: forget -> forget_fit / forget_val, retain (when it has any) -> retain_fit /
   retain_val (:func:`split_inputs`). Each trial runs the method on the fit parts only; a method
   that needs the Fisher (PBU) gets one computed on forget_fit, so no validation image enters it;
3. runs ``budget`` trials, the same number for every method (:func:`plan_trials`): the whole grid
   of the method's search space when it has exactly ``budget`` points, else ``budget`` seeded
   random points of it without replacement; a space smaller than the budget is an error, so no
   method gets fewer trials than another. The method's base hyperparameters fill every name the
   space leaves out;
4. scores every trial blind, from the validation data the method may see (:func:`score_trial`):

   - ``acc_forget_val``: accuracy (%) on forget_val. A trial is *feasible* when it is
     ``<= threshold`` (default: PBU's stop threshold, 5 %). A method that never sees forget data
     (finetune, unsir: class id + retain) cannot be checked: forgetting is not measured, every
     trial counts as feasible, and the record says ``forgetting_checked: false``;
   - the *objective*, what forgetting must not cost: ``acc_retain_val`` (accuracy on retain_val)
     when the method sees retain data; for forget-only methods (pbu, neggrad, random_labels,
     boundary_shrink) a forget-only proxy of the damage to the other classes,
     ``agree_forget_val``: the share (%) of forget_val images on which the unlearned model
     predicts the class that θ* itself ranks first among the retained classes. A model that has
     forgotten only the class moves those images to their runner-up, as the retrain oracle does;
     one whose retained classes collapsed sends them anywhere. θ* is part of every method's input,
     so this uses nothing the method may not see;
   - ``score`` = objective when feasible, ``-acc_forget_val`` when not (so every feasible trial
     outranks every infeasible one, and among infeasible ones the closest to forgetting wins).
     The highest score wins; ties go to the lower ``acc_forget_val``, then the higher objective,
     then the higher ``agree_forget_val`` (when the method sees forget data: with a few hundred
     validation images retain accuracies often tie, and of two trials that forget equally and
     keep the retained classes equally, the one that moves forget images to θ*'s runner-up class
     is the gentler), then the earlier trial. A trial whose loss went non-finite scores ``null``
     and ranks last.

Under ``validation`` it instead

1. takes the experimenter's split out of the training set first (:func:`hold_out`: a
   class-stratified ``val_fraction`` of every class, seeded by the run's seed; the same split for
   every method and forget class of that seed, disjoint from the test split by construction);
2. builds the method's inputs from the rest, exactly as ``pbu unlearn --holdout`` does, and
   runs every trial on them (PBU's Fisher on their forget part);
3. scores every trial on the held-out split, measured by the experimenter, so every method is
   checked for forgetting, including those that never see the forget class (finetune, unsir):
   ``acc_forget_val`` on the held-out forget-class images, ``acc_retain_val`` on the held-out
   retained-class images. One rule for every method: *feasible* when ``acc_forget_val <=
   threshold``; ``score`` = ``acc_retain_val`` when feasible, ``-acc_forget_val`` when not; the
   highest score wins, ties go to the lower ``acc_forget_val``, then to the higher
   ``acc_retain_val``, then to the earlier trial. When no trial is feasible the one closest to
   forgetting (lowest ``acc_forget_val``) is chosen, a warning is logged and the record says
   ``chosen.feasible: false``. ``agree_forget_val`` is recorded but plays no part.

The record (:func:`tune_method`'s return value, written as JSON by ``pbu tune``) holds the
protocol, every trial (hyperparameters, validation metrics, score, method wall time, evaluation
time), the chosen trial and hyperparameters, the rule, the budget, the split sizes and, under
``validation``, the held-out split (:func:`hold_out`'s record, with a digest of its indices).
``pbu unlearn --hparams-from`` reads the choice; ``pbu track`` mirrors the record into MLflow (a
``tune`` run per method with one child run per trial).

Torch is imported inside the functions that need it, so the plan helpers stay cheap to import.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor, nn

    from pbu.data import ImageData
    from pbu.methods import MethodSpec

from pbu.tune_splits import (  # noqa: F401 (re-exported)
    Holdout,
    HoldoutError,
    TuneSplit,
    carve_validation,
    hold_out,
    index_digest,
    split_inputs,
)

log = logging.getLogger(__name__)

PROTOCOLS = ("blind", "validation")
RULE = (
    "feasible: acc_forget_val <= threshold (not checked for methods that never see forget "
    "data); objective: acc_retain_val when the method sees retain data, else "
    "agree_forget_val; score = objective if feasible else -acc_forget_val; highest score "
    "wins, ties: lower acc_forget_val, higher objective, higher agree_forget_val, earlier "
    "trial; failed trials last"
)
RULE_VALIDATION = (
    "validation protocol, every method: feasible: acc_forget_val <= threshold (forget-class "
    "images of the held-out training split); objective: acc_retain_val (its retained-class "
    "images); score = acc_retain_val if feasible else -acc_forget_val; highest score wins, "
    "ties: lower acc_forget_val, higher acc_retain_val, earlier trial; failed trials last; "
    "no feasible trial: the lowest acc_forget_val wins (chosen.feasible false)"
)
RULES = {"blind": RULE, "validation": RULE_VALIDATION}
UNITS = {
    "acc_forget_val": "%",
    "acc_retain_val": "%",
    "agree_forget_val": "%",
    "score": "% (objective if feasible, else minus acc_forget_val)",
    "time_s": "s (method alone, evaluation excluded)",
    "eval_time_s": "s",
    "total_time_s": "s (split, Fisher, every trial and its evaluation)",
}
EVAL_BATCH = 256  # engineering


# ------------------------------------------------------------------------------------------
# The plan: which hyperparameters each trial gets (torch-free)
# ------------------------------------------------------------------------------------------


def space_size(space: Mapping[str, Sequence[Any]]) -> int:
    """Number of points of the grid spanned by ``space`` (1 for an empty space)."""
    return math.prod(len(v) for v in space.values())


def check_space(
    method: str, declared: Sequence[str], space: Mapping[str, Sequence[Any]], budget: int
) -> None:
    """A space names only declared hyperparameters, lists values, and has >= ``budget`` points."""
    if budget < 1:
        raise ValueError(f"tuning budget must be >= 1, got {budget}")
    unknown = [k for k in space if k not in declared]
    if unknown:
        raise ValueError(
            f"search space of {method!r}: unknown hyperparameter(s) "
            f"{', '.join(unknown)} (declared: {', '.join(declared)})"
        )
    for k, values in space.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(
                f"search space of {method!r}: {k} must be a non-empty list of "
                f"values, got {values!r}"
            )
        if len({repr(v) for v in values}) != len(values):
            raise ValueError(f"search space of {method!r}: {k} lists a value twice")
    n = space_size(space)
    if n < budget:
        raise ValueError(
            f"search space of {method!r} has {n} point(s), fewer than the budget "
            f"{budget}: every method gets exactly the budget's number of trials, so "
            f"widen the space or lower the budget"
        )


def plan_trials(
    space: Mapping[str, Sequence[Any]], budget: int, seed: int
) -> tuple[str, list[dict[str, Any]]]:
    """The ``budget`` points to try: ("grid", every point) when the grid has exactly ``budget``
    points, else ("random", ``budget`` distinct points drawn with a generator seeded by ``seed``,
    in grid order). Each point maps the space's names to values."""
    names = sorted(space)
    total = space_size(space)
    if total < budget:
        raise ValueError(f"search space has {total} point(s), fewer than the budget {budget}")
    if total == budget:
        picks, sampling = list(range(total)), "grid"
    else:
        picks, sampling = sorted(random.Random(seed).sample(range(total), budget)), "random"
    points = []
    for flat in picks:  # mixed-radix decoding of a grid index, the last name varying fastest
        point, rest = {}, flat
        for name in reversed(names):
            values = space[name]
            point[name] = values[rest % len(values)]
            rest //= len(values)
        points.append({n: point[n] for n in names})
    return sampling, points


def grid(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every point of the grid, in the order :func:`plan_trials` indexes it."""
    names = sorted(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(space[n] for n in names))]


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------


def _predictions(model: nn.Module, data: ImageData, device: torch.device) -> Tensor:
    import torch

    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for x, _ in data.loader(EVAL_BATCH, device=device):
            out.append(model(x).argmax(1).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def runner_up(model: nn.Module, data: ImageData, forget_class: int, device: torch.device) -> Tensor:
    """θ*'s top class on each image among all classes but ``forget_class`` (the reference of
    ``agree_forget_val``)."""
    import torch

    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for x, _ in data.loader(EVAL_BATCH, device=device):
            logits = model(x).float()
            logits[:, forget_class] = -math.inf
            out.append(logits.argmax(1).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _percent(hits: Tensor) -> float:
    return 100.0 * hits.double().mean().item() if len(hits) else float("nan")


def score_trial(
    metrics: Mapping[str, float], *, objective: str, threshold: float, forgetting_checked: bool
) -> tuple[bool, float]:
    """(feasible, score) of one trial's validation metrics, by the module's blind rule."""
    feasible = (not forgetting_checked) or metrics["acc_forget_val"] <= threshold
    score = metrics[objective] if feasible else -metrics["acc_forget_val"]
    return feasible, float(score)


def rank_trials(
    trials: Sequence[Mapping[str, Any]], objective: str, *, agreement: bool = True
) -> list[int]:
    """Trial positions, best first: highest score, then lower acc_forget_val, then higher
    objective, then (``agreement``: the blind protocol) higher agree_forget_val, then earlier
    trial; failed trials (score ``None``) last, in trial order. A metric the method cannot
    measure counts as a tie."""

    def metric(m: Mapping[str, float], name: str) -> float:
        v = m.get(name)
        return 0.0 if v is None or not math.isfinite(v) else float(v)

    def key(i: int) -> tuple:
        t = trials[i]
        if t.get("score") is None or not math.isfinite(t["score"]):
            return (1, 0.0, 0.0, 0.0, 0.0, i)
        m = t["metrics"]
        return (
            0,
            -t["score"],
            metric(m, "acc_forget_val"),
            -metric(m, objective),
            -metric(m, "agree_forget_val") if agreement else 0.0,
            i,
        )

    return sorted(range(len(trials)), key=key)


# ------------------------------------------------------------------------------------------
# Tuning
# ------------------------------------------------------------------------------------------


def objective_of(spec: MethodSpec) -> str:
    """The metric a method is tuned for (see the module docstring)."""
    if spec.access.retain != "none":
        return "acc_retain_val"
    if spec.access.forget:
        return "agree_forget_val"
    raise ValueError(
        f"method {spec.name!r} sees neither forget nor retain data: nothing to validate on"
    )


def tune_method(
    method: str,
    model: nn.Module,
    train: ImageData,
    forget_class: int,
    num_classes: int,
    *,
    base_hparams: Mapping[str, Any],
    space: Mapping[str, Sequence[Any]],
    budget: int,
    val_fraction: float,
    threshold: float,
    retain_subset: int,
    seed: int,
    fisher_settings: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    protocol: str = "blind",
) -> dict[str, Any]:
    """Tune ``method`` for removing ``forget_class`` from ``model`` (θ*, left untouched).

    ``train`` is the full training split. Under ``protocol="blind"`` the method's share of it
    is carved by :func:`pbu.methods.build_inputs` exactly as ``pbu unlearn`` does
    (``retain_subset``, ``seed``), and the validation split out of that share; under
    ``"validation"`` the experimenter's split (:func:`hold_out`, ``val_fraction`` of every
    class) is taken out of ``train`` first and the method's share built from the rest, as
    ``pbu unlearn --holdout`` does. ``base_hparams`` are the method's full hyperparameters; each
    trial overrides the names in ``space``. ``fisher_settings`` (keys of
    ``pbu.fisher.fisher_diagonal``: kind, bn_mode, mc_samples, chunk_size, plus the loader's
    batch_size) is required when the method needs the Fisher. Returns the JSON record.
    """
    import torch
    from tqdm.auto import tqdm

    from pbu import methods

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown tuning protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    started = time.perf_counter()
    device = torch.device(device)
    spec = methods.get_method(method)
    base = methods.check_hparams(spec, base_hparams)
    space = {k: list(v) for k, v in space.items()}
    check_space(method, spec.hparams, space, budget)
    sampling, points = plan_trials(space, budget, seed)
    holdout = None
    if protocol == "validation":
        # The experimenter's split leaves the training set before the method's data is built;
        # every method is scored on retained-class accuracy and checked for forgetting.
        held = hold_out(train, val_fraction, seed, forget_class)
        objective, forgetting_checked = "acc_retain_val", True
        inputs = methods.build_inputs(
            spec,
            held.fit,
            forget_class,
            num_classes,
            retain_subset=retain_subset,
            seed=seed,
            fisher={} if spec.needs_fisher else None,
        )
        sizes = {
            f"{name}_fit": len(part)
            for name, part in (("forget", inputs.forget), ("retain", inputs.retain))
            if part is not None
        }
        sizes.update(forget_val=len(held.forget_val), retain_val=len(held.retain_val))
        split = TuneSplit(
            methods.UnlearnInputs(
                inputs.forget_class, inputs.num_classes, inputs.forget, inputs.retain, None
            ),
            held.forget_val,
            held.retain_val,
            sizes,
        )
        holdout = held.record
        del held, inputs
    else:
        objective = objective_of(spec)
        forgetting_checked = spec.access.forget
        # The Fisher is computed below from forget_fit only; build_inputs just needs to know
        # one will be there.
        inputs = methods.build_inputs(
            spec,
            train,
            forget_class,
            num_classes,
            retain_subset=retain_subset,
            seed=seed,
            fisher={} if spec.needs_fisher else None,
        )
        split = split_inputs(inputs, val_fraction, seed)
        del inputs
    fit = split.fit
    model = model.to(device).eval()
    fisher_info = None
    if spec.needs_fisher:
        if fisher_settings is None:
            raise ValueError(f"method {method!r} needs the Fisher: give fisher_settings")
        from pbu.fisher import fisher_diagonal

        fs = dict(fisher_settings)
        assert fit.forget is not None
        t0 = time.perf_counter()
        fisher = fisher_diagonal(
            copy.deepcopy(model),
            fit.forget.loader(fs["batch_size"], device=device),
            kind=fs["kind"],
            bn_mode=fs["bn_mode"],
            mc_samples=fs["mc_samples"],
            chunk_size=fs["chunk_size"],
            seed=seed,
        )
        fit = methods.UnlearnInputs(
            fit.forget_class, fit.num_classes, fit.forget, fit.retain, fisher
        )
        fisher_info = dict(fs, samples=len(fit.forget), time_s=time.perf_counter() - t0)

    reference = None
    if split.forget_val is not None:
        reference = runner_up(model, split.forget_val, forget_class, device)

    trials: list[dict[str, Any]] = []
    for i, point in enumerate(tqdm(points, desc=f"tune {method}", disable=not progress)):
        hp = dict(base, **point)
        trial: dict[str, Any] = {"trial": i, "varied": point, "hparams": hp}
        try:
            result, elapsed = methods.run(
                method, copy.deepcopy(model), fit, hp, device=device, seed=seed
            )
        except FloatingPointError as err:
            log.warning("trial %d of %s failed: %s", i, method, err)
            trial.update(
                metrics={},
                feasible=False,
                score=None,
                time_s=None,
                eval_time_s=None,
                error=str(err),
            )
            trials.append(trial)
            continue
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if split.forget_val is not None:
            pred = _predictions(result.model, split.forget_val, device)
            metrics["acc_forget_val"] = _percent(pred == forget_class)
            metrics["agree_forget_val"] = _percent(pred == reference)
        if split.retain_val is not None:
            pred = _predictions(result.model, split.retain_val, device)
            metrics["acc_retain_val"] = _percent(pred == split.retain_val.labels.cpu())
        feasible, score = score_trial(
            metrics, objective=objective, threshold=threshold, forgetting_checked=forgetting_checked
        )
        trial.update(
            metrics=metrics,
            feasible=feasible,
            score=score,
            time_s=elapsed,
            eval_time_s=time.perf_counter() - t0,
            info={
                k: v
                for k, v in result.info.items()
                if isinstance(v, (int, float, str)) or v is None
            },
        )
        log.info(
            "%s trial %d %s: %s score %.2f%s",
            method,
            i,
            point,
            ", ".join(f"{k} {v:.1f}" for k, v in sorted(metrics.items())),
            score,
            "" if feasible else " (infeasible)",
        )
        trials.append(trial)

    order = rank_trials(trials, objective, agreement=protocol == "blind")
    for rank, i in enumerate(order, start=1):
        trials[i]["rank"] = rank
    best = trials[order[0]]
    if best.get("score") is None:
        raise FloatingPointError(f"every trial of {method!r} failed; see the log")
    if not best["feasible"]:
        log.warning(
            "%s: no trial reached acc_forget_val <= %s %%; chose the closest (%.1f %%)",
            method,
            threshold,
            best["metrics"]["acc_forget_val"],
        )
    return {
        "method": method,
        "forget": forget_class,
        "seed": seed,
        "protocol": protocol,
        "data_access": spec.access.label,
        "rule": {
            "text": RULES[protocol],
            "objective": objective,
            "threshold": threshold,
            "forgetting_checked": forgetting_checked,
        },
        "budget": budget,
        "sampling": sampling,
        "space": space,
        "space_size": space_size(space),
        "val_fraction": val_fraction,
        "split": split.sizes,
        "holdout": holdout,
        "retain_subset": retain_subset,
        "fisher": fisher_info,
        "base_hparams": base,
        "trials": trials,
        "chosen": {
            "trial": best["trial"],
            "hparams": best["hparams"],
            "varied": best["varied"],
            "feasible": best["feasible"],
            "score": best["score"],
            "metrics": best["metrics"],
        },
        "total_time_s": time.perf_counter() - started,
        "units": UNITS,
    }
