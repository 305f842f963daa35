"""Evaluate every model of one (dataset, arch, seed, forget class) against the retrain oracle.

Each model's outputs are computed once per split (forget/retain x train/test) and every
output-based metric reads them; only relearn time and the linear probe run a model again.
The oracle's own row is computed the same way, so every method's number sits beside the oracle's.
"""

from __future__ import annotations

import logging
import math
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pbu import metrics as M
from pbu.data import ImageData, class_split, random_subset, stratified_subset
from pbu.models import fuse_for_inference

log = logging.getLogger(__name__)

SPLITS = ("forget_train", "retain_train", "forget_test", "retain_test")

# Units of every metric the evaluation writes (metrics files carry them).
UNITS: dict[str, str] = {
    "acc_forget_test": "%", "acc_retain_test": "%", "acc_forget_train": "%",
    "acc_retain_train": "%",
    "mia_entropy_svc": "fraction of forget-train predicted member (Bad Teaching / PBU paper)",
    "mia_efficacy_salun": "fraction of forget-train predicted non-member (SalUn)",
    "mia_loss_acc": "CV accuracy, forget-train vs forget-test (0.5 = no leakage)",
    "mia_loss_auc": "CV ROC AUC, forget-train vs forget-test (0.5 = no leakage)",
    "js_forget_test": "nats, JS divergence to the oracle", "js_retain_test": "nats",
    "act_dist_forget_test": "L2 between softmax outputs", "act_dist_retain_test": "L2",
    "zrf_forget_test": "1 - mean JS to an incompetent model (Chundawat et al.)",
    "zrf_forget_test_as_coded": "ZRF as coded by Bad Teaching / SSD (reversed KL, / classes)",
    "relearn_steps": "Adam steps on a forget sample until forget-test accuracy >= threshold",
    "anamnesis_index": "relearn_steps / oracle relearn_steps",
    "probe_auc": "ROC AUC of a linear probe (forget vs rest) on penultimate features",
    "probe_acc": "balanced accuracy of that probe",
}


@dataclass(frozen=True)
class EvalSettings:
    """Engineering knobs of the evaluation (sizes, not hyperparameters of any method)."""

    batch_size: int = 1024
    mia_max_samples: int = 1000  # per side of the SVC attacks (fit is quadratic)
    relearn_samples: int = 64  # forget-train samples used to relearn
    relearn_batch_size: int = 16
    relearn_lr: float = 1e-3
    relearn_max_steps: int = 100
    relearn_threshold: float = 50.0  # percent forget-test accuracy to count as relearned
    probe_train_per_class: int = 100
    probe: bool = True
    relearn: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSettings:
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown evaluation key(s) {', '.join(bad)}; allowed: "
                             f"{', '.join(sorted(known))}")
        return cls(**d)


@dataclass
class EvalData:
    """The four splits of one forget class, each as its own copy."""

    forget_train: ImageData
    retain_train: ImageData
    forget_test: ImageData
    retain_test: ImageData

    @classmethod
    def build(cls, train: ImageData, test: ImageData, forget_class: int) -> EvalData:
        f_tr, r_tr = class_split(train.labels, forget_class)
        f_te, r_te = class_split(test.labels, forget_class)
        return cls(train.subset(f_tr), train.subset(r_tr), test.subset(f_te), test.subset(r_te))


def model_outputs(model: nn.Module, data: EvalData, settings: EvalSettings,
                  device: torch.device) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
    """Logits, labels and penultimate features of ``model`` on each split (one pass each), from
    an inference copy with BatchNorm folded into the convolutions (the same eval-mode map)."""
    model = fuse_for_inference(model)
    return {s: M.outputs_and_features(model, getattr(data, s).loader(settings.batch_size,
                                                                     device=device))
            for s in SPLITS}


def _relearn_steps(model: nn.Module, data: EvalData, settings: EvalSettings, seed: int,
                   device: torch.device) -> M.RelearnResult:
    idx = random_subset(len(data.forget_train), settings.relearn_samples, seed)
    sample = data.forget_train.subset(idx)
    loader = sample.loader(settings.relearn_batch_size, shuffle=True, seed=seed, device=device)
    return M.relearn_time(model, loader, data.forget_test.loader(settings.batch_size,
                                                                 device=device),
                          lr=settings.relearn_lr, max_steps=settings.relearn_max_steps,
                          threshold=settings.relearn_threshold, seed=seed)


