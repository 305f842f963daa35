"""pbu.tracking on a hand-made results folder with its own temporary SQLite store: each run's
start and end are its job's own, its dataset is logged as an input, and its metrics equal the
ones runs.csv has (so the UI, the tables and the report agree)."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest

from .fake_results import DATA, FISHER_S, GROUPS, METHOD_S, T0, history_of, make_results, span

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory, _empty_mlflow_db):
    tmp_path = tmp_path_factory.mktemp("tracking")
    mfile = make_results(tmp_path / "results")
    from pbu.tracking import track_results

    shutil.copyfile(_empty_mlflow_db, tmp_path / "mlflow.db")  # this module's own store
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = track_results(
        None,
        tracking_uri=uri,
        experiment="pbu-test",
        out=tmp_path / "tracked.json",
        metrics_files=[str(mfile)],
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pbu-test")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {
        "client": client,
        "exp": exp,
        "runs": runs,
        "summary": summary,
        "uri": uri,
        "tmp": tmp_path,
        "mfile": mfile,
    }


def _run(store, rule: str, method: str):
    return next(
        r for r in store["runs"] if r.data.tags["rule"] == rule and r.data.tags["method"] == method
    )


def test_runs_start_and_end_when_their_jobs_did(store):
    expected = {
        ("unlearn", "pbu"): span(30, METHOD_S["pbu"]),
        ("unlearn", "finetune"): span(35, METHOD_S["finetune"]),
        ("fisher", "pbu"): span(20, FISHER_S),
    }
    for (rule, method), sp in expected.items():
        info = _run(store, rule, method).info
        assert info.start_time == int(sp["started_at"] * 1000), (rule, method)
        assert info.end_time == math.ceil(sp["ended_at"] * 1000), (rule, method)
    for r in store["runs"]:
        if r.data.tags["rule"] in ("unlearn", "oracle", "fisher", "pretrain"):
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
        rule = {"original": "evaluate", "oracle": "oracle"}.get(method, "unlearn")
        logged = _run(store, rule, method).data.metrics
        for key in (
            "time_s",
            "total_time_s",
            "acc_forget_test",
            "mia_entropy_svc",
            "mia_entropy_svc_bad_teaching",
            "anamnesis_index",
            "zrf_forget_test",
        ):
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
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(1, 50.0), (2, 3.0)]


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


def test_unlearn_and_tune_runs_say_which_protocol_chose_the_hyperparameters(store):
    # pbu's record names no tuning record: the config's values; finetune's names one written
    # before the protocols existed: blind
    assert _run(store, "unlearn", "pbu").data.tags["protocol"] == "config"
    assert _run(store, "unlearn", "finetune").data.tags["protocol"] == "blind"
    assert _run(store, "tune", "finetune").data.params["protocol"] == "blind"


def test_experiment_is_described_and_retracking_changes_nothing(store):
    note = store["exp"].tags["mlflow.note.content"]
    assert "finetune, pbu" in note and "forget classes: 2" in note and "total_time_s" in note
    from pbu.tracking import track_results

    again = track_results(
        None,
        tracking_uri=store["uri"],
        experiment="pbu-test",
        out=store["tmp"] / "again.json",
        metrics_files=[str(store["mfile"])],
    )
    assert again["created"] == 0 and again["unchanged"] == again["runs"]


def test_experiment_opens_as_model_training_and_names_its_runs_table(store):
    """MLflow 3 opens an experiment on its GenAI overview ("Traces 0") unless it is marked as
    model training (the kind tag; in 3.17 the workflowType parameter of the link): the
    description and the track record give the runs table's route with it."""
    exp_id = store["exp"].experiment_id
    route = f"#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert store["exp"].tags["mlflow.experimentKind"] == "custom_model_development"
    assert route in store["exp"].tags["mlflow.note.content"]
    assert store["summary"]["runs_table"] == route


def test_each_group_has_a_compare_view_of_exactly_its_children(store):
    """tracked.json gives, per evaluate parent run, the compare view of its children (the
    oracle, the Fisher, the original model, each method), in the UI's own URL format."""
    import json as _json
    from urllib.parse import parse_qs, urlsplit

    views = store["summary"]["compare_views"]
    parents = [
        r
        for r in store["runs"]
        if r.data.tags.get("rule") == "evaluate" and r.data.tags.get("method") == "all"
    ]
    assert parents and set(views) == {p.info.run_name for p in parents}
    for p in parents:
        query = parse_qs(urlsplit(views[p.info.run_name].removeprefix("#")).query)
        children = {
            r.info.run_id
            for r in store["runs"]
            if r.data.tags.get("mlflow.parentRunId") == p.info.run_id
        }
        assert set(_json.loads(query["runs"][0])) == children
        assert _json.loads(query["experiments"][0]) == [store["exp"].experiment_id]


# ------------------------------------------------------------------------------------------
# `track_results` on a hand-made results folder: what MLflow shows is what the files say.
# ------------------------------------------------------------------------------------------


