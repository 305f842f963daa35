"""The evaluation job: every model of one (dataset, arch, seed, forget class) scored against the
oracle, with the metrics of :mod:`pbu.evaluation`."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import torch

from pbu.checkpoint import write_json
from pbu.evaluation import UNITS, EvalData, EvalSettings, data_record, evaluate_models
from pbu.jobs.common import (
    as_typed,
    load_data,
    load_model,
    resolve_device,
    resources,
    started,
    to_memory_format,
)
from pbu.models import build_model
from pbu.train import seed_everything

PathLike = str | os.PathLike


def evaluate(
    data: PathLike,
    *,
    forget: int,
    seed: int,
    original: PathLike,
    oracle: PathLike,
    out: PathLike,
    models: Mapping[str, PathLike] | None = None,
    settings: EvalSettings | Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    memory_format: str = "channels_last",
    started_at: float | None = None,
) -> dict[str, Any]:
    """Score the original checkpoint, each of ``models`` (name -> checkpoint) and the oracle
    against the oracle on class ``forget`` of the prepared file ``data``.

    The incompetent teacher of ZRF is a fresh model of the oracle's architecture, initialised
    from ``seed`` (fixed per seed). Writes the record ``out`` (returned): every model's metrics
    with their units, the data it ran on, settings, time, resources.
    """
    began = started(started_at)
    dev = resolve_device(device)
    train, test = load_data(data, forget)
    settings = as_typed(
        EvalSettings.from_dict, {} if settings is None else settings, EvalSettings, "settings"
    )
    nets = {"original": load_model(original, dev, memory_format)[0]}
    for name, path in (models or {}).items():
        nets[name] = load_model(path, dev, memory_format)[0]
    oracle_net, oinfo = load_model(oracle, dev, memory_format)
    seed_everything(seed + 7919)  # the incompetent model: a fixed, seed-dependent init
    incompetent = to_memory_format(
        build_model(oinfo["arch"], **oinfo["model_args"]).to(dev), memory_format
    ).eval()
    split = EvalData.build(train, test, forget)
    t0 = time.perf_counter()
    rows = evaluate_models(
        nets, oracle_net, incompetent, split, forget, settings=settings, seed=seed, device=dev
    )
    record = {
        "forget": forget,
        "seed": seed,
        "settings": settings.__dict__,
        "metrics": rows,
        "units": UNITS,
        "data": data_record(data, train, test, forget),
        "time_s": time.perf_counter() - t0,
        **resources(dev, began),
    }
    write_json(out, record)
    return record
