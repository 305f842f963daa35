"""Mirror the result files into MLflow. The only module that imports mlflow.

Results are files first; this step reads them and logs every job as one MLflow run:

- ``pretrain`` (one per dataset/arch/seed), top level;
- per forget class, a parent run ``evaluate`` holding the group, with child runs
  ``oracle``, ``fisher``, ``unlearn`` (one per method or config variant; tags ``base_method``
  and, for a variant, ``overrides``) and ``evaluate`` for the original model. Every model's
  evaluation metrics are logged under the SAME names
  (``acc_forget_test``, ``mia_entropy_svc``, ``js_retain_test``, ...) on its own run, with its
  times as ``runs.csv`` has them (``time_s``, the headline ``total_time_s``), so the compare
  view lines methods up and agrees with the tables; per-epoch / per-step histories are logged
  with steps as ``trajectory/<name>``.
- every run starts and ends when its job did (the record's ``started_at`` / ``ended_at``), has
  the prepared dataset as its input (name, digest, split sizes), and the experiment carries a
  description of what it holds.
- per method whose unlearn job used a blind tuning record (``pbu tune``, info.json's
  ``hparams_from``), a child run ``tune`` of the same group (budget, rule, choice, the record as
  artifact) with one child ``tune_trial`` run per trial (its hyperparameters as params; its
  validation metrics, score and times as metrics).
- per development-class tuning record (``pbu tune-dev``, given as ``tune_records``), a ``tune``
  run (tags dataset, arch, method, the tuning seeds, the development class) with one child
  ``tune_trial`` run per Optuna trial (the same layout as above; its metrics are the objective's
  RA, FA, VA, MIA and loss, averaged over the tuning seeds);
- ``report``: tables, figures and report.md as artifacts.

Idempotent: each run carries a ``pbu.job`` tag (its identity) and a ``pbu.digest`` tag (a hash of
what it logs). A rerun skips jobs whose digest is unchanged and replaces (deletes, then logs anew)
those whose files changed, so runs are never duplicated. Runs are always terminated, even on error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pbu.io import write_json
from pbu.track_plan import (  # noqa: F401 (re-exported: the plan is part of this module's API)
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TRAJECTORY,
    _digest,
    _finite,
    _flatten,
    _Job,
    _read,
    compare_views,
    describe_experiment,
    plan_dev_tune_jobs,
    plan_jobs,
    plan_tune_jobs,
    runs_table,
)

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written."""


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


_FAST_SQLITE: list[bool] = []


def fast_sqlite_commits() -> None:
    """Every SQLite connection this process opens from now on commits without waiting for the
    disk (``PRAGMA synchronous=OFF``). MLflow commits several times per run, and each commit's
    fsync was half of the mirror's time: 268 runs took 59 s, 30 s without (docs/results.md).
    A killed process still leaves a consistent store (SQLite's journal covers that); only an
    operating-system crash or power loss mid-write could damage it, and the store is a mirror:
    ``pbu track`` rebuilds it from the result files."""
    if _FAST_SQLITE:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _no_fsync(dbapi_connection, _record) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute("PRAGMA synchronous=OFF")

    _FAST_SQLITE.append(True)


