"""What the MLflow mirror logs, planned from the result files alone (torch-free, mlflow-free).

:func:`plan_jobs` reads a run's result files (:mod:`pbu.layout` says where each lives) and
returns one :class:`_Job` per pipeline job: its run name, parent, tags, params, metrics,
histories, dataset input and artifacts. :mod:`pbu.tracking` logs them; tests read the plan
directly, without a tracking server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pbu import layout

log = logging.getLogger(__name__)

#: Prefix of per-step / per-epoch series (the UI groups them in a "trajectory" section).
TRAJECTORY = "trajectory/"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = str(v)
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Job:
    """One MLflow run to be: identity, tags, params, metrics (with steps), artifacts, the job's
    own start and end (ms since the epoch; None: unknown, MLflow then uses the logging time)
    and the dataset it read (an input with a context)."""

    def __init__(self, job: str, name: str, tags: dict[str, str], parent: str | None = None):
        self.job, self.name, self.tags, self.parent = job, name, tags, parent
        self.former_jobs: tuple[str, ...] = ()  # earlier identities: their runs are replaced
        self.params: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.series: list[tuple[str, float, int]] = []
        self.artifacts: list[Path] = []
        self.start_ms: int | None = None
        self.end_ms: int | None = None
        self.dataset: dict[str, Any] | None = None
        self.dataset_context: str = ""

    def span_from(self, record: dict[str, Any] | None) -> None:
        """Start and end from a job record's ``started_at`` / ``ended_at`` (Unix seconds)."""
        record = record or {}
        start, end = record.get("started_at"), record.get("ended_at")
        if _finite(start) and _finite(end) and end >= start:
            self.start_ms, self.end_ms = int(start * 1000), int(math.ceil(end * 1000))

    def add_history(self, rows: Iterable[dict[str, Any]], step_key: str) -> None:
        """Per-step (or per-epoch) values as ``trajectory/<key>`` series. The prefix keeps
        them apart from the run's final metrics: MLflow shows a metric's value at its highest
        step, so a monitored ``acc_forget_test`` at step 40 would otherwise replace the
        evaluation's ``acc_forget_test`` in the runs table and the compare view."""
        for r in rows:
            step = r.get(step_key)
            if not _finite(step):
                continue
            for k, v in r.items():
                if k not in (step_key,) and _finite(v):
                    self.series.append((f"{TRAJECTORY}{k}", float(v), int(step)))

    def digest(self) -> str:
        files = [
            (str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in self.artifacts if p.exists()
        ]
        return _digest(
            [
                self.tags,
                self.params,
                self.metrics,
                self.series,
                files,
                self.parent,
                self.start_ms,
                self.end_ms,
                self.dataset,
                self.dataset_context,
            ]
        )


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _model_metrics(
    method: str,
    metrics: dict[str, Any],
    info: dict[str, Any],
    fisher: dict[str, Any],
    tune: dict[str, Any] | None,
) -> dict[str, float]:
    """One model's metrics as runs.csv has them: its evaluation, its own times and the headline
    ``total_time_s`` (prerequisites included; :func:`pbu.aggregate.total_time`)."""
    from pbu.aggregate import total_time

    out = {k: float(v) for k, v in metrics.items() if _finite(v)}
    for k in ("time_s", "epochs", "time_per_epoch_s", "peak_rss_mb", "peak_gpu_mb"):
        if _finite(info.get(k)):
            out[k] = float(info[k])
    out.update(
        {k: float(v) for k, v in total_time(method, info, fisher, tune).items() if _finite(v)}
    )
    return out


def plan_jobs(metrics_files: list[Path]) -> list[_Job]:
    """Turn result files into the runs to log (parents before children)."""
    from pbu.aggregate import protocol_of, tune_file, tune_record

    jobs: list[_Job] = []
    pretrain_done: set[Path] = set()
    for mfile in metrics_files:
        group = layout.parse(mfile.parent, "group_dir")
        key = group.wildcards
        base = {k: str(v) for k, v in key.items()}
        gid = layout.path("group_dir", **key)  # a job's identity: its place in the layout
        ev = json.loads(mfile.read_text())
        data = ev.get("data")
        pre_info = group.file("pretrain_info")
        pre = _read(pre_info)
        if pre is not None and pre_info not in pretrain_done:
            pretrain_done.add(pre_info)
            tags = {k: base[k] for k in ("dataset", "arch", "seed")} | {
                "rule": "pretrain",
                "method": "original",
                "forget": "none",
            }
            j = _Job(
                f"pretrain/{layout.path('seed_dir', **key)}", f"pretrain seed{key['seed']}", tags
            )
            j.params = _flatten({"recipe": pre.get("recipe", {}), "weights": pre.get("weights")})
            j.metrics = {
                k: pre[k]
                for k in (
                    "time_s",
                    "eval_time_s",
                    "time_per_epoch_s",
                    "final_test_acc",
                    "parameters",
                    "peak_rss_mb",
                    "peak_gpu_mb",
                )
                if _finite(pre.get(k))
            }
            j.add_history(pre.get("history", []), "epoch")
            j.artifacts = [pre_info]
            j.tags["pbu.checkpoint"] = str(group.file("pretrain_model").resolve())
            j.span_from(pre)
            j.dataset, j.dataset_context = data, "train (all classes)"
            jobs.append(j)
        parent = _Job(
            f"evaluate/{gid}",
            f"forget{key['forget']} seed{key['seed']}",
            base | {"rule": "evaluate", "method": "all"},
        )
        parent.params = _flatten({"evaluation": ev.get("settings", {})})
        parent.metrics = {k: ev[k] for k in ("time_s", "peak_rss_mb") if _finite(ev.get(k))}
        parent.artifacts = [mfile]
        parent.span_from(ev)
        parent.dataset, parent.dataset_context = data, "evaluation (all splits)"
        jobs.append(parent)
        fisher = _read(group.file("fisher_info"))
        if fisher is not None:
            j = _Job(
                f"fisher/{gid}", "fisher", base | {"rule": "fisher", "method": "pbu"}, parent.job
            )
            j.params = _flatten({"kind": fisher.get("kind"), "bn_mode": fisher.get("bn_mode")})
            j.metrics = {
                k: fisher[k]
                for k in (
                    "time_s",
                    "images_per_s",
                    "trace",
                    "samples",
                    "peak_rss_mb",
                    "peak_gpu_mb",
                )
                if _finite(fisher.get(k))
            }
            j.artifacts = [group.file("fisher_info")]
            j.span_from(fisher)
            j.dataset, j.dataset_context = data, "forget_train"
            jobs.append(j)
        for method, metrics in ev["metrics"].items():
            info_file = group.file("info", method=method)
            hist_file = group.file("history", method=method)
            model_file = group.file("model", method=method)
            rule = {"original": "evaluate", "oracle": "oracle"}.get(method, "unlearn")
            # The original model's row: its time and span are those of the job that made it.
            info = (pre or {}) if method == "original" else (_read(info_file) or {})
            tune = None if method in ("original", "oracle") else tune_record(group, method, info)
            j = _Job(
                f"{rule}/{gid}/{method}",
                method,
                base | {"rule": rule, "method": method},
                parent.job,
            )
            if method == "oracle":
                j.former_jobs = (f"retrain/{gid}/{method}",)  # the rule's name before issue 16
                j.params = _flatten({"recipe": info.get("recipe", {})})
                j.add_history(info.get("history", []), "epoch")
                j.dataset_context = "retain_train"
            elif method == "original":
                j.dataset_context = "train (all classes)"
            else:
                j.params = _flatten({"hparams": info.get("hparams", {})})
                j.tags["data_access"] = str(info.get("data_access"))
                j.tags["protocol"] = protocol_of(method, info)
                # a config variant: its registered method and what it changes (runs.csv's
                # base_method); a method's base is itself
                j.tags["base_method"] = str(info.get("base_method") or method)
                if info.get("overrides"):
                    j.tags["overrides"] = json.dumps(info["overrides"], sort_keys=True)
                hist = _read(hist_file) or {}
                j.add_history(hist.get("history", []), "step")
                if hist_file.exists():
                    j.artifacts.append(hist_file)
                j.dataset_context = str(info.get("data_access") or "unknown")
            j.metrics = _model_metrics(method, metrics, info, fisher or {}, tune)
            stop = info.get("info") or {}
            if _finite(stop.get("stop_step")):
                j.metrics["stop_step"] = float(stop["stop_step"])
            if method != "original" and info_file.exists():
                j.artifacts.append(info_file)
            if model_file.exists():
                j.tags["pbu.checkpoint"] = str(model_file.resolve())
            j.span_from(info)
            j.dataset = data
            jobs.append(j)
            if info.get("hparams_from") and method not in ("original", "oracle"):
                jobs += plan_tune_jobs(
                    tune_file(group, method, info["hparams_from"]),
                    base | {"method": method},
                    f"{gid}/{method}",
                    parent.job,
                )
    return jobs


def plan_tune_jobs(path: Path, tags: dict[str, str], jid: str, parent: str | None) -> list[_Job]:
    """A ``tune`` run (budget, rule, choice; the record as artifact) with one child run per trial
    (params = the trial's hyperparameters, metrics = validation metrics, score, times)."""
    rec = _read(path)
    if rec is None:
        log.warning("tune record %s is missing; not tracked", path)
        return []
    rule = rec.get("rule", {})
    tune = _Job(f"tune/{jid}", f"tune {tags['method']}", tags | {"rule": "tune"}, parent)
    tune.params = _flatten(
        {
            "protocol": rec.get("protocol", "blind"),
            "budget": rec.get("budget"),
            "sampling": rec.get("sampling"),
            "val_fraction": rec.get("val_fraction"),
            "threshold": rule.get("threshold"),
            "objective": rule.get("objective"),
            "forgetting_checked": rule.get("forgetting_checked"),
            "space": {k: json.dumps(v) for k, v in rec.get("space", {}).items()},
            "chosen": rec.get("chosen", {}).get("varied", {}),
        }
    )
    tune.tags["rule_text"] = str(rule.get("text", ""))
    chosen = rec.get("chosen", {})
    tune.metrics = {k: float(v) for k, v in (chosen.get("metrics") or {}).items() if _finite(v)}
    tune.metrics.update(
        {
            k: float(v)
            for k, v in (
                ("score", chosen.get("score")),
                ("chosen_trial", chosen.get("trial")),
                ("trials", len(rec.get("trials", []))),
                ("total_time_s", rec.get("total_time_s")),
            )
            if _finite(v)
        }
    )
    tune.metrics.update(
        {f"split_{k}": float(v) for k, v in rec.get("split", {}).items() if _finite(v)}
    )
    tune.artifacts = [path]
    tune.span_from(rec)
    jobs = [tune]
    for t in rec.get("trials", []):
        j = _Job(
            f"{tune.job}/trial{t['trial']}",
            f"trial {t['trial']}",
            tags
            | {
                "rule": "tune_trial",
                "trial": str(t["trial"]),
                "chosen": str(t["trial"] == chosen.get("trial")).lower(),
            },
            tune.job,
        )
        j.params = _flatten({"hparams": t.get("hparams", {})})
        j.metrics = {k: float(v) for k, v in (t.get("metrics") or {}).items() if _finite(v)}
        j.metrics.update(
            {
                k: float(t[k])
                for k in ("score", "time_s", "eval_time_s", "rank")
                if _finite(t.get(k))
            }
        )
        j.metrics["feasible"] = float(bool(t.get("feasible")))
        if t.get("error"):
            j.tags["error"] = str(t["error"])[:500]
        # A trial has no record of its own: it ran within the tune job, whose span it shows.
        j.start_ms, j.end_ms = tune.start_ms, tune.end_ms
        jobs.append(j)
    return jobs


def plan_dev_tune_jobs(path: Path) -> list[_Job]:
    """A development-class tuning record (``pbu tune-dev``) as a top-level ``tune`` run with
    one ``tune_trial`` child per Optuna trial (:func:`plan_tune_jobs`)."""
    rec = _read(path) or {}
    tags = {
        "dataset": str(rec.get("dataset")),
        "arch": str(rec.get("arch")),
        "seed": ",".join(str(s) for s in rec.get("seeds", [])) or "none",
        "forget": str(rec.get("forget")),
        "method": str(rec.get("method")),
        "protocol": str(rec.get("protocol")),
    }
    jid = f"{tags['dataset']}/{tags['arch']}/{tags['method']}"
    return plan_tune_jobs(path, tags, f"dev_class/{jid}", None)


def describe_experiment(jobs: list[_Job], experiment: str) -> str:
    """The experiment's description (shown on its page in the UI): what its runs are."""

    def values(key: str) -> str:
        seen = sorted(
            {j.tags[key] for j in jobs if key in j.tags and j.tags.get("rule") not in ("report",)}
            - {"none", "all"},
            key=lambda v: (len(v), v),
        )
        return ", ".join(seen) or "none"

    methods = sorted({j.tags["method"] for j in jobs if j.tags.get("rule") == "unlearn"})
    variants = sorted(
        {
            f"{j.tags['method']} ({j.tags['base_method']} with {j.tags['overrides']})"
            for j in jobs
            if j.tags.get("rule") == "unlearn" and "overrides" in j.tags
        }
    )
    variant_line = f"- variants (tag `base_method`): {'; '.join(variants)}\n" if variants else ""
    return (
        f"Partially Blinded Unlearning (PBU) replication, pipeline experiment `{experiment}`: "
        f"one run per pipeline job, mirrored from the result files by `pbu track`.\n\n"
        f"- datasets: {values('dataset')}; architectures: {values('arch')}; seeds: "
        f"{values('seed')}; forget classes: {values('forget')}\n"
        f"- unlearning methods: {', '.join(methods) or 'none'}\n{variant_line}"
        f"- `pretrain seed<s>` runs: the original models. Per forget class and seed, a parent "
        f"run `forget<c> seed<s>` (rule `evaluate`) holds the oracle, the Fisher, the "
        f"original model and one `unlearn` run per method, each with the same metric names: "
        f"select the children and press Compare.\n"
        f"- Start, end and duration are each job's own (from its record). `time_s` is the "
        f"job's timed work (a method alone, evaluation excluded); `total_time_s` adds its "
        f"prerequisites (PBU's Fisher), as the report's tables do.\n"
        f"- Each run's input is the prepared dataset (name, digest of the file, split sizes).\n"
        f"- Definitions of every metric: README, section Metrics, and `pbu/metrics/`."
    )
