"""The unlearning job: one method, handed exactly the data it declares (see :mod:`pbu.methods`),
with the harness's own trajectory monitor on the test split."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbu import methods
from pbu.checkpoint import save_checkpoint, write_json
from pbu.data import ImageData, class_split, stratified_subset
from pbu.errors import UsageError
from pbu.jobs.common import (
    load_data_held_out,
    load_fisher,
    load_model,
    resolve_device,
    resources,
    started,
)
from pbu.train import evaluate_accuracy, seed_everything

PathLike = str | os.PathLike
MONITOR_BATCH = 256


class AccuracyMonitor:
    """Forget- and retain-test accuracy every ``every`` steps of a method (0: never).

    It lives in the harness: the method never sees these splits, and :func:`pbu.methods.run`
    leaves the time spent here out of the method's time. ``retain_samples`` (> 0) monitors on a
    class-stratified sample of that many retain-test images instead of all of them.
    """

    def __init__(
        self,
        test: ImageData,
        forget: int,
        *,
        every: int,
        retain_samples: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.every = every
        self.trajectory: list[dict[str, float]] = []
        if not every:
            return
        f_te, r_te = class_split(test.labels, forget)
        # batches of 256: 2-3x cheaper than 1024 for the small CNN on CPU under glibc's default
        # allocator, which maps a 1024-batch's activations afresh each time (page faults); with
        # the pipeline's MALLOC_* settings both cost the same (benchmarks/bench_eval_batch.py)
        self._forget = test.subset(f_te).loader(MONITOR_BATCH, device=device)
        retain_test = test.subset(r_te)
        if retain_samples and retain_samples < len(retain_test):
            per_class = -(-retain_samples // (test.spec.num_classes - 1))
            retain_test = retain_test.subset(
                stratified_subset(retain_test.labels.cpu(), per_class, 0)
            )
        self._retain = retain_test.loader(MONITOR_BATCH, device=device)

    def __call__(self, model: nn.Module, step: int) -> None:
        if self.every and step % self.every == 0:
            self.trajectory.append(
                {
                    "step": step,
                    "acc_forget_test": evaluate_accuracy(model, self._forget),
                    "acc_retain_test": evaluate_accuracy(model, self._retain),
                }
            )

    def merge(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The method's per-step ``history`` with the monitored accuracies of each step merged
        in (steps only the monitor saw get rows of their own), sorted by step."""
        by_step = {r["step"]: r for r in self.trajectory}
        merged = [dict(r, **by_step.pop(r.get("step"), {})) for r in history]
        merged += list(by_step.values())
        merged.sort(key=lambda r: r.get("step", 0))
        return merged


