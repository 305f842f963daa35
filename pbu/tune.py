"""Hyperparameter tuning with Optuna: every method the same number of trials, never on test data.

Three protocols share one search-space format and one trial driver (:func:`run_study`):

- ``dev_class`` (the verdict runs' protocol, :mod:`pbu.tune_dev`): every method and variant
  tuned ONCE per setting (dataset, arch) on a *development* forget class that no verdict run
  reports, over several tuning seeds, and frozen into a generated config (:mod:`pbu.tuned`)
  that the verdict runs load.
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
Torch and Optuna are imported where needed (the config check imports the space helpers).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
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
