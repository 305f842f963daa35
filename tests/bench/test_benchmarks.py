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

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path[:0] = [str(BENCH)]

import bench_eval_batch  # noqa: E402
import bench_pipeline  # noqa: E402
import bench_scheduler  # noqa: E402
import bench_train  # noqa: E402
import common  # noqa: E402
import gpu_check  # noqa: E402


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------------------------
# bench_train
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_train_tiny_run_reports_every_variant(tmp_path):
    out = tmp_path / "train.json"
    proc = _run(
        "bench_train.py",
        "--models",
        "small_cnn,resnet18",
        "--variants",
        "fp32,cl",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    )
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
            rows[(model, "cl")]["images_per_s"] / rows[(model, "fp32")]["images_per_s"]
        )
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


@pytest.mark.slow
def test_bench_pipeline_side_by_side_tiny(tmp_path):
    out, md = tmp_path / "pipe.json", tmp_path / "pipe.md"
    _run(
        "bench_pipeline.py",
        "--forget",
        "2,6",
        "--methods",
        "pbu,finetune",
        "--epochs",
        "1",
        "--subset",
        "30",
        "--out",
        str(out),
        "--out-md",
        str(md),
    )
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
        assert pbu["ratio_wall"] == pytest.approx(
            pbu["end_to_end_wall_s"] / run["oracle"]["wall_s"]
        )
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
            sum(r["methods"][name]["ratio_wall"] for r in res["runs"]) / 2
        )
    assert s["pbu_over_oracle_wall"] == s["methods"]["pbu"]["mean_ratio_wall"]
    assert isinstance(s["pbu_target_met"], bool) and s["pbu_target"] == 0.05
    assert "| pbu (incl. Fisher) | forget |" in md.read_text()


def test_config_merge_is_nested_and_paper_config_is_picked():
    base = {"a": {"x": 1, "y": 2}, "b": 1}
    merged = common.merge_config(base, {"a": {"y": 3}, "c": 4})
    assert merged == {"a": {"x": 1, "y": 3}, "b": 1, "c": 4}
    assert base == {"a": {"x": 1, "y": 2}, "b": 1}  # a copy: the base config is untouched
    cfg, files = bench_pipeline.load_config([], "fashion_mnist")
    assert files[-1].endswith("config/paper/fashion_mnist.yaml")
    assert cfg["dataset"] == "fashion_mnist" and cfg["pretrain"]["batch_size"] == 128
    assert cfg["hparams"]["scrub"]  # keys the paper config does not set keep the defaults


# ------------------------------------------------------------------------------------------
# bench_pipeline: a finished run, from its files
# ------------------------------------------------------------------------------------------

TSV_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _job(
    results: Path,
    rel: str,
    s: float,
    rss: float,
    own: dict | None,
    own_file: str | None,
    end: float,
) -> None:
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
    """Two pretrain, one oracle, one fisher, two unlearn, one evaluate job with known numbers."""
    r = tmp_path / "results"
    g = "mnist5k/small_cnn/seed0/forget2"
    t0 = 1_700_000_000.0
    _job(
        r,
        "mnist5k/small_cnn/seed0/pretrain.tsv",
        10.0,
        300,
        {"time_s": 8.0},
        "mnist5k/small_cnn/seed0/pretrain/info.json",
        t0 + 10,
    )
    _job(
        r,
        "mnist5k/small_cnn/seed1/pretrain.tsv",
        12.0,
        320,
        {"time_s": 9.0},
        "mnist5k/small_cnn/seed1/pretrain/info.json",
        t0 + 12,
    )
    _job(r, f"{g}/oracle.tsv", 9.0, 310, {"time_s": 7.0}, f"{g}/oracle/info.json", t0 + 20)
    _job(r, f"{g}/fisher.tsv", 4.0, 280, {"time_s": 1.0}, f"{g}/fisher.json", t0 + 14)
    _job(
        r,
        f"{g}/pbu.tsv",
        5.0,
        290,
        {"time_s": 0.5, "peak_rss_mb": 400},
        f"{g}/pbu/info.json",
        t0 + 19,
    )
    _job(r, f"{g}/finetune.tsv", 6.0, 295, {"time_s": 2.0}, f"{g}/finetune/info.json", t0 + 20)
    _job(r, f"{g}/evaluate.tsv", 8.0, 350, {"time_s": 6.0}, f"{g}/metrics.json", t0 + 28)
    _job(r, "aggregate.tsv", 2.0, 100, None, None, t0 + 30)
    return r


