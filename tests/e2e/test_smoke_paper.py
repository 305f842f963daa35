"""Every paper config through the real pipeline, on the CPU, with the smoke overlay.

``snakemake --configfile config/paper/<name>.yaml config/smoke.yaml`` runs the config's whole
DAG (stand-in "download", pretrain, oracle, Fisher, every configured method, evaluate,
aggregate, report, MLflow) with its architectures, channels and class count, on a few generated
images per class. One test per config; each asserts the report, the metrics of every model and
the MLflow runs (read straight from the SQLite store), and cleans up (ConvNeXt-L checkpoints
are ~0.8 GB each).

About 15 minutes on 2 cores for all of them, so they run only with ``PBU_SMOKE=1`` (``.ci/run``
sets it): ``PBU_SMOKE=1 python -m pytest -m smoke``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import update_config

from pbu.registry import STEM_ARCHS, get_spec

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(p.stem for p in (ROOT / "config" / "paper").glob("*.yaml"))

SMOKE = os.environ.get("PBU_SMOKE") == "1"
# What the smoke set leaves out to stay within ~15 minutes of CI on 2 cores. ConvNeXt-L (198M
# parameters) costs more on a CPU than every other arch together: it runs end to end in
# food101_convnext (101 classes, 3 channels) and mnist (1 channel, 10 classes); in cifar100
# (100 classes, 3 channels: the same path as food101_convnext at the smoke's 16 px) its jobs
# are planned (a dry run checks them) but not run, which saves ~8 of ~25 CPU-minutes.
CUT = {"cifar100": ["convnext_large"]}


def _merged(*files: Path) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for f in files:
        update_config(config, yaml.safe_load(f.read_text()))
    return config


@pytest.fixture
def workdir(tmp_path):
    """A copy of the workflow; removed afterwards whatever happened (checkpoints are large)."""
    wd = tmp_path / "wf"
    wd.mkdir()
    for item in ("Snakefile", "workflow", "config", "envs", "profiles"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    yield wd
    shutil.rmtree(wd, ignore_errors=True)


def _mlflow_runs(db: Path, experiment: str) -> list[dict[str, str]]:
    """Every finished run of ``experiment`` as its tags, straight from MLflow's SQLite schema."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT r.run_uuid, r.status, t.key, t.value FROM runs r "
            "JOIN experiments e ON r.experiment_id = e.experiment_id "
            "LEFT JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE e.name = ? AND r.lifecycle_stage = 'active'",
            (experiment,),
        ).fetchall()
        metrics = dict(
            con.execute(
                "SELECT m.run_uuid, COUNT(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
                "GROUP BY m.run_uuid"
            ).fetchall()
        )
    finally:
        con.close()
    runs: dict[str, dict[str, str]] = {}
    for run_id, status, key, value in rows:
        run = runs.setdefault(run_id, {"_status": status, "_metrics": metrics.get(run_id, 0)})
        if key is not None:
            run[key] = value
    return list(runs.values())


