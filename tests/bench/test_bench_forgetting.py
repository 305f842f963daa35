"""benchmarks/bench_forgetting.py and the batched jobs in bench_pipeline's per-rule breakdown:
the arithmetic on hand-made records (no timing is asserted), and the job counts of the real
config from a dry run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks")]

import bench_forgetting  # noqa: E402
import bench_pipeline  # noqa: E402

from .test_benchmarks import TSV_HEADER  # noqa: E402

GROUP = "mnist5k/small_cnn/seed0/forget2"


def _tsv(results: Path, rel: str, s: float, cpu: float) -> None:
    tsv = results / "benchmarks" / rel
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text(TSV_HEADER + f"{s}\t0:00:{int(s):02d}\t300\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def _record(results: Path, rel: str, **rec) -> None:
    f = results / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(rec))


@pytest.fixture
def batched(tmp_path):
    """A run of the fork server: one batched unlearning job of three methods, one evaluation,
    one oracle, the ceiling and the forget-score jobs, each with its own record."""
    r = tmp_path / "results"
    (r / "logs").mkdir(parents=True)
    (r / "logs/pbu-server.log").write_text(
        "preloaded 40 modules in 3.0 s (3.1 s CPU); listening on /tmp/x\n"
    )
    _tsv(r, f"{GROUP}/unlearn-batch.tsv", 20.0, 0.2)
    for i, (m, cpu, t) in enumerate((("pbu", 4.0, 1.0), ("ssd", 2.0, 0.5), ("x", 1.0, 0.25))):
        _record(r, f"{GROUP}/{m}/info.json", time_s=t, cpu_s=cpu, fork_server=True,
                peak_rss_mb=100 + i, batch={"position": i})  # fmt: skip
    _record(r, f"{GROUP}/oracle/info.json", time_s=5.0, cpu_s=6.0, fork_server=True)  # no batch
    _tsv(r, f"{GROUP}/oracle.tsv", 7.0, 0.1)
    _tsv(r, f"{GROUP}/evaluate.tsv", 10.0, 0.1)
    _record(r, f"{GROUP}/metrics.json", time_s=8.0, cpu_s=9.0, fork_server=True)
    _tsv(r, "mnist5k/small_cnn/ceiling/forget2/confidences.tsv", 2.0, 0.1)
    _record(r, "mnist5k/small_cnn/ceiling/forget2/info.json", time_s=1, cpu_s=1.5, fork_server=True)
    _tsv(r, "forget_score.tsv", 3.0, 0.1)
    _record(r, "aggregate/forget_score.json", time_s=2.0, cpu_s=2.5, fork_server=True)
    return r


def test_a_batched_job_is_the_sum_of_its_methods_records(batched):
    rep = bench_pipeline.read_results(batched)
    pr = rep["per_rule"]
    assert set(pr) == {"unlearn_batch", "oracle", "evaluate", "ceiling", "forget_score"}
    b = pr["unlearn_batch"]
    assert b["jobs"] == 1 and b["total_cpu_s"] == pytest.approx(0.2 + 4 + 2 + 1)
    assert b["own_time_s"] == pytest.approx(1.75)  # the three methods' own times
    assert b["max_rss_mb"] == 300  # Snakemake's max_rss of the client and the records' 102
    assert pr["oracle"]["total_cpu_s"] == pytest.approx(6.1)  # not counted into the batch
    assert pr["ceiling"]["total_cpu_s"] == pytest.approx(1.6)
    assert pr["forget_score"]["total_cpu_s"] == pytest.approx(2.6)


def test_the_estimate_multiplies_cpu_per_job_by_the_target_counts(batched, monkeypatch):
    counts = {"unlearn_batch": 96, "oracle": 192, "evaluate": 96, "ceiling": 3, "download": 1}
    monkeypatch.setattr(bench_forgetting, "job_counts", lambda overlays: counts)
    # the run ended 30 s after its last compute job (every job here ends at its file's time)
    last = max(p.stat().st_mtime for p in (batched / "benchmarks").rglob("*.tsv"))
    end = batched / "mlflow/tracked_report.json"
    end.parent.mkdir(parents=True)
    end.write_text("{}")
    os.utime(end, (last + 30, last + 30))
    e = bench_forgetting.estimate(batched, 2, [])
    assert e["per_rule"]["unlearn_batch"]["cpu_s"] == pytest.approx(96 * 7.2)
    assert e["per_rule"]["oracle"]["cpu_s"] == pytest.approx(192 * 6.1)
    assert e["rules_without_cpu"] == ["download"]
    total = 96 * 7.2 + 192 * 6.1 + 96 * 9.1 + 3 * 1.6
    assert e["job_cpu_s"] == pytest.approx(total)
    assert e["lower_bound_wall_s"] == pytest.approx(total / 2)
    assert e["tail_s_measured"] == pytest.approx(30, abs=0.01) and e["tail_scale"] == 96
    smk = bench_forgetting.SNAKEMAKE_CPU_PER_JOB * sum(counts.values())
    eff = e["parallel_efficiency"]
    assert 0 < eff <= 1
    assert e["estimated_wall_s"] == pytest.approx((total + smk) / 2 / eff + 30 * 96, rel=1e-6)
    text = bench_forgetting.markdown({"estimate": e})
    assert "| unlearn_batch | 96 | 7.20 |" in text


@pytest.mark.slow
def test_job_counts_of_the_full_and_the_n4_config():
    full = bench_forgetting.job_counts([])
    assert full["unlearn_batch"] == 96 and full["oracle"] == 192 and full["pretrain"] == 32
    assert full["evaluate"] == 96 and full["ceiling"] == 3 and full["forget_score"] == 1
    assert "unlearn" not in full  # every method runs in the batched jobs
    n4 = bench_forgetting.job_counts([".test/forgetting-n4.yaml"])
    assert n4["unlearn_batch"] == 12 and n4["oracle"] == 24