def test_from_results_per_rule_numbers(fake_results):
    rep = bench_pipeline.read_results(fake_results)
    pr = rep["per_rule"]
    assert set(pr) == {"pretrain", "oracle", "fisher", "unlearn", "evaluate", "aggregate"}
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
    # method / oracle per group; PBU's own cost includes its fisher job
    ratios = rep["ratios_vs_oracle"]
    assert ratios["pbu"]["job_wall"] == pytest.approx((5 + 4) / 9)
    assert ratios["pbu"]["job_cpu"] == pytest.approx((2.5 + 2) / 4.5)
    assert ratios["pbu"]["own"] == pytest.approx((0.5 + 1.0) / 7)
    assert ratios["finetune"]["job_wall"] == pytest.approx(6 / 9)
    assert ratios["finetune"]["own"] == pytest.approx(2 / 7) and ratios["finetune"]["groups"] == 1
    assert rep["sum_job_s"] == pytest.approx(56.0)
    # span: the first start (pretrain seed0 at t0 + 0) to the last end (t0 + 30)
    assert rep["span_s"] == pytest.approx(30.0)
    assert rep["parallelism"] == pytest.approx(56 / 30)


@pytest.mark.slow
def test_from_results_cli_writes_markdown_and_json(fake_results, tmp_path):
    md, out = tmp_path / "b.md", tmp_path / "b.json"
    proc = _run(
        "bench_pipeline.py",
        "--from-results",
        str(fake_results),
        "--out-md",
        str(md),
        "--out",
        str(out),
    )
    text = md.read_text()
    assert "| pretrain | 2 | 22.0 | 11.00 | 12.00 | 11.0 | 5.50 | 320 | 23 % (2.50 s/job) |" in text
    assert "| pbu | 1 | 100.0 % | 100.0 % | 21.4 % |" in text
    assert "| pbu | 1 |" in text and "| finetune | 1 |" in text
    res = json.loads(out.read_text())
    assert res["pipeline"]["jobs"] == 8 and len(res["pipeline"]["job_list"]) == 8
    assert "pretrain" in proc.stdout


def test_snakemake_log_elapsed(tmp_path):
    log = tmp_path / "x.snakemake.log"
    log.write_text(
        "[Thu Nov 26 19:38:00 2026]\nFinished job 3.\nFinished job 1.\n"
        "Complete log(s): x\nElapsed time: 0:50:31.864855\n"
    )
    rec = bench_pipeline.read_snakemake_log(log)
    assert rec["finished_jobs"] == 2 and rec["elapsed_s"] == pytest.approx(3031.864855)


