"""Mirror the result files into MLflow. The only module that imports mlflow.

Results are files first; this step reads them and logs every job as one MLflow run:

- ``pretrain`` (one per dataset/arch/seed), top level;
- per forget class, a parent run ``evaluate`` holding the group, with child runs
  ``retrain`` (the oracle), ``fisher``, ``unlearn`` (one per method) and ``evaluate`` for the
  original model. Every model's evaluation metrics are logged under the SAME names
  (``acc_forget_test``, ``mia_entropy_svc``, ``js_retain_test``, ...) on its own run, so the
  compare view lines methods up; per-epoch / per-step histories are logged with steps.
- per method whose unlearn job used a blind tuning record (``pbu tune``, info.json's
  ``hparams_from``), a child run ``tune`` of the same group (budget, rule, choice, the record as
  artifact) with one child ``tune_trial`` run per trial (its hyperparameters as params; its
  validation metrics, score and times as metrics).
- ``report``: tables, figures and report.md as artifacts.

Idempotent: each run carries a ``pbu.job`` tag (its identity) and a ``pbu.digest`` tag (a hash of
what it logs). A rerun skips jobs whose digest is unchanged and replaces (deletes, then logs anew)
those whose files changed, so runs are never duplicated. Runs are always terminated, even on error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pbu.io import write_json

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written."""


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


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user's server
            if resp.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered {resp.status}")
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({err}). Every result is kept under "
            f"results/; start the server (or fix mlflow.tracking_uri) and rerun snakemake: only "
            f"the tracking steps run again, and nothing is logged twice"
        ) from err


class _Job:
    """One MLflow run to be: identity, tags, params, metrics (with steps), artifacts."""

    def __init__(self, job: str, name: str, tags: dict[str, str], parent: str | None = None):
        self.job, self.name, self.tags, self.parent = job, name, tags, parent
        self.params: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.series: list[tuple[str, float, int]] = []
        self.artifacts: list[Path] = []

    def add_history(self, rows: Iterable[dict[str, Any]], step_key: str) -> None:
        for r in rows:
            step = r.get(step_key)
            if not _finite(step):
                continue
            for k, v in r.items():
                if k not in (step_key,) and _finite(v):
                    self.series.append((k, float(v), int(step)))

    def logged_series(self) -> list[tuple[str, float, int]]:
        """The per-step series as logged. A name the run also reports as one number (the
        evaluation's ``acc_forget_test`` beside the monitored per-step accuracy) is logged as
        ``trajectory/<name>``: MLflow shows a metric's value at its highest step, so sharing the
        name would show the last monitored step instead of the evaluation."""
        return [(f"trajectory/{k}" if k in self.metrics else k, v, s) for k, v, s in self.series]

    def digest(self) -> str:
        files = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in self.artifacts
                 if p.exists()]
        return _digest([self.tags, self.params, self.metrics, self.logged_series(), files,
                        self.parent])


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def plan_jobs(metrics_files: list[Path]) -> list[_Job]:
    """Turn result files into the runs to log (parents before children)."""
    from pbu.aggregate import parse_group

    jobs: list[_Job] = []
    pretrain_done: set[Path] = set()
    for mfile in metrics_files:
        group = mfile.parent
        key = parse_group(group)
        base = {k: str(v) for k, v in key.items()}
        gid = f"{key['dataset']}/{key['arch']}/seed{key['seed']}/forget{key['forget']}"
        pre_dir = group.parent / "pretrain"
        pre = _read(pre_dir / "info.json")
        if pre is not None and pre_dir not in pretrain_done:
            pretrain_done.add(pre_dir)
            tags = {k: base[k] for k in ("dataset", "arch", "seed")} | {
                "rule": "pretrain", "method": "original", "forget": "none"}
            j = _Job(f"pretrain/{key['dataset']}/{key['arch']}/seed{key['seed']}",
                     f"pretrain seed{key['seed']}", tags)
            j.params = _flatten({"recipe": pre.get("recipe", {}), "weights": pre.get("weights")})
            j.metrics = {k: pre[k] for k in ("time_s", "time_per_epoch_s", "final_test_acc",
                                              "peak_rss_mb", "peak_gpu_mb") if _finite(pre.get(k))}
            j.add_history(pre.get("history", []), "epoch")
            j.artifacts = [pre_dir / "info.json"]
            j.tags["pbu.checkpoint"] = str((pre_dir / "model.pt").resolve())
            jobs.append(j)
        ev = json.loads(mfile.read_text())
        parent = _Job(f"evaluate/{gid}", f"forget{key['forget']} seed{key['seed']}",
                      base | {"rule": "evaluate", "method": "all"})
        parent.params = _flatten({"evaluation": ev.get("settings", {})})
        parent.metrics = {k: ev[k] for k in ("time_s", "peak_rss_mb") if _finite(ev.get(k))}
        parent.artifacts = [mfile]
        jobs.append(parent)
        fisher = _read(group / "fisher.json")
        if fisher is not None:
            j = _Job(f"fisher/{gid}", "fisher", base | {"rule": "fisher", "method": "pbu"},
                     parent.job)
            j.params = _flatten({"kind": fisher.get("kind"), "bn_mode": fisher.get("bn_mode")})
            j.metrics = {k: fisher[k] for k in ("time_s", "images_per_s", "trace", "samples",
                                                 "peak_rss_mb", "peak_gpu_mb")
                         if _finite(fisher.get(k))}
            j.artifacts = [group / "fisher.json"]
            jobs.append(j)
        for method, metrics in ev["metrics"].items():
            mdir = group / method
            info = _read(mdir / "info.json") or {}
            rule = {"original": "evaluate", "oracle": "retrain"}.get(method, "unlearn")
            j = _Job(f"{rule}/{gid}/{method}", method, base | {"rule": rule, "method": method},
                     parent.job)
            if method == "oracle":
                j.params = _flatten({"recipe": info.get("recipe", {})})
                j.add_history(info.get("history", []), "epoch")
            elif method != "original":
                j.params = _flatten({"hparams": info.get("hparams", {})})
                j.tags["data_access"] = str(info.get("data_access"))
                hist = _read(mdir / "history.json") or {}
                j.add_history(hist.get("history", []), "step")
                if (mdir / "history.json").exists():
                    j.artifacts.append(mdir / "history.json")
            j.metrics = {k: float(v) for k, v in metrics.items() if _finite(v)}
            for k in ("time_s", "epochs", "time_per_epoch_s", "peak_rss_mb", "peak_gpu_mb"):
                if _finite(info.get(k)):
                    j.metrics[k] = float(info[k])
            stop = info.get("info") or {}
            if _finite(stop.get("stop_step")):
                j.metrics["stop_step"] = float(stop["stop_step"])
            if (mdir / "info.json").exists():
                j.artifacts.append(mdir / "info.json")
            if (mdir / "model.pt").exists():
                j.tags["pbu.checkpoint"] = str((mdir / "model.pt").resolve())
            jobs.append(j)
            if info.get("hparams_from"):
                jobs += plan_tune_jobs(_tune_file(group, method, info["hparams_from"]),
                                       base | {"method": method}, f"{gid}/{method}", parent.job)
    return jobs


