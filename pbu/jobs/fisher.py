"""The Fisher job: the diagonal Fisher of the original model at θ*, on the forget class's
training samples only (the only data PBU sees)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from pbu.checkpoint import save_tensors, write_json
from pbu.data import class_split
from pbu.fisher import fisher_diagonal
from pbu.jobs.common import (
    load_data_held_out,
    load_model,
    resolve_device,
    resources,
    started,
)

PathLike = str | os.PathLike


def fisher(
    data: PathLike,
    *,
    model: PathLike,
    forget: int,
    out: PathLike,
    out_info: PathLike,
    kind: str = "true",
    bn_mode: str = "eval",
    mc_samples: int = 1,
    chunk_size: int = 64,
    batch_size: int = 256,
    seed: int = 0,
    holdout: float | None = None,
    device: str | torch.device = "auto",
    memory_format: str = "channels_last",
    progress: bool = True,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Compute the diagonal Fisher of checkpoint ``model`` on class ``forget``'s training
    samples of the prepared file ``data`` (see :func:`pbu.fisher_diagonal` for ``kind``,
    ``bn_mode``, ``mc_samples``, ``chunk_size``). ``holdout``: the ``validation`` protocol's
    fraction; its split of the training set (:func:`pbu.tune.hold_out`, seeded by ``seed``) is
    left out, as ``pbu unlearn --holdout`` leaves it out of PBU's data.

    Writes the tensors to ``out`` (loaded back by :func:`pbu.jobs.common.load_fisher`) and the
    record ``out_info`` (returned): samples, time, throughput, the diagonal's sum, resources.
    """
    began = started(started_at)
    dev = resolve_device(device)
    train, _, held = load_data_held_out(data, forget, holdout, seed)
    net, _info = load_model(model, dev, memory_format)
    forget_data = train.subset(class_split(train.labels, forget)[0])
    loader = forget_data.loader(batch_size, device=dev)
    t0 = time.perf_counter()
    diag = fisher_diagonal(
        net,
        loader,
        kind=kind,
        bn_mode=bn_mode,
        mc_samples=mc_samples,
        chunk_size=chunk_size,
        seed=seed,
        progress=progress,
    )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - t0
    save_tensors(
        out,
        {
            "fisher": {k: v.cpu() for k, v in diag.items()},
            "kind": kind,
            "bn_mode": bn_mode,
            "samples": len(forget_data),
            "forget": forget,
            "holdout_digest": held["digest"] if held else None,
        },
    )
    total = sum(float(v.sum()) for v in diag.values())
    record = {
        "kind": kind,
        "bn_mode": bn_mode,
        "samples": len(forget_data),
        "forget": forget,
        "holdout": held,
        "time_s": elapsed,
        "images_per_s": len(forget_data) / elapsed,
        "trace": total,
        "device": str(dev),
        **resources(dev, began),
        "units": {"time_s": "s", "trace": "sum of the diagonal"},
    }
    write_json(out_info, record)
    return record
