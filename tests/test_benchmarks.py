"""The benchmark scripts run on tiny settings and report what they promise.

No timing is asserted (the machine is shared); what is checked is that every promised field is
there and sane (positive, finite), and that the arithmetic on top of the timings (ratios,
per-rule sums, means, maxima) matches an independent computation.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_pipeline  # noqa: E402
import bench_train  # noqa: E402


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------------------------
# bench_train
# ------------------------------------------------------------------------------------------


def test_bench_train_tiny_run_reports_every_variant(tmp_path):
    out = tmp_path / "train.json"
    proc = _run("bench_train.py", "--models", "small_cnn,resnet18", "--variants", "fp32,cl",
                "--batch-size", "4", "--steps", "2", "--repeats", "1", "--threads", "1",
                "--out", str(out))
    res = json.loads(out.read_text())
    assert res["machine"]["device"] == "cpu"
    rows = {(r["model"], r["variant"]): r for r in res["rows"]}
    for model in ("small_cnn", "resnet18"):
        for variant in ("fp32", "cl"):
            r = rows[(model, variant)]
            assert r["what"] == "train_model"
            assert _positive(r["images_per_s"]) and _positive(r["step_ms"])
            assert r["batch_size"] == 4 and r["steps"] == 2 and r["timed_epochs"] == 1
            assert math.isfinite(r["final_loss"])
            # images/s and ms/step describe the same timed epoch
            assert r["images_per_s"] == pytest.approx(4 / (r["step_ms"] / 1000), rel=1e-6)
        assert rows[(model, "cl")]["channels_last"] and not rows[(model, "fp32")]["amp"]
        assert _positive(rows[(model, "loader_only")]["images_per_s"])
        assert _positive(rows[(model, "fp32_fixed_batch")]["images_per_s"])
        s = res["summary"][model]
        assert s["speedup_vs_fp32"]["fp32"] == pytest.approx(1.0)
        assert s["speedup_vs_fp32"]["cl"] == pytest.approx(
            rows[(model, "cl")]["images_per_s"] / rows[(model, "fp32")]["images_per_s"])
        assert s["best_images_per_s"] == max(s["images_per_s"].values())
        assert _positive(s["loop_vs_fixed_batch"])
        assert "target_met" not in s  # the GPU target is only judged on CUDA
    assert "side by side" in proc.stdout


def test_bench_train_single_variant_flags():
    assert bench_train.variant_from_flags(False, False, False) == "fp32"
    assert bench_train.variant_from_flags(True, True, False) == "cl_bf16"
    assert bench_train.variant_from_flags(True, True, True) == "cl_bf16_compile"
    args = bench_train.parse_args(["--amp", "--channels-last"])
    assert args.variants == ["cl_bf16"]
    for flags in (("--compile",), ("--amp",), ("--channels-last", "--compile")):
        v = bench_train.parse_args(list(flags)).variants[0]
        assert v in bench_train.VARIANTS
    assert bench_train.parse_args(["--device", "cuda"]).variants == list(bench_train.CUDA_DEFAULT)
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--amp", "--variants", "fp32"])
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--variants", "fp64"])


def test_bench_train_random_data_uses_the_real_specs():
    data = bench_train.random_images("resnet18", 20, 0)
    assert tuple(data.images.shape) == (20, 3, 32, 32) and data.spec.augment == "crop_flip"
    assert data.spec.mean == bench_train.DATASETS["cifar10"].mean
    data = bench_train.random_images("small_cnn", 20, 0)
    assert tuple(data.images.shape) == (20, 1, 28, 28) and data.spec.augment == "crop"


# ------------------------------------------------------------------------------------------
# bench_pipeline: side by side
# ------------------------------------------------------------------------------------------


def test_bench_pipeline_side_by_side_tiny(tmp_path):
    out, md = tmp_path / "pipe.json", tmp_path / "pipe.md"
    _run("bench_pipeline.py", "--forget", "2,6", "--methods", "pbu,finetune", "--epochs", "1",
         "--subset", "30", "--out", str(out), "--out-md", str(md))
    res = json.loads(out.read_text())
    assert res["settings"]["train_samples"] == 300 and res["settings"]["recipe"]["epochs"] == 1
    assert res["settings"]["memory_format"] == "channels_last"  # as the pbu CLI loads models
    assert any("--subset 30" in n for n in res["notes"])
    assert len(res["runs"]) == 2
    for run in res["runs"]:
        assert _positive(run["oracle"]["wall_s"]) and _positive(run["oracle"]["cpu_s"])
        assert _positive(run["fisher"]["wall_s"]) and run["fisher"]["samples"] == 30
        pbu = run["methods"]["pbu"]
        # PBU end to end = the Fisher + the unlearning step; the ratio is over the oracle
        assert pbu["end_to_end_wall_s"] == pytest.approx(pbu["wall_s"] + run["fisher"]["wall_s"])
        assert pbu["ratio_wall"] == pytest.approx(pbu["end_to_end_wall_s"]
                                                  / run["oracle"]["wall_s"])
        ft = run["methods"]["finetune"]
        assert ft["end_to_end_wall_s"] == ft["wall_s"] and not ft["needs_fisher"]
        for m in (pbu, ft):
            assert 0 <= m["acc_forget_test"] <= 100 and 0 <= m["acc_retain_test"] <= 100
    s = res["summary"]
    for name in ("pbu", "finetune"):
        m = s["methods"][name]
        assert set(m["per_class"]) == {"seed0/forget2", "seed0/forget6"}
        for key in ("mean_ratio_wall", "mean_ratio_cpu"):
            assert _positive(m[key])
        assert m["mean_ratio_wall"] == pytest.approx(
            sum(r["methods"][name]["ratio_wall"] for r in res["runs"]) / 2)
    assert s["pbu_over_oracle_wall"] == s["methods"]["pbu"]["mean_ratio_wall"]
    assert isinstance(s["pbu_target_met"], bool) and s["pbu_target"] == 0.05
    assert "| pbu (incl. Fisher) | forget |" in md.read_text()


def test_config_merge_is_nested_and_paper_config_is_picked():
    merged = bench_pipeline._merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}, "c": 4})
    assert merged == {"a": {"x": 1, "y": 3}, "b": 1, "c": 4}
    cfg, files = bench_pipeline.load_config([], "fashion_mnist")
    assert files[-1].endswith("config/paper/fashion_mnist.yaml")
    assert cfg["dataset"] == "fashion_mnist" and cfg["pretrain"]["batch_size"] == 128
    assert cfg["hparams"]["scrub"]  # keys the paper config does not set keep the defaults


# ------------------------------------------------------------------------------------------
# bench_pipeline: a finished run, from its files
# ------------------------------------------------------------------------------------------

TSV_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _job(results: Path, rel: str, s: float, rss: float, own: dict | None, own_file: str | None,
         end: float) -> None:
    tsv = results / "benchmarks" / rel
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text(TSV_HEADER + f"{s}\t0:00:{int(s):02d}\t{rss}\t1\t1\t1\t0\t0\t50\t{s / 2}\n")
    os.utime(tsv, (end, end))
    if own is not None:
        f = results / own_file
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(own))


@pytest.fixture
def fake_results(tmp_path):
    """Two pretrain, one retrain, one fisher, two unlearn, one evaluate job with known numbers."""
    r = tmp_path / "results"
    g = "mnist5k/small_cnn/seed0/forget2"
    t0 = 1_700_000_000.0
    _job(r, "mnist5k/small_cnn/seed0/pretrain.tsv", 10.0, 300, {"time_s": 8.0},
         "mnist5k/small_cnn/seed0/pretrain/info.json", t0 + 10)
    _job(r, "mnist5k/small_cnn/seed1/pretrain.tsv", 12.0, 320, {"time_s": 9.0},
         "mnist5k/small_cnn/seed1/pretrain/info.json", t0 + 12)
    _job(r, f"{g}/oracle.tsv", 9.0, 310, {"time_s": 7.0}, f"{g}/oracle/info.json", t0 + 20)
    _job(r, f"{g}/fisher.tsv", 4.0, 280, {"time_s": 1.0}, f"{g}/fisher.json", t0 + 14)
    _job(r, f"{g}/pbu.tsv", 5.0, 290, {"time_s": 0.5, "peak_rss_mb": 400},
         f"{g}/pbu/info.json", t0 + 19)
    _job(r, f"{g}/finetune.tsv", 6.0, 295, {"time_s": 2.0}, f"{g}/finetune/info.json", t0 + 20)
    _job(r, f"{g}/evaluate.tsv", 8.0, 350, {"time_s": 6.0}, f"{g}/metrics.json", t0 + 28)
    _job(r, "aggregate.tsv", 2.0, 100, None, None, t0 + 30)
    return r


def test_from_results_per_rule_numbers(fake_results):
    rep = bench_pipeline.read_results(fake_results)
    pr = rep["per_rule"]
    assert set(pr) == {"pretrain", "retrain", "fisher", "unlearn", "evaluate", "aggregate"}
    assert pr["pretrain"]["jobs"] == 2 and pr["pretrain"]["total_s"] == pytest.approx(22.0)
    assert pr["pretrain"]["mean_s"] == pytest.approx(11.0) and pr["pretrain"]["max_s"] == 12.0
    assert pr["pretrain"]["max_rss_mb"] == 320
    assert pr["pretrain"]["total_cpu_s"] == pytest.approx(11.0)  # Snakemake's cpu_time column
    assert pr["pretrain"]["mean_cpu_s"] == pytest.approx(5.5)
    # outside own time: (22 - 17) / 22 of the pretrain jobs' wall time, 2.5 s per job
    assert pr["pretrain"]["outside_own_time_frac"] == pytest.approx(5 / 22)
    assert pr["pretrain"]["mean_outside_own_time_s"] == pytest.approx(2.5)
    assert pr["fisher"]["own_time_s"] == pytest.approx(1.0)
    assert pr["evaluate"]["own_time_s"] == pytest.approx(6.0)
    assert pr["unlearn"]["jobs"] == 2 and pr["unlearn"]["max_rss_mb"] == 400  # the job's own peak
    assert set(rep["per_method"]) == {"pbu", "finetune"}
    assert "outside_own_time_frac" not in pr["aggregate"]  # it records no time_s
    # method / retrain per group; PBU's own cost includes its fisher job
    ratios = rep["ratios_vs_retrain"]
    assert ratios["pbu"]["job_wall"] == pytest.approx((5 + 4) / 9)
    assert ratios["pbu"]["job_cpu"] == pytest.approx((2.5 + 2) / 4.5)
    assert ratios["pbu"]["own"] == pytest.approx((0.5 + 1.0) / 7)
    assert ratios["finetune"]["job_wall"] == pytest.approx(6 / 9)
    assert ratios["finetune"]["own"] == pytest.approx(2 / 7) and ratios["finetune"]["groups"] == 1
    assert rep["sum_job_s"] == pytest.approx(56.0)
    # span: the first start (pretrain seed0 at t0 + 0) to the last end (t0 + 30)
    assert rep["span_s"] == pytest.approx(30.0)
    assert rep["parallelism"] == pytest.approx(56 / 30)


def test_from_results_cli_writes_markdown_and_json(fake_results, tmp_path):
    md, out = tmp_path / "b.md", tmp_path / "b.json"
    proc = _run("bench_pipeline.py", "--from-results", str(fake_results), "--out-md", str(md),
                "--out", str(out))
    text = md.read_text()
    assert ("| pretrain | 2 | 22.0 | 11.00 | 12.00 | 11.0 | 5.50 | 320 | 23 % (2.50 s/job) |"
            in text)
    assert "| pbu | 1 | 100.0 % | 100.0 % | 21.4 % |" in text
    assert "| pbu | 1 |" in text and "| finetune | 1 |" in text
    res = json.loads(out.read_text())
    assert res["pipeline"]["jobs"] == 8 and len(res["pipeline"]["job_list"]) == 8
    assert "pretrain" in proc.stdout


def test_snakemake_log_elapsed(tmp_path):
    log = tmp_path / "x.snakemake.log"
    log.write_text("[Thu Nov 26 19:38:00 2026]\nFinished job 3.\nFinished job 1.\n"
                   "Complete log(s): x\nElapsed time: 0:50:31.864855\n")
    rec = bench_pipeline.read_snakemake_log(log)
    assert rec["finished_jobs"] == 2 and rec["elapsed_s"] == pytest.approx(3031.864855)


def test_from_results_without_benchmarks_fails_clearly(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        bench_pipeline.read_results(tmp_path)


def test_importtime_names_heavy_packages():
    rec = bench_pipeline.importtime("import json, numpy")
    assert "numpy" in rec["top_level_s"] and "torch" not in rec["top_level_s"]
    assert _positive(rec["total_s"]) and rec["total_s"] >= rec["top_level_s"]["numpy"]


@pytest.mark.slow
def test_startup_mode_with_results(fake_results, tmp_path):
    out, md = tmp_path / "s.json", tmp_path / "s.md"
    _run("bench_pipeline.py", "--startup", "--startup-repeats", "1", "--startup-commands",
         "unlearn,aggregate", "--from-results",
         str(fake_results), "--out", str(out), "--out-md", str(md))
    res = json.loads(out.read_text())
    times = res["startup"]["median_s"]
    for key in ("python -c pass", "import torch", "import pbu.cli", "pbu --help",
                "pbu unlearn imports"):
        assert _positive(times[key])
    assert "torch" in res["startup"]["importtime"]["unlearn"]["top_level_s"]
    assert set(res["startup_share_of_mean_job"]) == {"unlearn", "aggregate"}
    assert "pbu pretrain imports" not in times
    assert "## Start-up cost per job" in md.read_text()
