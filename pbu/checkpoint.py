"""Self-describing checkpoints, and safe loading of tensor files.

A checkpoint is a plain dict: ``state_dict``, the factory ``arch`` and ``model_args`` (for a
torchvision arch they include its ``stem``), the resolved ``hparams``, ``seed``, ``pbu_version``
and free-form ``meta``. It is read with ``torch.load(weights_only=True)``, so a file that
carries a pickled object (code) is refused before anything in it runs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbu.errors import CheckpointError
from pbu.io import _json_default, atomic_write, write_json  # noqa: F401 (re-exported)
from pbu.models import build_model, legacy_stem
from pbu.registry import STEM_ARCHS

log = logging.getLogger(__name__)


def save_tensors(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a dict of tensors / plain values."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """Load a file written by :func:`save_tensors` safely, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError
        # torch's weights-only unpickler names the blocked GLOBAL (a class or function) when a
        # file carries code; random or cut-off bytes fail with "Weights only load failed" too,
        # but without a GLOBAL, so that phrase alone does not mean a payload.
        kind = (
            "it carries a pickled object that is not plain tensors/containers; refused "
            "without running it"
            if "global" in str(err).lower()
            else "corrupt or truncated"
        )
        raise CheckpointError(
            f"{path}: cannot be loaded ({kind}): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    arch: str,
    model_args: dict[str, Any],
    hparams: dict[str, Any] | None = None,
    seed: int | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Atomically save ``model`` with what is needed to rebuild it."""
    from pbu import __version__

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_tensors(
        path,
        {
            "state_dict": state,
            "arch": arch,
            "model_args": dict(model_args),
            "hparams": _plain(hparams or {}),
            "seed": seed,
            "pbu_version": __version__,
            "meta": _plain(meta or {}),
        },
    )


def _plain(d: Any) -> Any:
    """Keep only types ``weights_only`` loading accepts."""
    return json.loads(json.dumps(d, default=_json_default))


def load_checkpoint(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", with_info: bool = False
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path`` (in eval mode). ``with_info`` also returns the dict."""
    ck = load_tensors(path)
    for key in ("state_dict", "arch", "model_args"):
        if key not in ck:
            raise CheckpointError(f"{path}: not a pbu checkpoint (no {key!r})")
    args = dict(ck["model_args"])
    if ck["arch"] in STEM_ARCHS and "stem" not in args and "image_size" in args:
        # Saved before the stem was a recorded choice: rebuild the stem the factory chose then.
        args["stem"] = legacy_stem(int(args["image_size"]))
        ck["model_args"] = dict(args)  # what was built, for callers that build another one
        log.info(
            "%s: no stem recorded (an older checkpoint); rebuilt with the %s stem its "
            "factory used for %s-pixel images",
            path,
            args["stem"],
            args["image_size"],
        )
    args["weights"] = "none"  # the state dict already holds the trained weights
    try:
        model = build_model(ck["arch"], **args)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot rebuild {ck['arch']} from its model_args {ck['model_args']}: {err}"
        ) from err
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: state dict does not fit {ck['arch']}: {err}") from err
    model.to(device).eval()
    if with_info:
        return model, {k: v for k, v in ck.items() if k != "state_dict"}
    return model
