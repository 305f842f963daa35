"""The tuning job: one method tuned under the ``blind`` protocol (a validation split carved from
the data it may see) or the ``validation`` protocol (the experimenter's held-out split of the
training set); the protocols are :mod:`pbu.tune`'s."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pbu import methods
from pbu.checkpoint import write_json
from pbu.errors import UsageError
from pbu.jobs.common import load_data, load_model, resolve_device, resources, started
from pbu.train import seed_everything
from pbu.tune import PROTOCOLS, HoldoutError, check_space, tune_method

log = logging.getLogger(__name__)
PathLike = str | os.PathLike
FISHER_KEYS = ("kind", "bn_mode", "mc_samples", "chunk_size", "batch_size")


def tune(
    data: PathLike,
    *,
    model: PathLike,
    forget: int,
    method: str,
    hparams: Mapping[str, Any],
    space: Mapping[str, Sequence[Any]],
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
    try:
        spec = methods.get_method(method)
        hp = methods.check_hparams(spec, dict(hparams))
        check_space(method, spec.hparams, space, budget)
    except (KeyError, ValueError) as err:
        raise UsageError(str(err).strip("'\"")) from None
    if protocol not in PROTOCOLS:
        raise UsageError(
            f"protocol (--protocol) must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        )
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction (--val-fraction) must be in (0, 1), got {val_fraction}")
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
