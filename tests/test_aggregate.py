"""pbu.aggregate on a hand-made results folder: every time in runs.csv / timings.csv checked
against the job records it comes from (tests/fake_results.py)."""

from __future__ import annotations

import csv

import pytest

from fake_results import (EPOCHS, FISHER_S, METHOD_S, ORACLE_S, PARAMETERS, PRETRAIN_S, TUNE_S,
                          make_results, metrics_of)
from pbu.aggregate import aggregate, collect, total_time


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
        (METHOD_S["pbu"] + FISHER_S) / EPOCHS["pbu"])
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
    out = total_time("pbu_variant", {"time_s": 1.0, "epochs": 2.0, "fisher": "f.pt"},
                     {"time_s": 0.5}, None)
    assert out["total_time_s"] == pytest.approx(1.5)
    assert out["total_time_per_epoch_s"] == pytest.approx(0.75)