def test_from_results_without_benchmarks_fails_clearly(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        bench_pipeline.read_results(tmp_path)


@pytest.mark.slow
def test_importtime_names_heavy_packages():
    rec = bench_pipeline.importtime("import json, numpy")
    assert "numpy" in rec["top_level_s"] and "torch" not in rec["top_level_s"]
    assert _positive(rec["total_s"]) and rec["total_s"] >= rec["top_level_s"]["numpy"]


@pytest.mark.slow
def test_startup_mode_with_results(fake_results, tmp_path):
    out, md = tmp_path / "s.json", tmp_path / "s.md"
    _run(
        "bench_pipeline.py",
        "--startup",
        "--startup-repeats",
        "1",
        "--startup-commands",
        "unlearn,aggregate",
        "--from-results",
        str(fake_results),
        "--out",
        str(out),
        "--out-md",
        str(md),
    )
    res = json.loads(out.read_text())
    times = res["startup"]["median_s"]
    for key in (
        "python -c pass",
        "import torch",
        "import pbu.cli",
        "pbu --help",
        "pbu unlearn imports",
    ):
        assert _positive(times[key])
    assert "torch" in res["startup"]["importtime"]["unlearn"]["top_level_s"]
    assert set(res["startup_share_of_mean_job"]) == {"unlearn", "aggregate"}
    assert "pbu pretrain imports" not in times
    assert "## Start-up cost per job" in md.read_text()


# ------------------------------------------------------------------------------------------
# gpu_check.sh: the one command for a session lent a GPU (its logic, here in CPU mode)
# ------------------------------------------------------------------------------------------


def _gpu_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path / "gpu"
    full = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OUT": str(out),
        "TMPDIR": str(tmp_path),
        "PYTHON": sys.executable,
        "GPU_CHECK_SITE": str(tmp_path / "site"),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, json.loads((out / "gpu_check.json").read_text()), out


@pytest.mark.slow
def test_gpu_check_cpu_mode_writes_the_promised_files(tmp_path):
    """The script end to end in CPU mode on the steps that take seconds (all of them take
    ~95 s here: the pytest and rules steps are covered by their own tests)."""
    proc, res, out = _gpu_check(
        tmp_path,
        GPU_CHECK_DEVICE="cpu",
        GPU_CHECK_STEPS="env,train,fisher_small,pipeline,train_compile",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "== all steps passed" in proc.stdout
    steps = {s["step"]: s for s in res["steps"]}
    assert list(steps) == ["env", "train", "fisher_small", "pipeline", "train_compile"]
    assert all(
        steps[s]["status"] == "passed" and steps[s]["rc"] == 0
        for s in ("env", "train", "fisher_small", "pipeline")
    )
    assert steps["train_compile"]["status"] == "skipped"  # torch.compile: CUDA only
    assert res["all_passed"] and res["finished"] and res["device"] == "cpu"
    assert res["env"]["torch"] and res["env"]["imports"]["pbu.fisher"] == "ok"
    # at most 8 files come back from the device, no folders
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "bench_fisher.json",
        "bench_pipeline.json",
        "bench_train.json",
        "gpu_check.json",
        "gpu_check.log",
    ]
    assert all((out / f).is_file() for f in files)
    h = res["headline"]
    for model in ("resnet18", "small_cnn"):
        t = h["train_images_per_s"][model]
        assert _positive(t["fp32"]["images_per_s"]) and _positive(t["cl"]["images_per_s"])
        assert t["best"]["images_per_s"] == max(t["fp32"]["images_per_s"], t["cl"]["images_per_s"])
    assert "target_met" not in h["train_images_per_s"]["resnet18"]["best"]  # judged on CUDA
    fisher = json.loads((out / "bench_fisher.json").read_text())
    assert [r["model"] for r in fisher["results"]] == ["small_cnn"]
    f = h["fisher"]["small_cnn"]
    assert _positive(f["ours_true_images_per_s"]) and _positive(f["ours_true_over_nngeometry"])
    assert f["vs_nngeometry_test_nonfinite"] == 0 and f["trained"]
    p = h["pbu_over_oracle"]
    assert _positive(p["pbu_over_oracle_wall"]) and p["device"] == "cpu"
    log = (out / "gpu_check.log").read_text()
    for step in ("env", "train", "fisher_small", "pipeline"):
        assert f"== {step}: passed" in log
    assert "wrote" in log  # the benchmarks' own output is in the log


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_check_goes_on_after_a_failed_step_and_exits_nonzero(tmp_path):
    """CUDA mode on a machine without CUDA: each step fails, the next still runs."""
    proc, res, out = _gpu_check(tmp_path, GPU_CHECK_DEVICE="cuda", GPU_CHECK_STEPS="env,train")
    assert proc.returncode == 1
    assert [(s["step"], s["status"]) for s in res["steps"]] == [
        ("env", "failed"),
        ("train", "failed"),
    ]
    assert not res["all_passed"] and res["finished"]
    assert "no .whl/" in proc.stdout or list((ROOT / ".whl").glob("*.whl"))
    assert "NOT all steps passed: env=failed train=failed" in proc.stdout


@pytest.mark.slow
def test_gpu_check_budget_limits_every_step(tmp_path):
    """Each step gets at most what is left of GPU_CHECK_BUDGET; under 15 s none starts."""
    proc, res, _ = _gpu_check(tmp_path, GPU_CHECK_DEVICE="cpu", GPU_CHECK_BUDGET="10")
    assert proc.returncode == 1
    assert {s["step"]: s["status"] for s in res["steps"]} == {
        "env": "no_time",
        "pytest": "no_time",
        "train": "no_time",
        "fisher_small": "no_time",
        "fisher_resnet": "no_time",
        "pipeline": "no_time",
        "rules": "no_time",
        "train_compile": "skipped",
    }
    assert not res["all_passed"]


def test_gpu_check_rules_records_every_rule(tmp_path, monkeypatch):
    """The rules step's bookkeeping, with each pbu job run in this process (the script runs
    each as a fresh process, as Snakemake does)."""
    from pbu.cli import main

    def in_process(argv, log):
        log.write(f"$ pbu {' '.join(argv)}\n")
        return main(argv), 0.5

    monkeypatch.setattr(gpu_check, "_pbu", in_process)
    out = tmp_path / "rules.json"
    rc = gpu_check.main(
        [
            "rules",
            "--device",
            "cpu",
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(out),
            "--methods",
            "pbu,random_labels",
            "--max-train-per-class",
            "20",
            "--epochs",
            "1",
            "--eval-settings",
            '{"relearn": false, "probe": false, "mia_max_samples": 40}',
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["all_ok"] and res["methods"] == ["pbu", "random_labels"]
    assert [j["job"] for j in res["jobs"]] == [
        "download",
        "pretrain",
        "oracle",
        "fisher",
        "unlearn_pbu",
        "unlearn_random_labels",
        "evaluate",
    ]
    assert set(res["per_rule"]) == {
        "download",
        "pretrain",
        "oracle",
        "fisher",
        "unlearn",
        "evaluate",
    }
    assert res["per_rule"]["unlearn"]["jobs"] == 2
    by = {j["job"]: j for j in res["jobs"]}
    for job in ("pretrain", "oracle", "fisher", "unlearn_pbu", "evaluate"):
        assert _positive(by[job]["time_s"]) and _positive(by[job]["peak_rss_mb"]), job
        assert by[job].get("device", "cpu") == "cpu", job  # evaluate records no device
        assert "peak_gpu_mb" not in by[job], job  # CPU: no GPU record
    assert res["per_rule"]["unlearn"]["max_time_s"] == max(
        by["unlearn_pbu"]["time_s"], by["unlearn_random_labels"]["time_s"]
    )
    assert res["pbu_own_time_over_oracle_own_time"] == pytest.approx(
        (by["fisher"]["time_s"] + by["unlearn_pbu"]["time_s"]) / by["oracle"]["time_s"]
    )
    assert set(res["accuracies"]) == {"oracle", "original", "pbu", "random_labels"}
    assert res["recipe"]["epochs"] == 1 and res["fisher"]["kind"] == "true"


def test_gpu_check_summary_merges_fisher_runs_and_counts_tests(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(), work.mkdir()
    head = {"device": "cuda", "device_name": "NVIDIA H100", "torch": "2.11"}
    for model, ratio in (("small_cnn", 2.0), ("resnet18", 3.0)):
        (work / f"bench_fisher_{model}.json").write_text(
            json.dumps(
                {
                    **head,
                    "results": [
                        {
                            "model": model,
                            "n": 8,
                            "trained": False,
                            "data": "random",
                            "methods": {
                                "ours_true": {
                                    "images_per_s": 10 * ratio,
                                    "ratio_vs_nngeometry": ratio,
                                },
                                "nngeometry_true": {
                                    "images_per_s": 10.0,
                                    "ratio_vs_nngeometry": 1.0,
                                },
                            },
                            "vs_nngeometry": {
                                "max_rel_diff_tensor": 1e-6,
                                "ref_nan": 3,
                                "test_nonfinite": 0,
                                "entries": 100,
                            },
                        }
                    ],
                }
            )
        )
    (out / "bench_train.json").write_text(
        json.dumps(
            {
                "machine": {"device": "cuda"},
                "rows": [
                    {
                        "model": "resnet18",
                        "variant": "fp32",
                        "what": "train_model",
                        "images_per_s": 9000.0,
                        "peak_gpu_mb": 900.0,
                    },
                    {
                        "model": "resnet18",
                        "variant": "loader_only",
                        "what": "loader",
                        "images_per_s": 1e6,
                    },
                ],
            }
        )
    )
    (out / "bench_train_compile.json").write_text(
        json.dumps(
            {
                "machine": {"device": "cuda"},
                "rows": [
                    {
                        "model": "resnet18",
                        "variant": "cl_bf16_compile",
                        "what": "train_model",
                        "images_per_s": 30000.0,
                    }
                ],
            }
        )
    )
    (work / "pytest.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="14" failures="1" errors="0" skipped="2">'
        "</testsuite></testsuites>"
    )
    steps = work / "steps.tsv"
    steps.write_text("env\tpassed\t0\t3\t60\ntrain\ttimeout\t124\t150\t150\n")
    assert (
        gpu_check.main(
            [
                "summary",
                "--steps",
                str(steps),
                "--out-dir",
                str(out),
                "--work",
                str(work),
                "--device",
                "cuda",
            ]
        )
        == 0
    )
    res = json.loads((out / "gpu_check.json").read_text())
    assert not res["all_passed"] and [s["status"] for s in res["steps"]] == ["passed", "timeout"]
    h = res["headline"]
    best = h["train_images_per_s"]["resnet18"]["best"]
    assert best == {
        "variant": "cl_bf16_compile",
        "images_per_s": 30000.0,
        "target_images_per_s": 25000.0,
        "target_met": True,
    }
    assert h["train_images_per_s"]["resnet18"]["fp32"]["peak_gpu_mb"] == 900.0
    assert "loader_only" not in h["train_images_per_s"]["resnet18"]
    merged = json.loads((out / "bench_fisher.json").read_text())
    assert merged["device_name"] == "NVIDIA H100"
    assert sorted(r["model"] for r in merged["results"]) == ["resnet18", "small_cnn"]
    assert h["fisher"]["resnet18"]["ours_true_over_nngeometry"] == 3.0
    assert h["fisher"]["small_cnn"]["vs_nngeometry_ref_nan"] == 3
    assert h["pytest"] == {"tests": 14, "failures": 1, "errors": 0, "skipped": 2, "passed": 11}


@pytest.mark.slow
def test_bench_fisher_compares_the_chain_with_the_layer_paths(tmp_path):
    out = tmp_path / "f.json"
    _run(
        "bench_fisher.py",
        "--models",
        "small_cnn",
        "--n",
        "24",
        "--batch-size",
        "8",
        "--chunk-size",
        "8",
        "--threads",
        "1",
        "--skip-nngeometry",
        "--layers",
        "--plain",
        "--unstacked",
        "--cpu-blocks",
        "--out",
        str(out),
    )
    report = json.loads(out.read_text())
    info = report["results"][0]
    assert {
        "ours_true",
        "ours_true_layers",
        "ours_true_plain",
        "ours_true_unstacked",
        "ours_true_cpu_blocks",
    } <= set(info["methods"])
    assert _positive(info["layers_over_default_cpu"]) and _positive(info["plain_over_shortcut_cpu"])
    assert _positive(info["unstacked_over_default_wall"])
    assert _positive(info["cpu_blocks_over_default_wall"])
    # three code paths, one Fisher; the GPU-only knobs leave a CPU run's numbers as they are
    assert info["vs_layers"]["max_rel_diff_entry"] < 1e-4
    assert info["vs_plain"]["max_rel_diff_tensor"] < 1e-5
    assert info["vs_unstacked"]["max_rel_diff_entry"] == 0
    assert info["vs_cpu_blocks"]["max_rel_diff_entry"] == 0
    assert report["tf32_cudnn_for_nngeometry"] is False  # a CPU run: no TF32 anywhere


def test_bench_eval_batch_rows_and_ratios(tmp_path):
    """In process (no subprocess): every (batch size, format) is timed, the ratio is to the first
    batch size, and the batch size never changes the accuracy the check reports."""
    out = tmp_path / "eval_batch.json"
    assert (
        bench_eval_batch.main(
            [
                "--batch-sizes",
                "16,64",
                "--images",
                "96",
                "--repeats",
                "1",
                "--calls",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert {(r["batch_size"], r["memory_format"]) for r in rows} == {
        (b, f) for b in (16, 64) for f in ("contiguous", "channels_last")
    }
    for r in rows:
        assert r["wall_s_per_1000"] > 0 and r["cpu_s_per_1000"] > 0
        ref = next(
            q for q in rows if q["batch_size"] == 16 and q["memory_format"] == r["memory_format"]
        )
        assert math.isclose(
            r["cpu_vs_first_batch_size"], r["cpu_s_per_1000"] / ref["cpu_s_per_1000"]
        )
    assert len({r["accuracy"] for r in rows}) == 1  # same model, same images: same answer


@pytest.mark.slow
def test_bench_scheduler_runs_both_arms_and_the_hook_releases_the_exit(tmp_path):
    """A tiny run: every arm makes all outputs, ratios are to the first arm, and with a 60 s
    timespan the workflow's onsuccess hook finds pending timers and cancels them, so none is
    left to hold Snakemake's exit."""
    out = tmp_path / "sched.json"
    argv = ["--arms", "default,100000/60s", "--jobs", "6", "--job-seconds", "0.1"]
    assert bench_scheduler.main([*argv, "--repeats", "1", "--out", str(out)]) == 0
    rows = {r["arm"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"default", "100000/60s"}
    assert rows["default"]["cpu_vs_first"] == 1.0
    for r in rows.values():
        assert _positive(r["wall_s"]) and _positive(r["cpu_s"])
    long = rows["100000/60s"]
    assert long["timers_cancelled"][0] >= 1
    assert long["timers_left"] == [0]  # cancelled timers end at once; a live one would wait 60 s
