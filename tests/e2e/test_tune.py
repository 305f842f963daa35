"""Tuning in the pipeline, end to end: per-group tune jobs and the unlearn jobs that use their
choice; the development-class run, its frozen choice and a verdict run that loads it; the tune
and trial runs in MLflow."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------
# The pipeline, end to end
# ------------------------------------------------------------------------------------------

E2E = """
experiment: tune-e2e
results: res
seeds: [0]
forget: [2]
methods: [neggrad, neggrad_plus]
pretrain: {epochs: 1}
monitor: {methods: []}
evaluation: {relearn: false, probe: false, mia_max_samples: 100}
tuning:
  frozen: null
  enabled: true
  methods: [neggrad, neggrad_plus]
  budget: 2
  space:
    neggrad: {lr: [1.0e-3, 3.0e-3]}
    neggrad_plus: {alpha: [0.9, 0.98]}
mlflow: {tracking_uri: "sqlite:///res/mlflow/mlflow.db", experiment: pbu-tune-e2e}
"""


@pytest.mark.slow
def test_pipeline_tunes_uses_the_choice_and_tracks_it(tmp_path):
    for item in ("Snakefile", "workflow", "config", "envs"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    (tmp_path / "tune.yaml").write_text(E2E)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "res/mlflow/tracked.json",
        "--cores",
        "2",
        "--configfile",
        "tune.yaml",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    group = tmp_path / "res/mnist5k/small_cnn/seed0/forget2"
    for m in ("neggrad", "neggrad_plus"):
        rec = json.loads((group / "tune" / f"{m}.json").read_text())
        assert len(rec["trials"]) == 2 and rec["budget"] == 2 and rec["forget"] == 2
        info = json.loads((group / m / "info.json").read_text())
        assert info["hparams"] == rec["chosen"]["hparams"]
        assert info["hparams_from"]["file"].endswith(f"tune/{m}.json")
    assert (tmp_path / "res/logs/mnist5k/small_cnn/seed0/forget2/tune/neggrad.log").exists()
    assert (tmp_path / "res/benchmarks/mnist5k/small_cnn/seed0/forget2/tune/neggrad.tsv").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/res/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("pbu-tune-e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    tune = {r.data.tags["method"]: r for r in runs if r.data.tags["rule"] == "tune"}
    assert set(tune) == {"neggrad", "neggrad_plus"}
    for m, run in tune.items():
        assert run.data.tags["forget"] == "2" and run.data.tags["seed"] == "0"
        assert run.data.params["budget"] == "2"
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        assert len(trials) == 2 and {r.data.tags["rule"] for r in trials} == {"tune_trial"}
        rec = json.loads((group / "tune" / f"{m}.json").read_text())
        for r in trials:
            t = rec["trials"][int(r.data.tags["trial"])]
            assert math.isclose(r.data.metrics["score"], t["score"])
            assert r.data.params["hparams.lr"] == str(t["hparams"]["lr"])
    n = len(runs)
    again = subprocess.run(
        cmd + ["--forcerun", "track"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == n


# ------------------------------------------------------------------------------------------
# The validation protocol, end to end
# ------------------------------------------------------------------------------------------

E2E_VALIDATION = """
experiment: validation-e2e
results: res
seeds: [0]
forget: [2]
methods: [pbu, finetune, neggrad]
pretrain: {epochs: 1}
monitor: {methods: []}
evaluation: {relearn: false, probe: false, mia_max_samples: 100}
tuning:
  frozen: null
  enabled: true
  protocol: validation
  methods: [pbu, finetune]
  budget: 2
  space:
    pbu: {lr: [1.0e-4, 3.0e-4], stop_threshold: [5.0]}
    finetune: {lr: [0.003, 0.03], epochs: [2]}
