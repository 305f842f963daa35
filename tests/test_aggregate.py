"""`aggregate` on a hand-made results folder: each row of runs.csv holds its own job's numbers."""

from __future__ import annotations

import csv
import json

import pytest

from pbu.aggregate import aggregate


def test_runs_csv_rows_hold_their_jobs_metrics_times_and_access(tmp_path, fake_results):
    results = tmp_path / "results"
    expected = fake_results(results)
    paths = aggregate(results, tmp_path / "agg")
    rows = {(r["dataset"], r["arch"], r["seed"], r["forget"], r["method"]): r
            for r in csv.DictReader(open(paths["runs"]))}
    assert set(rows) == set(expected), sorted(set(rows) ^ set(expected))
    for key, metrics in expected.items():
        row = rows[key]
        wrong = {k: (row.get(k), v) for k, v in metrics.items()
                 if row.get(k) in (None, "") or float(row[k]) != pytest.approx(v)}
        assert not wrong, f"{'/'.join(key)}: runs.csv has (row, metrics.json) = {wrong}"
        dataset, arch, seed, forget, method = key
        seed_dir = results / dataset / arch / f"seed{seed}"
        info = json.loads(((seed_dir / "pretrain") if method == "original" else
                           (seed_dir / f"forget{forget}" / method)).joinpath("info.json")
                          .read_text())
        assert float(row["time_s"]) == pytest.approx(info["time_s"]), \
            f"{'/'.join(key)}: time_s {row['time_s']} is not its own job's {info['time_s']}"
        assert row["data_access"] == ("-" if method == "original" else info["data_access"])
        if method == "pbu":
            fisher = json.loads((seed_dir / f"forget{forget}" / "fisher.json").read_text())
            want = info["time_s"] + fisher["time_s"]
            assert float(row["time_with_fisher_s"]) == pytest.approx(want), (
                f"{'/'.join(key)}: PBU's time with its Fisher is {row['time_with_fisher_s']}, "
                f"not its time {info['time_s']} + the Fisher's {fisher['time_s']}")
    history = list(csv.DictReader(open(paths["history"])))
    assert len(history) == 2 * 4 * 3  # pbu and finetune, 4 rows each, 3 groups
    timings = list(csv.DictReader(open(paths["timings"])))
    # 2 pretrains, a fisher per group, and oracle, pbu, finetune per group
    assert sorted(r["method"] for r in timings).count("fisher") == 3 and len(timings) == 2 + 3 * 4
