"""pbu.tracking on a hand-made results folder with its own temporary SQLite store: each run's
start and end are its job's own, its dataset is logged as an input, and its metrics equal the
ones runs.csv has (so the UI, the tables and the report agree)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from fake_results import DATA, FISHER_S, METHOD_S, T0, make_results, span

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tracking")
    mfile = make_results(tmp_path / "results")
    from pbu.tracking import track_results

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = track_results(None, tracking_uri=uri, experiment="pbu-test",
                            out=tmp_path / "tracked.json", metrics_files=[str(mfile)])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pbu-test")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {"client": client, "exp": exp, "runs": runs, "summary": summary, "uri": uri,
            "tmp": tmp_path, "mfile": mfile}


def _run(store, rule: str, method: str):
    return next(r for r in store["runs"] if r.data.tags["rule"] == rule
                and r.data.tags["method"] == method)


def test_runs_start_and_end_when_their_jobs_did(store):
    expected = {("unlearn", "pbu"): span(30, METHOD_S["pbu"]),
                ("unlearn", "finetune"): span(35, METHOD_S["finetune"]),
                ("fisher", "pbu"): span(20, FISHER_S)}
    for (rule, method), sp in expected.items():
        info = _run(store, rule, method).info
        assert info.start_time == int(sp["started_at"] * 1000), (rule, method)
        assert info.end_time == math.ceil(sp["ended_at"] * 1000), (rule, method)
    for r in store["runs"]:
        if r.data.tags["rule"] in ("unlearn", "retrain", "fisher", "pretrain"):
            # the Done-means check: no run is shorter than the time its job measured
            duration_s = (r.info.end_time - r.info.start_time) / 1000
            assert duration_s >= r.data.metrics["time_s"], r.data.tags
            assert r.info.start_time >= T0 * 1000  # never the logging time


def test_metrics_equal_runs_csv(store):
    from pbu.aggregate import aggregate

    paths = aggregate(store["tmp"] / "results", store["tmp"] / "agg")
    with open(paths["runs"]) as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    for method in ("original", "oracle", "pbu", "finetune"):
        rule = {"original": "evaluate", "oracle": "retrain"}.get(method, "unlearn")
        logged = _run(store, rule, method).data.metrics
        for key in ("time_s", "total_time_s", "acc_forget_test", "mia_entropy_svc",
                    "mia_entropy_svc_bad_teaching", "anamnesis_index", "zrf_forget_test"):
            assert logged[key] == pytest.approx(float(rows[method][key])), (method, key)
    pbu = _run(store, "unlearn", "pbu").data.metrics
    assert pbu["total_time_s"] == pytest.approx(METHOD_S["pbu"] + FISHER_S)
    assert pbu["time_s"] == pytest.approx(METHOD_S["pbu"])


def test_trajectories_never_replace_the_final_metrics(store):
    """The monitored per-step accuracy (3.0 at step 2) is a curve of its own; the run's
    acc_forget_test stays the evaluation's (4.0), which the compare view shows."""
    run = _run(store, "unlearn", "pbu")
    assert run.data.metrics["acc_forget_test"] == pytest.approx(4.0)
    curve = store["client"].get_metric_history(run.info.run_id, "trajectory/acc_forget_test")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(1, 50.0),
                                                                                (2, 3.0)]


def test_dataset_logged_as_each_runs_input(store):
    for r in store["runs"]:
        if r.data.tags["rule"] in ("report", "tune", "tune_trial"):
            continue
        inputs = r.inputs.dataset_inputs
        assert len(inputs) == 1, r.data.tags
        ds = inputs[0].dataset
        assert (ds.name, ds.digest) == (DATA["name"], DATA["digest"])
        profile = json.loads(ds.profile)
        assert profile["retain_train"] == 3600 and profile["forget_test"] == 100
        context = {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"]
        if r.data.tags["rule"] == "unlearn":
            assert context == {"pbu": "forget", "finetune": "all retain"}[r.data.tags["method"]]


def test_experiment_is_described_and_retracking_changes_nothing(store):
    note = store["exp"].tags["mlflow.note.content"]
    assert "finetune, pbu" in note and "forget classes: 2" in note and "total_time_s" in note
    from pbu.tracking import track_results

    again = track_results(None, tracking_uri=store["uri"], experiment="pbu-test",
                          out=store["tmp"] / "again.json", metrics_files=[str(store["mfile"])])
    assert again["created"] == 0 and again["unchanged"] == again["runs"]
