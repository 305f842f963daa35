"""The tuning jobs: one method tuned for one group under the ``blind`` protocol (a validation
split carved from the data it may see) or the ``validation`` protocol (the experimenter's
held-out split of the training set) (:func:`tune`); one method tuned on the development class
over the tuning seeds (:func:`tune_dev`); the frozen choice of every method of a setting
(:func:`freeze`). The protocols are :mod:`pbu.tune`'s, the frozen file :mod:`pbu.tuned`'s."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pbu import methods
from pbu.checkpoint import write_json
from pbu.errors import UsageError
from pbu.jobs.common import load_data, load_model, resolve_device, resources, started
from pbu.train import seed_everything
from pbu.tune import PROTOCOLS, HoldoutError, check_space, tune_method
from pbu.tune_dev import DevSeed

log = logging.getLogger(__name__)
PathLike = str | os.PathLike
FISHER_KEYS = ("kind", "bn_mode", "mc_samples", "chunk_size", "batch_size")


def _checked(
    method: str,
    name: str,
    hparams: Mapping[str, Any],
    space: Mapping[str, Any],
    budget: int,
    val_fraction: float,
) -> tuple[Any, dict[str, Any]]:
    """The method's spec and its checked ``hparams``, once ``space`` (of ``name``: the method or
    its variant), ``budget`` and ``val_fraction`` are valid; a UsageError naming the problem
    otherwise."""
    try:
        spec = methods.get_method(method)
        hp = methods.check_hparams(spec, dict(hparams))
        check_space(name, spec.hparams, space, budget)
    except (KeyError, ValueError) as err:
        raise UsageError(str(err).strip("'\"")) from None
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction (--val-fraction) must be in (0, 1), got {val_fraction}")
    return spec, hp


def tune(
    data: PathLike,
    *,
    model: PathLike,
    forget: int,
    method: str,
    hparams: Mapping[str, Any],
    space: Mapping[str, Any],
    budget: int,
    val_fraction: float,
    threshold: float,
    seed: int,
    out: PathLike,
    retain_subset: int = 0,
    fisher_settings: Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    memory_format: str = "channels_last",
    progress: bool = True,
    started_at: float | None = None,
    protocol: str = "blind",
) -> dict[str, Any]:
    """Tune ``method`` for forgetting class ``forget`` from checkpoint ``model``: ``budget``
    trials over ``space`` (each overrides names of the base ``hparams``), scored under
    ``protocol``: ``blind``, on a ``val_fraction`` share of each part of the method's data;
    ``validation``, on a ``val_fraction`` share of every class of the training split, held out
    from the method (:func:`pbu.tune.hold_out`). A trial whose forget-val accuracy (%) is at or
    below ``threshold`` counts as forgotten. Methods that need the Fisher get it with
    ``fisher_settings`` (kind, bn_mode, mc_samples, chunk_size, batch_size) on the fit part of
    the forget data. The test split is never used.

    Writes the tuning record ``out`` (returned): every trial, the chosen one, resources.
    """
    began = started(started_at)
    dev = resolve_device(device)
    spec, hp = _checked(method, method, hparams, space, budget, val_fraction)
    if protocol not in PROTOCOLS:
        raise UsageError(
            f"protocol (--protocol) must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        )
    if spec.needs_fisher:
        if not fisher_settings:
            raise UsageError(
                f"method {method!r} needs the Fisher: give fisher_settings "
                f"(--fisher-settings; JSON: {', '.join(FISHER_KEYS)})"
            )
        missing = set(FISHER_KEYS) - set(fisher_settings)
        if missing:
            raise UsageError(
                f"fisher_settings (--fisher-settings) lacks {', '.join(sorted(missing))}"
            )
    else:
        fisher_settings = None
    train, _test = load_data(data, forget)  # the test split is never used
    net, _info = load_model(model, dev, memory_format)
    seed_everything(seed)
    try:
        record = tune_method(
            method,
            net,
            train,
            forget,
            train.spec.num_classes,
            base_hparams=hp,
            space=space,
            budget=budget,
            val_fraction=val_fraction,
            threshold=threshold,
            retain_subset=retain_subset,
            seed=seed,
            fisher_settings=fisher_settings,
            device=dev,
            progress=progress,
            protocol=protocol,
        )
    except HoldoutError as err:  # a validation split without forget- or retained-class images
        raise UsageError(f"val_fraction (--val-fraction): {err}") from None
    record.update(model=str(model), data=str(data), device=str(dev), **resources(dev, began))
    write_json(out, record)
    log.info(
        "%s (%s): chose trial %d of %d %s -> %s",
        method,
        protocol,
        record["chosen"]["trial"],
        len(record["trials"]),
        record["chosen"]["varied"],
        out,
    )
    return record


def _by_seed(paths: Mapping[int, PathLike], what: str) -> dict[int, PathLike]:
    out = {int(s): p for s, p in paths.items()}
    if not out:
        raise UsageError(f"{what} (--{what}) needs at least one SEED=PATH")
    return out


def tune_dev(
    data: PathLike,
    *,
    models: Mapping[int, PathLike],
    oracles: Mapping[int, PathLike],
    forget: int,
    method: str,
    hparams: Mapping[str, Any],
    space: Mapping[str, Any],
    budget: int,
    sampler_seed: int,
    val_fraction: float,
    out: PathLike,
    storage: PathLike | None = None,
    variant: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    retain_subset: int = 0,
    fisher_settings: Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    memory_format: str = "channels_last",
    progress: bool = True,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Tune ``method`` (recorded as ``variant`` with its ``overrides`` fixed, when given) on the
    development class ``forget`` over the tuning seeds: ``models`` and ``oracles`` map each
    tuning seed to its θ* and its oracle for ``forget``, both trained without the held-out
    ``val_fraction`` split (``pbu pretrain/oracle --holdout``). ``budget`` trials of a seeded
    Optuna study (:func:`pbu.tune.tune_dev_class`), stored in the SQLite file ``storage`` (made
    afresh). Writes the record ``out`` (returned). The test split is never used."""
    from pbu.tune_dev import tune_dev_class
    from pbu.tuned import git_commit

    began = started(started_at)
    dev = resolve_device(device)
    name = variant or method
    overrides = dict(overrides or {})
    if overrides and not variant:
        raise UsageError("overrides (--overrides) belong to a variant: give variant (--variant)")
    fixed = sorted(set(space) & set(overrides))
    if fixed:
        raise UsageError(
            f"space (--space) of {name}: {', '.join(fixed)} define(s) the variant (overrides) "
            f"and cannot be tuned"
        )
    spec, hp = _checked(method, name, {**hparams, **overrides}, space, budget, val_fraction)
    models, oracles = _by_seed(models, "model"), _by_seed(oracles, "oracle")
    if set(models) != set(oracles):
        raise UsageError(
            f"model and oracle (--model, --oracle) name different tuning seeds: "
            f"{sorted(models)} vs {sorted(oracles)}"
        )
    if spec.needs_fisher and not fisher_settings:
        raise UsageError(f"method {method!r} needs the Fisher: give fisher_settings")
    train, _test = load_data(data, forget)  # the test split is never used
    seeds, arch = [], None
    for s in sorted(models):
        net, info = load_model(models[s], dev, memory_format)
        orc, oinfo = load_model(oracles[s], dev, memory_format)
        if (oinfo.get("meta") or {}).get("forget") != forget:
            raise UsageError(f"oracle (--oracle) {oracles[s]}: not the oracle for class {forget}")
        digests = {
            role: ((i.get("meta") or {}).get("holdout") or {}).get("digest")
            for role, i in (("original model", info), ("oracle", oinfo))
        }
        seeds.append(DevSeed(s, net, orc, train, digests))
        arch = info["arch"]
    url = None
    if storage is not None:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        Path(storage).unlink(missing_ok=True)  # a fresh study: exactly `budget` trials
        url = f"sqlite:///{Path(storage).resolve()}"
    seed_everything(sampler_seed)
    try:
        record = tune_dev_class(
            method,
            seeds,
            forget,
            train.spec.num_classes,
            base_hparams=hp,
            space=space,
            budget=budget,
            sampler_seed=sampler_seed,
            val_fraction=val_fraction,
            retain_subset=retain_subset,
            fisher_settings=fisher_settings if spec.needs_fisher else None,
            storage=url,
            study_name=f"{train.spec.name}/{arch}/{name}",
            device=dev,
            progress=progress,
        )
    except (HoldoutError, ValueError) as err:
        raise UsageError(str(err)) from None
    record.update(
        method=name,
        base_method=method,
        overrides=overrides,
        dataset=train.spec.name,
        arch=arch,
        models={str(s): str(p) for s, p in models.items()},
        oracles={str(s): str(p) for s, p in oracles.items()},
        data=str(data),
        device=str(dev),
        commit=git_commit(),
        **resources(dev, began),
    )
    write_json(out, record)
    log.info(
        "%s (dev class %d, seeds %s): chose trial %d of %d %s, loss %.3f%s -> %s",
        name,
        forget,
        sorted(models),
        record["chosen"]["trial"],
        len(record["trials"]),
        record["chosen"]["varied"],
        record["chosen"]["score"],
        " (tied)" if record["chosen"]["tied"] else "",
        out,
    )
    return record


def freeze(
    records: Sequence[PathLike],
    *,
    out: PathLike,
    training: Sequence[PathLike] = (),
    command: str | None = None,
) -> dict[str, Any]:
    """Write the frozen development-class choice ``out`` (YAML, :mod:`pbu.tuned`) from the
    tuning records of every method of one setting; ``training``: the tuning seeds' θ* and
    oracle info.json files (their training time joins the recorded cost). Returns its
    content."""
    from pbu.io import atomic_write
    from pbu.tuned import REGENERATE, FrozenError, dump, freeze_records

    try:
        frozen = freeze_records(
            [json.loads(Path(r).read_text()) for r in records],
            training=[json.loads(Path(t).read_text()) for t in training],
            command=command or REGENERATE,
        )
    except (OSError, KeyError, json.JSONDecodeError, FrozenError) as err:
        raise UsageError(f"freeze: {type(err).__name__}: {err}") from None
    text = dump(frozen)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    ties = frozen["ties"]["choices"]
    log.info(
        "froze %d methods (%s / %s; tied choices %d of %d) -> %s",
        len(frozen["methods"]),
        frozen["dataset"],
        frozen["arch"],
        ties["tied"],
        ties["of"],
        out,
    )
    return frozen