@pytest.mark.smoke
@pytest.mark.slow
@pytest.mark.skipif(
    not SMOKE,
    reason="the smoke set runs every paper config end to end (~15 "
    "min on 2 cores): PBU_SMOKE=1 pytest -m smoke (.ci/run)",
)
@pytest.mark.parametrize("name", NAMES)
def test_paper_config_runs_end_to_end_on_stand_in_data(name, workdir):
    paper = workdir / "config" / "paper" / f"{name}.yaml"
    smoke = workdir / "config" / "smoke.yaml"
    first_class = _merged(paper)["forget"]
    first_class = 0 if first_class == "all" else first_class[0]  # the paper's, not smoke's 1
    res = workdir / "res"
    override = workdir / "here.yaml"
    here = {
        "results": str(res),
        "forget": [first_class],
        "mlflow": {"tracking_uri": f"sqlite:///{res}/mlflow/mlflow.db"},
    }
    override.write_text(yaml.safe_dump(here))
    if name in CUT:  # plan every arch, run the others
        plan = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "-n",
                "--configfile",
                str(paper),
                str(smoke),
                str(override),
            ],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert plan.returncode == 0, plan.stderr[-3000:]
        for arch in CUT[name]:  # pretrain, oracle, Fisher, 4 methods, evaluate
            planned = (plan.stdout + plan.stderr).count(f"arch={arch},")
            assert planned == 3 + len(_merged(paper)["methods"]) + 1, (arch, planned)
        here["archs"] = [a for a in _merged(paper)["archs"] if a not in CUT[name]]
        override.write_text(yaml.safe_dump(here))
    config = _merged(paper, smoke, override)
    spec = get_spec(config["dataset"])
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "--configfile",
            str(paper),
            str(smoke),
            str(override),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - t0
    logs = "".join(
        f"\n--- {p.relative_to(res)}\n{p.read_text()[-1500:]}"
        for p in sorted(res.glob("logs/**/*.log"))
        if "rror" in p.read_text()
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    # the jobs' own CPU seconds (each job records them; the machine may be shared), per arch
    cpu: dict[str, dict[str, float]] = {}
    for p in (res / spec.name).rglob("*.json"):
        if p.name in ("info.json", "fisher.json", "metrics.json"):
            rel = p.relative_to(res / spec.name).parts  # arch/seed0/[forget1/]<job>/info.json
            job = {"info.json": rel[-2], "fisher.json": "fisher", "metrics.json": "evaluate"}
            cpu.setdefault(rel[0], {})[job[p.name]] = json.loads(p.read_text()).get("cpu_s", 0)
    total = sum(sum(v.values()) for v in cpu.values())
    print(
        f"\nsmoke {name}: {wall:.0f} s wall, {total:.0f} s job CPU, "
        f"{len(config['archs'])} arch(s), {spec.num_classes} classes; load average "
        f"{load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    for arch, jobs in cpu.items():
        print(f"  {arch}: " + ", ".join(f"{j} {s:.0f}" for j, s in sorted(jobs.items())))

    # the data: stand-in, of the paper dataset's channels and class count, nothing downloaded
    from pbu.data import StandInImages, load_prepared

    train, test = load_prepared(res / "data" / f"{spec.name}.pt")
    assert isinstance(train, StandInImages) and isinstance(test, StandInImages)
    assert train.spec.num_classes == spec.num_classes and train.spec.channels == spec.channels
    assert train.spec.image_size == min(spec.image_size, 16)
    per_class = [config["data"]["max_train_per_class"]] * spec.num_classes
    per_class[first_class] = max(per_class[first_class], config["data"]["min_forget_per_class"])
    assert torch.bincount(train.labels).tolist() == per_class
    assert torch.bincount(test.labels)[first_class] >= 5  # the loss attack's 5 folds
    assert not (workdir / "data").exists()

    models = ["original", "oracle", *config["methods"]]
    runs = list(csv.DictReader(open(res / "aggregate" / "runs.csv")))
    for arch in config["archs"]:
        group = res / spec.name / arch / "seed0" / f"forget{first_class}"
        # every model of the group was trained, unlearned and scored
        info = json.loads((res / spec.name / arch / "seed0" / "pretrain" / "info.json").read_text())
        assert info["arch"] == arch and info["train_samples"] == sum(per_class)
        ck = torch.load(
            res / spec.name / arch / "seed0" / "pretrain" / "model.pt", weights_only=True, mmap=True
        )  # mmap: ConvNeXt-L's is 0.8 GB
        expected = {
            "num_classes": spec.num_classes,
            "in_channels": spec.channels,
            "image_size": min(spec.image_size, 16),
        }
        if arch in STEM_ARCHS:  # the overlay's stem, not the paper config's
            expected["stem"] = "cifar"
        assert ck["model_args"] == expected
        head = [v for v in ck["state_dict"].values() if v.dim() >= 2][-1]  # Linear or 1x1 conv
        assert head.shape[0] == spec.num_classes
        del ck
        if "pbu" in config["methods"]:
            assert (group / "fisher.pt").stat().st_size > 0
        metrics = json.loads((group / "metrics.json").read_text())["metrics"]
        assert set(models) <= set(metrics), (arch, sorted(metrics))
        for m in models:
            for key in ("acc_forget_test", "acc_retain_test"):
                assert 0.0 <= metrics[m][key] <= 100.0, (arch, m, key)
        rows = {r["method"] for r in runs if r["arch"] == arch and r["dataset"] == spec.name}
        assert set(models) <= rows, (arch, rows)
    report = (res / "report.md").read_text()
    assert len(report) > 500 and all(arch in report for arch in config["archs"])
    assert "stand_in" in report  # the report says its numbers are stand-in data's
    assert (res / "mlflow" / "tracked_report.json").exists()

    # MLflow: one finished run per job, tagged with its identity, in the run's own store
    tracked = _mlflow_runs(res / "mlflow" / "mlflow.db", config["mlflow"]["experiment"])
    assert tracked and all(r["_status"] == "FINISHED" for r in tracked)
    for arch in config["archs"]:
        mine = [r for r in tracked if r.get("arch") == arch]
        rules = {r.get("rule") for r in mine}
        assert {"pretrain", "oracle", "unlearn", "evaluate"} <= rules, (arch, rules)
        unlearned = {r.get("method") for r in mine if r.get("rule") == "unlearn"}
        assert unlearned == set(config["methods"]), (arch, unlearned)
        if "pbu" in config["methods"]:
            assert "fisher" in rules
        assert all(r["_metrics"] > 0 for r in mine if r.get("rule") == "unlearn")
    assert any(r.get("rule") == "report" for r in tracked)
