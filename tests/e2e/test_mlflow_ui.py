"""The MLflow UI in a real browser: after the tiny pipeline (.test/config.yaml), `mlflow server`
on 127.0.0.1 and Debian's headless chromium open the compare view of one forget class's runs.
Every method's run name and the shared metric names must be on the page, and no run's duration
may be shorter than the time its job measured (the runs carry the jobs' own start and end).

Needs Debian's `chromium` (`.ci/run` installs it); skipped, saying so, without it. Marked
`browser`; it runs the pipeline once (about a minute on 2 cores)."""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)",
    ),
]
# Metric names every model's run has and the compare view lists first (it renders a window of
# the alphabetical list, so later names such as time_s are not in the DOM).
SHARED_METRICS = [
    "acc_forget_test",
    "acc_retain_test",
    "anamnesis_index",
    "js_forget_test",
    "js_retain_test",
    "mia_entropy_svc",
    "mia_entropy_svc_bad_teaching",
]
UNITS_S = {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("ui")
    for item in ("Snakefile", "workflow", "config", "envs", ".test"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", ".test/config.yaml"],
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return wd / "results-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(finished_run, tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("server") / "mlflow.log", "w")
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{finished_run}/mlflow/mlflow.db",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )  # its own process group: stopped with all its workers
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"mlflow server exited: {log.name}"
            assert time.monotonic() < deadline, "mlflow server did not answer in 90 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _job_times(results: Path, group: Path) -> dict[str, float]:
    """time_s of each child run's job, read from the job records (not from MLflow)."""
    pre = json.loads((group.parent / "pretrain" / "info.json").read_text())
    times = {
        "original": pre["time_s"],
        "fisher": json.loads((group / "fisher.json").read_text())["time_s"],
    }
    for info in group.glob("*/info.json"):
        times[info.parent.name] = json.loads(info.read_text())["time_s"]
    return times


def _page_text(url: str, user_data: Path) -> list[str]:
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            # the compare page's tables render only the rows inside the window: a tall one
            # shows every metric
            "--window-size=1600,12000",
            f"--user-data-dir={user_data}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = re.sub(r"<script.*?</script>|<style.*?</style>", "", proc.stdout, flags=re.S)
    return [
        html.unescape(t.strip()) for t in re.sub(r"<[^>]+>", "\n", text).splitlines() if t.strip()
    ]


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)\s*(ms|s|min|h|d)", text)
    assert m, f"not a duration: {text!r}"
    return float(m.group(1)) * UNITS_S[m.group(2)]


def test_compare_view_shows_runs_metrics_and_job_durations(finished_run, server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{finished_run}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("pbu-e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(
        r
        for r in runs
        if r.data.tags.get("rule") == "evaluate" and r.data.tags.get("method") == "all"
    )
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    names = [r.info.run_name for r in children]
    assert {"original", "oracle", "fisher", "pbu", "finetune"} <= set(names)
    # the link tracked.json gives for this group (docs/pipeline.md, MLflow)
    tracked = json.loads((finished_run / "mlflow" / "tracked.json").read_text())
    view = tracked["compare_views"][parent.info.run_name]
    lines = _page_text(f"{server}/{view}", tmp_path / "chromium")

    assert f"Comparing {len(children)} Runs from 1 Experiment" in lines, lines[:60]
    shown_names = lines[lines.index("Run Name:") + 1 :][: len(children)]
    assert sorted(shown_names) == sorted(names)
    # every model of an evaluate group (the Fisher's run is no model) carries the metrics the
    # comparison is about
    models = [r for r in children if r.info.run_name != "fisher"]
    for metric in SHARED_METRICS:
        assert all(metric in r.data.metrics for r in models), metric
    # the metrics table lists the union of the runs' metrics in name order and renders the rows
    # that fit its scroll area: what the page holds is the start of that list, in that order
    logged = sorted(set().union(*(r.data.metrics for r in children)))
    table = lines[lines.index("Show diff only", lines.index("Metrics")) + 1 :]
    shown = list(itertools.takewhile(lambda t: t in logged, table))
    assert len(shown) >= 10 and shown == logged[: len(shown)], (shown, logged)
    assert set(SHARED_METRICS) & set(shown), shown
    durations = lines[lines.index("Duration:") + 1 :][: len(children)]
    group = finished_run / "mnist5k" / "small_cnn" / "seed0" / "forget2"
    times = _job_times(finished_run, group)
    for name, shown in zip(shown_names, durations):
        # the page rounds to 0.1 s; a logging-time run would show milliseconds
        assert _seconds(shown) + 0.05 >= times[name], (name, shown, times[name])


def _top_level(finished_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{finished_run}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("pbu-e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return exp, [r.info.run_name for r in runs if "mlflow.parentRunId" not in r.data.tags]


def test_the_readme_runs_table_url_lists_the_runs(finished_run, server, tmp_path):
    """The link the README, the experiment's description and `tracked.json` give opens the runs
    table under MLflow's model-training menu, with every top-level run (parents collapsed), not
    the GenAI overview a bare experiment link lands on in a new browser ("Traces 0")."""
    exp, names = _top_level(finished_run)
    tracked = json.loads((finished_run / "mlflow" / "tracked.json").read_text())
    assert tracked["runs_table"] == (
        f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    )
    lines = _page_text(f"{server}/{tracked['runs_table']}", tmp_path / "chromium")
    assert lines[0].startswith("Runs - Experiment"), lines[:40]
    assert "Model registry" in lines and "Observability" not in lines, lines[:40]
    missing = [n for n in names if n not in lines]
    assert not missing, f"runs not in the runs table: {missing}; page: {lines[:80]}"
    assert not [t for t in lines if t.startswith("No data available")], lines[:80]
