"""`track_results` on a hand-made results folder: what MLflow shows is what the files say.

Each test gets its own SQLite store under ``tmp_path`` (its own tracking URI), so nothing is
shared between tests or with a real results folder.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow")

from pbu.tracking import track_results  # noqa: E402

RULE = {"original": "evaluate", "oracle": "retrain"}


@pytest.fixture
def tracked(tmp_path, mlflow_uri, fake_results):
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    expected = fake_results(results)
    uri = mlflow_uri
    summary = track_results(results, tracking_uri=uri, experiment="t",
                            out=tmp_path / "mlflow/tracked.json")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([summary["experiment_id"]], max_results=1000)
    return expected, runs, client, summary


def test_every_runs_metrics_equal_its_metrics_json_key_by_key(tracked):
    expected, runs, _, _ = tracked
    by_job = {}
    for r in runs:
        t = r.data.tags
        if t["rule"] in ("evaluate", "retrain", "unlearn") and t["method"] != "all":
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
        assert not wrong, (f"{'/'.join(key)}: MLflow shows (run, metrics.json) = {wrong}: the "
                           f"compare view does not show the evaluation's numbers")


def test_per_step_histories_are_kept_beside_the_evaluation(tracked):
    """A method's per-step trajectory stays in MLflow with its steps (under another name when
    the evaluation reports a number of that name), and the loss terms keep their own names."""
    expected, runs, client, _ = tracked
    run = next(r for r in runs if r.data.tags["rule"] == "unlearn"
               and r.data.tags["method"] == "pbu" and r.data.tags["forget"] == "6")
    terms = client.get_metric_history(run.info.run_id, "term_forget")
    assert sorted((m.step, m.value) for m in terms) == [(s, -s * 1.0) for s in range(4)]
    traj = client.get_metric_history(run.info.run_id, "trajectory/acc_forget_test")
    assert sorted((m.step, m.value) for m in traj) == [(s, 90.0 - 30 * s) for s in range(4)]
    final = client.get_metric_history(run.info.run_id, "acc_forget_test")
    want = expected[("mnist5k", "small_cnn", "0", "6", "pbu")]["acc_forget_test"]
    assert [m.value for m in final] == [pytest.approx(want)], \
        "acc_forget_test mixes the evaluation with the per-step trajectory"


def test_a_second_tracking_changes_nothing(tracked, tmp_path):
    _, runs, _, summary = tracked
    again = track_results(tmp_path / "results", tracking_uri=summary["tracking_uri"],
                          experiment="t", out=tmp_path / "mlflow/tracked2.json")
    assert again["created"] == 0 and again["unchanged"] == again["runs"] == len(runs)