import pytest

pytest.importorskip("mlflow")

from pbu.tracking import track_results  # noqa: E402

RULE = {"original": "evaluate", "oracle": "oracle"}


@pytest.fixture
def tracked(tmp_path, mlflow_uri, fake_results):
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    expected = fake_results(results)
    uri = mlflow_uri
    summary = track_results(
        results, tracking_uri=uri, experiment="t", out=tmp_path / "mlflow/tracked.json"
    )
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([summary["experiment_id"]], max_results=1000)
    return expected, runs, client, summary


def test_every_runs_metrics_equal_its_metrics_json_key_by_key(tracked):
    expected, runs, _, _ = tracked
    by_job = {}
    for r in runs:
        t = r.data.tags
        if t["rule"] in ("evaluate", "oracle", "unlearn") and t["method"] != "all":
            key = (t["dataset"], t["arch"], t["seed"], t["forget"], t["method"])
            assert key not in by_job, f"two runs for {key}"
            assert t["rule"] == RULE.get(t["method"], "unlearn"), (key, t["rule"])
            by_job[key] = r.data.metrics
    assert set(by_job) == set(expected), f"runs missing for {sorted(set(expected) - set(by_job))}"
    for key, want in expected.items():
        got = by_job[key]
        missing = sorted(k for k in want if k not in got)
        assert not missing, f"{'/'.join(key)}: MLflow run lacks metrics {missing} of metrics.json"
        wrong = {k: (got[k], v) for k, v in want.items() if got[k] != pytest.approx(v)}
        assert not wrong, (
            f"{'/'.join(key)}: MLflow shows (run, metrics.json) = {wrong}: the "
            f"compare view does not show the evaluation's numbers"
        )


def test_per_step_histories_are_kept_beside_the_evaluation(tracked):
    """A method's per-step trajectory stays in MLflow with its steps, every series under
    ``trajectory/<name>``, so none replaces the evaluation's number of the same name."""
    expected, runs, client, _ = tracked
    run = next(
        r
        for r in runs
        if r.data.tags["rule"] == "unlearn"
        and r.data.tags["method"] == "pbu"
        and r.data.tags["forget"] == "6"
    )
    terms = client.get_metric_history(run.info.run_id, "trajectory/term_forget")
    rows = history_of(GROUPS.index((0, 6)))  # the rows written for seed0/forget6
    assert sorted((m.step, m.value) for m in terms) == [(r["step"], r["term_forget"]) for r in rows]
    traj = client.get_metric_history(run.info.run_id, "trajectory/acc_forget_test")
    assert sorted((m.step, m.value) for m in traj) == [
        (r["step"], r["acc_forget_test"]) for r in rows
    ]
    final = client.get_metric_history(run.info.run_id, "acc_forget_test")
    want = expected[("mnist5k", "small_cnn", "0", "6", "pbu")]["acc_forget_test"]
    assert [m.value for m in final] == [pytest.approx(want)], (
        "acc_forget_test mixes the evaluation with the per-step trajectory"
    )


def test_a_second_tracking_changes_nothing(tracked, tmp_path):
    _, runs, _, summary = tracked
    again = track_results(
        tmp_path / "results",
        tracking_uri=summary["tracking_uri"],
        experiment="t",
        out=tmp_path / "mlflow/tracked2.json",
    )
    assert again["created"] == 0 and again["unchanged"] == again["runs"] == len(runs)


def test_oracle_runs_logged_as_rule_retrain_are_replaced_not_duplicated(tracked, tmp_path):
    """The oracle's rule was called ``retrain`` before issue 16: a store tracked then holds its
    runs under job ``retrain/<group>/oracle``. Tracking again replaces each such run once."""
    _, runs, client, summary = tracked
    oracles = [r for r in runs if r.data.tags["method"] == "oracle"]
    assert oracles and all(r.data.tags["rule"] == "oracle" for r in oracles)
    for r in oracles:  # as the old version logged them (its digest covered rule=retrain)
        old_job = r.data.tags["pbu.job"].replace("oracle/", "retrain/", 1)
        for key, value in (("pbu.job", old_job), ("rule", "retrain"), ("pbu.digest", "old")):
            client.set_tag(r.info.run_id, key, value)
    again = track_results(
        tmp_path / "results",
        tracking_uri=summary["tracking_uri"],
        experiment="t",
        out=tmp_path / "mlflow/tracked2.json",
    )
    assert again["replaced"] == len(oracles) and again["created"] == len(oracles)
    now = client.search_runs([summary["experiment_id"]], max_results=1000)
    assert len(now) == len(runs)
    assert sorted(
        r.data.tags["pbu.job"] for r in now if r.data.tags["method"] == "oracle"
    ) == sorted(r.data.tags["pbu.job"] for r in oracles)
    assert all(r.data.tags["rule"] != "retrain" for r in now)
