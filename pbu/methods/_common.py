"""Small pieces the baseline methods share: step recording, batch pairing, optimisers, KL.

Nothing here sees data a method did not receive: every helper takes the loaders or tensors the
method built from its own :class:`~pbu.methods.UnlearnInputs`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.data import ImageData, Loader, cycle  # noqa: F401 (cycle re-exported for methods)
from pbu.methods import Monitor
from pbu.train import evaluate_accuracy as accuracy_on  # noqa: F401 (re-exported)

Batch = tuple[Tensor, Tensor]


class StepRecorder:
    """Counts steps, calls the harness's ``monitor`` and keeps the per-step history.

    Scalars are stored as detached tensors and turned into floats only in :meth:`history`, so a
    GPU run is not synchronised once per step just for logging.
    """

    def __init__(self, model: nn.Module, monitor: Monitor | None, steps_per_epoch: int) -> None:
        self.model = model
        self.monitor = monitor
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.step = 0
        self._rows: list[dict[str, Any]] = []

    def start(self) -> None:
        """Let the harness see the model before the first update (step 0)."""
        if self.monitor is not None:
            self.monitor(self.model, 0)

    def record(self, epoch: int, **scalars: Tensor | float) -> None:
        """Close one optimisation step of (1-based) ``epoch`` with its scalars."""
        self.step += 1
        row: dict[str, Any] = {"step": self.step, "epoch": epoch}
        row.update({k: v.detach() if isinstance(v, Tensor) else v for k, v in scalars.items()})
        self._rows.append(row)
        if self.monitor is not None:
            self.monitor(self.model, self.step)

    def history(self) -> list[dict[str, float]]:
        """The rows with every value as a float; raises if a loss went non-finite."""
        rows = [{k: float(v) for k, v in r.items()} for r in self._rows]
        for r in rows:
            bad = [k for k, v in r.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(
                    f"non-finite {', '.join(bad)} at step {int(r['step'])}; lower the learning rate"
                )
        return rows

    def info(self, **extra: Any) -> dict[str, Any]:
        """``steps`` and fractional ``epochs`` (steps / steps per epoch), plus ``extra``."""
        return {"steps": self.step, "epochs": self.step / self.steps_per_epoch, **extra}


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """Plain SGD over the trainable parameters (the optimiser most baselines' code uses)."""
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )


def adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam over the trainable parameters."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


def proportional_loaders(
    a: ImageData,
    b: ImageData,
    batch_size: int,
    *,
    seed: int,
    device: torch.device,
    shuffle: bool = True,
) -> tuple[Loader, Loader, int]:
    """Two loaders with the same number of batches, sized in proportion to ``len(a)``, ``len(b)``.

    Concatenating their k-th batches gives mixed batches of about ``batch_size`` samples, and
    one pass over both visits every sample of ``a`` and of ``b`` exactly once: the same as one
    epoch over a shuffled union of the two sets, without building that union (``a`` and ``b``
    may be file-backed). Returns ``(loader_a, loader_b, steps_per_epoch)``.
    """
    n_a, n_b = len(a), len(b)
    if n_a == 0 or n_b == 0:
        raise ValueError(f"both sets must be non-empty, got {n_a} and {n_b} samples")
    steps = min(max(1, math.ceil((n_a + n_b) / batch_size)), n_a, n_b)
    while True:  # ceil can leave trailing batches empty: shrink ``steps`` to a fixed point
        bs_a, bs_b = math.ceil(n_a / steps), math.ceil(n_b / steps)
        k_a, k_b = math.ceil(n_a / bs_a), math.ceil(n_b / bs_b)
        if k_a == k_b == steps:
            break
        steps = min(k_a, k_b)
    la = a.loader(bs_a, shuffle=shuffle, seed=seed, device=device)
    lb = b.loader(bs_b, shuffle=shuffle, seed=seed + 1, device=device)
    assert len(la) == len(lb) == steps, (len(la), len(lb), steps)
    return la, lb, steps


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher ‖ student) at temperature T, summed over classes, mean over the batch, × T².

    The usual knowledge-distillation loss (Hinton et al.; SCRUB's ``DistillKL``). Logits
    ``[B, K]``; the teacher side is not differentiated.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)  # [B, K]
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)  # [B, K]
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with gradients off: a fixed teacher / reference."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def trainable(model: nn.Module) -> Sequence[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every parameter that requires grad."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def check_positive(method: str, hp: dict[str, Any], *names: str) -> None:
    """Raise a ValueError naming ``method.name`` unless each value is > 0."""
    for n in names:
        if not hp[n] > 0:
            raise ValueError(f"{method}.{n} must be > 0, got {hp[n]!r}")


def check_non_negative(method: str, hp: dict[str, Any], *names: str) -> None:
    """Raise a ValueError naming ``method.name`` unless each value is >= 0."""
    for n in names:
        if not hp[n] >= 0:
            raise ValueError(f"{method}.{n} must be >= 0, got {hp[n]!r}")


def check_fraction(method: str, hp: dict[str, Any], *names: str) -> None:
    """Raise a ValueError naming ``method.name`` unless each value is in [0, 1]."""
    for n in names:
        if not 0 <= hp[n] <= 1:
            raise ValueError(f"{method}.{n} must be in [0, 1], got {hp[n]!r}")


BN_MODES = ("train", "eval")


def check_bn_mode(method: str, hp: dict[str, Any]) -> None:
    """``bn_mode`` must be "train" or "eval"."""
    if hp["bn_mode"] not in BN_MODES:
        raise ValueError(f"{method}.bn_mode must be one of {BN_MODES}, got {hp['bn_mode']!r}")


def set_train_mode(model: nn.Module, bn_mode: str) -> None:
    """Put the model in train mode, or in eval mode when ``bn_mode == "eval"`` (as PBU does).

    Matters for methods that train on forget-class batches only: in train mode BatchNorm
    normalises with, and updates its running statistics from, single-class batches.
    """
    model.train(bn_mode == "train")


STOP_RULES = ("forget_acc", "none")