def tuned_hparams(
    path: PathLike,
    spec: methods.MethodSpec,
    base: Mapping[str, Any],
    *,
    method: str,
    forget: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``base`` overridden by the hyperparameters the ``pbu tune`` record at ``path`` chose, and
    what to record about it. The record must be for the same method, forget class and seed."""
    try:
        record = json.loads(Path(path).read_text())
        chosen = record["chosen"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(
            f"hparams_from (--hparams-from) {path}: not a pbu tune record "
            f"({type(err).__name__}: {err})"
        ) from None
    for key, want in (("method", method), ("forget", forget), ("seed", seed)):
        if record.get(key) != want:
            raise UsageError(
                f"hparams_from (--hparams-from) {path}: tuned for {key} "
                f"{record.get(key)!r}, not {want!r}"
            )
    try:
        hp = methods.check_hparams(spec, dict(base, **chosen["hparams"]))
    except ValueError as err:
        raise UsageError(f"hparams_from (--hparams-from) {path}: {err}") from None
    return hp, {
        "file": str(path),
        "protocol": record.get("protocol", "blind"),  # records from before the protocols: blind
        "trial": chosen.get("trial"),
        "varied": chosen.get("varied"),
        "feasible": chosen.get("feasible"),
        "holdout": record.get("holdout"),
        "base_hparams": dict(base),
    }


def check_holdout(
    tuned: Mapping[str, Any] | None, held: Mapping[str, Any] | None, path: PathLike | None
) -> None:
    """A choice made under the ``validation`` protocol is only used on data without the split it
    was validated on: the unlearn job must hold out the same images (same digest)."""
    if not tuned or tuned.get("protocol") != "validation":
        return
    want = tuned.get("holdout") or {}
    if held is None:
        raise UsageError(
            f"hparams_from (--hparams-from) {path}: tuned under the validation protocol, whose "
            f"split ({want.get('fraction')} of the training set) the method must never see; "
            f"give holdout (--holdout {want.get('fraction')})"
        )
    if want.get("digest") != held.get("digest"):
        raise UsageError(
            f"hparams_from (--hparams-from) {path}: validated on another held-out split "
            f"(fraction {want.get('fraction')}, seed {want.get('seed')}, digest "
            f"{want.get('digest')}) than this job holds out (fraction {held.get('fraction')}, "
            f"seed {held.get('seed')}, digest {held.get('digest')})"
        )


def check_method(
    method: str, hparams: Mapping[str, Any]
) -> tuple[methods.MethodSpec, dict[str, Any]]:
    """The method's spec and its checked hyperparameters (unknown method, missing or unknown
    hyperparameters and bad values are :class:`UsageError`)."""
    try:
        spec = methods.get_method(method)
        return spec, methods.check_hparams(spec, dict(hparams))
    except (KeyError, ValueError) as err:
        raise UsageError(str(err).strip("'\"")) from None


def unlearn(
    data: PathLike,
    *,
    model: PathLike,
    forget: int,
    method: str,
    hparams: Mapping[str, Any],
    seed: int,
    out_model: PathLike,
    out_history: PathLike,
    out_info: PathLike,
    retain_subset: int = 0,
    fisher: PathLike | None = None,
    hparams_from: PathLike | None = None,
    tuned: Mapping[str, Any] | None = None,
    holdout: float | None = None,
    variant: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    monitor_every: int = 1,
    monitor_retain: int = 0,
    device: str | torch.device = "auto",
    memory_format: str = "channels_last",
    started_at: float | None = None,
) -> dict[str, Any]:
    """Apply ``method`` with ``hparams`` to the original checkpoint ``model``, forgetting class
    ``forget`` of the prepared file ``data``.

    ``fisher``: the file ``pbu fisher`` wrote (methods that need the Fisher). ``variant``: the
    name this model is recorded under (a config variant of ``method``; default ``method``), with
    its ``overrides`` merged over ``hparams``. ``hparams_from``: a ``pbu tune`` record whose
    chosen hyperparameters override both. ``tuned``: the frozen development-class choice
    (``{"hparams": ..., "source": ...}``, :mod:`pbu.tuned`): its hyperparameters over
    ``hparams``, the variant's overrides last; ``source`` is recorded as ``hparams_source``.
    ``holdout``: the
    ``validation`` protocol's fraction; that split of the training set
    (:func:`pbu.tune.hold_out`, seeded by ``seed``) is taken out before the method's data is
    built, so the method never receives it (required, with the same split, when
    ``hparams_from`` was tuned under ``validation``). The record's ``protocol`` says what chose
    the hyperparameters: the tune record's protocol, ``dev_class`` (``tuned``), or ``config``.
    The monitor records forget/retain test accuracy every ``monitor_every`` steps (0: never) on
    ``monitor_retain`` retain-test samples (0: all). Writes the model ``out_model``, the merged
    per-step history ``out_history`` and the record ``out_info`` (returned): hyperparameters,
    the method's own time (monitor excluded), epochs, the method's info, resources.
    """
    began = started(started_at)
    dev = resolve_device(device)
    name = variant or method
    if overrides and not variant:
        raise UsageError("overrides (--overrides) belong to a variant: give variant (--variant)")
    spec, hp = check_method(method, {**hparams, **(overrides or {})})
    source = None
    if tuned:
        from pbu.tuned import apply

        if hparams_from:
            raise UsageError("give either tuned (--tuned) or hparams_from (--hparams-from)")
        _, hp = check_method(method, apply(hp, tuned.get("hparams") or {}, overrides or {}))
        source = dict(tuned.get("source") or {}, hparams=dict(tuned.get("hparams") or {}))
    from_record = None
    if hparams_from:
        hp, from_record = tuned_hparams(
            hparams_from, spec, hp, method=method, forget=forget, seed=seed
        )
    train, test, held = load_data_held_out(data, forget, holdout, seed)
    check_holdout(from_record, held, hparams_from)
    net, info = load_model(model, dev, memory_format)
    fisher_diag = None
    if spec.needs_fisher:
        if not fisher:
            raise UsageError(
                f"method {method!r} needs the Fisher: give fisher (--fisher), the "
                f"file pbu fisher writes"
            )
        fisher_diag = load_fisher(fisher, net, holdout_digest=held["digest"] if held else None)
    inputs = methods.build_inputs(
        spec,
        train,
        forget,
        train.spec.num_classes,
        retain_subset=retain_subset,
        seed=seed,
        fisher=fisher_diag,
    )
    monitor = AccuracyMonitor(
        test, forget, every=monitor_every, retain_samples=monitor_retain, device=dev
    )
    seed_everything(seed)
    result, elapsed = methods.run(method, net, inputs, hp, device=dev, seed=seed, monitor=monitor)
    history = monitor.merge(result.history)
    epochs = float(result.info.get("epochs") or 0.0)
    save_checkpoint(
        out_model,
        result.model,
        arch=info["arch"],
        model_args=info["model_args"],
        hparams=hp,
        seed=seed,
        meta={"method": name, "forget": forget, **({"base_method": method} if variant else {})},
    )
    write_json(out_history, {"method": name, "history": history})
    record = {
        "method": name,
        "base_method": method,
        "overrides": dict(overrides or {}),
        "forget": forget,
        "seed": seed,
        "hparams": hp,
        "protocol": (
            from_record["protocol"]
            if from_record
            else (source or {}).get("protocol", "dev_class")
            if source
            else "config"
        ),
        "hparams_from": from_record,
        "hparams_source": source,
        "holdout": held,
        "fisher": str(fisher) if spec.needs_fisher else None,
        "data_access": spec.access.label,
        "time_s": elapsed,
        "epochs": epochs,
        "time_per_epoch_s": elapsed / epochs if epochs > 0 else None,
        "info": result.info,
        "device": str(dev),
        **resources(dev, began),
        "units": {
            "time_s": "s (method alone, evaluation excluded)",
            "epochs": "passes over the data the method iterates (fractional)",
        },
    }
    write_json(out_info, record)
    return record


def list_methods() -> list[dict[str, Any]]:
    """Every registered method: its name, the data it may see and its hyperparameters."""
    return [
        {
            "name": name,
            "access": methods.get_method(name).access.label,
            "hparams": list(methods.get_method(name).hparams),
        }
        for name in methods.available()
    ]
