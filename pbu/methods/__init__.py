"""Unlearning methods behind one signature, and the harness that enforces their data access.

A method is a function ``fn(model, inputs, hp, *, device, seed, monitor) -> MethodResult``
registered with :func:`register`, which records

- ``access``: the data the method may see (:class:`Access`). The harness builds an
  :class:`UnlearnInputs` holding *only* that data, as copies (``ImageData.subset`` copies), so
  nothing else is reachable through the arguments. PBU's "partially blinded" claim rests on it.
- ``hparams``: the exact set of hyperparameter names. They have no defaults in code: they come
  from the config (paper values with their source named there), and a missing or unknown name is
  an error that names it.

``monitor(model, step)`` is the harness's hook for recording how forget/retain accuracy evolves
per step. The method calls it and never sees what it computes; the time spent inside it is
subtracted from the method's measured wall time.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pbu.data import ImageData, class_split, random_subset

log = logging.getLogger(__name__)

Monitor = Callable[[nn.Module, int], None]


@dataclass(frozen=True)
class Access:
    """The training data a method may see. ``retain``: "none", "subset" (k samples) or "all"."""

    forget: bool
    retain: str

    @property
    def label(self) -> str:
        """Short name used in tables ("data needed" column)."""
        parts = ["forget" if self.forget else "class id"]
        if self.retain == "subset":
            parts.append("retain subset")
        elif self.retain == "all":
            parts.append("all retain")
        return " + ".join(parts)


FORGET_ONLY = Access(forget=True, retain="none")
FORGET_AND_RETAIN_SUBSET = Access(forget=True, retain="subset")
FULL_TRAIN = Access(forget=True, retain="all")
RETAIN_ONLY = Access(forget=False, retain="all")
CLASS_ID_AND_RETAIN_SUBSET = Access(forget=False, retain="subset")
CLASS_ID_ONLY = Access(forget=False, retain="none")


@dataclass(frozen=True)
class UnlearnInputs:
    """Everything a method receives besides the model. Fields it did not declare are ``None``."""

    forget_class: int
    num_classes: int
    forget: ImageData | None = None
    retain: ImageData | None = None
    fisher: dict[str, torch.Tensor] | None = None


@dataclass
class MethodResult:
    """What a method returns: the unlearned model and what happened on the way."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # per step; has "step"
    info: dict[str, Any] = field(default_factory=dict)  # e.g. epochs, stop_step, stop_reason


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., MethodResult]
    access: Access
    hparams: tuple[str, ...]
    needs_fisher: bool
    summary: str


REGISTRY: dict[str, MethodSpec] = {}

# Modules that register methods; imported lazily so `import pbu` stays light.
_MODULES = (
    "pbu",
    "finetune",
    "neggrad",
    "random_labels",
    "unsir",
    "bad_teaching",
    "ssd",
    "scrub",
    "salun",
    "boundary_shrink",
)


def register(
    name: str,
    *,
    access: Access,
    hparams: tuple[str, ...],
    needs_fisher: bool = False,
    summary: str = "",
) -> Callable:
    """Decorator that adds a method to :data:`REGISTRY`."""

    def wrap(fn: Callable[..., MethodResult]) -> Callable[..., MethodResult]:
        REGISTRY[name] = MethodSpec(name, fn, access, tuple(hparams), needs_fisher, summary)
        return fn

    return wrap


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"pbu.methods.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"pbu.methods.{mod}":
                raise


def get_method(name: str) -> MethodSpec:
    """Look up a registered method, with an error listing the known ones."""
    if name not in REGISTRY:
        _load_all()
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(available()))}")
    return REGISTRY[name]


def available() -> list[str]:
    """Names of every registered method."""
    _load_all()
    return sorted(REGISTRY)


def check_hparams(spec: MethodSpec, hp: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the declared names, or an error naming what is missing or unknown."""
    missing = [k for k in spec.hparams if k not in hp]
    unknown = [k for k in hp if k not in spec.hparams]
    if missing or unknown:
        msg = [f"method {spec.name!r}:"]
        if missing:
            msg.append(f"missing hyperparameter(s) {', '.join(missing)}")
        if unknown:
            msg.append(f"unknown hyperparameter(s) {', '.join(unknown)}")
        msg.append(f"(expected exactly: {', '.join(spec.hparams)})")
        raise ValueError(" ".join(msg))
    return dict(hp)


def build_inputs(
    spec: MethodSpec,
    train: ImageData,
    forget_class: int,
    num_classes: int,
    *,
    retain_subset: int,
    seed: int,
    fisher: dict[str, torch.Tensor] | None = None,
) -> UnlearnInputs:
    """Carve out of the training split exactly the data ``spec.access`` allows, as copies."""
    forget_idx, retain_idx = class_split(train.labels, forget_class)
    access = spec.access
    forget = train.subset(forget_idx) if access.forget else None
    if access.retain == "all":
        retain = train.subset(retain_idx)
    elif access.retain == "subset":
        if retain_subset <= 0:
            raise ValueError(f"method {spec.name!r} needs a retain subset: set retain_subset > 0")
        retain = train.subset(retain_idx[random_subset(len(retain_idx), retain_subset, seed)])
    else:
        retain = None
    if spec.needs_fisher and fisher is None:
        raise ValueError(f"method {spec.name!r} needs the forget-set Fisher")
    return UnlearnInputs(
        forget_class, num_classes, forget, retain, fisher if spec.needs_fisher else None
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    name: str,
    model: nn.Module,
    inputs: UnlearnInputs,
    hp: Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    monitor: Monitor | None = None,
) -> tuple[MethodResult, float]:
    """Run a method; return its result and its wall time in seconds, evaluation excluded.

    The time is CUDA-synchronised on a GPU and excludes every call to ``monitor``.
    """
    spec = get_method(name)
    hp = check_hparams(spec, hp)
    device = torch.device(device)
    spent_monitoring = 0.0

    def timed_monitor(m: nn.Module, step: int) -> None:
        nonlocal spent_monitoring
        if monitor is None:
            return
        _sync(device)
        t0 = time.perf_counter()
        was_training = m.training
        monitor(m, step)
        m.train(was_training)
        _sync(device)
        spent_monitoring += time.perf_counter() - t0

    model = model.to(device)
    torch.manual_seed(seed)
    _sync(device)
    t0 = time.perf_counter()
    result = spec.fn(model, inputs, hp, device=device, seed=seed, monitor=timed_monitor)
    _sync(device)
    elapsed = time.perf_counter() - t0 - spent_monitoring
    result.model.eval()
    return result, elapsed
