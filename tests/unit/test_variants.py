"""Config variants (``variants:``): a registered method plus hyperparameter overrides, run under
a name of its own. Checked here without processes: the config checks name the key, the resolved
hyperparameters are the base method's with the overrides merged, the unlearn job hands them to the
method and records the variant, and aggregate, report and tracking treat a variant as a row of
its own. The pipeline end to end (one job per variant, reruns) is tests/e2e/test_variants.py."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pbu.config import ConfigError, base_method, check_config, method_hparams, overrides

from .fake_results import FISHER_S, METHOD_S, make_results, metrics_of

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text())
ABLATION = ("pbu_no_fisher", "pbu_no_l2", "pbu_ascent", "pbu_fisher_unit")


def _check(mutate, tmp_path):
    c = copy.deepcopy(DEFAULT)
    c["results"] = str(tmp_path / "results")
    mutate(c)
    return check_config(c, SCHEMA)


# ------------------------------------------------------------------------------------------
# The config: the default ablation, resolution, and errors that name the key
# ------------------------------------------------------------------------------------------


def test_default_config_runs_pbus_ablation(tmp_path):
    c = _check(lambda c: None, tmp_path)
    assert set(ABLATION) <= set(c["methods"])
    pbu = c["hparams"]["pbu"]
    expected = {
        "pbu_no_fisher": {"beta": 0},
        "pbu_no_l2": {"gamma": 0},
        "pbu_ascent": {"beta": 0, "gamma": 0},
        # beta = gamma, splitting the authors' gamma (F has unit mean): PBU's pull, F's shape
        "pbu_fisher_unit": {
            "fisher_scale": "unit_mean",
            "beta": pbu["gamma"] / 2,
            "gamma": pbu["gamma"] / 2,
        },
    }
    for name, changed in expected.items():
        assert base_method(c, name) == "pbu" and overrides(c, name) == changed
        resolved = method_hparams(c, name)
        assert resolved == {**pbu, **changed}
        # exactly the overrides differ from PBU's own values, nothing else
        assert {k for k in pbu if resolved[k] != pbu[k]} == set(changed)
    assert base_method(c, "neggrad") == "neggrad" and overrides(c, "neggrad") == {}
    assert method_hparams(c, "neggrad") == c["hparams"]["neggrad"]


def test_a_changed_base_value_reaches_every_variant_but_not_an_override(tmp_path):
    def mutate(c):
        c["hparams"]["pbu"].update(lr=5e-4, beta=50)

    c = _check(mutate, tmp_path)
    assert all(method_hparams(c, v)["lr"] == 5e-4 for v in ABLATION)
    assert method_hparams(c, "pbu_no_l2")["beta"] == 50  # inherited
    assert method_hparams(c, "pbu_no_fisher")["beta"] == 0  # its override wins


def _variant(name, spec):
    def mutate(c):
        c["variants"][name] = spec
        if name not in c["methods"]:
            c["methods"].append(name)

    return mutate


@pytest.mark.parametrize(
    "mutate,match",
    [
        (
            lambda c: c["variants"]["pbu_no_fisher"]["hparams"].update(betta=0),
            r"^config key variants\.pbu_no_fisher\.hparams\.betta: not a hyperparameter of pbu; "
            r"allowed: alpha, beta",
        ),
        (
            lambda c: c["variants"]["pbu_no_fisher"]["hparams"].update(beta=-1),
            r"^config key variants\.pbu_no_fisher\.hparams\.beta: -1 is less than the minimum",
        ),
        (
            lambda c: c["variants"]["pbu_fisher_unit"]["hparams"].update(fisher_scale="unit"),
            r"^config key variants\.pbu_fisher_unit\.hparams\.fisher_scale: 'unit' is not one of",
        ),
        (
            lambda c: c["variants"]["pbu_ascent"].update(method="pbuu"),
            r"^config key variants\.pbu_ascent\.method: 'pbuu' is not one of",
        ),
        (
            _variant("ssd_soft", {"method": "ssd", "hparams": {"alpha": 2.0, "lr": 0.1}}),
            r"^config key variants\.ssd_soft\.hparams\.lr: not a hyperparameter of ssd",
        ),
        (
            _variant("neggrad", {"method": "pbu", "hparams": {"beta": 0}}),
            r"^config key variants\.neggrad: 'neggrad' is a method's name",
        ),
        (
            _variant("oracle", {"method": "pbu", "hparams": {"beta": 0}}),
            r"^config key variants\.oracle: 'oracle' is reserved",
        ),
        (
            _variant("tune", {"method": "pbu", "hparams": {"beta": 0}}),
            r"^config key variants\.tune: 'tune' is reserved",
        ),
        (
            _variant("PBU-x", {"method": "pbu", "hparams": {"beta": 0}}),
            r"^config key variants: 'PBU-x' does not match",
        ),
        (
            _variant("pbu_empty", {"method": "pbu", "hparams": {}}),
            r"^config key variants\.pbu_empty\.hparams: \{\} should be non-empty",
        ),
        (
            _variant("pbu_x", {"hparams": {"beta": 0}}),
            r"^config key variants\.pbu_x: 'method' is a required property",
        ),
        (
            lambda c: c["methods"].append("pbu_nofisher"),
            r"^config key methods\.15: 'pbu_nofisher' is neither a method \(pbu, .*\) nor a "
            r"variant \(pbu_no_fisher, pbu_no_l2, pbu_ascent, pbu_fisher_unit\)",
        ),
        (
            lambda c: c["tuning"]["methods"].append("pbu_nofisher"),
            r"^config key tuning\.methods\.10: 'pbu_nofisher' is neither a method",
        ),
        (  # a variant without a space takes its base method's; without that, none
            lambda c: c["tuning"]["space"].pop("pbu"),
            r"^config key tuning\.space\.pbu: missing; tuning lists 'pbu'",
        ),
        (
            lambda c: c["tuning"]["space"].update(pbu_ascent={"betta": [0, 1, 2, 3, 4, 5]}),
            r"^config key tuning\.space\.pbu_ascent\.betta: not a hyperparameter of pbu",
        ),
        (
            lambda c: c["tuning"]["space"].update(pbu_ascent={"lr": [1e-4, 2e-4]}),
            r"^config key tuning\.space\.pbu_ascent: 2 point\(s\), fewer than tuning\.budget 6",
        ),
        (
            lambda c: c["tuning"]["space"].update(pbu_other={"lr": [1e-4]}),
            r"^config key tuning\.space\.pbu_other: not a method .* or a variant",
        ),
    ],
)
def test_bad_variants_name_the_key(tmp_path, mutate, match):
    with pytest.raises(ConfigError, match=match):
        _check(mutate, tmp_path)


def test_a_config_without_variants_is_valid(tmp_path):
    def mutate(c):
        del c["variants"]
        c["methods"] = [m for m in c["methods"] if m not in ABLATION]
        c["tuning"]["methods"] = [m for m in c["tuning"]["methods"] if m not in ABLATION]
        for m in ABLATION:
            c["tuning"]["space"].pop(m, None)

    c = _check(mutate, tmp_path)
    assert c["variants"] == {} and base_method(c, "pbu") == "pbu"


def test_schema_hparams_mirror_the_registry():
    """check_config judges overrides by the schema's hparams section (torch-free); it must say
    exactly what each method declares in ``@register(..., hparams=...)``."""
    from pbu import methods
    from pbu.registry import METHODS_NEEDING_FISHER

    schema = yaml.safe_load(SCHEMA.read_text())
    per_method = schema["properties"]["hparams"]["properties"]
    names = methods.available()
    assert sorted(per_method) == names
    for m in names:
        assert set(per_method[m]["properties"]) == set(methods.get_method(m).hparams), m
    variant = schema["properties"]["variants"]["additionalProperties"]
    assert sorted(variant["properties"]["method"]["enum"]) == names
    assert set(METHODS_NEEDING_FISHER) == {m for m in names if methods.get_method(m).needs_fisher}


# ------------------------------------------------------------------------------------------
# The unlearn job: the overrides reach the method, the record names the variant
# ------------------------------------------------------------------------------------------

FINETUNE = {"epochs": 1, "batch_size": 8, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}


@pytest.fixture(scope="module")
def job_files(tmp_path_factory):
    from pbu.checkpoint import save_checkpoint
    from pbu.data import DATASETS, TensorImages, save_prepared
    from pbu.models import build_model

    def images(n, seed):
        g = torch.Generator().manual_seed(seed)
        return TensorImages(
            DATASETS["mnist5k"],
            torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
            torch.arange(n) % 10,
        )

    tmp = tmp_path_factory.mktemp("variant_job")
    save_prepared(tmp / "d.pt", images(60, 0), images(60, 1))
    args = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    torch.manual_seed(0)
    save_checkpoint(
        tmp / "m.pt", build_model("small_cnn", **args), arch="small_cnn", model_args=args
    )
    return tmp


def _unlearn(files, out, **kw):
    from pbu.jobs.unlearn import unlearn

    return unlearn(
        files / "d.pt",
        model=files / "m.pt",
        forget=2,
        method="finetune",
        hparams=FINETUNE,
        seed=0,
        retain_subset=10,
        out_model=out / "u.pt",
        out_history=out / "h.json",
        out_info=out / "u.json",
        device="cpu",
        monitor_every=0,
        **kw,
    )


def test_unlearn_job_hands_the_merged_hparams_to_the_method(job_files, tmp_path, monkeypatch):
    import dataclasses

    from pbu import methods
    from pbu.checkpoint import load_checkpoint

    spec = methods.get_method("finetune")
    received = []

    def spy(model, inputs, hp, **kw):
        received.append(dict(hp))
        return spec.fn(model, inputs, hp, **kw)

    monkeypatch.setitem(methods.REGISTRY, "finetune", dataclasses.replace(spec, fn=spy))
    rec = _unlearn(job_files, tmp_path, variant="finetune_hot", overrides={"lr": 0.05, "epochs": 2})
    merged = {**FINETUNE, "lr": 0.05, "epochs": 2}
    assert received == [merged]  # what the method itself was given
    assert rec["hparams"] == merged
    assert rec["method"] == "finetune_hot" and rec["base_method"] == "finetune"
    assert rec["overrides"] == {"lr": 0.05, "epochs": 2}
    assert json.loads((tmp_path / "u.json").read_text()) == rec
    assert json.loads((tmp_path / "h.json").read_text())["method"] == "finetune_hot"
    _, ck = load_checkpoint(tmp_path / "u.pt", with_info=True)
    assert ck["meta"]["method"] == "finetune_hot" and ck["meta"]["base_method"] == "finetune"
    assert ck["hparams"] == merged
    # a plain method records itself as its base, with no overrides
    received.clear()
    plain = _unlearn(job_files, tmp_path)
    assert received == [FINETUNE]
    assert (plain["method"], plain["base_method"], plain["overrides"]) == ("finetune",) * 2 + ({},)


def test_unlearn_job_refuses_an_undeclared_override(job_files, tmp_path):
    from pbu.errors import UsageError

    with pytest.raises(UsageError, match=r"unknown hyperparameter\(s\) betta"):
        _unlearn(job_files, tmp_path, variant="finetune_x", overrides={"betta": 0})
    with pytest.raises(UsageError, match="overrides .* belong to a variant"):
        _unlearn(job_files, tmp_path, overrides={"lr": 0.1})


# ------------------------------------------------------------------------------------------
# Aggregate, report, tracking: a variant is a row (and a run) of its own
# ------------------------------------------------------------------------------------------

VARIANT, VARIANT_S = "pbu_no_fisher", 0.35


def _with_variant(root: Path) -> Path:
    """One fake group (original, oracle, pbu, finetune) plus the variant pbu_no_fisher, as the
    unlearn job writes it: its own folder and info.json, its own key in metrics.json."""
    mfile = make_results(root)
    group = mfile.parent
    shutil.copytree(group / "pbu", group / VARIANT)
    info = json.loads((group / "pbu" / "info.json").read_text())
    info.update(
        method=VARIANT,
        base_method="pbu",
        overrides={"beta": 0},
        hparams={"lr": 0.001, "beta": 0},
        time_s=VARIANT_S,
        time_per_epoch_s=VARIANT_S / info["epochs"],
    )
    (group / VARIANT / "info.json").write_text(json.dumps(info))
    ev = json.loads(mfile.read_text())
    ev["metrics"][VARIANT] = dict(metrics_of("pbu"), acc_retain_test=90.5, acc_forget_test=1.5)
    mfile.write_text(json.dumps(ev))
    return mfile


def test_aggregate_and_report_give_a_variant_its_own_row(tmp_path):
    from pbu.aggregate import aggregate
    from pbu.report.inputs import read_runs
    from pbu.report.stats import method_summary
    from pbu.report.tables import main_table, summary_display

    mfile = _with_variant(tmp_path / "results")
    paths = aggregate(None, tmp_path / "agg", [str(mfile)])
    rows = {r["method"]: r for r in csv.DictReader(open(paths["runs"]))}
    assert set(rows) == {"original", "oracle", "pbu", "finetune", VARIANT}
    assert {m: r["base_method"] for m, r in rows.items()} == {
        "original": "original",
        "oracle": "oracle",
        "pbu": "pbu",
        "finetune": "finetune",
        VARIANT: "pbu",
    }
    v = rows[VARIANT]
    assert float(v["acc_retain_test"]) == 90.5 and float(v["acc_forget_test"]) == 1.5
    # PBU's timing rule: the group's one Fisher counts for the variant too
    assert float(v["time_s"]) == VARIANT_S
    assert float(v["total_time_s"]) == pytest.approx(VARIANT_S + FISHER_S)
    assert float(rows["pbu"]["total_time_s"]) == pytest.approx(METHOD_S["pbu"] + FISHER_S)

    runs = read_runs(paths["runs"])
    summary = method_summary(runs)
    row = summary.set_index("method").loc[VARIANT]
    assert row["base_method"] == "pbu" and row["acc_retain_test_mean"] == 90.5
    assert summary.set_index("method").loc["finetune", "base_method"] == "finetune"
    assert VARIANT in set(main_table(summary)["method"])
    shown = summary_display(summary).set_index("method")
    assert shown.loc[VARIANT, "base method"] == "pbu"


def test_tracking_logs_a_variant_as_its_own_unlearn_run(tmp_path):
    from pbu.tracking import describe_experiment, plan_jobs

    mfile = _with_variant(tmp_path / "results")
    jobs = {j.job: j for j in plan_jobs([mfile]) if j.tags.get("rule") == "unlearn"}
    by_method = {j.tags["method"]: j for j in jobs.values()}
    assert set(by_method) == {"pbu", "finetune", VARIANT}
    v, pbu = by_method[VARIANT], by_method["pbu"]
    assert v.job.endswith(f"/forget2/{VARIANT}") and v.job != pbu.job
    assert v.tags["base_method"] == "pbu" and json.loads(v.tags["overrides"]) == {"beta": 0}
    assert v.params["hparams.beta"] == "0"
    assert v.metrics["acc_retain_test"] == 90.5
    assert v.metrics["total_time_s"] == pytest.approx(VARIANT_S + FISHER_S)
    assert pbu.tags["base_method"] == "pbu" and "overrides" not in pbu.tags
    text = describe_experiment(list(jobs.values()), "x")
    assert 'pbu_no_fisher (pbu with {"beta": 0})' in text
