"""The evaluation job: every model of one (dataset, arch, seed, forget class) scored against the
oracle, with the metrics of :mod:`pbu.evaluation`."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pbu import metrics as M
from pbu.checkpoint import write_json
from pbu.data import class_split
from pbu.errors import UsageError
from pbu.evaluation import (
    UNITS,
    EvalData,
    EvalSettings,
    data_record,
    evaluate_models,
    model_outputs,
)
from pbu.jobs.common import (
    as_typed,
    load_data,
    load_model,
    resolve_device,
    resources,
    started,
    to_memory_format,
)
from pbu.jobs.forget_score import Confidences, write_confidences
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
    out_confidences: PathLike | None = None,
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
    with their units, the data it ran on, settings, time, resources; and, with
    ``out_confidences``, every model's per-example confidences on the forget class's training
    images (:func:`pbu.jobs.forget_score.write_confidences`), what the forget-score stage reads.
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
    per_example: dict[str, np.ndarray] = {}
    rows = evaluate_models(
        nets,
        oracle_net,
        incompetent,
        split,
        forget,
        settings=settings,
        seed=seed,
        device=dev,
        per_example=per_example,
    )
    if out_confidences is not None:
        names = list(per_example)
        write_confidences(
            out_confidences,
            Confidences(
                model=names,
                seed=[seed] * len(names),
                confidence=np.stack([per_example[n] for n in names]),
                acc_retain_test=[rows[n]["acc_retain_test"] for n in names],
                index=class_split(train.labels, forget)[0].numpy(),
                forget=forget,
            ),
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


def confidences(
    data: PathLike,
    *,
    forget: int,
    models: Mapping[int, PathLike],
    out: PathLike,
    out_info: PathLike | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    memory_format: str = "channels_last",
    started_at: float | None = None,
) -> dict[str, Any]:
    """The per-example confidences of oracles outside every evaluation group (the forget
    score's ceiling: ``models`` maps each further seed to its oracle's checkpoint), in the
    evaluation's file format (:func:`pbu.jobs.forget_score.write_confidences`), with each
    oracle's A_Dr. One forward pass over the forget class's training images and the retained
    test images per model. Returns the job's record (models, time, resources), also written to
    ``out_info`` when given."""
    began = started(started_at)
    dev = resolve_device(device)
    train, test = load_data(data, forget)
    split = EvalData.build(train, test, forget)
    only = EvalSettings(batch_size=batch_size)
    seeds = sorted(models)
    conf, acc = [], []
    t0 = time.perf_counter()
    for seed in seeds:
        net, info = load_model(models[seed], dev, memory_format)
        meta = info.get("meta") or {}
        if meta.get("role") != "oracle" or meta.get("forget") != forget:
            raise UsageError(
                f"{models[seed]}: not an oracle of class {forget} (role "
                f"{meta.get('role')!r}, forget {meta.get('forget')!r})"
            )
        out_ = model_outputs(net, split, only, dev, splits=("forget_train", "retain_test"))
        conf.append(M.logit_confidence(*out_["forget_train"][:2]))
        acc.append(M.accuracy_from_logits(*out_["retain_test"][:2]))
    write_confidences(
        out,
        Confidences(
            model=["oracle"] * len(seeds),
            seed=seeds,
            confidence=np.stack(conf),
            acc_retain_test=acc,
            index=class_split(train.labels, forget)[0].numpy(),
            forget=forget,
        ),
    )
    record = {
        "forget": forget,
        "seeds": seeds,
        "time_s": time.perf_counter() - t0,
        **resources(dev, began),
    }
    if out_info is not None:
        write_json(out_info, record)
    return record