def _tune_file(group: Path, method: str, hparams_from: dict[str, Any]) -> Path:
    """The tune record an unlearn job used: the pipeline's place for it, else the recorded path."""
    canonical = group / "tune" / f"{method}.json"
    return canonical if canonical.exists() else Path(str(hparams_from.get("file")))


def plan_tune_jobs(path: Path, tags: dict[str, str], jid: str, parent: str | None) -> list[_Job]:
    """A ``tune`` run (budget, rule, choice; the record as artifact) with one child run per trial
    (params = the trial's hyperparameters, metrics = validation metrics, score, times)."""
    rec = _read(path)
    if rec is None:
        log.warning("tune record %s is missing; not tracked", path)
        return []
    rule = rec.get("rule", {})
    tune = _Job(f"tune/{jid}", f"tune {tags['method']}", tags | {"rule": "tune"}, parent)
    tune.params = _flatten({"budget": rec.get("budget"), "sampling": rec.get("sampling"),
                            "val_fraction": rec.get("val_fraction"),
                            "threshold": rule.get("threshold"), "objective": rule.get("objective"),
                            "forgetting_checked": rule.get("forgetting_checked"),
                            "space": {k: json.dumps(v) for k, v in rec.get("space", {}).items()},
                            "chosen": rec.get("chosen", {}).get("varied", {})})
    tune.tags["rule_text"] = str(rule.get("text", ""))
    chosen = rec.get("chosen", {})
    tune.metrics = {k: float(v) for k, v in (chosen.get("metrics") or {}).items() if _finite(v)}
    tune.metrics.update({k: float(v) for k, v in (("score", chosen.get("score")),
                                                  ("chosen_trial", chosen.get("trial")),
                                                  ("trials", len(rec.get("trials", []))),
                                                  ("total_time_s", rec.get("total_time_s")))
                         if _finite(v)})
    tune.metrics.update({f"split_{k}": float(v) for k, v in rec.get("split", {}).items()
                         if _finite(v)})
    tune.artifacts = [path]
    jobs = [tune]
    for t in rec.get("trials", []):
        j = _Job(f"{tune.job}/trial{t['trial']}", f"trial {t['trial']}",
                 tags | {"rule": "tune_trial", "trial": str(t["trial"]),
                         "chosen": str(t["trial"] == chosen.get("trial")).lower()}, tune.job)
        j.params = _flatten({"hparams": t.get("hparams", {})})
        j.metrics = {k: float(v) for k, v in (t.get("metrics") or {}).items() if _finite(v)}
        j.metrics.update({k: float(t[k]) for k in ("score", "time_s", "eval_time_s", "rank")
                          if _finite(t.get(k))})
        j.metrics["feasible"] = float(bool(t.get("feasible")))
        if t.get("error"):
            j.tags["error"] = str(t["error"])[:500]
        jobs.append(j)
    return jobs


def _client(tracking_uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client, name: str, artifact_root: Path | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    loc = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=loc)


