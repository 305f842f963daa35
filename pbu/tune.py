"""Hyperparameter tuning with Optuna: every method the same number of trials, never on test data.

Three protocols share one search-space format and one trial driver (:func:`run_study`):

- ``dev_class`` (the verdict runs' protocol, :func:`tune_dev_class`): every method and variant
  tuned ONCE per setting (dataset, arch) on a *development* forget class that no verdict run
  reports, over several tuning seeds, and frozen into a generated config (:mod:`pbu.tuned`)
  that the verdict runs load. See "The development-class protocol" below.
- ``blind`` and ``validation`` (per (seed, forget class) group, :func:`tune_method`): a tune job
  per method and group of a run whose ``tuning.enabled`` is true; the choice feeds that group's
  unlearn job (``pbu unlearn --hparams-from``).

The search space
----------------
``{name: [v1, v2, ...]}`` is a categorical choice; ``{name: {low, high, log?, int?}}`` a float
(``int: true``: an integer) range, ``log: true`` sampled on a log scale. The method's base
hyperparameters fill every name the space leaves out, and a config variant's overrides (its
defining values, e.g. β = 0 for ``pbu_no_fisher``) are never in its space (:func:`variant_space`).
:func:`make_sampler` picks Optuna's sampler, seeded: a space of categorical choices only runs
as a grid (``GridSampler``: every point when the grid has exactly ``budget`` points, else
``budget`` distinct points in a seeded order; a grid smaller than the budget is an error, so no
method gets fewer trials than another); any range makes it TPE (``TPESampler``, multivariate,
seeded: the first ``n_startup_trials`` (10) are random, the rest follow the model).

The development-class protocol
------------------------------
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

The per-group protocols
-----------------------
For one method, one trained model θ* and one forget class, :func:`tune_method` under ``blind``
carves a seeded, class-stratified validation split out of *what the method received* (forget ->
forget_fit / forget_val, retain -> retain_fit / retain_val, :func:`split_inputs`; PBU's Fisher on
forget_fit) and scores every trial blind (:func:`score_trial`):

- ``acc_forget_val``: accuracy (%) on forget_val; *feasible* when ``<= threshold``. A method that
  never sees forget data (finetune, unsir) cannot be checked: every trial counts as feasible and
  the record says ``forgetting_checked: false``;
- the *objective*: ``acc_retain_val`` when the method sees retain data; for forget-only methods
  ``agree_forget_val``, the share (%) of forget_val images on which the unlearned model predicts
  the class θ* itself ranks first among the retained classes (a model that forgot only the class
  moves those images to their runner-up, as the oracle does);
- ``score`` = objective when feasible, ``-acc_forget_val`` when not; the highest score wins,
  ties go to the lower ``acc_forget_val``, the higher objective, the higher
  ``agree_forget_val``, then the earlier trial; a trial whose loss went non-finite ranks last.

Under ``validation`` the experimenter's split (:func:`hold_out`, a class-stratified
``val_fraction`` of every class of the training set, seeded by the run's seed) leaves the
training set first; the method's inputs are built from the rest, as ``pbu unlearn --holdout``
does, and every method is scored by one rule on the held-out images: feasible when
``acc_forget_val <= threshold``, score = ``acc_retain_val`` if feasible else
``-acc_forget_val``, ties to the lower ``acc_forget_val``, then the higher ``acc_retain_val``,
then the earlier trial; with no feasible trial the closest to forgetting is chosen, a warning is
logged and the record says ``chosen.feasible: false``.

Torch and Optuna are imported inside the functions that need them, so the space helpers stay
cheap to import (the config check uses them).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    import torch
    from torch import Tensor, nn

    from pbu.data import ImageData
    from pbu.methods import MethodSpec, UnlearnInputs

from pbu.tune_splits import (  # noqa: F401 (re-exported)
    Holdout,
    HoldoutError,
    TuneSplit,
    carve_validation,
    held_out_record,
    hold_out,
    index_digest,
    split_inputs,
)

log = logging.getLogger(__name__)

PROTOCOLS = ("blind", "validation")
DEV_PROTOCOL = "dev_class"
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
RULE_DEV = (
    "development-class protocol, every method: per tuning seed, loss = (|dRA| + |dFA| + |dVA| "
    "+ |dMIA|) / 4 against that seed's oracle (RA: retained-class training images, FA: "
    "forget-class training images, VA: the held-out split, MIA: loss-threshold attack ROC AUC, "
    "forget-class training vs held-out images; all in %); value = mean loss over the tuning "
    "seeds; lowest value wins, the earlier trial on an exact tie; failed trials last"
)
RULES = {"blind": RULE, "validation": RULE_VALIDATION, DEV_PROTOCOL: RULE_DEV}
OBJECTIVE_DEV = "oracle_gap"
#: The weights of the objective's terms (equal; Deep Unlearn's are 1/3, 1/3, 1/3 and 1).
DEV_WEIGHTS = {"RA": 0.25, "FA": 0.25, "VA": 0.25, "MIA": 0.25}
RA_SAMPLES = 1000  #: retained-class training images RA is measured on (engineering bound)
TIE_TOL = 1e-9  #: two trial values closer than this are a tie
UNITS = {
    "acc_forget_val": "%",
    "acc_retain_val": "%",
    "agree_forget_val": "%",
    "RA": "% (accuracy, retained-class training images)",
    "FA": "% (accuracy, forget-class training images)",
    "VA": "% (accuracy, held-out split, every class)",
    "MIA": "% (ROC AUC of the loss-threshold attack, forget-class training vs held-out)",
    "loss": "percentage points ((|dRA| + |dFA| + |dVA| + |dMIA|) / 4, against the oracle)",
    "score": "% (objective if feasible, else minus acc_forget_val); dev_class: the mean loss",
    "time_s": "s (method alone, evaluation excluded)",
    "eval_time_s": "s",
    "total_time_s": "s (split, Fisher, every trial and its evaluation)",
}
EVAL_BATCH = 256  # engineering
RANGE_KEYS = {"low", "high", "log", "int"}


# ------------------------------------------------------------------------------------------
# The search space and the trial driver (torch-free)
# ------------------------------------------------------------------------------------------


def is_range(values: Any) -> bool:
    """A range entry (``{low, high, log?, int?}``) rather than a list of choices."""
    return isinstance(values, Mapping)


def grid_size(space: Mapping[str, Any]) -> int | None:
    """Points of the grid a categorical-only space spans (1 for an empty space); None when the
    space has a range."""
    if any(is_range(v) for v in space.values()):
        return None
    return math.prod(len(v) for v in space.values())


def check_space(
    method: str, declared: Sequence[str], space: Mapping[str, Any], budget: int
) -> None:
    """A space names only declared hyperparameters; each entry is a non-empty list of distinct
    values or a range ``{low < high, log (low > 0), int}``; a categorical-only space has at least
    ``budget`` points."""
    if budget < 1:
        raise ValueError(f"tuning budget must be >= 1, got {budget}")
    unknown = [k for k in space if k not in declared]
    if unknown:
        raise ValueError(
            f"search space of {method!r}: unknown hyperparameter(s) "
            f"{', '.join(unknown)} (declared: {', '.join(declared)})"
        )
    for k, values in space.items():
        if is_range(values):
            extra = set(values) - RANGE_KEYS
            low, high = values.get("low"), values.get("high")
            if extra or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)
            ):
                raise ValueError(
                    f"search space of {method!r}: {k} must be a list of values or a range "
                    f"{{low, high, log, int}}, got {dict(values)!r}"
                )
            if not low < high:
                raise ValueError(f"search space of {method!r}: {k}: low must be < high")
            if values.get("log") and low <= 0:
                raise ValueError(f"search space of {method!r}: {k}: a log range needs low > 0")
            if values.get("int") and not (isinstance(low, int) and isinstance(high, int)):
                raise ValueError(f"search space of {method!r}: {k}: an int range needs int bounds")
            continue
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(
                f"search space of {method!r}: {k} must be a non-empty list of "
                f"values or a range {{low, high, log, int}}, got {values!r}"
            )
        if len({repr(v) for v in values}) != len(values):
            raise ValueError(f"search space of {method!r}: {k} lists a value twice")
    n = grid_size(space)
    if n is not None and n < budget:
        raise ValueError(
            f"search space of {method!r} has {n} point(s), fewer than the budget "
            f"{budget}: every method gets exactly the budget's number of trials, so "
            f"widen the space (or give it a range) or lower the budget"
        )


def variant_space(space: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The space of a variant that has none of its own: its base method's, without the names
    its overrides fix (those define it: ``pbu_no_fisher`` keeps β = 0 in every trial)."""
    return {k: v for k, v in space.items() if k not in overrides}


