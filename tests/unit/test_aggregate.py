"""pbu.aggregate on a hand-made results folder: every time in runs.csv / timings.csv checked
against the job records it comes from (tests/unit/fake_results.py)."""

from __future__ import annotations

import csv

import pytest

from pbu.aggregate import aggregate, collect, total_time

from .fake_results import (
    EPOCHS,
    FISHER_S,
    METHOD_S,
    ORACLE_S,
    PARAMETERS,
    PRETRAIN_S,
    TUNE_S,
    make_results,
    metrics_of,
)


@pytest.fixture
def runs(tmp_path):
    make_results(tmp_path / "results")
    paths = aggregate(tmp_path / "results", tmp_path / "agg")
    with open(paths["runs"]) as fh:
        return {r["method"]: r for r in csv.DictReader(fh)}


def test_headline_time_includes_prerequisites(runs):
    pbu = runs["pbu"]
    # PBU from θ*: its Fisher, then its steps; the method alone is its own column
    assert float(pbu["time_s"]) == pytest.approx(METHOD_S["pbu"])
    assert float(pbu["fisher_time_s"]) == pytest.approx(FISHER_S)
    assert float(pbu["total_time_s"]) == pytest.approx(METHOD_S["pbu"] + FISHER_S)
    assert float(pbu["total_time_per_epoch_s"]) == pytest.approx(
        (METHOD_S["pbu"] + FISHER_S) / EPOCHS["pbu"]
    )
    # a tuned method: the tuning that chose its hyperparameters is part of what it needs
    ft = runs["finetune"]
    assert float(ft["tune_time_s"]) == pytest.approx(TUNE_S)
    assert float(ft["total_time_s"]) == pytest.approx(METHOD_S["finetune"] + TUNE_S)
    assert ft["fisher_time_s"] == ""  # finetune takes no Fisher
    # the oracle and the original model: their training (without evaluation), nothing added
    assert float(runs["oracle"]["total_time_s"]) == pytest.approx(ORACLE_S)
    assert float(runs["original"]["total_time_s"]) == pytest.approx(PRETRAIN_S)


def test_metrics_and_facts_reach_runs_csv(runs):
    for method, row in runs.items():
        for key, value in metrics_of(method).items():
            assert float(row[key]) == pytest.approx(value), (method, key)
        assert int(row["parameters"]) == PARAMETERS  # counted by the pretraining job


def test_timings_csv_has_the_same_totals(tmp_path):
    make_results(tmp_path / "results")
    _, _, timings = collect(tmp_path / "results")
    by_method = {t["method"]: t for t in timings}
    assert by_method["pbu"]["total_time_s"] == pytest.approx(METHOD_S["pbu"] + FISHER_S)
    assert by_method["fisher"]["time_s"] == pytest.approx(FISHER_S)
    assert by_method["pretrain"]["time_s"] == pytest.approx(PRETRAIN_S)


def test_total_time_is_unknown_when_a_part_is():
    # a Fisher record without a time: the total cannot be stated, so it is not invented
    out = total_time("pbu", {"time_s": 1.0, "epochs": 1.0, "fisher": "f.pt"}, {}, None)
    assert out["total_time_s"] is None and out["total_time_per_epoch_s"] is None
    # a method whose job took a Fisher file counts it, whatever its name (variants)
    out = total_time(
        "pbu_variant", {"time_s": 1.0, "epochs": 2.0, "fisher": "f.pt"}, {"time_s": 0.5}, None
    )
    assert out["total_time_s"] == pytest.approx(1.5)
    assert out["total_time_per_epoch_s"] == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------
# `aggregate` on a hand-made results folder: each row of runs.csv holds its own job's numbers.
# ------------------------------------------------------------------------------------------


import json

import pytest


def test_runs_csv_rows_hold_their_jobs_metrics_times_and_access(tmp_path, fake_results):
    results = tmp_path / "results"
    expected = fake_results(results)
    paths = aggregate(results, tmp_path / "agg")
    rows = {
        (r["dataset"], r["arch"], r["seed"], r["forget"], r["method"]): r
        for r in csv.DictReader(open(paths["runs"]))
    }
    assert set(rows) == set(expected), sorted(set(rows) ^ set(expected))
    for key, metrics in expected.items():
        row = rows[key]
        wrong = {
            k: (row.get(k), v)
            for k, v in metrics.items()
            if row.get(k) in (None, "") or float(row[k]) != pytest.approx(v)
        }
        assert not wrong, f"{'/'.join(key)}: runs.csv has (row, metrics.json) = {wrong}"
        dataset, arch, seed, forget, method = key
        seed_dir = results / dataset / arch / f"seed{seed}"
        info = json.loads(
            (
                (seed_dir / "pretrain")
                if method == "original"
                else (seed_dir / f"forget{forget}" / method)
            )
            .joinpath("info.json")
            .read_text()
        )
        assert float(row["time_s"]) == pytest.approx(info["time_s"]), (
            f"{'/'.join(key)}: time_s {row['time_s']} is not its own job's {info['time_s']}"
        )
        # the oracle's record, as the pipeline writes it, states no access: "-"
        assert row["data_access"] == ("-" if method == "original" else info.get("data_access", "-"))
        if method == "pbu":
            fisher = json.loads((seed_dir / f"forget{forget}" / "fisher.json").read_text())
            want = info["time_s"] + fisher["time_s"]
            assert float(row["total_time_s"]) == pytest.approx(want), (
                f"{'/'.join(key)}: PBU's time with its Fisher is {row['total_time_s']}, "
                f"not its time {info['time_s']} + the Fisher's {fisher['time_s']}"
            )
    history = list(csv.DictReader(open(paths["history"])))
    assert len(history) == 2 * 2 * 3  # pbu and finetune, 2 rows each, 3 groups
    timings = list(csv.DictReader(open(paths["timings"])))
    # 2 pretrains, a fisher per group, and oracle, pbu, finetune per group
    assert sorted(r["method"] for r in timings).count("fisher") == 3 and len(timings) == 2 + 3 * 4


@pytest.mark.parametrize(
    "record,want",
    [
        ({"protocol": "validation"}, "validation"),  # the unlearn job's own word
        ({"protocol": "blind"}, "blind"),
        ({"protocol": "config"}, "config"),
        ({}, "config"),  # older records, untuned
    ],
)
def test_protocol_reaches_runs_csv(tmp_path, record, want):
    import json

    mfile = make_results(tmp_path / "results")
    info_file = mfile.parent / "pbu" / "info.json"
    info = json.loads(info_file.read_text())
    info.pop("protocol", None)
    info_file.write_text(json.dumps({**info, **record}))
    paths = aggregate(tmp_path / "results", tmp_path / "agg")
    with open(paths["runs"]) as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert rows["pbu"]["protocol"] == want
    # finetune's record (from before the protocols) names a tuning record: blind
    assert rows["finetune"]["protocol"] == "blind"
    assert rows["original"]["protocol"] == rows["oracle"]["protocol"] == "config"
