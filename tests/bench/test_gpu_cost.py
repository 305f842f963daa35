"""benchmarks/gpu_cost.py: what replicating the paper costs on a GPU.

No GPU here, so the numbers wait for one; what is tested is the script's CPU mode end to end
(every stage measured, the report printed) and its bookkeeping against hand-computed values:
the jobs each config plans, the GPU-hours they sum to, the resources derived from them, and the
rewrite of config/paper/*.yaml.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_cost  # noqa: E402

# The README's table "The paper's configs" (jobs of `snakemake -n`, every rule counted)
README_JOBS = {
    "mnist": 341,
    "mnist_allcnn": 72,
    "cifar10": 220,
    "cifar10_allcnn": 219,
    "cifar100": 207,
    "food101": 140,
    "food101_convnext": 73,
    "fashion_mnist": 108,
    "mnist5k_resnet18": 171,
}


@pytest.mark.parametrize("name", sorted(README_JOBS))
def test_job_counts_add_up_to_the_planned_jobs(name):
    cfg = gpu_cost.load_config(name)
    compute = sum(gpu_cost.job_counts(cfg).values())
    # besides compute jobs: download, aggregate, track, report, track_report, all, and one
    # `weights` job per arch with ImageNet weights
    other = 6 + (len(cfg["archs"]) if cfg["model"]["weights"] == "imagenet" else 0)
    assert compute + other == README_JOBS[name]


def test_linear_fit_reads_the_full_data_and_clamps_noise():
    fit = gpu_cost.linear_at_one(0.01, 3.0 + 0.01 * 200.0, 0.03, 3.0 + 0.03 * 200.0)
    assert fit["fixed_s"] == pytest.approx(3.0) and fit["full_s"] == pytest.approx(203.0)
    noisy = gpu_cost.linear_at_one(0.01, 5.0, 0.03, 4.0)  # slower at the smaller scale
    assert noisy["per_unit_scale_s"] == 0.0 and noisy["full_s"] == pytest.approx(5.0)


def _pair(arch: str, fisher_image_s: float = 0.1) -> dict:
    return {
        "config": "x",
        "arch": arch,
        "num_classes": 10,
        "errors": {},
        "stages": {
            "overhead": {"startup_s": 2.0, "build_s": 1.0, "save_s": 0.5, "load_s": 0.25},
            "pretrain": {
                "epoch_s": 1000.0,
                "test_pass_s": 10.0,
                "epochs": 3,
                "rss_mb": 3500.0,
                "peak_gpu_mb": 10000.0,
            },
            "fisher": {
                "image_s": fisher_image_s,
                "class_images": {"0": 5000, "3": 4000},
                "full_s": fisher_image_s * 5000,
                "rss_mb": 1100.0,
                "peak_gpu_mb": 2000.0,
            },
            "unlearn_pbu": {
                "full_s": 20.0,
                "monitor_full_s": 5.0,
                "rss_mb": 1000.0,
                "peak_gpu_mb": 3000.0,
            },
            "unlearn_finetune": {"full_s": 60.0, "rss_mb": 1000.0, "peak_gpu_mb": 4000.0},
            "evaluate": {"full_s": 30.0, "rss_mb": 1500.0, "peak_gpu_mb": 500.0},
        },
    }


def _config() -> dict:
    cfg = gpu_cost.load_config("cifar10")
    cfg.update(archs=["resnet18"], seeds=[0, 1], forget=[0, 3], methods=["pbu", "finetune"])
    cfg["tuning"]["budget"] = 6
    return cfg


def test_gpu_hours_from_known_numbers():
    cfg = _config()
    cost = gpu_cost.config_cost(cfg, [_pair("resnet18")])
    # by hand: 2 pretrain jobs (2 seeds), 4 groups (2 seeds x 2 classes)
    pretrain = 2 + 1 + 3 * 1010 + 0.5  # 3033.5
    oracle = 2 + 1 + 3 * 1010 * 9 / 10 + 0.5  # 2730.5
    fisher = [2 + 0.25 + 0.1 * n + 0.5 for n in (5000, 4000)]  # class 0, class 3
    pbu = 2 + 0.25 + 0.25 + 20 + 5 + 0.5  # loads the model and the Fisher
    finetune = 2 + 0.25 + 60 + 0.5
    evaluate = 2 + 4 * 0.25 + 1 + 30  # 4 models loaded, 1 built
    total = 2 * pretrain + 4 * oracle + 2 * sum(fisher) + 4 * (pbu + finetune) + 4 * evaluate
    assert cost["gpu_hours"] == pytest.approx(total / 3600)
    assert cost["startup_share"] == pytest.approx(2.0 * 22 / total)  # 22 jobs x 2 s start-up
    assert cost["compute_jobs"] == cost["jobs_estimated"] == 2 + 4 + 4 + 8 + 4
    assert cost["longest_job_s"]["pretrain"] == pytest.approx(pretrain)
    assert cost["longest_job_s"]["fisher"] == pytest.approx(fisher[0])
    assert not cost["missing_archs"] and not cost["incomplete"]
    # a second arch not measured is named, not silently dropped
    cfg2 = dict(cfg, archs=["resnet18", "resnet50"])
    assert gpu_cost.config_cost(cfg2, [_pair("resnet18")])["missing_archs"] == ["resnet50"]


def test_resources_are_the_longest_job_times_the_safety_factor():
    cfg = _config()
    cfg["archs"] = ["resnet18", "resnet50"]
    res = gpu_cost.derive_resources(
        cfg, [_pair("resnet18"), dict(_pair("resnet50", 0.5), arch="resnet50")], 2.0
    )
    assert res["pretrain"]["runtime"] == math.ceil(3033.5 * 2 / 60)  # 102 min
    assert res["pretrain"]["mem_mb"] == 7000 and res["pretrain"]["gpu_mem_gb"] == 20
    # the Fisher: resnet50's 0.5 s per image x 5,000 images is the longest
    assert res["fisher"]["runtime"] == math.ceil((2 + 0.25 + 2500 + 0.5) * 2 / 60)
    assert res["fisher"]["mem_mb"] == 4000  # 2,200 MB measured x 2 is under the floor
    assert res["fisher"]["gpu_mem_gb"] == 4
    assert res["unlearn"]["runtime"] == 30  # 62.75 s x 2: the 30-minute floor
    assert res["unlearn"]["gpu_mem_gb"] == 8  # finetune's 4,000 MiB x 2
    assert res["evaluate"]["runtime"] == 30 and res["evaluate"]["mem_mb"] == 4000
    assert res["tune"]["runtime"] == 6 * res["unlearn"]["runtime"]


def test_apply_rewrites_runtime_and_memory_and_nothing_else(tmp_path):
    src = (ROOT / "config" / "paper" / "mnist.yaml").read_text()
    res = {
        "pretrain": {"runtime": 95, "mem_mb": 9000, "gpu_mem_gb": 12},
        "fisher": {"runtime": 41, "mem_mb": 8000, "gpu_mem_gb": 30},
        "unlearn": {"runtime": 30, "mem_mb": 6000, "gpu_mem_gb": 9},
        "evaluate": {"runtime": 30, "mem_mb": 7000, "gpu_mem_gb": 5},
        "tune": {"runtime": 180, "mem_mb": 6000, "gpu_mem_gb": 9},
    }
    out = gpu_cost.apply_to_text(src, res, "Measured here.\nTwice.")
    before, after = yaml.safe_load(src), yaml.safe_load(out)
    for rule, want in res.items():
        got = after["resources"][rule]
        assert (got["runtime"], got["mem_mb"]) == (want["runtime"], want["mem_mb"])
        assert (got["threads"], got["gpu"]) == (
            before["resources"][rule]["threads"],
            before["resources"][rule]["gpu"],
        )
    assert {k: v for k, v in after.items() if k != "resources"} == {
        k: v for k, v in before.items() if k != "resources"
    }
    assert "# Measured here.\n# Twice.\nresources:" in out
    assert "fisher: {threads: 4, mem_mb: 8000, runtime: 41, gpu: 1}   # GPU memory >= 30 GiB" in out
    # every comment above the resources block's own is kept
    head = src.split("# Per job, one GPU.")[0]
    assert out.startswith(head)
    with pytest.raises(ValueError, match="resources"):
        gpu_cost.apply_to_text("experiment: x\n", res, "n")


@pytest.mark.slow
def test_cpu_mode_measures_every_stage_and_reports(tmp_path):
    """The one command a GPU machine runs, in its CPU mode: every stage of a config measured,
    the cost table printed and the resources derived, from the script's own files."""
    out = tmp_path / "cost"
    env = {
        **os.environ,
        "GPU_COST_DEVICE": "cpu",
        "OUT": str(out),
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
        "GPU_COST_CONFIGS": "fashion_mnist",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_cost.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rec = json.loads((out / "gpu_cost.json").read_text())
    assert rec["tiny"] and rec["device"] == "cpu" and rec["startup_s"] > 0
    (pair,) = rec["pairs"]
    assert (pair["config"], pair["arch"], pair["num_classes"]) == ("fashion_mnist", "small_cnn", 10)
    assert pair["errors"] == {}
    cfg = gpu_cost.load_config("fashion_mnist", tiny=True)
    stages = pair["stages"]
    want = {"overhead", "pretrain", "fisher", "evaluate", *(f"unlearn_{m}" for m in cfg["methods"])}
    assert want <= set(stages)
    pre = stages["pretrain"]
    assert pre["steps_per_epoch"] == 60000 // cfg["pretrain"]["batch_size"]
    assert pre["epoch_s"] == pytest.approx(pre["steps_per_epoch"] * pre["step_s"])
    fis = stages["fisher"]
    assert fis["class_images"] == {"2": 6000, "6": 6000, "8": 6000}
    assert fis["full_s"] == pytest.approx(6000 * fis["image_s"])
    for name in want - {"overhead", "pretrain", "fisher"}:
        row = stages[name]
        assert len(row["scales"]) == 2 and row["scales"][0]["r"] < row["scales"][1]["r"]
        assert row["full_s"] >= row["scales"][1]["s"] > 0
    assert "monitor_full_s" in stages["unlearn_pbu"]  # the harness monitors PBU's trajectory
    derived = json.loads((out / "resources.json").read_text())
    (row,) = derived["configs"]
    assert row["gpu_hours"] == pytest.approx(gpu_cost.config_cost(cfg, [pair])["gpu_hours"])
    assert row["compute_jobs"] == 108 - 6  # README_JOBS["fashion_mnist"]: every job, less 6
    assert set(derived["resources"]["fashion_mnist"]) == set(gpu_cost.RULES)
    assert "| config | compute jobs | GPU-hours |" in proc.stdout
    assert "| fashion_mnist | 102 |" in proc.stdout
    # CPU tiny-mode numbers never reach the configs
    refused = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_cost.py"),
            "apply",
            str(out / "resources.json"),
            "--paper-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1 and "tiny" in refused.stderr


def test_report_merges_runs_and_a_later_pair_replaces_an_earlier(tmp_path, capsys):
    """A second call (the configs the first had no time for) merges into one report; a pair
    measured twice counts once, the later measurement."""
    first, second = _pair("resnet18"), _pair("resnet18", fisher_image_s=0.3)
    for p in (first, second):
        p["config"] = "cifar10"  # forget: all, so a Fisher job per class
        p["stages"]["fisher"]["class_images"] = {str(c): 5000 for c in range(10)}
        for m in ("unsir", "bad_teaching"):  # the config's other methods
            p["stages"][f"unlearn_{m}"] = dict(p["stages"]["unlearn_finetune"])
    files = []
    for i, pairs in enumerate(([first], [second])):
        f = tmp_path / f"m{i}.json"
        f.write_text(
            json.dumps(
                {
                    "device": "cuda",
                    "device_name": "H200",
                    "date": "d",
                    "tiny": False,
                    "pairs": pairs,
                    "not_measured": [{"config": "cifar10", "arch": "resnet18", "why": "budget"}]
                    if i == 0
                    else [],
                }
            )
        )
        files.append(str(f))
    out = tmp_path / "res.json"
    assert gpu_cost.main(["report", *files, "--safety", "2", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    cfg = gpu_cost.load_config("cifar10")
    (row,) = rep["configs"]
    assert row["gpu_hours"] == pytest.approx(gpu_cost.config_cost(cfg, [second])["gpu_hours"])
    assert row["gpu_hours"] != pytest.approx(gpu_cost.config_cost(cfg, [first])["gpu_hours"])
    assert rep["not_measured"] == []  # measured by the second call after all
    assert "| cifar10 | 213 |" in capsys.readouterr().out
