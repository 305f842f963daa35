"""End to end: config/forgetting.yaml at N = 4 (.test/forgetting-n4.yaml), the real snakemake
in a copy of the repository. The wiring of the forget-score run: batched unlearning jobs, the
ceiling's oracles, the saved confidences, the forget-score stage, its table, figure and report
section, C4 decided on it, MLflow. A few minutes on 2 cores (CI runs it with the suite)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "results/forgetting-n4"
pytestmark = pytest.mark.slow


def _snakemake(wd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "--configfile",
            "config/forgetting.yaml",
            ".test/forgetting-n4.yaml",
            *args,
        ],
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=2400,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("forgetting")
    for item in ("Snakefile", "workflow", "config", "envs", ".test", "profiles"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    t0 = time.perf_counter()
    proc = _snakemake(wd)
    print(f"forgetting config at N = 4: {time.perf_counter() - t0:.0f} s wall")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return wd


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_method_has_a_forget_score_beside_ceiling_and_floor(run):
    import yaml

    methods = yaml.safe_load((ROOT / "config/forgetting.yaml").read_text())["methods"]
    res = run / RESULTS
    rows = _rows(res / "aggregate/forget_score.csv")
    got = {(r["forget"], r["method"]) for r in rows}
    want = {(f, m) for f in ("2", "6", "8", "all") for m in [*methods, "ceiling", "floor"]}
    assert got == want, sorted(want ^ got)
    for r in rows:
        assert r["n_models"] == "4" and r["n_oracles"] == "4" and r["max_eps"] == "2", r
        assert 0.0 <= float(r["score"]) <= 1.0
    floor = next(r for r in rows if r["forget"] == "all" and r["method"] == "floor")
    assert float(floor["score"]) < 0.05 and floor["direction"] == "under-forgetting"
    images = _rows(res / "aggregate/forget_score_images.csv")
    per_class = {f: len({r["image"] for r in images if r["forget"] == f}) for f in "268"}
    assert all(n > 300 for n in per_class.values()), per_class  # mnist5k: ~400 per class
    # one folder and record per method, written by one job per group
    for seed in range(4):
        for m in methods:
            info = res / f"mnist5k/small_cnn/seed{seed}/forget6/{m}/info.json"
            assert '"batch"' in info.read_text(), info
        assert (res / f"benchmarks/mnist5k/small_cnn/seed{seed}/forget6/unlearn-batch.tsv").exists()
    assert not list(res.glob("mnist5k/small_cnn/seed[4-7]/pretrain"))  # ceiling: oracles only
    assert (res / "mnist5k/small_cnn/seed5/forget8/oracle/model.pt").exists()


def test_the_batched_jobs_run_the_frozen_development_class_choice(run):
    """A verdict run loads config/tuned/ (tuning.frozen): every batched method runs the frozen
    choice, as its own unlearn job would, and says so (protocol dev_class); a variant keeps
    its defining overrides over its base method's choice."""
    import yaml

    frozen = yaml.safe_load((ROOT / "config/tuned/mnist5k_small_cnn.yaml").read_text())
    res = run / RESULTS
    runs = _rows(res / "aggregate/runs.csv")
    methods = {r["method"] for r in runs} - {"oracle", "original"}
    protocols = {r["protocol"] for r in runs if r["method"] in methods}
    assert protocols == {"dev_class"}, protocols
    group = res / "mnist5k/small_cnn/seed1/forget2"
    info = json.loads((group / "pbu/info.json").read_text())
    for name, value in frozen["methods"]["pbu"]["hparams"].items():
        assert info["hparams"][name] == pytest.approx(value), name
    stop0 = json.loads((group / "pbu_stop0/info.json").read_text())["hparams"]
    assert stop0["stop_threshold"] == 0.0 and stop0["alpha"] == pytest.approx(
        info["hparams"]["alpha"]
    )


def test_report_section_table_figure_and_c4_on_the_forget_score(run):
    res = run / RESULTS
    report = (res / "report.md").read_text()
    assert "## Is the class gone?" in report and "| ceiling " in report
    c4 = re.search(r"^- \*\*C4\*\* .*$", report, flags=re.M).group(0)
    assert "forget score pbu" in c4 and "vs ceiling" in c4, c4
    for ext in ("png", "pdf"):
        assert (res / f"figures/forget_score.{ext}").stat().st_size > 1000
    assert (res / "tables/forget_score.md").read_text().count("| ceiling ") == 1
    runs = _rows(res / "aggregate/runs.csv")
    assert {"mia_entropy_svc_valid_bacc", "mia_loss_valid_auc"} <= set(runs[0])


def test_mlflow_unlearn_runs_carry_their_per_image_summary(run):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{run / RESULTS}/mlflow/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pbu-forgetting-n4")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    unlearn = [r for r in runs if r.data.tags["rule"] == "unlearn"]
    assert len(unlearn) == 18 * 4 * 3
    for r in unlearn:
        for key in ("forget_score", "forget_score_eps_median", "conf_median"):
            assert key in r.data.metrics, (r.data.tags["method"], key)
    assert len({r.data.tags["pbu.job"] for r in runs}) == len(runs)


def test_a_second_run_has_nothing_to_do(run):
    proc = _snakemake(run, "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