def make_sampler(space: Mapping[str, Any], budget: int, seed: int) -> tuple[Any, str]:
    """Optuna's sampler for ``space`` and its name: ``grid`` (``GridSampler``, seeded order)
    for a categorical-only space, else ``tpe`` (``TPESampler``, multivariate, seeded)."""
    import optuna

    if grid_size(space) is not None:
        return optuna.samplers.GridSampler({k: list(v) for k, v in space.items()}, seed=seed), (
            "grid"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE's ExperimentalWarning
        return optuna.samplers.TPESampler(seed=seed, multivariate=True), "tpe"


def sampler_text(sampling: str, seed: int) -> str:
    """The sampler as the records state it."""
    if sampling == "grid":
        return f"optuna.samplers.GridSampler(seed={seed})"
    return f"optuna.samplers.TPESampler(seed={seed}, multivariate=True, n_startup_trials=10)"


def suggest(trial: optuna.Trial, space: Mapping[str, Any]) -> dict[str, Any]:
    """One point of ``space`` from an Optuna trial (names in sorted order)."""
    point: dict[str, Any] = {}
    for name in sorted(space):
        values = space[name]
        if not is_range(values):
            point[name] = trial.suggest_categorical(name, list(values))
        elif values.get("int"):
            point[name] = trial.suggest_int(
                name, values["low"], values["high"], log=bool(values.get("log"))
            )
        else:
            point[name] = trial.suggest_float(
                name, float(values["low"]), float(values["high"]), log=bool(values.get("log"))
            )
    return point


def run_study(
    space: Mapping[str, Any],
    budget: int,
    seed: int,
    evaluate: Callable[[int, dict[str, Any]], float | None],
    *,
    direction: str,
    storage: str | None = None,
    study_name: str | None = None,
) -> str:
    """Run ``budget`` trials of an Optuna study over ``space``: trial ``i`` gets a point and
    ``evaluate(i, point)`` returns its value (None: the trial failed; Optuna records it as
    failed and it still counts towards the budget). ``storage``: an Optuna storage URL (e.g.
    ``sqlite:///study.db``) for the study named ``study_name``; None keeps it in memory.
    Returns the sampler's name (:func:`make_sampler`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, sampling = make_sampler(space, budget, seed)
    study = optuna.create_study(
        direction=direction, sampler=sampler, storage=storage, study_name=study_name
    )

    def objective(trial: optuna.Trial) -> float:
        point = suggest(trial, space)
        trial.set_user_attr("pbu_trial", trial.number)
        value = evaluate(trial.number, point)
        return float("nan") if value is None or not math.isfinite(value) else float(value)

    study.optimize(objective, n_trials=budget)
    return sampling


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


# ------------------------------------------------------------------------------------------
# Scoring of the per-group protocols
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


def objective_of(spec: MethodSpec) -> str:
    """The metric a method is tuned for under ``blind`` (see the module docstring)."""
    if spec.access.retain != "none":
        return "acc_retain_val"
    if spec.access.forget:
        return "agree_forget_val"
    raise ValueError(
        f"method {spec.name!r} sees neither forget nor retain data: nothing to validate on"
    )


def _with_fisher(
    spec: MethodSpec,
    model: nn.Module,
    fit: UnlearnInputs,
    fisher_settings: Mapping[str, Any] | None,
    seed: int,
    device: torch.device,
) -> tuple[UnlearnInputs, dict[str, Any] | None]:
    """``fit`` with the Fisher computed on its forget part (methods that need it), and a note
    of it; ``fit`` unchanged otherwise."""
    if not spec.needs_fisher:
        return fit, None
    from pbu.fisher import fisher_diagonal
    from pbu.methods import UnlearnInputs

    if fisher_settings is None:
        raise ValueError(f"method {spec.name!r} needs the Fisher: give fisher_settings")
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
    fit = UnlearnInputs(fit.forget_class, fit.num_classes, fit.forget, fit.retain, fisher)
    return fit, dict(fs, samples=len(fit.forget), time_s=time.perf_counter() - t0)


def _run_trial(
    method: str,
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: Mapping[str, Any],
    device: torch.device,
    seed: int,
) -> tuple[Any, float] | str:
    """The method's result and time on a copy of ``model``, or the error text of a trial whose
    loss went non-finite."""
    from pbu import methods

    try:
        return methods.run(method, copy.deepcopy(model), inputs, hp, device=device, seed=seed)
    except FloatingPointError as err:
        log.warning("a trial of %s failed: %s", method, err)
        return str(err)


def _short_info(info: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str)) or v is None}


# ------------------------------------------------------------------------------------------
# The per-group protocols
# ------------------------------------------------------------------------------------------


def tune_method(
    method: str,
    model: nn.Module,
    train: ImageData,
    forget_class: int,
    num_classes: int,
    *,
    base_hparams: Mapping[str, Any],
    space: Mapping[str, Any],
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
    """Tune ``method`` for removing ``forget_class`` from ``model`` (θ*, left untouched) under
    ``protocol`` (``blind`` or ``validation``, see the module docstring).

    ``train`` is the full training split. Under ``blind`` the method's share of it is carved by
    :func:`pbu.methods.build_inputs` exactly as ``pbu unlearn`` does (``retain_subset``,
    ``seed``), and the validation split out of that share; under ``validation`` the
    experimenter's split (:func:`hold_out`) is taken out of ``train`` first. ``base_hparams``
    are the method's full hyperparameters; each trial overrides the names in ``space``.
    ``fisher_settings`` (keys of ``pbu.fisher.fisher_diagonal`` plus the loader's batch_size) is
    required when the method needs the Fisher. Returns the JSON record.
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
    space = {k: (dict(v) if is_range(v) else list(v)) for k, v in space.items()}
    check_space(method, spec.hparams, space, budget)
    holdout = None
    fisher_placeholder = {} if spec.needs_fisher else None
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
            fisher=fisher_placeholder,
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
            fisher=fisher_placeholder,
        )
        split = split_inputs(inputs, val_fraction, seed)
        del inputs
    model = model.to(device).eval()
    fit, fisher_info = _with_fisher(spec, model, split.fit, fisher_settings, seed, device)
    reference = None
    if split.forget_val is not None:
        reference = runner_up(model, split.forget_val, forget_class, device)

    trials: list[dict[str, Any]] = []
    bar = tqdm(total=budget, desc=f"tune {method}", disable=not progress)

    def evaluate(i: int, point: dict[str, Any]) -> float | None:
        hp = dict(base, **point)
        trial: dict[str, Any] = {"trial": i, "varied": point, "hparams": hp}
        trials.append(trial)
        bar.update()
        ran = _run_trial(method, model, fit, hp, device, seed)
        if isinstance(ran, str):
            trial.update(
                metrics={}, feasible=False, score=None, time_s=None, eval_time_s=None, error=ran
            )
            return None
        result, elapsed = ran
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
            info=_short_info(result.info),
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
        return score

    sampling = run_study(space, budget, seed, evaluate, direction="maximize")
    bar.close()
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
        "sampler": sampler_text(sampling, seed),
        "space": space,
        "grid_size": grid_size(space),
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


# ------------------------------------------------------------------------------------------
# The development-class protocol
# ------------------------------------------------------------------------------------------


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
        "units": UNITS,
    }
