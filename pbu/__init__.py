"""pbu: Partially Blinded Unlearning (Panda et al., AAAI 2025) and its peers.

Public API (imported lazily, so ``import pbu`` is cheap)::

    import pbu
    model = pbu.load_checkpoint("model.pt")
    fisher = pbu.fisher_diagonal(model, forget_loader, kind="true")
    result = pbu.unlearn_pbu(model, forget_data, fisher, alpha=..., beta=..., gamma=..., ...)
    scores = pbu.evaluate(result.model, forget_test_loader, retain_test_loader)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    # data
    "load_dataset": "pbu.data",
    "class_split": "pbu.data",
    "get_spec": "pbu.data",
    "DATASETS": "pbu.data",
    "TensorImages": "pbu.data",
    # models and checkpoints
    "build_model": "pbu.models",
    "save_checkpoint": "pbu.checkpoint",
    "load_checkpoint": "pbu.checkpoint",
    "CheckpointError": "pbu.checkpoint",
    # training
    "train_model": "pbu.train",
    "TrainRecipe": "pbu.train",
    "seed_everything": "pbu.train",
    # fisher
    "fisher_diagonal": "pbu.fisher",
    # unlearning
    "unlearn_pbu": "pbu.methods.pbu",
    "PBUConfig": "pbu.methods.pbu",
    "run_method": "pbu.api",
    "available_methods": "pbu.api",
    # evaluation
    "evaluate": "pbu.api",
    "accuracy": "pbu.metrics",
    "mia_entropy_svc": "pbu.metrics",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'pbu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