mlflow: {tracking_uri: "sqlite:///res/mlflow/mlflow.db", experiment: pbu-validation-e2e}
"""


@pytest.mark.slow
def test_validation_protocol_in_the_pipeline(tmp_path):
    """Two methods tuned under validation (one that never sees the forget class), one from the
    config: the tune records, every unlearn job and the Fisher hold out the same split; every
    row of runs.csv, the main table and MLflow says its protocol."""
    import csv

    for item in ("Snakefile", "workflow", "config", "envs"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    (tmp_path / "v.yaml").write_text(E2E_VALIDATION)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "v.yaml"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    group = tmp_path / "res/mnist5k/small_cnn/seed0/forget2"
    digests = set()
    for m in ("pbu", "finetune"):
        rec = json.loads((group / "tune" / f"{m}.json").read_text())
        assert rec["protocol"] == "validation" and rec["rule"]["forgetting_checked"] is True
        assert rec["rule"]["objective"] == "acc_retain_val" and len(rec["trials"]) == 2
        assert all("acc_forget_val" in t["metrics"] for t in rec["trials"])  # finetune too
        hold = rec["holdout"]
        assert hold["fraction"] == 0.2 and hold["forget_val"] > 0 and hold["retain_val"] > 0
        info = json.loads((group / m / "info.json").read_text())
        assert info["protocol"] == "validation" and info["hparams"] == rec["chosen"]["hparams"]
        assert info["holdout"] == hold
        digests.add(hold["digest"])
    neggrad = json.loads((group / "neggrad" / "info.json").read_text())
    assert neggrad["protocol"] == "config" and neggrad["hparams_from"] is None
    digests.add(neggrad["holdout"]["digest"])
    digests.add(json.loads((group / "fisher.json").read_text())["holdout"]["digest"])
    assert len(digests) == 1  # one split for every job of the seed
    with open(tmp_path / "res/aggregate/runs.csv") as fh:
        rows = {r["method"]: r["protocol"] for r in csv.DictReader(fh)}
    assert rows == {
        "original": "config",
        "oracle": "config",
        "pbu": "validation",
        "finetune": "validation",
        "neggrad": "config",
    }
    main = (tmp_path / "res/tables/main_table.csv").read_text().splitlines()
    assert "protocol" in main[0].split(",")
    report = (tmp_path / "res/report.md").read_text()
    assert re.search(r"\|\s*finetune\s*\|[^|]*\|\s*validation\s*\|", report)
    assert re.search(r"\|\s*neggrad\s*\|[^|]*\|\s*config\s*\|", report)
    assert re.search(r"\|\s*tuning\.protocol\s*\|\s*validation\s*\|", report)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/res/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("pbu-validation-e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    unlearn = {r.data.tags["method"]: r for r in runs if r.data.tags["rule"] == "unlearn"}
    assert {m: r.data.tags["protocol"] for m, r in unlearn.items()} == {
        "pbu": "validation",
        "finetune": "validation",
        "neggrad": "config",
    }
    tune = [r for r in runs if r.data.tags["rule"] == "tune"]
    assert len(tune) == 2 and {r.data.params["protocol"] for r in tune} == {"validation"}


# ------------------------------------------------------------------------------------------
# The development-class protocol, end to end
# ------------------------------------------------------------------------------------------

E2E_DEV = """
experiment: dev-e2e
results: res_tune
seeds: [100]
forget: [0]
methods: [pbu, neggrad, pbu_no_fisher]
pretrain: {epochs: 1}
tuning: {develop: true, budget: 2, frozen: "tuned/{dataset}_{arch}.yaml"}
mlflow: {tracking_uri: "sqlite:///res_tune/mlflow/mlflow.db", experiment: pbu-dev-e2e}
"""
E2E_VERDICT = """
experiment: verdict-e2e
results: res
seeds: [0]
forget: [2]
methods: [pbu, neggrad, finetune, pbu_no_fisher, pbu_stop2]
variants: {pbu_stop2: {method: pbu, hparams: {stop_threshold: 2.0}}}
pretrain: {epochs: 1}
monitor: {methods: []}
evaluation: {relearn: false, probe: false, mia_max_samples: 100}
tuning: {frozen: "tuned/{dataset}_{arch}.yaml"}
mlflow: {tracking_uri: "sqlite:///res/mlflow/mlflow.db", experiment: pbu-verdict-e2e}
"""


@pytest.mark.slow
def test_development_class_run_freezes_a_choice_that_a_verdict_run_loads(tmp_path):
    """The development-class run trains its models without the split, tunes every method with
    the same budget, writes the frozen file and tracks every trial; a verdict run then loads it:
    its unlearn jobs say protocol dev_class and where the values came from, a variant absent
    from the file takes PBU's choice with its own override, untuned methods say config."""
    import csv

    import yaml

    for item in ("Snakefile", "workflow", "config", "envs"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    (tmp_path / "dev.yaml").write_text(E2E_DEV)
    (tmp_path / "verdict.yaml").write_text(E2E_VERDICT)
    snake = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile"]
    proc = subprocess.run(
        [*snake, "dev.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    frozen = yaml.safe_load((tmp_path / "tuned/mnist5k_small_cnn.yaml").read_text())
    assert set(frozen["methods"]) == {"pbu", "neggrad", "pbu_no_fisher"}
    assert {m["trials"] for m in frozen["methods"].values()} == {2}
    assert frozen["provenance"]["forget_class"] == 0 and frozen["provenance"]["seeds"] == [100]
    assert "beta" not in frozen["methods"]["pbu_no_fisher"]["hparams"]
    info = json.loads(
        (tmp_path / "res_tune/mnist5k/small_cnn/seed100/pretrain/info.json").read_text()
    )
    assert info["holdout"]["fraction"] == 0.2 and info["train_samples"] == info["holdout"]["fit"]
    assert (tmp_path / "res_tune/optuna/mnist5k/small_cnn/pbu.db").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/res_tune/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("pbu-dev-e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    tune = {r.data.tags["method"]: r for r in runs if r.data.tags["rule"] == "tune"}
    assert set(tune) == {"pbu", "neggrad", "pbu_no_fisher"}
    for run in tune.values():
        kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        assert len(kids) == 2 and {"RA", "FA", "VA", "MIA", "loss"} <= set(kids[0].data.metrics)

    proc = subprocess.run(
        [*snake, "verdict.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    group = tmp_path / "res/mnist5k/small_cnn/seed0/forget2"
    pbu = json.loads((group / "pbu" / "info.json").read_text())
    assert pbu["protocol"] == "dev_class" and pbu["hparams_source"]["forget_class"] == 0
    for k, v in frozen["methods"]["pbu"]["hparams"].items():
        assert pbu["hparams"][k] == v
    stop2 = json.loads((group / "pbu_stop2" / "info.json").read_text())
    assert stop2["hparams"]["stop_threshold"] == 2.0
    assert stop2["hparams"]["alpha"] == pbu["hparams"]["alpha"]
    assert stop2["hparams_source"]["choice_of"] == "pbu"
    with open(tmp_path / "res/aggregate/runs.csv") as fh:
        rows = {r["method"]: r["protocol"] for r in csv.DictReader(fh)}
    assert rows == {
        "original": "config",
        "oracle": "config",
        "pbu": "dev_class",
        "neggrad": "dev_class",
        "pbu_no_fisher": "dev_class",
        "pbu_stop2": "dev_class",
        "finetune": "config",
    }
    report = (tmp_path / "res/report.md").read_text()
    assert "PBU's hyperparameters: dev_class protocol" in report
    assert "**preliminary on mnist5k / small_cnn** (1 seed cannot reach p < 0.05)" in report
