"""End to end: the real snakemake on the tiny .test config, in a copy of the repository."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _snakemake(wd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "--configfile",
            ".test/config.yaml",
            *args,
        ],
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wf")
    for item in ("Snakefile", "workflow", "config", "envs", ".test"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    proc = _snakemake(wd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return wd


def _runs(wd: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{wd}/results-test/mlflow/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pbu-e2e")
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_tables_figures_report(workdir):
    res = workdir / "results-test"
    rows = list(csv.DictReader(open(res / "tables/paper_table.csv")))
    assert len(rows) == 1 and rows[0]["forget"] == "2"
    long = list(csv.DictReader(open(res / "tables/paper_table_long.csv")))
    methods = {r["method"] for r in long}
    assert {"original", "oracle", "pbu", "finetune"} <= methods
    for name in (
        "accuracy_per_class",
        "time_per_epoch",
        "pbu_trajectory",
        "mia_vs_oracle",
        "retain_gap_to_oracle",
    ):
        for ext in ("png", "pdf"):
            assert (res / f"figures/{name}.{ext}").stat().st_size > 1000, name
    report = (res / "report.md").read_text()
    assert "The setting differs" in report and "PBU" in report
    # a verdict line per claim (one seed: every claim preliminary, but every claim is listed)
    claims = report.split("## Claims")[1].split("\n## ")[0]
    verdict = r"\*\*(holds|does not hold|inconclusive|preliminary) on mnist5k / small_cnn\*\*"
    lines = re.finditer(rf"^- \*\*(C\d)\*\* .*?: {verdict}", claims, flags=re.M)
    assert [m.group(1) for m in lines] == [f"C{i}" for i in range(1, 8)], claims
    # the entropy SVC cannot tell held-out members from non-members here: C4 does not rest on it
    c4 = re.search(r"^- \*\*C4\*\* .*$", claims, flags=re.M).group(0)
    assert (
        "**inconclusive on mnist5k / small_cnn** (attack at chance)" in c4
        and "held-out balanced accuracy" in c4
    ), c4
    assert "config/forgetting.yaml" in report  # where the forget score comes from
    assert (res / "tables/claims.csv").is_file() and (
        res / "tables/claims_comparisons.csv"
    ).is_file()
    runs = list(csv.DictReader(open(res / "aggregate/runs.csv")))
    pbu = next(r for r in runs if r["method"] == "pbu")
    original = next(r for r in runs if r["method"] == "original")
    before, after = float(original["acc_forget_test"]), float(pbu["acc_forget_test"])
    # A PBU that did nothing would keep the original's accuracy on the forgotten class.
    assert before >= 80 and after <= 15, (
        f"PBU's forget-test accuracy is {after:.1f} % (original {before:.1f} %): the pipeline's "
        f"PBU did not forget class 2"
    )
    assert pbu["stop_reason"].startswith("forget_acc reached") and int(pbu["stop_step"]) >= 1, (
        f"PBU's blind stopping rule did not end the run ({pbu['stop_reason']!r})"
    )
    assert float(pbu["acc_retain_test"]) >= float(original["acc_retain_test"]) - 15, (
        "PBU lost the retained classes"
    )
    assert float(pbu["time_s"]) > 0 and pbu["data_access"] == "forget"
    # per-step trajectory with the three loss terms and the stop marker
    hist = [r for r in csv.DictReader(open(res / "aggregate/history.csv")) if r["method"] == "pbu"]
    assert hist and {"term_forget", "term_fisher", "term_l2", "acc_retain_test"} <= set(hist[0])
    assert sum(float(r["stopped"] or 0) for r in hist) == 1


def test_local_jobs_ran_in_the_fork_server_and_it_stopped(workdir):
    log = (workdir / "results-test/logs/pbu-server.log").read_text()
    served = re.findall(r"worker \d+: pbu (\w+)", log)
    # every compute job of the tiny config: download, pretrain, oracle, fisher, 2 methods, evaluate
    for cmd, n in (("pretrain", 1), ("oracle", 1), ("fisher", 1), ("unlearn", 2), ("evaluate", 1)):
        assert served.count(cmd) >= n, (cmd, served)
    socket_path = re.search(r"listening on (\S+)", log).group(1)
    assert not Path(socket_path).exists(), "onsuccess must stop the server"


def test_mlflow_one_run_per_job_with_tags(workdir):
    runs = _runs(workdir)
    by_rule: dict[str, int] = {}
    for r in runs:
        t = r.data.tags
        for key in ("dataset", "arch", "seed", "method", "rule"):
            assert key in t, (key, t)
        by_rule[t["rule"]] = by_rule.get(t["rule"], 0) + 1
    # pretrain 1, oracle 1, fisher 1, unlearn 2 (pbu, finetune), evaluate 2 (group + original),
    # report 1
    assert by_rule == {
        "pretrain": 1,
        "oracle": 1,
        "fisher": 1,
        "unlearn": 2,
        "evaluate": 2,
        "report": 1,
    }
    pbu = next(
        r for r in runs if r.data.tags.get("method") == "pbu" and r.data.tags["rule"] == "unlearn"
    )
    assert "acc_forget_test" in pbu.data.metrics and "params" not in pbu.data.metrics
    assert pbu.data.params["hparams.alpha"] == "631"
    assert pbu.data.tags["mlflow.parentRunId"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results-test/mlflow/mlflow.db")
    steps = client.get_metric_history(pbu.info.run_id, "trajectory/term_forget")
    assert len(steps) >= 1 and steps[0].step >= 1


def test_second_invocation_has_nothing_to_do(workdir):
    proc = _snakemake(workdir, "-n")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_retracking_never_duplicates(workdir):
    n = len(_runs(workdir))
    proc = _snakemake(workdir, "--forcerun", "track")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(_runs(workdir)) == n
    summary = json.loads((workdir / "results-test/mlflow/tracked.json").read_text())
    assert summary["created"] == 0 and summary["unchanged"] == summary["runs"]


def test_one_hyperparameter_reruns_exactly_its_dependents(workdir):
    over = workdir / "over.yaml"
    over.write_text("hparams:\n  finetune:\n    lr: 0.05\n")  # default: 0.03
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--configfile",
            ".test/config.yaml",
            str(over),
            "--quiet",
            "rules",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out.split("Job stats:")[-1], re.M))
    assert counts.get("unlearn") == "1"  # only finetune's job, not pbu's
    for rule in ("pretrain", "oracle", "fisher", "download"):
        assert rule not in counts
