"""Collect the per-job result files into three tables (CSV) for reports and tracking.

Read, per group (:mod:`pbu.layout` says where each file lives): ``metrics.json`` (every model
of the group, evaluated), the original model's ``pretrain/info.json``, the oracle's and each
method's ``info.json`` and ``history.json``, ``fisher.json`` and the tuning records.

Written: ``runs.csv`` (one row per dataset/arch/seed/forget/method, with ``protocol``: which
tuning protocol chose the row's hyperparameters, see :func:`protocol_of`; a config variant is a
method of its own name, and ``base_method`` names the registered method it runs, a method's own
name otherwise), ``history.csv`` (per-step trajectories) and ``timings.csv`` (wall time of every
compute job, including Fisher).

Times (seconds): ``time_s`` is a job's own timed work, as its record states it (a method alone,
evaluation excluded; the oracle's and the original model's training without their per-epoch
test pass). ``total_time_s`` is the headline: everything a model needs from θ*, its
prerequisites included -- PBU's Fisher (``fisher_time_s``) and, when tuning chose the
hyperparameters, the tuning (``tune_time_s``). ``total_time_per_epoch_s`` divides it by the
epochs the method ran.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from pbu import layout
from pbu.io import atomic_write
from pbu.registry import METHODS_NEEDING_FISHER

log = logging.getLogger(__name__)

KEYS = ("dataset", "arch", "seed", "forget", "method")
METRICS_GLOB = layout.glob(layout.FILES["metrics"])  # */*/seed*/forget*/metrics.json


def parse_group(path: str | os.PathLike) -> dict[str, Any]:
    """Wildcards of a ``.../{dataset}/{arch}/seed{s}/forget{c}`` folder (seed, forget as ints)."""
    return layout.parse(path, "group_dir").wildcards


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def _timing(
    key: dict[str, Any], method: str, info: dict[str, Any], total: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        **key,
        "method": method,
        "time_s": info.get("time_s"),
        "epochs": info.get("epochs"),
        "time_per_epoch_s": info.get("time_per_epoch_s"),
        **(total or {}),
        "peak_rss_mb": info.get("peak_rss_mb"),
        "peak_gpu_mb": info.get("peak_gpu_mb"),
    }


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def total_time(
    method: str, info: dict[str, Any], fisher: dict[str, Any], tune: dict[str, Any] | None
) -> dict[str, Any]:
    """The headline time of one model and its parts (see the module docstring).

    PBU (any method whose job took a Fisher file, or that :data:`METHODS_NEEDING_FISHER` lists,
    and its variants) adds the Fisher job's time; a tuned method adds its tuning record's
    ``total_time_s``. None when the model's own time is unknown.
    """
    own = _num(info.get("time_s"))
    out: dict[str, Any] = {}
    parts = [own]
    base = info.get("base_method") or method
    if info.get("fisher") or base in METHODS_NEEDING_FISHER:
        out["fisher_time_s"] = _num(fisher.get("time_s"))
        parts.append(out["fisher_time_s"])
    if tune is not None:
        out["tune_time_s"] = _num(tune.get("total_time_s"))
        parts.append(out["tune_time_s"])
    total = None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]
    epochs = _num(info.get("epochs"))
    out["total_time_s"] = total
    out["total_time_per_epoch_s"] = total / epochs if total is not None and epochs else None
    return out


def protocol_of(method: str, info: dict[str, Any]) -> str:
    """Which protocol chose a model's hyperparameters: its unlearn record's ``protocol``
    (``blind`` / ``validation`` from a tuning record, ``config`` when they came from the config
    file untuned); a record from before the protocols says ``blind`` when a tuning record chose
    them. The original model and the oracle are trained by the config's recipe: ``config``."""
    if method in ("original", "oracle"):
        return "config"
    if info.get("protocol"):
        return str(info["protocol"])
    return "blind" if info.get("hparams_from") else "config"