def _existing(client, exp_id: str) -> dict[str, Any]:
    """Active runs of the experiment that carry a ``pbu.job`` tag, by job."""
    from mlflow.entities import ViewType

    out: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string="tags.`pbu.job` != ''",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=token)
        for r in page:
            out[r.data.tags["pbu.job"]] = r
        token = page.token
        if not token:
            return out


def _log_job(client, exp_id: str, job: _Job, parent_id: str | None, digest: str) -> str:
    from mlflow.entities import Metric, Param

    tags = dict(job.tags, **{"pbu.job": job.job, "pbu.digest": digest,
                             "mlflow.runName": job.name})
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run = client.create_run(exp_id, tags=tags, run_name=job.name)
    rid = run.info.run_id
    status = "FAILED"
    try:
        metrics = [Metric(k, v, 0, 0) for k, v in job.metrics.items()]
        metrics += [Metric(k, v, 0, s) for k, v, s in job.logged_series()]
        params = [Param(k, v[:6000]) for k, v in job.params.items()]
        for i in range(0, max(len(metrics), len(params), 1), 1000):
            client.log_batch(rid, metrics=metrics[i:i + 1000], params=params[i:i + 100] if i == 0
                             else [], tags=[])
        for i in range(100, len(params), 100):
            client.log_batch(rid, params=params[i:i + 100])
        for a in job.artifacts:
            if a.exists():
                client.log_artifact(rid, str(a))
        status = "FINISHED"
    finally:
        client.set_terminated(rid, status=status)
    return rid


@contextlib.contextmanager
def _one_tracker_at_a_time(tracking_uri: str, out: str | os.PathLike):
    """Hold an exclusive lock (a file beside the SQLite store, else beside ``out``).

    Two tracking processes at once would both find a job missing and both log it (a duplicate),
    or both create a fresh store's tables (one fails); taking turns, the second finds every job
    already logged.
    """
    if tracking_uri.startswith("sqlite:///"):
        lock = Path(tracking_uri[len("sqlite:///"):] + ".lock")
    else:
        lock = Path(out).parent / ".pbu-track.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another tracking process (lock %s)", lock)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def track_results(results: str | os.PathLike | None, *, tracking_uri: str, experiment: str,
                  out: str | os.PathLike, report_paths: list[str] | None = None,
                  metrics_files: list[str] | None = None) -> dict[str, Any]:
    """Log every job found under ``results`` (or given by ``metrics_files``) exactly once."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    check_reachable(tracking_uri)
    from pbu.aggregate import find_metrics, parse_group

    files = find_metrics(results, metrics_files)
    jobs = plan_jobs(files)
    if report_paths:
        keys = [parse_group(f.parent) for f in files]
        span = {k: ",".join(sorted({str(g[k]) for g in keys})) or "none"
                for k in ("dataset", "arch", "seed", "forget")}
        j = _Job(f"report/{experiment}", "report", span | {"rule": "report", "method": "all"})
        for rp in map(Path, report_paths):
            j.artifacts += sorted(p for p in rp.rglob("*") if p.is_file()) if rp.is_dir() else [rp]
        jobs.append(j)
    artifact_root = None
    if tracking_uri.startswith("sqlite:///"):
        artifact_root = Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts"
    with _one_tracker_at_a_time(tracking_uri, out):
        return _log_jobs(jobs, tracking_uri, experiment, artifact_root, out)


def _log_jobs(jobs: list[_Job], tracking_uri: str, experiment: str, artifact_root: Path | None,
              out: str | os.PathLike) -> dict[str, Any]:
    """Log the jobs the store lacks or holds in another version (the caller holds the lock)."""
    try:
        client = _client(tracking_uri)
        exp_id = _experiment_id(client, experiment, artifact_root)
        existing = _existing(client, exp_id)
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001 - mlflow raises many kinds
        first = str(err).splitlines()[0] if str(err) else ""  # SQLAlchemy appends the SQL
        raise TrackingError(f"MLflow store {tracking_uri}: {type(err).__name__}: {first}") from err
    ids: dict[str, str] = {}
    created = skipped = replaced = 0
    for job in jobs:
        digest = job.digest()
        old = existing.get(job.job)
        parent_id = ids.get(job.parent) if job.parent else None
        if old is not None and old.data.tags.get("pbu.digest") == digest and \
                old.data.tags.get("mlflow.parentRunId") == parent_id:
            ids[job.job] = old.info.run_id
            skipped += 1
            continue
        if old is not None:
            client.delete_run(old.info.run_id)
            replaced += 1
        ids[job.job] = _log_job(client, exp_id, job, parent_id, digest)
        created += 1
    summary = {"tracking_uri": tracking_uri, "experiment": experiment, "experiment_id": exp_id,
               "runs": len(jobs), "created": created, "replaced": replaced, "unchanged": skipped,
               "run_ids": ids}
    write_json(out, summary)
    log.info("MLflow: %d runs (%d new, %d replaced, %d unchanged) in %s", len(jobs),
             created - replaced, replaced, skipped, experiment)
    return summary