def _probe(out: dict[str, tuple[Tensor, Tensor, Tensor | None]], forget_class: int,
           settings: EvalSettings, seed: int) -> dict[str, float]:
    """Linear probe on frozen penultimate features: forget class vs the rest.

    Fitted on a class-balanced sample of the training split (``probe_train_per_class`` per
    class), scored on the whole test split; features come from the evaluation pass.
    """
    if any(out[s][2] is None for s in SPLITS):
        return {"auc": math.nan, "acc": math.nan}
    k = settings.probe_train_per_class
    f_idx = random_subset(len(out["forget_train"][1]), k, seed)
    r_idx = stratified_subset(out["retain_train"][1], k, seed)
    train_x = torch.cat([out["forget_train"][2][f_idx], out["retain_train"][2][r_idx]])
    train_y = torch.cat([out["forget_train"][1][f_idx], out["retain_train"][1][r_idx]])
    test_x = torch.cat([out["forget_test"][2], out["retain_test"][2]])
    test_y = torch.cat([out["forget_test"][1], out["retain_test"][1]])
    return M.linear_probe(train_x, train_y == forget_class, test_x, test_y == forget_class,
                          seed=seed)


def evaluate_models(models: dict[str, nn.Module], oracle: nn.Module, incompetent: nn.Module,
                    data: EvalData, forget_class: int, *, settings: EvalSettings, seed: int,
                    device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
    """Metrics for every model in ``models`` (plus ``"oracle"``), keyed by model name.

    ``incompetent`` is a randomly initialised model of the same architecture (for ZRF).
    """
    device = torch.device(device)
    everyone = {"oracle": oracle, **{k: v for k, v in models.items() if k != "oracle"}}
    outs = {name: model_outputs(m, data, settings, device) for name, m in everyone.items()}
    inc_forget = M.collect_outputs(incompetent, data.forget_test.loader(settings.batch_size,
                                                                        device=device))[0]
    relearn = ({name: _relearn_steps(m, data, settings, seed, device)
                for name, m in everyone.items()} if settings.relearn else {})
    o = outs["oracle"]
    rows: dict[str, dict[str, float]] = {}
    for name, m in everyone.items():
        out = outs[name]
        (ftr, ftr_y, _), (rtr, rtr_y, _) = out["forget_train"], out["retain_train"]
        (fte, fte_y, _), (rte, rte_y, _) = out["forget_test"], out["retain_test"]
        row = {f"acc_{s}": M.accuracy_from_logits(*out[s][:2]) for s in SPLITS}
        # Member = retain-train, non-member = the test split WITHOUT the forget class.
        row["mia_entropy_svc"] = M.mia_entropy_svc(rtr, rte, ftr, seed=seed,
                                                   max_samples=settings.mia_max_samples)
        row["mia_efficacy_salun"] = M.mia_efficacy_salun(
            rtr, rtr_y, rte, rte_y, ftr, ftr_y, seed=seed, max_samples=settings.mia_max_samples)
        loss_mia = M.mia_loss_lr(ftr, ftr_y, fte, fte_y, seed=seed)
        row["mia_loss_acc"], row["mia_loss_auc"] = loss_mia["acc"], loss_mia["auc"]
        row["js_forget_test"] = M.js_divergence(fte, o["forget_test"][0])
        row["js_retain_test"] = M.js_divergence(rte, o["retain_test"][0])
        row["act_dist_forget_test"] = M.activation_distance(fte, o["forget_test"][0])
        row["act_dist_retain_test"] = M.activation_distance(rte, o["retain_test"][0])
        row["zrf_forget_test"] = M.zrf(fte, inc_forget)
        row["zrf_forget_test_as_coded"] = M.zrf_as_coded(fte, inc_forget)
        if settings.relearn:
            row["relearn_steps"] = float(relearn[name].steps)
            row["relearn_reached"] = float(relearn[name].reached)
            row["anamnesis_index"] = M.anamnesis_index(relearn[name].steps,
                                                       relearn["oracle"].steps)
        if settings.probe:
            p = _probe(out, forget_class, settings, seed)
            row["probe_auc"], row["probe_acc"] = p["auc"], p["acc"]
        rows[name] = row
    return rows


class _CallableModule(types.ModuleType):
    """``pbu.evaluate`` is two things: this module and the public function ``pbu.evaluate(model,
    forget_test, retain_test, ...)`` of :mod:`pbu.api`. Importing the module (``from
    pbu.evaluate import evaluate_models``, the CLI, the fork server) makes Python bind the name
    on the package to the module, which used to turn the documented call into "'module' object
    is not callable". The module therefore forwards calls to the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        from pbu.api import evaluate

        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
