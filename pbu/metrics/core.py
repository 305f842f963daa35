"""Model outputs, accuracy and per-sample features of the softmax output: what every other
metric module builds on (:mod:`pbu.metrics`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
ArrayLike = Tensor | np.ndarray
T = TypeVar("T")

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Outputs and accuracy
# --------------------------------------------------------------------------------------------


class _EvalMode:
    """Put every module in eval mode and restore each module's own mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, training in self.modes:
            m.training = training


@torch.no_grad()
def collect_outputs(model: nn.Module, loader: Iterable[Batch]) -> tuple[Tensor, Tensor]:
    """Run ``model`` once over ``loader``: logits float64 ``[N, K]`` and labels int64 ``[N]``, CPU.

    The model runs in eval mode under ``no_grad`` (BatchNorm uses and keeps its running
    statistics); every submodule's train/eval mode is restored afterwards. Batches are expected on
    the model's device, in a fixed order (``shuffle=False``) when outputs of two models are to be
    compared sample by sample.
    """
    logits, labels = [], []
    with _EvalMode(model):
        for x, y in loader:
            logits.append(model(x).detach().to("cpu", torch.float64))
            labels.append(y.detach().to("cpu", torch.long))
    if not logits:
        raise ValueError("collect_outputs: the loader yielded no batches")
    return torch.cat(logits), torch.cat(labels)


def _as_tensor(a: ArrayLike, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.as_tensor(a).detach().to("cpu", dtype)


def _check_pair(logits: Tensor, labels: Tensor, what: str) -> None:
    if logits.dim() != 2 or labels.dim() != 1 or len(logits) != len(labels):
        raise ValueError(
            f"{what}: expected logits [N, K] and labels [N], got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def accuracy_from_logits(logits: ArrayLike, labels: ArrayLike) -> float:
    """Percentage (0-100) of samples whose arg-max logit is the label."""
    logits, labels = _as_tensor(logits), _as_tensor(labels, torch.long)
    _check_pair(logits, labels, "accuracy")
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return 100.0 * (logits.argmax(1) == labels).double().mean().item()


def accuracy(
    model_or_logits: nn.Module | ArrayLike, loader_or_labels: Iterable[Batch] | ArrayLike
) -> float:
    """Accuracy in percent (0-100), from ``(model, loader)`` or from ``(logits, labels)``."""
    if isinstance(model_or_logits, nn.Module):
        return accuracy_from_logits(*collect_outputs(model_or_logits, loader_or_labels))
    return accuracy_from_logits(model_or_logits, loader_or_labels)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Per-sample features of the softmax output
# --------------------------------------------------------------------------------------------


def _xlogy_terms(p: Tensor, log_p: Tensor, log_r: Tensor) -> Tensor:
    """Elementwise ``p * (log p - log r)`` with the convention ``0 * anything = 0``."""
    return torch.where(p > 0, p * (log_p - log_r), torch.zeros_like(p))


def softmax_entropy(logits: ArrayLike) -> Tensor:
    """Per-sample Shannon entropy (nats) of ``softmax(logits)``: float64 ``[N]``."""
    log_p = torch.log_softmax(_as_tensor(logits), dim=1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1)


def true_class_confidence(logits: ArrayLike, labels: ArrayLike) -> Tensor:
    """Per-sample softmax probability of the labelled class: float64 ``[N]``."""
    logits, labels = _as_tensor(logits), _as_tensor(labels, torch.long)
    _check_pair(logits, labels, "true_class_confidence")
    return torch.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)


def per_sample_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Tensor:
    """Per-sample cross-entropy loss (nats): float64 ``[N]``."""
    logits, labels = _as_tensor(logits), _as_tensor(labels, torch.long)
    _check_pair(logits, labels, "per_sample_cross_entropy")
    return F.cross_entropy(logits, labels, reduction="none")


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_call(fn: Callable[[], T], device: str | torch.device) -> tuple[T, float]:
    """Run ``fn()`` and return ``(result, wall seconds)``; on CUDA, synchronise before and after.

    Time only the method: build loaders and evaluate outside ``fn``.
    """
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start
