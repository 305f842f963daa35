"""The training jobs: the original model, and the oracle (the same recipe from scratch on the
retained classes only, never seeing the forget class in train or test)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import torch

from pbu.checkpoint import save_checkpoint, write_json
from pbu.data import class_split
from pbu.errors import UsageError
from pbu.jobs.common import as_typed, load_data, resolve_device, resources, started
from pbu.models import build_model, model_args
from pbu.train import TrainRecipe, seed_everything, train_model
from pbu.tune_splits import held_out_record

PathLike = str | os.PathLike


def pretrain(
    data: PathLike,
    *,
    arch: str,
    seed: int,
    recipe: TrainRecipe | Mapping[str, Any],
    out_model: PathLike,
    out_info: PathLike,
    weights: str = "none",
    stem: str | None = None,
    holdout: float | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Train the original model θ* on the full training split of the prepared file ``data``
    (``holdout``: without the validation split of that fraction, seeded by ``seed``; the
    development-class tuning's models, :func:`pbu.tune_splits.held_out_record`).

    Writes the checkpoint ``out_model`` and the record ``out_info`` (returned): recipe,
    per-epoch history, training time (the per-epoch test pass apart), resources.
    """
    return _train(
        data,
        None,
        arch=arch,
        seed=seed,
        recipe=recipe,
        out_model=out_model,
        out_info=out_info,
        weights=weights,
        stem=stem,
        holdout=holdout,
        device=device,
        progress=progress,
        started_at=started_at,
    )


def oracle(
    data: PathLike,
    *,
    forget: int,
    arch: str,
    seed: int,
    recipe: TrainRecipe | Mapping[str, Any],
    out_model: PathLike,
    out_info: PathLike,
    weights: str = "none",
    stem: str | None = None,
    holdout: float | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Train the oracle for class ``forget``: a fresh model, the original's recipe and seed, on
    the retained classes only (its per-epoch test accuracy is on the retained classes too).

    Writes ``out_model`` and ``out_info`` (returned) as :func:`pretrain` does, with role
    ``oracle``; ``holdout`` as :func:`pretrain`'s (the same split, so the same images).
    """
    return _train(
        data,
        forget,
        arch=arch,
        seed=seed,
        recipe=recipe,
        out_model=out_model,
        out_info=out_info,
        weights=weights,
        stem=stem,
        holdout=holdout,
        device=device,
        progress=progress,
        started_at=started_at,
    )


def _train(
    data: PathLike,
    forget: int | None,
    *,
    arch: str,
    seed: int,
    recipe: TrainRecipe | Mapping[str, Any],
    out_model: PathLike,
    out_info: PathLike,
    weights: str,
    stem: str | None,
    holdout: float | None,
    device: str | torch.device,
    progress: bool,
    started_at: float | None,
) -> dict[str, Any]:
    began = started(started_at)
    dev = resolve_device(device)
    train, test = load_data(data, forget)
    recipe = as_typed(TrainRecipe.from_dict, recipe, TrainRecipe, "recipe")
    spec = train.spec
    held = None
    if holdout is not None:  # the split leaves before the forget class does: one split per seed
        if not 0.0 < holdout < 1.0:
            raise UsageError(f"holdout (--holdout) must be in (0, 1), got {holdout}")
        fit_idx, held = held_out_record(train, holdout, seed)
        train = train.subset(fit_idx)
    if forget is not None:  # the oracle never sees the forget class, train or test
        train = train.subset(class_split(train.labels, forget)[1])
        test = test.subset(class_split(test.labels, forget)[1])
    seed_everything(seed)
    try:  # a stem for an arch without one, or one too big for the images: a usage error
        margs = model_args(arch, spec, stem)
        model = build_model(arch, weights=weights, **margs)
    except ValueError as err:
        raise UsageError(f"arch {arch}: {err}") from None
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    history = train_model(
        model, train, recipe, seed=seed, test=test, device=dev, progress=progress, timings=timings
    )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    # Training alone, like every method's time: the per-epoch test pass is timed apart.
    eval_s = timings.get("eval_time_s", 0.0)
    elapsed = time.perf_counter() - t0 - eval_s
    role = "oracle" if forget is not None else "original"
    save_checkpoint(
        out_model,
        model,
        arch=arch,
        model_args=margs,
        hparams={"recipe": recipe.to_dict(), "weights": weights},
        seed=seed,
        meta={
            "role": role,
            "forget": forget,
            "dataset": spec.name,
            **({"holdout": held} if held else {}),
        },
    )
    record = {
        "role": role,
        "dataset": spec.name,
        "arch": arch,
        "seed": seed,
        "forget": forget,
        "recipe": recipe.to_dict(),
        "weights": weights,
        "history": history,
        "time_s": elapsed,
        "eval_time_s": eval_s,
        "epochs": recipe.epochs,
        "time_per_epoch_s": elapsed / max(recipe.epochs, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_test_acc": history[-1]["test_acc"] if history else None,
        "train_samples": len(train),
        "holdout": held,
        "device": str(dev),
        **resources(dev, began),
        "units": {
            "time_s": "s (training alone; the per-epoch test pass is eval_time_s)",
            "test_acc": "%",
            "peak_rss_mb": "MB",
            "started_at": "Unix s",
        },
    }
    write_json(out_info, record)
    return record
