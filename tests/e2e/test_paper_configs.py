"""The paper's experiments as configs (config/paper/*.yaml).

Each config is an override merged over config/config.yaml (as `snakemake --configfile` merges
it). The tests check that every one validates, that together they cover every row of the paper's
results table, that they carry the paper's PBU settings, and that a dry run plans exactly the jobs
the config implies, counted here rule by rule from the config alone.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from pbu.config import check_config
from pbu.registry import get_spec

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PAPER = REPO / "config" / "paper"
CONFIGS = sorted(PAPER.glob("*.yaml"))
NAMES = [p.stem for p in CONFIGS]
FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
GPU_CONFIGS = [n for n in NAMES if n != "fashion_mnist"]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def merged(name: str) -> dict:
    """The default config with config/paper/<name>.yaml merged over it, as snakemake does."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((PAPER / f"{name}.yaml").read_text()))
    return config


def test_the_expected_configs_exist():
    assert set(NAMES) == {"mnist", "mnist_allcnn", "cifar10", "cifar10_allcnn", "cifar100",
                          "food101", "food101_convnext", "fashion_mnist"}


@pytest.mark.parametrize("name", NAMES)
def test_paper_config_validates(name):
    config = check_config(merged(name), SCHEMA, check_results=False)
    assert len(config["seeds"]) == 3
    assert config["results"] == f"results/paper/{name}"  # each config: its own report and tables
    assert config["mlflow"]["tracking_uri"] == f"sqlite:///results/paper/{name}/mlflow/mlflow.db"


def test_paper_configs_cover_every_row_of_the_paper_table():
    planned = set()
    for name in NAMES:
        config = merged(name)
        forget = config["forget"]
        if forget == "all":
            forget = range(get_spec(config["dataset"]).num_classes)
        planned |= {(config["dataset"], a, c) for a in config["archs"] for c in forget}
    with open(PAPER / "reference.csv", newline="") as f:
        rows = {(r["dataset_key"], r["arch_key"], int(r["forget"])) for r in csv.DictReader(f)}
    assert rows, "reference.csv has no rows"
    assert rows - planned == set()


@pytest.mark.parametrize("name", NAMES)
def test_paper_config_uses_the_authors_pbu_settings(name):
    pbu = merged(name)["hparams"]["pbu"]
    assert pbu["alpha"] in (631, 721) and pbu["beta"] in (90, 100) and pbu["gamma"] == 4001
    assert (pbu["lr"], pbu["batch_size"], pbu["epochs"], pbu["bn_mode"]) == (1e-4, 64, 5, "train")
    # our blind stopping rule: forget-TRAIN accuracy only
    assert (pbu["stop_rule"], pbu["stop_threshold"], pbu["check_every"]) == ("forget_acc", 5.0, 1)


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_paper_config_requests_a_gpu_per_compute_job(name):
    config = merged(name)
    assert config["device"] == "auto"
    for rule in ("pretrain", "fisher", "unlearn", "evaluate"):
        res = config["resources"][rule]
        assert res["gpu"] == 1 and res["mem_mb"] >= 4000 and res["runtime"] >= 30, rule
    torchvision = {"resnet18", "resnet34", "resnet50", "densenet121", "convnext_large"}
    expected_weights = "imagenet" if set(config["archs"]) <= torchvision else "none"
    assert config["model"]["weights"] == expected_weights
    augmented = config["dataset"] in ("cifar10", "cifar100", "food101")
    assert config["pretrain"]["augment"] == augmented


def test_fashion_mnist_config_runs_on_cpu_from_the_debian_files():
    config = merged("fashion_mnist")
    assert config["dataset"] == "fashion_mnist" and config["archs"] == ["small_cnn"]
    assert config["data"]["source"] == str(FASHION_SOURCE) and config["data"]["download"] is False
    assert config["device"] == "cpu"
    assert all(config["resources"][r]["gpu"] == 0 for r in config["resources"])


# ---------------------------------------------------------------------------------------------
# Dry runs: the job count each config implies
# ---------------------------------------------------------------------------------------------


def expected_jobs(config: dict) -> dict[str, int]:
    """Jobs per rule, counted from the config alone (not from the workflow's helpers)."""
    forget = config["forget"]
    n_forget = get_spec(config["dataset"]).num_classes if forget == "all" else len(forget)
    archs, seeds = len(config["archs"]), len(config["seeds"])
    groups = archs * seeds * n_forget  # one (arch, seed, forget class) group each
    jobs = {
        "download": 1,
        "pretrain": archs * seeds,
        "oracle": groups,
        "unlearn": groups * len(config["methods"]),
        "evaluate": groups,
        "aggregate": 1, "track": 1, "report": 1, "track_report": 1, "all": 1,
    }
    if "pbu" in config["methods"]:  # PBU is the only method that reads the Fisher
        jobs["fisher"] = groups
    if config["model"]["weights"] == "imagenet":
        jobs["weights"] = archs
    return jobs


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of `snakemake -n --quiet rules`, as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines():
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if m:
            counts[m[1]] = int(m[2])
        if m and m[1] == "total":
            break
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_paper_config_dry_run_plans_the_expected_jobs(name, tmp_path):
    results = tmp_path / "results"
    override = tmp_path / "override.yaml"  # a second --configfile: results outside the repo
    override.write_text(yaml.safe_dump({
        "results": str(results),
        "mlflow": {"tracking_uri": f"sqlite:///{results}/mlflow/mlflow.db"},
    }))
    proc = subprocess.run(
        [str(SNAKEMAKE), "-n", "--quiet", "rules", "--cores", "1",
         "--configfile", f"config/paper/{name}.yaml", str(override)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = planned_jobs(proc.stdout + proc.stderr)
    expected = expected_jobs(merged(name))
    assert planned.pop("total") == sum(expected.values())
    assert planned == expected
    # a dry run executes nothing: no dataset was prepared, no model trained
    assert not (results / "data").exists() and not any(results.rglob("*.pt"))
