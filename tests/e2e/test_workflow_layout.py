"""The rules take every path from pbu/layout.py: a dry run of the .test config plans exactly the
outputs, logs and benchmarks the layout names for that config, and nothing else."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pbu import layout
from pbu.config import check_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # runs snakemake


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _expected(cfg: dict) -> tuple[set[str], set[str], set[str]]:
    """(outputs, logs, benchmarks) the layout names for a resolved config."""
    r = cfg["results"]
    outputs: set[str] = set()
    logs: set[str] = set()
    benches: set[str] = set()

    def job(name: str, files: list[tuple[str, dict]], bench: bool = True, **wc) -> None:
        outputs.update(layout.path(f, r, **{**wc, **extra}) for f, extra in files)
        logs.add(layout.log(name, r, **wc))
        if bench:
            benches.add(layout.benchmark(name, r, **wc))

    job("download", [("data", {})], bench=False, dataset=cfg["dataset"])
    if cfg["model"]["weights"] == "imagenet":
        for arch in cfg["archs"]:
            job("weights", [("weights", {})], bench=False, arch=arch)
    tuned = cfg["tuning"]["methods"] if cfg["tuning"]["enabled"] else []
    for arch, seed in itertools.product(cfg["archs"], cfg["seeds"]):
        wc = {"dataset": cfg["dataset"], "arch": arch, "seed": seed}
        job("pretrain", [("pretrain_model", {}), ("pretrain_info", {})], **wc)
        for forget in cfg["forget"]:
            g = {**wc, "forget": forget}
            oracle = {"method": layout.ORACLE}
            job("oracle", [("model", oracle), ("info", oracle)], **g)
            if "pbu" in cfg["methods"]:
                job("fisher", [("fisher", {}), ("fisher_info", {})], **g)
            per_method = [("model", {}), ("info", {}), ("history", {})]
            if cfg["unlearn_batch"]:  # one job writes every method's files
                job("unlearn_batch", [(f, {"method": m}) for f, _ in per_method
                                      for m in cfg["methods"]], **g)  # fmt: skip
            for m in cfg["methods"]:
                if not cfg["unlearn_batch"]:
                    job("unlearn", per_method, **g, method=m)
                if m in tuned:
                    job("tune", [("tune", {})], **g, method=m)
            job("evaluate", [("metrics", {}), ("confidences", {})], **g)
    fs = cfg["evaluation"]["forget_score"]
    if fs["enabled"]:
        for arch, seed, forget in itertools.product(
            cfg["archs"], fs["ceiling_seeds"], cfg["forget"]
        ):
            oracle = {"method": layout.ORACLE}
            g = {"dataset": cfg["dataset"], "arch": arch, "seed": seed, "forget": forget}
            job("oracle", [("model", oracle), ("info", oracle)], **g)
        for arch, forget in itertools.product(cfg["archs"], cfg["forget"]):
            g = {"dataset": cfg["dataset"], "arch": arch, "forget": forget}
            job("ceiling", [("ceiling_confidences", {}), ("ceiling_info", {})], **g)
        names = ("forget_score_csv", "forget_score_images_csv", "forget_score_runs_csv")
        job("forget_score", [(f, {}) for f in (*names, "forget_score_info")])
    job("aggregate", [("runs_csv", {}), ("history_csv", {}), ("timings_csv", {})])
    job("track", [("tracked", {})], bench=False)
    job("report", [("report", {}), ("tables", {}), ("figures", {})])
    job("track_report", [("tracked_report", {})], bench=False)
    return outputs, logs, benches


def _planned(text: str, key: str) -> set[str]:
    found: set[str] = set()
    for m in re.finditer(rf"^    {key}: (.+)$", text, re.M):
        found.update(p.strip() for p in m[1].split(", "))
    return found


@pytest.mark.parametrize(
    "configs",
    [[".test/config.yaml"], ["config/forgetting.yaml", ".test/forgetting-n4.yaml"]],
    ids=["test", "forgetting-n4"],
)
def test_dry_run_plans_exactly_the_files_the_layout_names(tmp_path, configs):
    results = tmp_path / "results"
    override = {
        "results": str(results),
        "mlflow": {"tracking_uri": f"sqlite:///{results}/mlflow/mlflow.db"},
    }
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--forceall",
            "--cores",
            "1",
            "--configfile",
            *configs,
            str(tmp_path / "override.yaml"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for over in [*(yaml.safe_load((ROOT / c).read_text()) for c in configs), override]:
        raw = _merge(raw, over)
    cfg = check_config(raw, ROOT / "workflow/schemas/config.schema.yaml")
    outputs, logs, benches = _expected(cfg)
    text = proc.stdout + proc.stderr
    assert _planned(text, "output") == outputs
    assert _planned(text, "log") == logs
    assert _planned(text, "benchmark") == benches
    inputs = _planned(text, "input") - outputs
    assert inputs == {"config/paper/reference.csv"}  # every other input is a planned output
    for p in outputs:  # and each one reads back as a file of the layout under `results`
        assert layout.parse(p).root == str(results)
