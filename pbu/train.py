"""One training loop for pretraining, the retrain oracle and fine-tuning.

The recipe is explicit (:class:`TrainRecipe`, every field from the config); the loop is plain
PyTorch. On a GPU, batches come from device-resident tensors (see ``pbu.data``), the model may use
channels_last and bf16 autocast, and ``torch.compile`` is optional.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from pbu.data import ImageData, Loader
from pbu.errors import UsageError

log = logging.getLogger(__name__)


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class TrainRecipe:
    """How to train. No defaults for what the paper specifies; engineering knobs default."""

    epochs: int
    batch_size: int
    optimizer: str  # "adam" | "sgd"
    lr: float
    weight_decay: float
    momentum: float = 0.9  # SGD only
    schedule: str = "none"  # "none" | "cosine" | "step" | "onecycle"
    step_size: int = 30  # "step" schedule: epochs between x0.1
    augment: bool = False
    amp: bool = False  # bf16 autocast (GPU)
    channels_last: bool = False
    compile: bool = False
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.schedule not in ("none", "cosine", "step", "onecycle"):
            raise ValueError(
                f"schedule must be none, cosine, step or onecycle, got {self.schedule!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainRecipe:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown training key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(
        params,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.momentum > 0,
    )


def make_scheduler(opt: torch.optim.Optimizer, recipe: TrainRecipe, steps_per_epoch: int):
    total = max(1, recipe.epochs * steps_per_epoch)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    if recipe.schedule == "step":
        every = max(1, recipe.step_size * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** (s // every))
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total)
    return None


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: Loader, *, amp: bool = False) -> float:
    """Top-1 accuracy in percent; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x).argmax(1)
        correct += (pred == y).sum().item()
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


def refuse_degenerate_cpu_bf16_convs(model: nn.Module) -> Callable[[], None]:
    """Hooks that stop bf16 training on the CPU before a strided conv sees a 1-pixel map.

    oneDNN's bf16 weight gradient (torch 2.14.1 on AVX512-BF16 CPUs, measured) leaves the
    kernel taps that fall only on padding uninitialised when a strided, padded convolution gets a
    1x1 input: those weights receive whatever the memory held, so training diverges or not
    depending on what ran before in the process (e.g. ResNet-18 on 8-pixel images, whose
    layer4 sees 1x1 maps). fp32 and fp16 give zeros there, as they must. The hooks raise on the
    first forward pass, before any weight changes; the caller removes them after it.
    """
    handles = []

    def check(name: str):
        def hook(module: nn.Conv2d, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            if min(x.shape[-2:]) == 1 and max(module.stride) > 1 and max(module.padding) > 0:
                remove()
                raise UsageError(
                    f"bf16 autocast on the CPU with a strided convolution on a "
                    f"{tuple(x.shape[-2:])} map ({name}): oneDNN's weight gradient is "
                    f"undefined there. Use larger images, a smaller-stride stem, or amp: false"
                )

        return hook

    def remove() -> None:
        for h in handles:
            h.remove()

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_pre_hook(check(name)))
    return remove


def train_model(
    model: nn.Module,
    train: ImageData,
    recipe: TrainRecipe,
    *,
    seed: int,
    test: ImageData | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    timings: dict[str, float] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place with ``recipe``; return one history row per epoch.

    Row keys: ``epoch``, ``loss`` (mean train CE), ``train_acc`` (on the augmented batches seen),
    ``test_acc`` (when ``test`` is given), ``lr``. Seeded: the same seed gives the same weights
    and history on CPU. ``timings``, if given, receives ``eval_time_s``: the seconds the
    per-epoch test passes took, so a caller can report the training time alone.
    """
    device = torch.device(device)
    seed_everything(seed)
    model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if recipe.compile else model
    loader = train.loader(
        recipe.batch_size,
        shuffle=True,
        seed=seed,
        augment=recipe.augment,
        device=device,
        drop_last=len(train) > recipe.batch_size,
    )
    test_loader = test.loader(recipe.eval_batch_size, device=device) if test is not None else None
    opt = make_optimizer(model, recipe)
    sched = make_scheduler(opt, recipe, len(loader))
    history: list[dict[str, float]] = []
    bar = tqdm(
        range(1, recipe.epochs + 1), desc="train", unit="epoch", disable=not progress, leave=False
    )
    # bf16 on the CPU: check the first batch's geometry (see refuse_degenerate_cpu_bf16_convs)
    unhook = (
        refuse_degenerate_cpu_bf16_convs(model) if recipe.amp and device.type == "cpu" else None
    )
    for epoch in bar:
        model.train()
        # Running sums stay on the device: one host sync per epoch, not per step.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            if recipe.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.amp):
                logits = step_model(x)
                loss = F.cross_entropy(logits, y)
            if unhook is not None:  # the first batch passed the check
                unhook()
                unhook = None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        row = {
            "epoch": epoch,
            "loss": loss_sum.item() / max(seen, 1),
            "train_acc": 100.0 * correct.item() / max(seen, 1),
            "lr": opt.param_groups[0]["lr"],
        }
        if test_loader is not None:
            # Timed apart (the .item() calls above and inside synchronise a GPU), so callers can
            # report the training time alone, like every unlearning method's.
            t_eval = time.perf_counter()
            row["test_acc"] = evaluate_accuracy(model, test_loader, amp=recipe.amp)
            if timings is not None:
                timings["eval_time_s"] = (
                    timings.get("eval_time_s", 0.0) + time.perf_counter() - t_eval
                )
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", test=f"{row.get('test_acc', float('nan')):.1f}")
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if on_epoch is not None:
            on_epoch(epoch, row)
    model.eval()
    if recipe.channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history
