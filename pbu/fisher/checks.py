"""Input checks of ``fisher_diagonal``: bad arguments and models it cannot handle exactly."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pbu.fisher.settings import FisherSettings

KINDS = ("true", "empirical", "mc")
BN_MODES = ("eval", "train")
# "auto" takes the fastest backend that can handle the model: chain, else probe, else func.
BACKENDS = ("auto", "chain", "probe", "func")


class Unsupported(Exception):
    """A backend cannot handle this model exactly; the message says why."""


def check_arguments(
    kind: str,
    bn_mode: str,
    backend: str,
    mc_samples: int,
    chunk_size: int,
    settings: FisherSettings,
) -> None:
    """Raise ValueError naming the first bad argument."""
    if kind not in KINDS:
        raise ValueError(f"unknown Fisher kind {kind!r}; allowed: {', '.join(KINDS)}")
    if bn_mode not in BN_MODES:
        raise ValueError(f"unknown bn_mode {bn_mode!r}; allowed: {', '.join(BN_MODES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if kind == "mc" and mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not isinstance(settings, FisherSettings):
        raise TypeError(f"settings must be a pbu.fisher.FisherSettings, got {settings!r}")


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """{name: parameter} of every parameter with requires_grad, in named_parameters() order."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError("model has no parameter with requires_grad=True")
    return trainable


def batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    """The model's BatchNorm modules by name; each must track running statistics."""
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    untracked = [n for n, m in bns.items() if m.running_mean is None]
    if untracked:
        raise NotImplementedError(
            f"BatchNorm {untracked[0]!r} has no running statistics (track_running_stats=False); "
            "its output then depends on the whole batch and per-sample gradients are undefined"
        )
    return bns