def _client(tracking_uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        fast_sqlite_commits()
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
        page = client.search_runs(
            [exp_id],
            filter_string="tags.`pbu.job` != ''",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        for r in page:
            out[r.data.tags["pbu.job"]] = r
        token = page.token
        if not token:
            return out


def _dataset_input(data: dict[str, Any], context: str):
    """The prepared dataset file as an MLflow dataset input: name, digest of the file, its
    location, and every split's size as the profile (the UI's Dataset column and popover)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = {"num_classes": data.get("num_classes"), **(data.get("splits") or {})}
    entity = Dataset(
        name=str(data.get("name")),
        digest=str(data.get("digest"))[:36],
        source_type="local",
        source=json.dumps({"uri": Path(str(data.get("file"))).resolve().as_uri()}),
        profile=json.dumps(profile),
    )
    return DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])


def _log_job(client, exp_id: str, job: _Job, parent_id: str | None, digest: str) -> str:
    from mlflow.entities import Metric, Param

    tags = dict(job.tags, **{"pbu.job": job.job, "pbu.digest": digest, "mlflow.runName": job.name})
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    # The job's own start (from its record), so the UI's Created / Duration are the job's.
    run = client.create_run(exp_id, start_time=job.start_ms, tags=tags, run_name=job.name)
    rid = run.info.run_id
    status = "FAILED"
    stamp = job.end_ms if job.end_ms is not None else run.info.start_time
    try:
        metrics = [Metric(k, v, stamp, 0) for k, v in job.metrics.items()]
        metrics += [Metric(k, v, stamp, s) for k, v, s in job.series]
        params = [Param(k, v[:6000]) for k, v in job.params.items()]
        for i in range(0, max(len(metrics), len(params), 1), 1000):
            client.log_batch(
                rid,
                metrics=metrics[i : i + 1000],
                params=params[i : i + 100] if i == 0 else [],
                tags=[],
            )
        for i in range(100, len(params), 100):
            client.log_batch(rid, params=params[i : i + 100])
        if job.dataset:
            client.log_inputs(rid, datasets=[_dataset_input(job.dataset, job.dataset_context)])
        for a in job.artifacts:
            if a.exists():
                client.log_artifact(rid, str(a))
        status = "FINISHED"
    finally:
        client.set_terminated(rid, status=status, end_time=job.end_ms)
    return rid


@contextlib.contextmanager
def _one_tracker_at_a_time(tracking_uri: str, out: str | os.PathLike):
    """Hold an exclusive lock (a file beside the SQLite store, else beside ``out``).

    Two tracking processes at once would both find a job missing and both log it (a duplicate),
    or both create a fresh store's tables (one fails); taking turns, the second finds every job
    already logged.
    """
    if tracking_uri.startswith("sqlite:///"):
        lock = Path(tracking_uri[len("sqlite:///") :] + ".lock")
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


def track_results(
    results: str | os.PathLike | None,
    *,
    tracking_uri: str,
    experiment: str,
    out: str | os.PathLike,
    report_paths: list[str] | None = None,
    metrics_files: list[str] | None = None,
    forget_score: str | os.PathLike | None = None,
    tune_records: list[str] | None = None,
) -> dict[str, Any]:
    """Log every job found under ``results`` (or given by ``metrics_files``) exactly once; with
    ``forget_score`` (the folder of the forget-score tables), each model's run also gets its
    per-image summary (:func:`pbu.track_plan.forget_score_metrics`); with ``tune_records``
    (development-class tuning records) and nothing else, only those."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    check_reachable(tracking_uri)
    from pbu.aggregate import find_metrics, parse_group

    files = [] if tune_records and not (results or metrics_files) else None
    files = find_metrics(results, metrics_files) if files is None else files
    jobs = plan_jobs(files, forget_score)
    for rec in map(Path, tune_records or []):
        jobs += plan_dev_tune_jobs(rec)
    if report_paths:
        keys = [parse_group(f.parent) for f in files]
        span = {
            k: ",".join(sorted({str(g[k]) for g in keys})) or "none"
            for k in ("dataset", "arch", "seed", "forget")
        }
        j = _Job(f"report/{experiment}", "report", span | {"rule": "report", "method": "all"})
        for rp in map(Path, report_paths):
            j.artifacts += sorted(p for p in rp.rglob("*") if p.is_file()) if rp.is_dir() else [rp]
        jobs.append(j)
    artifact_root = None
    if tracking_uri.startswith("sqlite:///"):
        artifact_root = Path(tracking_uri[len("sqlite:///") :]).parent / "artifacts"
    with _one_tracker_at_a_time(tracking_uri, out):
        return _log_jobs(jobs, tracking_uri, experiment, artifact_root, out)


def _log_jobs(
    jobs: list[_Job],
    tracking_uri: str,
    experiment: str,
    artifact_root: Path | None,
    out: str | os.PathLike,
) -> dict[str, Any]:
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
    try:
        client.set_experiment_tag(
            exp_id, "mlflow.note.content", describe_experiment(jobs, experiment, exp_id)
        )
        # MLflow 3 opens an experiment on its GenAI overview ("Traces 0") unless it is marked
        # as model training; with this tag its page is the runs table.
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as err:  # noqa: BLE001 - mlflow raises many kinds
        raise TrackingError(
            f"MLflow store {tracking_uri}: cannot describe the experiment "
            f"({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err
    ids: dict[str, str] = {}
    created = skipped = replaced = 0
    for job in jobs:
        digest = job.digest()
        old = existing.get(job.job)
        if old is None:  # logged under an earlier identity: replaced, never duplicated
            old = next((existing[f] for f in job.former_jobs if f in existing), None)
        parent_id = ids.get(job.parent) if job.parent else None
        if (
            old is not None
            and old.data.tags.get("pbu.digest") == digest
            and old.data.tags.get("mlflow.parentRunId") == parent_id
        ):
            ids[job.job] = old.info.run_id
            skipped += 1
            continue
        if old is not None:
            client.delete_run(old.info.run_id)
            replaced += 1
        ids[job.job] = _log_job(client, exp_id, job, parent_id, digest)
        created += 1
    summary = {
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "experiment_id": exp_id,
        "runs_table": runs_table(exp_id),
        "compare_views": compare_views(jobs, ids, exp_id),
        "runs": len(jobs),
        "created": created,
        "replaced": replaced,
        "unchanged": skipped,
        "run_ids": ids,
    }
    write_json(out, summary)
    log.info(
        "MLflow: %d runs (%d new, %d replaced, %d unchanged) in %s; runs table: <ui>/%s",
        len(jobs),
        created - replaced,
        replaced,
        skipped,
        experiment,
        runs_table(exp_id),
    )
    return summary
