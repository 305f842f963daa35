"""Convenience entry points for a user's own model (no Snakemake needed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pbu import methods
from pbu.data import ImageData

Batches = Iterable[tuple[Tensor, Tensor]]


def available_methods() -> list[str]:
    """Names of every registered unlearning method."""
    return methods.available()


def run_method(
    name: str,
    model: nn.Module,
    train: ImageData,
    forget_class: int,
    hparams: Mapping[str, Any],
    *,
    retain_subset: int = 0,
    fisher: dict[str, Tensor] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[methods.MethodResult, float]:
    """Run method ``name`` on ``model`` with exactly the part of ``train`` it declares.

    Returns the result (``.model``, ``.history``, ``.info``) and the method's wall time in
    seconds. ``model`` is not modified: the method gets a copy.
    """
    import copy

    spec = methods.get_method(name)
    inputs = methods.build_inputs(
        spec,
        train,
        forget_class,
        train.spec.num_classes,
        retain_subset=retain_subset,
        seed=seed,
        fisher=fisher,
    )
    return methods.run(name, copy.deepcopy(model), inputs, hparams, device=device, seed=seed)


def evaluate(
    model: nn.Module,
    forget_test: Batches,
    retain_test: Batches,
    *,
    forget_train: Batches | None = None,
    retain_train: Batches | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracies (%) on the forget and retain test data; with the training loaders too, the
    paper's entropy-SVC MIA (member = retain-train, non-member = retain-test)."""
    from pbu import metrics as M

    fte = M.collect_outputs(model, forget_test)
    rte = M.collect_outputs(model, retain_test)
    out = {
        "acc_forget_test": M.accuracy_from_logits(*fte),
        "acc_retain_test": M.accuracy_from_logits(*rte),
    }
    if forget_train is not None and retain_train is not None:
        ftr = M.collect_outputs(model, forget_train)
        rtr = M.collect_outputs(model, retain_train)
        out["acc_forget_train"] = M.accuracy_from_logits(*ftr)
        out["acc_retain_train"] = M.accuracy_from_logits(*rtr)
        out["mia_entropy_svc"] = M.mia_entropy_svc(rtr[0], rte[0], ftr[0], seed=seed)
    return out
