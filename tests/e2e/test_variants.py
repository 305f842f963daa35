"""Config variants in the pipeline, end to end: one unlearn job, folder, row and MLflow run per
variant, the group's one Fisher shared, a tuned variant's overrides kept fixed, and a changed
override rerunning exactly that variant's job."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # runs snakemake

# Merged over config/config.yaml, whose variants (PBU's ablation) it selects two of; pbu_ascent
# is tuned blind (budget 2) over a space that leaves its overrides alone. The frozen
# development-class choice is off: these tests are about the config's values reaching the jobs.
CONFIG = """
experiment: variants-e2e
results: res
seeds: [0]
forget: [2]
methods: [pbu, pbu_no_fisher, pbu_ascent]
pretrain: {epochs: 1}
monitor: {methods: []}
evaluation: {relearn: false, probe: false, mia_max_samples: 100}
tuning:
  frozen: null
  enabled: true
  methods: [pbu_ascent]
  budget: 2
  space:
    pbu_ascent: {lr: [1.0e-4, 3.0e-4]}
mlflow: {tracking_uri: "sqlite:///res/mlflow/mlflow.db", experiment: pbu-variants-e2e}
"""


def _snakemake(wd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args, "--configfile", "v.yaml"],
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("variants")
    for item in ("Snakefile", "workflow", "config", "envs"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    (wd / "v.yaml").write_text(CONFIG)
    proc = _snakemake(wd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return wd


def _planned_jobs(wd: Path, override: str) -> dict[str, list[str]]:
    """Rule -> the outputs a dry run with ``override`` (YAML, merged last) plans."""
    (wd / "over.yaml").write_text(override)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--configfile",
            "v.yaml",
            "over.yaml",
        ],
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    jobs: dict[str, list[str]] = {}
    for rule, outputs in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    output: (.+)$", text, re.M):
        jobs.setdefault(rule, []).append(outputs)
    return jobs


def test_each_variant_is_its_own_job_with_the_merged_hparams(workdir):
    group = workdir / "res/mnist5k/small_cnn/seed0/forget2"
    pbu = json.loads((group / "pbu/info.json").read_text())
    nofisher = json.loads((group / "pbu_no_fisher/info.json").read_text())
    assert (pbu["method"], pbu["base_method"], pbu["overrides"]) == ("pbu", "pbu", {})
    assert nofisher["method"] == "pbu_no_fisher" and nofisher["base_method"] == "pbu"
    assert nofisher["overrides"] == {"beta": 0}
    assert nofisher["hparams"] == {**pbu["hparams"], "beta": 0}
    # the group's one Fisher file, shared: one fisher job, every PBU variant read its file
    assert (
        pbu["fisher"] == nofisher["fisher"] == str(group / "fisher.pt").replace(f"{workdir}/", "")
    )
    assert len(list((workdir / "res/logs").rglob("fisher.log"))) == 1
    # PBU's tricks still run in the variant: its blind stop ended it
    assert nofisher["info"]["stop_reason"].startswith("forget_acc reached")
    # every local job (through the fork server) ran with the workflow's allocator settings
    from pbu.forkserver import MALLOC_ENV

    for record in (pbu, nofisher):
        assert record["fork_server"], record["fork_server"]
        for name, value in MALLOC_ENV.items():
            assert record["malloc_env"].get(name) == os.environ.get(name, value), record


def test_a_tuned_variant_keeps_its_overrides(workdir):
    group = workdir / "res/mnist5k/small_cnn/seed0/forget2"
    rec = json.loads((group / "tune/pbu_ascent.json").read_text())
    assert len(rec["trials"]) == 2
    assert sorted(t["hparams"]["lr"] for t in rec["trials"]) == [1e-4, 3e-4]
    assert all(t["hparams"]["beta"] == 0 and t["hparams"]["gamma"] == 0 for t in rec["trials"])
    info = json.loads((group / "pbu_ascent/info.json").read_text())
    assert info["hparams"] == rec["chosen"]["hparams"] and info["base_method"] == "pbu"
    assert info["hparams_from"]["file"].endswith("tune/pbu_ascent.json")


def test_rows_and_runs_per_variant(workdir):
    res = workdir / "res"
    runs = {r["method"]: r for r in csv.DictReader(open(res / "aggregate/runs.csv"))}
    assert {"pbu", "pbu_no_fisher", "pbu_ascent"} <= set(runs)
    for m in ("pbu", "pbu_no_fisher", "pbu_ascent"):
        r = runs[m]
        assert r["base_method"] == "pbu"
        # PBU's timing rule for every variant: the Fisher, plus tuning where it chose
        parts = float(r["time_s"]) + float(r["fisher_time_s"]) + float(r["tune_time_s"] or 0)
        assert float(r["total_time_s"]) == pytest.approx(parts)
    assert runs["pbu_ascent"]["tune_time_s"] and not runs["pbu"].get("tune_time_s")
    summary = {r["method"]: r for r in csv.DictReader(open(res / "tables/method_summary.csv"))}
    assert summary["pbu_no_fisher"]["base method"] == "pbu"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{res}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("pbu-variants-e2e")
    unlearn = {
        r.data.tags["method"]: r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if r.data.tags["rule"] == "unlearn"
    }
    assert set(unlearn) == {"pbu", "pbu_no_fisher", "pbu_ascent"}
    assert unlearn["pbu_no_fisher"].data.tags["base_method"] == "pbu"
    assert json.loads(unlearn["pbu_no_fisher"].data.tags["overrides"]) == {"beta": 0}
    assert unlearn["pbu_no_fisher"].data.params["hparams.beta"] == "0"


def test_a_changed_override_reruns_exactly_that_variant(workdir):
    jobs = _planned_jobs(workdir, "variants:\n  pbu_no_fisher:\n    hparams: {alpha: 700}\n")
    assert [Path(o.split(", ")[0]).parent.name for o in jobs["unlearn"]] == ["pbu_no_fisher"]
    assert {"fisher", "tune", "pretrain", "oracle", "download"}.isdisjoint(jobs)
    assert {"evaluate", "aggregate"} <= set(jobs)  # and what reads its model
    # a base value reaches PBU and every variant (the tuned one through its tune job)
    jobs = _planned_jobs(workdir, "hparams:\n  pbu:\n    alpha: 700\n")
    assert sorted(Path(o.split(", ")[0]).parent.name for o in jobs["unlearn"]) == [
        "pbu",
        "pbu_ascent",
        "pbu_no_fisher",
    ]
    assert len(jobs["tune"]) == 1 and "fisher" not in jobs
