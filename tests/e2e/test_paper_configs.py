"""The paper's experiments as configs (config/paper/*.yaml).

Each config is an override merged over config/config.yaml (as `snakemake --configfile` merges
it). The tests check that every one validates, that together they cover every row of the paper's
results table, that they carry the paper's PBU settings, and that a dry run plans exactly the jobs
the config implies, counted here rule by rule from the config alone.
"""

from __future__ import annotations

import csv
import math
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
CPU_CONFIGS = ("fashion_mnist", "mnist5k_resnet18")  # offline, sized for a 2-core CPU
GPU_CONFIGS = [n for n in NAMES if n not in CPU_CONFIGS]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def merged(name: str) -> dict:
    """The default config with config/paper/<name>.yaml merged over it, as snakemake does."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((PAPER / f"{name}.yaml").read_text()))
    return config


def test_the_expected_configs_exist():
    assert set(NAMES) == {
        "mnist",
        "mnist_allcnn",
        "cifar10",
        "cifar10_allcnn",
        "cifar100",
        "food101",
        "food101_convnext",
        "fashion_mnist",
        "mnist5k_resnet18",
    }


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


# Training images per class (the forget set PBU iterates), from each dataset's documentation:
# MNIST's counts per digit, Fashion-MNIST 6,000, CIFAR-10 5,000, CIFAR-100 500, Food-101 750,
# mnist5k 400 (its fixed split).
MNIST_TRAIN = {
    0: 5923,
    1: 6742,
    2: 5958,
    3: 6131,
    4: 5842,
    5: 5421,
    6: 5918,
    7: 6265,
    8: 5851,
    9: 5949,
}
TRAIN_PER_CLASS = {
    "mnist": MNIST_TRAIN.__getitem__,
    "mnist5k": lambda c: 400,
    "fashion_mnist": lambda c: 6000,
    "cifar10": lambda c: 5000,
    "cifar100": lambda c: 500,
    "food101": lambda c: 750,
}
AUTHORS_STEPS = 5 * 94  # the notebook: 5 epochs of ceil(5,958 / 64) = 94 batches (MNIST class 2)


def _authors_pbu_settings(config: dict) -> None:
    pbu = config["hparams"]["pbu"]
    assert pbu["alpha"] in (631, 721) and pbu["beta"] in (90, 100) and pbu["gamma"] == 4001
    assert (pbu["lr"], pbu["batch_size"], pbu["bn_mode"]) == (1e-4, 64, "train")
    assert pbu["fisher_scale"] == "none"  # the authors' loss: F as computed
    # The epoch cap keeps the authors' step budget: ceil(470 / forget batches per epoch), the
    # batches of the largest forget class; every forget class then gets 455-500 steps at most.
    forget = config["forget"]
    forget = range(get_spec(config["dataset"]).num_classes) if forget == "all" else forget
    batches = [math.ceil(TRAIN_PER_CLASS[config["dataset"]](c) / pbu["batch_size"]) for c in forget]
    assert pbu["epochs"] == math.ceil(AUTHORS_STEPS / max(batches)), (pbu["epochs"], batches)
    assert all(455 <= pbu["epochs"] * b <= 500 for b in batches), (pbu["epochs"], batches)
    # our blind stopping rule: forget-TRAIN accuracy only
    assert (pbu["stop_rule"], pbu["stop_threshold"], pbu["check_every"]) == ("forget_acc", 5.0, 1)


@pytest.mark.parametrize("name", NAMES)
def test_paper_config_uses_the_authors_pbu_settings(name):
    _authors_pbu_settings(merged(name))


def test_default_config_uses_the_authors_pbu_settings():
    _authors_pbu_settings(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))


@pytest.mark.parametrize("name", NAMES)
def test_paper_config_states_a_buildable_stem_for_each_torchvision_arch(name):
    """Every torchvision arch gets a stem its images fit (a config error otherwise, tested in
    test_config); the authors' ResNets on MNIST get the notebook's torchvision stem."""
    from pbu.registry import STEM_ARCHS, resolve_stem

    config = merged(name)
    paper = yaml.safe_load((PAPER / f"{name}.yaml").read_text())
    if set(config["archs"]) & set(STEM_ARCHS):
        assert "stem" in paper.get("model", {}), "a paper config states its stem, with its source"
    for arch in config["archs"]:
        stem = resolve_stem(arch, config["model"]["stem"])
        if config["dataset"] in ("mnist", "mnist5k") and arch.startswith("resnet"):
            assert stem == "imagenet", arch


def test_mnist5k_resnet18_is_the_authors_notebook_recipe_offline():
    from pbu.methods import available
    from pbu.registry import DATASETS

    config = merged("mnist5k_resnet18")
    assert (config["dataset"], config["archs"], config["forget"]) == (
        "mnist5k",
        ["resnet18"],
        [2, 6, 8],
    )
    assert config["model"] == {"weights": "none", "stem": "imagenet"}  # offline: random init
    recipe = config["pretrain"]
    assert (recipe["optimizer"], recipe["lr"], recipe["batch_size"], recipe["epochs"]) == (
        "adam",
        1e-4,
        48,
        10,
    )
    assert (recipe["schedule"], recipe["augment"], recipe["weight_decay"]) == ("none", False, 0.0)
    spec = DATASETS["mnist5k"]  # the notebook's transforms.Normalize((0.1307,), (0.3081,))
    assert (spec.mean, spec.std) == ((0.1307,), (0.3081,))
    # every method, and PBU's ablation (the default config's variants)
    assert sorted(config["methods"]) == sorted([*available(), *config["variants"]])
    assert config["device"] == "cpu"
    assert all(config["resources"][r]["gpu"] == 0 for r in config["resources"])


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
        "aggregate": 1,
        "track": 1,
        "report": 1,
        "track_report": 1,
        "all": 1,
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
    override.write_text(
        yaml.safe_dump(
            {
                "results": str(results),
                "mlflow": {"tracking_uri": f"sqlite:///{results}/mlflow/mlflow.db"},
            }
        )
    )
    proc = subprocess.run(
        [
            str(SNAKEMAKE),
            "-n",
            "--quiet",
            "rules",
            "--cores",
            "1",
            "--configfile",
            f"config/paper/{name}.yaml",
            str(override),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = planned_jobs(proc.stdout + proc.stderr)
    expected = expected_jobs(merged(name))
    assert planned.pop("total") == sum(expected.values())
    assert planned == expected
    # a dry run executes nothing: no dataset was prepared, no model trained
    assert not (results / "data").exists() and not any(results.rglob("*.pt"))


@pytest.mark.slow
def test_each_arch_is_trained_with_its_configured_stem(tmp_path):
    """The joint: model.stem reaches every `pbu pretrain` and `pbu oracle` command (the original
    model and the oracle alike), per arch from mnist.yaml's mapping; the small CNN gets no
    --stem."""
    results = tmp_path / "results"
    override = tmp_path / "override.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "results": str(results),
                "seeds": [0],
                "forget": [2],
                "mlflow": {"tracking_uri": f"sqlite:///{results}/mlflow/mlflow.db"},
            }
        )
    )

    def commands(*configfiles: str) -> list[str]:
        proc = subprocess.run(
            [
                str(SNAKEMAKE),
                "-n",
                "-p",
                "--cores",
                "1",
                "--configfile",
                *configfiles,
                str(override),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = (proc.stdout + proc.stderr).splitlines()
        return [line for line in out if "pbu pretrain" in line or "pbu oracle" in line]

    stems = merged("mnist")["model"]["stem"]
    lines = commands("config/paper/mnist.yaml")
    assert len(lines) == 2 * len(stems)  # one original model and one oracle per arch
    for line in lines:
        arch = re.search(r"--arch (\w+)", line)[1]
        assert re.search(r"--stem (\w+)", line)[1] == stems[arch], line
    default = commands("config/config.yaml")
    assert default and not any("--stem" in line for line in default)