def tune_file(group: layout.Found, method: str, hparams_from: dict[str, Any]) -> Path:
    """The tuning record an unlearn job used: the pipeline's place for it, else the recorded
    path."""
    canonical = group.file("tune", method=method)
    return canonical if canonical.exists() else Path(str(hparams_from.get("file")))


def tune_record(group: layout.Found, method: str, info: dict[str, Any]) -> dict[str, Any] | None:
    """The tuning record an unlearn job took its hyperparameters from, if any."""
    src = info.get("hparams_from")
    if not src:
        return None
    return _read(group.file("tune", method=method)) or _read(Path(str(src.get("file")))) or {}


def collect(
    results: str | os.PathLike | None,
    metrics_files: list[str] | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Rows of runs, history and timings for ``metrics_files`` (default: all under ``results``).

    The pipeline passes its own list, so results of groups no longer in the config are ignored.
    """
    files = find_metrics(results, metrics_files)
    runs: list[dict] = []
    history: list[dict] = []
    timings: list[dict] = []
    seen_pretrain: set[Path] = set()
    for mfile in files:
        group = layout.parse(mfile.parent, "group_dir")
        key = group.wildcards
        ev = json.loads(mfile.read_text())
        pre_file = group.file("pretrain_info")
        pre = _read(pre_file) or {}
        if pre_file not in seen_pretrain and pre:
            seen_pretrain.add(pre_file)
            timings.append(
                _timing(
                    {k: key[k] for k in ("dataset", "arch", "seed")} | {"forget": None},
                    "pretrain",
                    pre,
                )
            )
        fisher = _read(group.file("fisher_info")) or {}
        if fisher:
            timings.append(_timing(key, "fisher", fisher))
        for method, metrics in ev["metrics"].items():
            row: dict[str, Any] = {**key, "method": method}
            if method == "original":
                info = pre
                row["base_method"] = method
                row["data_access"] = "-"
                total = total_time(method, info, fisher, None)
            else:
                info = _read(group.file("info", method=method)) or {}
                # a variant's registered method (config variants:); a method's is itself
                row["base_method"] = info.get("base_method") or method
                row["data_access"] = info.get("data_access", "-")
                total = total_time(method, info, fisher, tune_record(group, method, info))
                timings.append(_timing(key, method, info, total))
            row["protocol"] = protocol_of(method, info)
            row.update(metrics)
            for k in ("time_s", "epochs", "time_per_epoch_s", "peak_rss_mb", "peak_gpu_mb"):
                row[k] = info.get(k)
            row.update(total)
            row["parameters"] = pre.get("parameters")
            stop = info.get("info") or {}
            for k in ("stop_step", "steps", "stop_reason"):
                if k in stop:
                    row[k] = stop[k]
            runs.append(row)
            hist = _read(group.file("history", method=method))
            for h in (hist or {}).get("history", []):
                history.append({**key, "method": method, **h})
    return runs, history, timings


def find_metrics(results: str | os.PathLike | None, metrics_files: list[str] | None) -> list[Path]:
    """The given metrics files, or every ``*/*/seed*/forget*/metrics.json`` under ``results``."""
    if metrics_files:
        return [Path(f) for f in metrics_files]
    if results is None:
        raise ValueError("give metrics files or a results folder")
    return sorted(Path(results).glob(METRICS_GLOB))


def aggregate(
    results: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    metrics_files: list[str] | None = None,
) -> dict[str, Path]:
    """Write runs.csv, history.csv and timings.csv into ``out_dir``."""
    runs, history, timings = collect(results, metrics_files)
    if not runs:
        raise FileNotFoundError(f"no {METRICS_GLOB} under {results}")
    # out_dir is the layout's aggregate/ folder in the pipeline; the file names are the layout's
    paths = {
        k: Path(out_dir) / Path(layout.FILES[f"{k}_csv"]).name
        for k in ("runs", "history", "timings")
    }
    _write_csv(paths["runs"], runs)
    _write_csv(paths["history"], history or [{k: None for k in KEYS}])
    _write_csv(paths["timings"], timings)
    log.info(
        "aggregated %d runs, %d history rows, %d timings", len(runs), len(history), len(timings)
    )
    return paths
