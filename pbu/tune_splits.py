"""The splits of tuning: the blind protocol's validation carved out of what a method received
(:func:`split_inputs`), and the validation protocol's held-out split of the training set
(:func:`hold_out`), with the digest that ties a choice, a Fisher and an unlearn job to the same
split. :mod:`pbu.tune` runs the protocols on them and re-exports these names.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from pbu.data import ImageData
    from pbu.methods import UnlearnInputs

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# The split: validation carved out of what the method received
# ------------------------------------------------------------------------------------------


def carve_validation(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded, class-stratified (fit, val) indices into ``labels``, both sorted, disjoint, and
    together every index. Each class with >= 2 samples gives ``round(fraction * n)`` of them
    (at least 1, at most n - 1) to val."""
    import torch

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for c in torch.unique(labels.cpu()).tolist():
        idx = torch.nonzero(labels.cpu() == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(max(round(fraction * len(idx)), 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.append(idx[:k])
        fit.append(idx[k:])
    empty = torch.zeros(0, dtype=torch.long)
    return (
        torch.sort(torch.cat(fit or [empty])).values,
        torch.sort(torch.cat(val or [empty])).values,
    )


@dataclass
class TuneSplit:
    """The method's inputs cut in two: ``fit`` (what each trial runs on; Fisher not yet set)
    and the validation parts (``None`` where the method received nothing)."""

    fit: UnlearnInputs
    forget_val: ImageData | None
    retain_val: ImageData | None
    sizes: dict[str, int] = field(default_factory=dict)


def split_inputs(inputs: UnlearnInputs, fraction: float, seed: int) -> TuneSplit:
    """Carve forget_val / retain_val out of ``inputs.forget`` / ``inputs.retain`` only."""
    from pbu.methods import UnlearnInputs

    parts: dict[str, ImageData | None] = {}
    sizes: dict[str, int] = {}
    for name, data, offset in (("forget", inputs.forget, 0), ("retain", inputs.retain, 1)):
        if data is None:
            parts[f"{name}_fit"] = parts[f"{name}_val"] = None
            continue
        fit_idx, val_idx = carve_validation(data.labels, fraction, seed + offset)
        parts[f"{name}_fit"], parts[f"{name}_val"] = data.subset(fit_idx), data.subset(val_idx)
        sizes[f"{name}_fit"], sizes[f"{name}_val"] = len(fit_idx), len(val_idx)
    fit = UnlearnInputs(
        inputs.forget_class, inputs.num_classes, parts["forget_fit"], parts["retain_fit"], None
    )
    return TuneSplit(fit, parts["forget_val"], parts["retain_val"], sizes)


# ------------------------------------------------------------------------------------------
# The validation protocol: the experimenter's split of the training set
# ------------------------------------------------------------------------------------------


def index_digest(idx: Tensor) -> str:
    """A short digest of an index tensor (sha256 of its int64 values, 16 hex digits): two jobs
    that hold out the same images record the same digest."""
    import torch

    values = idx.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    return hashlib.sha256(values).hexdigest()[:16]


class HoldoutError(ValueError):
    """The validation split would miss the forget class or the retained classes."""


@dataclass
class Holdout:
    """The training split with the experimenter's validation split taken out: ``fit`` (what
    every method's data is built from), ``forget_val`` / ``retain_val`` (the held-out images of
    the forget class / of the other classes) and ``record`` (what jobs write down)."""

    fit: ImageData
    forget_val: ImageData
    retain_val: ImageData
    record: dict[str, Any]


def held_out_record(train: ImageData, fraction: float, seed: int) -> tuple[Tensor, dict[str, Any]]:
    """The training indices left after the ``validation`` split (:func:`hold_out`'s ``fit``)
    and the split's record (fraction, seed, sizes, digest), without the forget-class check: what
    the development-class tuning's θ* and oracle are trained on (``pbu pretrain --holdout``),
    so that no image of the split was ever a training image of the models it scores."""
    fit_idx, val_idx = carve_validation(train.labels, fraction, seed)
    return fit_idx, _split_record(train, fraction, seed, fit_idx, val_idx)


def _split_record(
    train: ImageData, fraction: float, seed: int, fit_idx: Tensor, val_idx: Tensor, **counts: int
) -> dict[str, Any]:
    """What a job writes down about a validation split: its settings, sizes (``counts``: more
    of them) and the held-out indices' digest."""
    return {
        "fraction": fraction,
        "seed": seed,
        "train": len(train),
        "fit": len(fit_idx),
        "val": len(val_idx),
        **counts,
        "digest": index_digest(val_idx),
    }


def hold_out(train: ImageData, fraction: float, seed: int, forget_class: int) -> Holdout:
    """The ``validation`` protocol's split: a seeded, class-stratified ``fraction`` of every
    class of the TRAINING split ``train`` (:func:`carve_validation` on its labels) is held out;
    the rest is returned as ``fit``. The split depends on the training labels, ``fraction`` and
    ``seed`` only (not on the forget class or the method), so every method and forget class of
    a seed share it; it is never the test split, which is not an argument. Raises ValueError
    (:class:`HoldoutError`) when the forget class or the retained classes would have no
    held-out image."""
    from pbu.data import class_split

    fit_idx, val_idx = carve_validation(train.labels, fraction, seed)
    val = train.subset(val_idx)
    forget_idx, retain_idx = class_split(val.labels, forget_class)
    if not len(forget_idx) or not len(retain_idx):
        raise HoldoutError(
            f"validation split ({fraction:g} of each class of {len(train)} training images) "
            f"holds {len(forget_idx)} forget-class and {len(retain_idx)} retained-class "
            f"images: both need at least one (raise the fraction)"
        )
    record = _split_record(
        train,
        fraction,
        seed,
        fit_idx,
        val_idx,
        forget_val=len(forget_idx),
        retain_val=len(retain_idx),
    )
    return Holdout(train.subset(fit_idx), val.subset(forget_idx), val.subset(retain_idx), record)
