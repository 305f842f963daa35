"""What every compute job shares: the device, its inputs loaded with clear errors, and the
record of the resources it used.

Errors in a job's arguments or inputs raise :class:`pbu.errors.UsageError` (or
:class:`pbu.errors.CheckpointError` for a bad file) with a message that names the problem; the
``pbu`` command prints such an error as one line and exits with status 2.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from pbu.checkpoint import load_checkpoint, load_tensors
from pbu.data import ImageData, check_class, load_prepared
from pbu.errors import CheckpointError, UsageError

__all__ = [
    "MEMORY_FORMATS",
    "UsageError",
    "as_typed",
    "load_data",
    "load_data_held_out",
    "load_fisher",
    "load_model",
    "resolve_device",
    "resources",
    "started",
    "to_memory_format",
]

PathLike = str | os.PathLike
MEMORY_FORMATS = ("channels_last", "contiguous")
T = TypeVar("T")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda[:N]"`` or a device."""
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name} (--device): no CUDA device is available here")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"device {name!r} (--device): {err}") from None


def as_typed(
    make: Callable[[dict[str, Any]], T], value: T | Mapping[str, Any], cls: type[T], what: str
) -> T:
    """``value`` itself when it is a ``cls``, else ``make(dict(value))``; a bad key or value
    becomes a :class:`UsageError` that starts with ``what`` (the argument's name)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise UsageError(
            f"{what}: expected a {cls.__name__} or a mapping, got {type(value).__name__}"
        )
    try:
        return make(dict(value))
    except (TypeError, ValueError) as err:
        raise UsageError(f"{what}: {err}") from None


def load_data(path: PathLike, forget: int | None = None) -> tuple[ImageData, ImageData]:
    """The prepared dataset's (train, test) splits; ``forget`` is checked against its classes."""
    train, test = load_prepared(path)
    if forget is not None:
        try:
            check_class(train.spec, forget)
        except ValueError as err:
            raise UsageError(str(err)) from None
    return train, test


def to_memory_format(model: nn.Module, fmt: str) -> nn.Module:
    """channels_last speeds small convnets up on CPU (measured ~3x for inference, ~1.6x for
    training of the default CNN) and on GPU with bf16; numerics stay deterministic. Models
    without 4-d parameters are left as they are."""
    if fmt not in MEMORY_FORMATS:
        raise UsageError(
            f"memory_format (--memory-format) must be one of "
            f"{', '.join(MEMORY_FORMATS)}, got {fmt!r}"
        )
    if fmt == "channels_last" and any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


def load_data_held_out(
    data: str | os.PathLike, forget: int, holdout: float | None, seed: int
) -> tuple[ImageData, ImageData, dict[str, Any] | None]:
    """:func:`load_data`, with the validation protocol's held-out split (``holdout``: its
    fraction, :func:`pbu.tune_splits.hold_out` seeded by ``seed``) taken out of the training
    split, so no job downstream can hand it to a method or a Fisher. Returns (train, test, the
    split's record or None)."""
    from pbu.tune_splits import HoldoutError, hold_out

    if holdout is not None and not 0.0 < holdout < 1.0:
        raise UsageError(f"holdout (--holdout) must be in (0, 1), got {holdout}")
    train, test = load_data(data, forget)
    if not holdout:
        return train, test, None
    try:
        split = hold_out(train, holdout, seed, forget)
    except HoldoutError as err:
        raise UsageError(f"holdout (--holdout): {err}") from None
    train, held = split.fit, split.record
    return train, test, held


def load_model(
    path: PathLike, device: torch.device, fmt: str = "contiguous"
) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint at ``path`` on ``device`` in eval mode, in memory format ``fmt``, and the
    checkpoint's description (arch, model_args, hparams, seed, meta)."""
    model, info = load_checkpoint(path, device=device, with_info=True)
    return to_memory_format(model, fmt), info


def load_fisher(
    path: PathLike, model: nn.Module, *, holdout_digest: str | None = None
) -> dict[str, Tensor]:
    """The Fisher diagonal at ``path``, checked against ``model`` before any training starts:
    one finite, non-negative tensor of each trainable parameter's shape, computed without the
    same held-out validation split as the job that loads it (``holdout_digest``, None: none)."""
    obj = load_tensors(path)
    if "fisher" not in obj or not isinstance(obj["fisher"], dict):
        raise CheckpointError(f"{path}: not a Fisher file (no 'fisher' dict)")
    if obj.get("holdout_digest") != holdout_digest:
        raise CheckpointError(
            f"{path}: computed with held-out validation split {obj.get('holdout_digest')}, "
            f"but this job holds out {holdout_digest} (pbu fisher --holdout must match "
            f"pbu unlearn --holdout)"
        )
    fisher = obj["fisher"]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        f = fisher.get(name)
        if not isinstance(f, Tensor) or f.shape != p.shape:
            found = tuple(f.shape) if isinstance(f, Tensor) else "nothing"
            raise CheckpointError(
                f"{path}: does not fit the model ({name}: expected "
                f"{tuple(p.shape)}, found {found}); was it computed for "
                f"another checkpoint?"
            )
        if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
            raise CheckpointError(
                f"{path}: {name} holds negative or non-finite values; not a Fisher diagonal"
            )
    return fisher


def resources(device: torch.device, started_at: float) -> dict[str, Any]:
    """Peak RSS (MB) and CPU seconds (user + system) of this process and, on a GPU, peak
    allocated GPU memory (MB). Measured inside the job's own process, so they stay right when it
    is a fork-server worker that Snakemake's benchmark cannot see (``pbu.forkserver``). Also the
    job's own span, ``started_at`` / ``ended_at`` (Unix seconds): MLflow shows them as the run's
    start and duration."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "minor_faults": usage.ru_minflt,
        # glibc allocator settings from the environment (the SLURM profile sets two)
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "fork_server": os.environ.get("PBU_FORK_WORKER") == "1",
        "started_at": started_at,
        "ended_at": time.time(),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def started(started_at: float | None) -> float:
    """When the job began (Unix s): ``started_at`` when given (the ``pbu`` command passes its
    process's start, so imports count), else now."""
    return time.time() if started_at is None else started_at
