"""The MLflow mirror of the forget score (pbu.track_plan, no tracking server): each model's run
gets its method's numbers for its forget class (the original model the floor's, the oracle the
ceiling's) and its own per-image summary."""

from __future__ import annotations

import csv
from pathlib import Path

from pbu import layout
from pbu.track_plan import forget_score_metrics, plan_jobs

from .fake_results import GROUPS, make_results


def _csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _tables(root):
    """Hand-made forget-score tables: a distinct score per (class, row), pooled rows that must
    not be logged, a ceiling oracle of a further seed that belongs to no group."""
    table, runs = [], []
    names = {"pbu": 0.1, "finetune": 0.2, "floor": 0.0, "ceiling": 0.3}
    for forget in (2, 6, "all"):
        for name, score in names.items():
            bump = 0.0 if forget == "all" else forget / 100
            table.append(
                {"dataset": "mnist5k", "arch": "small_cnn", "forget": forget, "method": name,
                 "score": score + bump, "eps_median": 10 + score, "eps_cap_share": 0.5,
                 "offset_sd_signed_median": -2.0, "n_models": 2, "direction": "over-forgetting"}
            )  # fmt: skip
    for seed, forget in GROUPS:
        for k, name in enumerate(("original", "oracle", "pbu", "finetune")):
            runs.append(
                {"dataset": "mnist5k", "arch": "small_cnn", "seed": seed, "forget": forget,
                 "method": name, "ceiling": False, "conf_median": -(seed + forget + k),
                 "conf_offset_sd_median": k / 10}
            )  # fmt: skip
    runs.append(dict(runs[1], seed=40, ceiling=True, conf_median=99.0))
    agg = root / "aggregate"
    _csv(agg / "forget_score.csv", table)
    _csv(agg / "forget_score_runs.csv", runs)
    return agg


def test_each_models_run_gets_its_forget_score_and_its_own_summary(tmp_path):
    root = tmp_path / "results"
    files = [make_results(root, forget, seed, i) for i, (seed, forget) in enumerate(GROUPS)]
    agg = _tables(root)
    assert agg == Path(layout.path("forget_score_csv", root)).parent
    plain = {j.job: j for j in plan_jobs(files)}
    jobs = {j.job: j for j in plan_jobs(files, agg)}
    assert set(jobs) == set(plain)  # the same runs, with more metrics
    seen = 0
    for job in jobs.values():
        method, rule = job.tags.get("method"), job.tags.get("rule")
        if rule not in ("unlearn", "oracle", "evaluate") or method == "all":
            assert job.metrics == plain[job.job].metrics
            continue
        seed, forget = int(job.tags["seed"]), int(job.tags["forget"])
        row = {"original": "floor", "oracle": "ceiling"}.get(method, method)
        base = {"pbu": 0.1, "finetune": 0.2, "floor": 0.0, "ceiling": 0.3}[row]
        assert job.metrics["forget_score"] == base + forget / 100, job.job
        assert job.metrics["forget_score_eps_median"] == 10 + base
        assert job.metrics["forget_score_offset_sd_signed_median"] == -2.0
        k = ("original", "oracle", "pbu", "finetune").index(method)
        assert job.metrics["conf_median"] == -(seed + forget + k)  # its own, not the ceiling's
        assert job.metrics["conf_offset_sd_median"] == k / 10
        for key, value in plain[job.job].metrics.items():
            assert job.metrics[key] == value
        seen += 1
    assert seen == 4 * len(GROUPS)


def test_without_tables_nothing_is_added(tmp_path):
    assert forget_score_metrics(None) == ({}, {})


def test_the_sqlite_store_commits_without_fsync(tmp_path):
    """The mirror's SQLite connections skip the disk wait (half of tracking's time); a plain
    sqlite3 connection made by anyone else keeps SQLite's default."""
    import sqlite3

    from sqlalchemy import create_engine, text

    from pbu.tracking import fast_sqlite_commits

    fast_sqlite_commits()
    fast_sqlite_commits()  # once per process, however often asked
    engine = create_engine(f"sqlite:///{tmp_path}/x.db")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 0
    plain = sqlite3.connect(tmp_path / "y.db")
    assert plain.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, the default
