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


#: Columns of the forget-score table (aggregate/forget_score.csv) each model's run gets, as
#: ``forget_score`` (the column ``score``) and ``forget_score_<column>``: its method's numbers
#: for its forget class (the original model: the floor's; the oracle: the ceiling's).
FORGET_SCORE_COLUMNS = (
    "score",
    "score_ci_low",
    "score_ci_high",
    "utility_score",
    "eps_median",
    "eps_cap_share",
    "peaky_share",
    "offset_sd_median",
    "offset_sd_signed_median",
    "n_models",
)
#: Columns of aggregate/forget_score_runs.csv each model's run gets: its own per-image summary.
FORGET_SCORE_RUN_COLUMNS = ("conf_median", "conf_offset_sd_median")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def forget_score_metrics(
    folder: str | Path | None,
) -> tuple[dict[tuple, dict[str, float]], dict[tuple, dict[str, float]]]:
    """The forget-score tables of ``folder`` (the layout's ``aggregate/``) as MLflow metrics:
    per (dataset, arch, forget, method) the method's numbers, per (dataset, arch, seed, forget,
    method) the model's own; both empty without a folder."""
    if folder is None:
        return {}, {}
    folder = Path(folder)
    table = folder / Path(layout.FILES["forget_score_csv"]).name
    runs = folder / Path(layout.FILES["forget_score_runs_csv"]).name
    per_method: dict[tuple, dict[str, float]] = {}
    for r in _csv_rows(table):
        if r["forget"] == "all":
            continue
        name = {"floor": "original", "ceiling": "oracle"}.get(r["method"], r["method"])
        per_method[(r["dataset"], r["arch"], int(r["forget"]), name)] = {
            ("forget_score" if c == "score" else f"forget_score_{c}"): float(r[c])
            for c in FORGET_SCORE_COLUMNS
            if r.get(c) not in (None, "") and math.isfinite(float(r[c]))
        }
    per_run: dict[tuple, dict[str, float]] = {}
    for r in _csv_rows(runs):
        if r.get("ceiling") == "True":
            continue  # the ceiling's oracles belong to no group
        key = (r["dataset"], r["arch"], int(r["seed"]), int(r["forget"]), r["method"])
        per_run[key] = {
            c: float(r[c])
            for c in FORGET_SCORE_RUN_COLUMNS
            if r.get(c) not in (None, "") and math.isfinite(float(r[c]))
        }
    return per_method, per_run


def plan_jobs(metrics_files: list[Path], forget_score: str | Path | None = None) -> list[_Job]:
    """Turn result files into the runs to log (parents before children). ``forget_score``: the
    folder of the forget-score tables (:func:`forget_score_metrics`), whose numbers each
    model's run gets too."""
    from pbu.aggregate import protocol_of, tune_file, tune_record

    fs_method, fs_run = forget_score_metrics(forget_score)
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
            fkey = (key["dataset"], key["arch"], key["forget"], method)
            j.metrics.update(fs_method.get(fkey, {}))
            j.metrics.update(fs_run.get((*fkey[:2], key["seed"], *fkey[2:]), {}))
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


#: The experiment tag MLflow 3's UI reads, where its global workflow switch is off, to open an
#: experiment as model training (its runs table) rather than the GenAI overview ("Traces 0").
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def runs_table(experiment_id: str) -> str:
    """The UI route of an experiment's runs table, relative to the server's address.

    MLflow 3.17's UI keeps one workflow switch (GenAI / model training) for every experiment,
    remembered per browser and set by the ``workflowType`` query parameter, and ignores the
    experiment-kind tag then: without the parameter a new browser lands on the GenAI overview.
    With it, the link opens the runs table under the model-training menu (tested in headless
    Chromium, ``tests/e2e/test_mlflow_ui.py``).
    """
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def compare_views(jobs: list[_Job], run_ids: dict[str, str], experiment_id: str) -> dict[str, str]:
    """The UI route of each evaluation group's compare view (the oracle, the Fisher, the
    original model and every method side by side), by the group's run name, e.g.
    ``{"forget2 seed0": "#/compare-runs?runs=...&experiments=..."}``."""
    from urllib.parse import urlencode

    names = {
        j.job: j.name
        for j in jobs
        if j.tags.get("rule") == "evaluate" and j.tags.get("method") == "all"
    }
    children: dict[str, list[str]] = {}
    for j in jobs:
        if j.parent is not None and j.job in run_ids:
            children.setdefault(j.parent, []).append(run_ids[j.job])
    return {
        names[parent]: "#/compare-runs?"
        + urlencode(
            {
                "runs": json.dumps(sorted(ids), separators=(",", ":")),
                "experiments": json.dumps([experiment_id], separators=(",", ":")),
            }
        )
        for parent, ids in sorted(children.items())
        if parent in names
    }


def describe_experiment(jobs: list[_Job], experiment: str, experiment_id: str = "") -> str:
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
        f"- Definitions of every metric: docs/metrics.md and `pbu/metrics/`."
        + (
            f"\n- The runs table: `{runs_table(experiment_id)}` after this server's address "
            f"(e.g. http://127.0.0.1:5000/{runs_table(experiment_id)}); tick runs and press "
            f"Compare for the compare view."
            if experiment_id
            else ""
        )
    )
