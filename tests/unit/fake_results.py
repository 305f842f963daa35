"""A hand-made results folder (no training): the job records of forget classes, as the
pipeline writes them, with known times, spans and metrics. Used by the aggregate and tracking
tests (directly, and as conftest's ``fake_results`` fixture); the numbers are chosen so that
every derived time can be checked by hand, and differ between groups, so a row that took
another group's file is caught."""

from __future__ import annotations

import json
from pathlib import Path

T0 = 1_800_000_000.0  # a fixed Unix time: every job's span is an offset from it
PRETRAIN_S, ORACLE_S, FISHER_S = 8.0, 7.5, 0.4
METHOD_S = {"pbu": 0.15, "finetune": 2.0}
EPOCHS = {"pbu": 0.25, "finetune": 2.0}
METHODS = ("original", "oracle", "pbu", "finetune")  # the models of a group's metrics.json
TUNE_S = 3.0  # finetune's hyperparameters came from a tuning record that took this long
PARAMETERS = 105914
DATA = {
    "name": "mnist5k",
    "file": "results/data/mnist5k.pt",
    "digest": "0123456789abcdef",
    "num_classes": 10,
    "splits": {
        "train": 4000,
        "test": 1000,
        "forget_train": 400,
        "retain_train": 3600,
        "forget_test": 100,
        "retain_test": 900,
    },
}


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def span(start: float, seconds: float) -> dict[str, float]:
    """A job record's own span: it ran for ``seconds`` plus one second of loading."""
    return {"started_at": T0 + start, "ended_at": T0 + start + seconds + 1.0}


#: (seed, forget) of the groups :func:`make_groups` writes (mnist5k / small_cnn).
GROUPS = [(0, 2), (0, 6), (1, 2)]


def scaled(seconds: float, index: int) -> float:
    """A time of group ``index``: the constant for group 0, a distinct multiple for others."""
    return seconds * (1 + index / 8)


def metrics_of(method: str, index: int = 0) -> dict[str, float]:
    """Distinct, recognisable evaluation numbers per model (and per group ``index``; the zeros
    stay zeros: a zero is a value too)."""
    k = {"original": 0, "oracle": 1, "pbu": 2, "finetune": 3}[method]
    return {name: scaled(v, index) for name, v in _metrics(k).items()}


def history_of(index: int = 0) -> list[dict[str, float]]:
    """A method's per-step monitor rows, as ``pbu unlearn`` writes them."""
    return [
        {"step": 1, "acc_forget_test": 50.0 + index, "term_forget": -1.0 - 10 * index},
        {"step": 2, "acc_forget_test": 3.0 + index, "term_forget": -2.0 - 10 * index},
    ]


def _metrics(k: int) -> dict[str, float]:
    return {
        "acc_forget_test": [96.0, 0.0, 4.0, 53.0][k],
        "acc_retain_test": 97.0 - k,
        "mia_entropy_svc": 0.5 + 0.1 * k,
        "mia_entropy_svc_bad_teaching": 0.4 + 0.1 * k,
        "js_forget_test": 0.01 * k,
        "js_retain_test": 0.001 * k,
        "zrf_forget_test": 0.7 + 0.01 * k,
        "act_dist_forget_test": 0.1 * k,
        "act_dist_retain_test": 0.01 * k,
        "relearn_steps": 3.0 * k,
        "anamnesis_index": k / 1.0,
        "probe_auc": 0.9 - 0.01 * k,
    }


def make_results(root: Path, forget: int = 2, seed: int = 0, index: int = 0) -> Path:
    """Write one group's records under ``root`` (the results folder); return metrics.json.
    ``index`` > 0 makes its times and metrics distinct from group 0's."""
    seed_dir = root / "mnist5k" / "small_cnn" / f"seed{seed}"
    group = seed_dir / f"forget{forget}"
    pretrain_s, oracle_s = scaled(PRETRAIN_S, seed), scaled(ORACLE_S, index)
    fisher_s = scaled(FISHER_S, index)
    _write(
        seed_dir / "pretrain" / "info.json",
        {
            "role": "original",
            "time_s": pretrain_s,
            "eval_time_s": 0.6,
            "epochs": 6,
            "time_per_epoch_s": pretrain_s / 6,
            "parameters": PARAMETERS,
            "recipe": {"epochs": 6},
            "history": [{"epoch": 1, "loss": 0.3, "test_acc": 95.0}],
            **span(0, pretrain_s + 0.6),
        },
    )
    _write(
        group / "oracle" / "info.json",
        {
            "role": "oracle",
            "time_s": oracle_s,
            "eval_time_s": 0.5,
            "epochs": 6,
            "time_per_epoch_s": oracle_s / 6,
            "recipe": {"epochs": 6},
            **span(10, oracle_s + 0.5),
        },
    )
    _write(
        group / "fisher.json",
        {
            "kind": "true",
            "bn_mode": "eval",
            "time_s": fisher_s,
            "samples": 400,
            **span(20, fisher_s),
        },
    )
    _write(
        group / "tune" / "finetune.json",
        {
            "method": "finetune",
            "total_time_s": TUNE_S,
            "budget": 6,
            "trials": [],
            "chosen": {"trial": 0, "hparams": {}, "varied": {}},
            **span(25, TUNE_S),
        },
    )
    for i, method in enumerate(("pbu", "finetune")):
        method_s = scaled(METHOD_S[method], index)
        _write(
            group / method / "info.json",
            {
                "method": method,
                "time_s": method_s,
                "epochs": EPOCHS[method],
                "time_per_epoch_s": method_s / EPOCHS[method],
                "data_access": {"pbu": "forget", "finetune": "all retain"}[method],
                "hparams": {"lr": 0.001},
                "info": {"stop_step": 3} if method == "pbu" else {},
                "fisher": str(group / "fisher.pt") if method == "pbu" else None,
                "hparams_from": (
                    {"file": str(group / "tune" / "finetune.json")}
                    if method == "finetune"
                    else None
                ),
                **span(30 + 5 * i, method_s),
            },
        )
        _write(group / method / "history.json", {"method": method, "history": history_of(index)})
    mfile = group / "metrics.json"
    _write(
        mfile,
        {
            "forget": forget,
            "seed": seed,
            "settings": {"mia_max_samples": 1000},
            "metrics": {m: metrics_of(m, index) for m in METHODS},
            "data": DATA,
            "time_s": 12.0,
            **span(40, 12.0),
        },
    )
    return mfile


def make_groups(root: Path) -> dict[tuple[str, ...], dict[str, float]]:
    """Write every group of :data:`GROUPS` under ``root``. Returns
    ``{(dataset, arch, seed, forget, method): that model's metrics.json values}``, as strings."""
    expected = {}
    for index, (seed, forget) in enumerate(GROUPS):
        make_results(root, forget, seed, index)
        for m in METHODS:
            expected[("mnist5k", "small_cnn", str(seed), str(forget), m)] = metrics_of(m, index)
    return expected
