"""Per-group tuning (pbu.tune, blind and validation protocols): validation only from the data a
method may see, the Fisher without validation images, equal budgets on Optuna's samplers, the
documented choice rule, the CLI and the config (the development-class protocol:
test_tune_dev.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pbu import methods
from pbu.checkpoint import save_checkpoint
from pbu.cli import main
from pbu.config import method_hparams, tuning_space
from pbu.data import TensorImages, save_prepared
from pbu.tune import (
    HoldoutError,
    carve_validation,
    grid_size,
    hold_out,
    is_range,
    rank_trials,
    run_study,
    score_trial,
    split_inputs,
    tune_method,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
HP = CONFIG["hparams"]
K, FORGET, N_PER_CLASS, RETAIN_SUBSET, FRACTION = 4, 1, 30, 40, 0.2
FISHER = {"kind": "true", "bn_mode": "eval", "mc_samples": 1, "chunk_size": 16, "batch_size": 32}
MODEL_ARGS = {"num_classes": K, "in_channels": 1, "image_size": 28, "width": 4, "hidden": 16}


@pytest.fixture(scope="module")
def data(square_images) -> TensorImages:
    return square_images(K, N_PER_CLASS)


@pytest.fixture(scope="module")
def trained(data, square_cnn) -> nn.Module:
    return square_cnn(data, K)


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(im.flatten().tolist()) for im in images}


def _tune(name: str, data, model, space, budget, **kw):
    kw.setdefault("threshold", 5.0)
    return tune_method(
        name,
        copy.deepcopy(model),
        data,
        FORGET,
        K,
        base_hparams=HP[name],
        space=space,
        budget=budget,
        val_fraction=FRACTION,
        retain_subset=RETAIN_SUBSET,
        seed=0,
        fisher_settings=FISHER,
        **kw,
    )


# ------------------------------------------------------------------------------------------
# The split
# ------------------------------------------------------------------------------------------


def test_carve_validation_is_a_stratified_disjoint_partition():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    fit, val = carve_validation(labels, 0.2, seed=3)
    assert set(fit.tolist()).isdisjoint(val.tolist())
    assert sorted(fit.tolist() + val.tolist()) == list(range(len(labels)))
    per_class = {c: int((labels[val] == c).sum()) for c in range(4)}
    # round(0.2 n), at least 1 and at most n - 1 per class; a single sample stays in fit
    assert per_class == {0: round(0.2 * 10), 1: 1, 2: 0, 3: 1}
    again = carve_validation(labels, 0.2, seed=3)
    assert torch.equal(again[1], val)
    assert any(not torch.equal(carve_validation(labels, 0.2, seed=s)[1], val) for s in range(4, 9))


@pytest.mark.parametrize("name", ["neggrad", "finetune", "neggrad_plus", "ssd"])
def test_split_comes_only_from_what_the_method_received(name, data):
    spec = methods.get_method(name)
    inputs = methods.build_inputs(
        spec,
        data,
        FORGET,
        K,
        retain_subset=RETAIN_SUBSET,
        seed=0,
        fisher={} if spec.needs_fisher else None,
    )
    split = split_inputs(inputs, FRACTION, seed=0)
    for part, given, fit, val in (
        ("forget", inputs.forget, split.fit.forget, split.forget_val),
        ("retain", inputs.retain, split.fit.retain, split.retain_val),
    ):
        if given is None:  # nothing undeclared appears
            assert fit is None and val is None and f"{part}_val" not in split.sizes
            continue
        fit_rows, val_rows = _rows(fit.images), _rows(val.images)
        assert fit_rows.isdisjoint(val_rows) and val_rows
        assert fit_rows | val_rows == _rows(given.images)
        assert len(fit) + len(val) == len(given) == split.sizes[f"{part}_fit"] + len(val)
    if inputs.retain is not None:
        assert FORGET not in split.retain_val.labels.tolist()
        assert FORGET not in split.fit.retain.labels.tolist()
    assert split.fit.fisher is None  # computed later, from the fit part only


class _Spy:
    """Records the labels of every TensorImages subset and every batch any loader yields."""

    def __init__(self, monkeypatch):
        self.subset_labels: list[torch.Tensor] = []
        self.batch_labels: list[torch.Tensor] = []
        subset, loader = TensorImages.subset, TensorImages.loader
        spy = self

        def spy_subset(self_, idx):
            out = subset(self_, idx)
            spy.subset_labels.append(out.labels.clone())
            return out

        def spy_loader(self_, *a, **k):
            inner = loader(self_, *a, **k)

            class Wrapped:
                def __len__(self):
                    return len(inner)

                def __getattr__(self, n):
                    return getattr(inner, n)

                def __iter__(self):
                    for x, y in inner:
                        spy.batch_labels.append(y.clone())
                        yield x, y

            return Wrapped()

        monkeypatch.setattr(TensorImages, "subset", spy_subset)
        monkeypatch.setattr(TensorImages, "loader", spy_loader)


def test_forget_only_tuner_never_touches_retained_images(data, trained, monkeypatch):
    spy = _Spy(monkeypatch)
    rec = _tune("neggrad", data, trained, {"lr": [1e-3, 3e-3]}, 2)
    assert len(rec["trials"]) == 2 and spy.batch_labels and spy.subset_labels
    seen = torch.cat(spy.batch_labels + spy.subset_labels)
    assert set(seen.tolist()) == {FORGET}  # no retained image was copied or batched
    assert set(rec["split"]) == {"forget_fit", "forget_val"}


def test_retain_only_tuner_never_touches_forget_images(data, trained, monkeypatch):
    spy = _Spy(monkeypatch)
    rec = _tune("finetune", data, trained, {"lr": [1e-3, 1e-2]}, 2)
    seen = torch.cat(spy.batch_labels + spy.subset_labels)
    assert FORGET not in seen.tolist() and len(seen) > 0
    assert rec["rule"]["forgetting_checked"] is False
    assert all("acc_forget_val" not in t["metrics"] for t in rec["trials"])


def test_fisher_is_computed_on_forget_fit_without_validation_images(data, trained, monkeypatch):
    import pbu.fisher

    seen: list[torch.Tensor] = []
    real = pbu.fisher.fisher_diagonal

    def spy(model, loader, *a, **k):
        batches = list(loader)
        seen.extend(x for x, _ in batches)
        return real(model, batches, *a, **k)

    monkeypatch.setattr(pbu.fisher, "fisher_diagonal", spy)
    rec = _tune("pbu", data, trained, {"lr": [1e-3]}, 1)
    # The expected split, computed independently from the public pieces.
    forget_idx = torch.nonzero(data.labels == FORGET).flatten()
    forget = data.subset(forget_idx)
    fit_idx, val_idx = carve_validation(forget.labels, FRACTION, seed=0)
    loader_x = torch.cat([x for x, _ in forget.loader(len(forget))])
    x_seen = torch.cat(seen)
    as_rows = lambda t: {bytes(r.numpy().tobytes()) for r in t}  # noqa: E731
    assert as_rows(x_seen) == as_rows(loader_x[fit_idx])
    assert as_rows(x_seen).isdisjoint(as_rows(loader_x[val_idx]))
    assert rec["fisher"]["samples"] == len(fit_idx) == rec["split"]["forget_fit"]


# ------------------------------------------------------------------------------------------
# Budget and sampling
# ------------------------------------------------------------------------------------------


def _points(space, budget, seed=0):
    """The points Optuna's sampler proposes for ``space`` (every value scored 0)."""
    points = []
    run_study(space, budget, seed, lambda i, p: points.append(p) or 0.0, direction="maximize")
    return points


def test_sampler_is_optunas_grid_for_choices_and_seeded_tpe_for_ranges():
    space = {"lr": [1, 2, 3], "epochs": [4, 5]}
    full = [{"epochs": e, "lr": lr} for lr in (1, 2, 3) for e in (4, 5)]
    assert grid_size(space) == 6
    keys = lambda ps: sorted(json.dumps(p, sort_keys=True) for p in ps)  # noqa: E731
    assert keys(_points(space, 6)) == keys(full)  # the whole grid, each point once
    some = _points(space, 4)
    assert len(some) == 4 == len(set(keys(some))) and all(p in full for p in some)
    assert _points(space, 4) == some  # seeded
    assert any(_points(space, 4, seed=s) != some for s in range(1, 6))
    with pytest.raises(ValueError, match="fewer than the budget"):
        from pbu.tune import check_space

        check_space("m", ["lr", "epochs"], space, 7)
    # a range makes it TPE: seeded, inside the range, log-scaled and integer where asked
    ranged = {
        "lr": {"low": 1e-4, "high": 1e-1, "log": True},
        "epochs": {"low": 1, "high": 3, "int": True},
    }
    assert grid_size(ranged) is None and is_range(ranged["lr"])
    pts = _points(ranged, 12)
    assert pts == _points(ranged, 12) and pts != _points(ranged, 12, seed=1)
    assert all(1e-4 <= p["lr"] <= 1e-1 and p["epochs"] in (1, 2, 3) for p in pts)
    assert all(isinstance(p["epochs"], int) for p in pts)
    assert min(p["lr"] for p in pts) < 1e-3  # log scale: the low decades are sampled too


def test_every_method_gets_the_same_number_of_trials(data, trained):
    budget = 3
    spaces = {
        "neggrad": {"lr": [3e-4, 1e-3, 3e-3, 1e-2]},
        "random_labels": {"lr": [3e-4, 1e-3, 3e-3], "epochs": [1, 2]},
    }
    counts = {}
    for name, space in spaces.items():
        rec = _tune(name, data, trained, space, budget)
        assert rec["budget"] == budget and rec["sampling"] == "grid"
        assert len({json.dumps(t["varied"], sort_keys=True) for t in rec["trials"]}) == budget
        counts[name] = len(rec["trials"])
    assert set(counts.values()) == {budget}


# ------------------------------------------------------------------------------------------
# The choice
# ------------------------------------------------------------------------------------------


def _trial(i, forget, objective, threshold=5.0, agree=50.0):
    m = {"acc_forget_val": forget, "acc_retain_val": objective, "agree_forget_val": agree}
    feasible, score = score_trial(
        m, objective="acc_retain_val", threshold=threshold, forgetting_checked=True
    )
    return {"trial": i, "metrics": m, "feasible": feasible, "score": score}


def test_rank_follows_the_documented_rule():
    trials = [
        _trial(0, forget=40.0, objective=99.0),  # infeasible, best objective
        _trial(1, forget=4.0, objective=90.0),  # feasible
        _trial(2, forget=1.0, objective=90.0),  # feasible, same objective, lower forget
        _trial(3, forget=5.0, objective=80.0),  # feasible at the threshold
        _trial(4, forget=10.0, objective=50.0),  # infeasible, closer to forgetting than 0
        {"trial": 5, "metrics": {}, "feasible": False, "score": None},  # failed
    ]
    assert [t["feasible"] for t in trials[:5]] == [False, True, True, True, False]
    assert rank_trials(trials, "acc_retain_val") == [2, 1, 3, 4, 0, 5]
    tied = [_trial(0, 2.0, 70.0, agree=60.0), _trial(1, 2.0, 70.0, agree=80.0)]
    assert rank_trials(tied, "acc_retain_val") == [1, 0]  # higher agreement breaks the tie
    tied[1]["metrics"]["agree_forget_val"] = 60.0
    assert rank_trials(tied, "acc_retain_val") == [0, 1]  # earlier trial wins a full tie


def test_blind_scores_are_what_they_claim(data, trained):
    """Recompute the chosen trial's validation metrics independently: rerun the method with the
    chosen hyperparameters on the fit split and score the val split by hand."""
    rec = _tune("neggrad_plus", data, trained, {"alpha": [0.5, 0.9], "lr": [1e-3, 1e-2]}, 4)
    ranked = sorted(
        rec["trials"],
        key=lambda t: (
            not t["feasible"],
            -t["score"],
            t["metrics"]["acc_forget_val"],
            -t["metrics"]["acc_retain_val"],
            -t["metrics"]["agree_forget_val"],
            t["trial"],
        ),
    )
    assert rec["chosen"]["trial"] == ranked[0]["trial"]
    assert [t["rank"] for t in ranked] == list(range(1, len(ranked) + 1))
    chosen = rec["chosen"]
    spec = methods.get_method("neggrad_plus")
    inputs = methods.build_inputs(spec, data, FORGET, K, retain_subset=RETAIN_SUBSET, seed=0)
    split = split_inputs(inputs, FRACTION, seed=0)
    result, _ = methods.run(
        "neggrad_plus", copy.deepcopy(trained), split.fit, chosen["hparams"], seed=0
    )
    with torch.no_grad():
        xr, yr = next(iter(split.retain_val.loader(len(split.retain_val))))
        xf, _ = next(iter(split.forget_val.loader(len(split.forget_val))))
        acc_r = 100.0 * (result.model(xr).argmax(1) == yr).double().mean().item()
        acc_f = 100.0 * (result.model(xf).argmax(1) == FORGET).double().mean().item()
    assert math.isclose(chosen["metrics"]["acc_retain_val"], acc_r, abs_tol=1e-9)
    assert math.isclose(chosen["metrics"]["acc_forget_val"], acc_f, abs_tol=1e-9)
    assert chosen["feasible"] == (acc_f <= rec["rule"]["threshold"])


def test_forget_only_objective_is_agreement_with_the_original_runner_up(data, trained):
    rec = _tune("neggrad", data, trained, {"lr": [1e-3, 3e-2]}, 2)
    assert rec["rule"]["objective"] == "agree_forget_val"
    spec = methods.get_method("neggrad")
    split = split_inputs(
        methods.build_inputs(spec, data, FORGET, K, retain_subset=0, seed=0), FRACTION, seed=0
    )
    x, _ = next(iter(split.forget_val.loader(len(split.forget_val))))
    with torch.no_grad():
        logits = trained(x)
    logits[:, FORGET] = -float("inf")
    ref = logits.argmax(1)
    assert FORGET not in ref.tolist()
    for t in rec["trials"]:
        result, _ = methods.run("neggrad", copy.deepcopy(trained), split.fit, t["hparams"], seed=0)
        with torch.no_grad():
            pred = result.model(x).argmax(1)
        agree = 100.0 * (pred == ref).double().mean().item()
        forget = 100.0 * (pred == FORGET).double().mean().item()
        assert math.isclose(t["metrics"]["agree_forget_val"], agree, abs_tol=1e-9)
        assert math.isclose(t["metrics"]["acc_forget_val"], forget, abs_tol=1e-9)
        assert t["feasible"] == (forget <= 5.0)
        assert t["score"] == (agree if t["feasible"] else -forget)


# ------------------------------------------------------------------------------------------
# CLI and config
# ------------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path, data, trained):
    save_prepared(tmp_path / "d.pt", data, data)
    save_checkpoint(tmp_path / "m.pt", trained, arch="small_cnn", model_args=MODEL_ARGS)
    return tmp_path


def _cli(cmd: str, files: Path, method: str, **over) -> int:
    args = {
        "--data": files / "d.pt",
        "--model": files / "m.pt",
        "--forget": str(FORGET),
        "--method": method,
        "--seed": "0",
        "--retain-subset": str(RETAIN_SUBSET),
        "--hparams": json.dumps(HP[method]),
        "--device": "cpu",
        "--quiet": None,
        "--memory-format": "contiguous",
    }
    if cmd == "tune":
        args.update(
            {
                "--space": json.dumps({"lr": [1e-3, 3e-3]}),
                "--budget": "2",
                "--val-fraction": str(FRACTION),
                "--threshold": "5",
                "--out": files / "tune.json",
            }
        )
    else:
        args.update(
            {
                "--out-model": files / "u.pt",
                "--out-history": files / "h.json",
                "--out-info": files / "i.json",
                "--monitor-every": "0",
            }
        )
    args.update(over)
    argv = [cmd]
    for k, v in args.items():
        argv += [k] if v is None else [k, str(v)]
    return main(argv)


def test_cli_tune_then_unlearn_uses_the_chosen_hparams(files, capsys):
    assert _cli("tune", files, "neggrad_plus") == 0
    rec = json.loads((files / "tune.json").read_text())
    assert len(rec["trials"]) == 2 and rec["method"] == "neggrad_plus"
    chosen = rec["chosen"]["hparams"]
    assert _cli("unlearn", files, "neggrad_plus", **{"--hparams-from": files / "tune.json"}) == 0
    info = json.loads((files / "i.json").read_text())
    assert info["hparams"] == chosen and info["hparams_from"]["trial"] == rec["chosen"]["trial"]
    assert info["hparams_from"]["base_hparams"] == HP["neggrad_plus"]
    # a record for another method, or a space smaller than the budget, is refused in one line
    assert _cli("unlearn", files, "neggrad", **{"--hparams-from": files / "tune.json"}) == 2
    assert "tuned for method 'neggrad_plus'" in capsys.readouterr().err
    assert _cli("tune", files, "neggrad", **{"--budget": "3"}) == 2
    assert "fewer than the budget 3" in capsys.readouterr().err.splitlines()[-1]


def test_pbu_tune_needs_fisher_settings(files, capsys):
    assert _cli("tune", files, "pbu") == 2
    assert "--fisher-settings" in capsys.readouterr().err
    assert _cli("tune", files, "pbu", **{"--fisher-settings": json.dumps(FISHER)}) == 0
    rec = json.loads((files / "tune.json").read_text())
    assert rec["fisher"]["samples"] == rec["split"]["forget_fit"]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda t: t["space"].update(neggrad={"lr": [1e-3]}), r"tuning\.space\.neggrad: 1 point"),
        (
            lambda t: t["space"]["ssd"].update(gamma=[1.0] * 1),
            r"tuning\.space\.ssd\.gamma: not a hyper",
        ),
        (
            lambda t: t["space"]["ssd"].update(alpha=[-1.0, 2.0, 3.0]),
            r"tuning\.space\.ssd\.alpha: -1",
        ),
        (lambda t: t["space"].pop("ssd"), r"tuning\.space\.ssd: missing"),
        (lambda t: t.update(val_fraction=1.0), r"tuning\.val_fraction"),
        (
            lambda t: t["space"].update(pbu_no_fisher={"beta": [0.0, 1.0]}),
            r"tuning\.space\.pbu_no_fisher: beta define\(s\) the variant",
        ),
        (
            lambda t: t["space"]["ssd"].update(alpha={"low": 5.0, "high": 1.0}),
            r"tuning\.space\.ssd\.alpha: low must be below high",
        ),
        (
            lambda t: t["space"]["random_labels"].update(epochs={"low": 1, "high": 3}),
            r"tuning\.space\.random_labels\.epochs: an integer hyperparameter needs int: true",
        ),
        (lambda t: t.update(develop=True), r"config key forget: the development-class run"),
        (lambda t: t.update(frozen="config/tuned/x.yaml"), r"tuning\.frozen: .* does not match"),
    ],
)
def test_bad_tuning_config_names_the_key(tmp_path, mutate, match):
    from pbu.config import ConfigError, check_config

    c = copy.deepcopy(CONFIG)
    c["results"] = str(tmp_path / "r")
    mutate(c["tuning"])
    with pytest.raises(ConfigError, match=match):
        check_config(c, ROOT / "workflow/schemas/config.schema.yaml")


def test_default_spaces_tune_every_method_alike_and_hold_the_untuned_values():
    t = CONFIG["tuning"]
    # every method and variant of the default run has a space: its own or its base method's
    # without its overrides; each has a range, so each runs seeded TPE for the same budget
    for m in CONFIG["methods"]:
        space = tuning_space(CONFIG, m)
        assert space and grid_size(space) is None, m
        # a variant's defining values stay fixed
        assert not set(space) & set(CONFIG["variants"].get(m, {}).get("hparams", {})), m
        for k, values in space.items():  # the value the config runs untuned is inside
            v = method_hparams(CONFIG, m)[k]
            assert (values["low"] <= v <= values["high"]) if is_range(values) else v in values
    # PBU's alpha, beta, gamma, lr and stop threshold are all tuned; the variants keep zeros
    assert set(tuning_space(CONFIG, "pbu")) == {"alpha", "beta", "gamma", "lr", "stop_threshold"}
    assert "beta" not in tuning_space(CONFIG, "pbu_no_fisher")
    assert not {"beta", "gamma"} & set(tuning_space(CONFIG, "pbu_ascent"))
    assert set(tuning_space(CONFIG, "pbu_fisher_unit")) == {"alpha", "lr", "stop_threshold"}
    # per-group tuning is off by default: the default run loads the frozen choice instead
    assert t["enabled"] is False and t["develop"] is False
    assert t["frozen"] == "config/tuned/{dataset}_{arch}.yaml"
    tune = yaml.safe_load((ROOT / "config" / "tune.yaml").read_text())
    assert tune["tuning"]["develop"] is True and tune["forget"] == [0]
    assert not set(tune["seeds"]) & set(range(32))  # tuning seeds apart from verdict seeds


def _merged(*overlays: dict) -> dict:
    def merge(base, over):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if isinstance(v, dict) and k in base else v
        return out

    c = copy.deepcopy(CONFIG)
    for o in overlays:
        c = merge(c, o)
    return c


def test_validation_overlay_tunes_every_method_of_the_default_run(tmp_path):
    from pbu.config import check_config

    overlay = yaml.safe_load((ROOT / "config" / "validation.yaml").read_text())
    c = _merged(overlay)
    assert c["tuning"]["enabled"] and c["tuning"]["protocol"] == "validation"
    assert sorted(c["tuning"]["methods"]) == sorted(c["methods"])
    assert c["results"] != CONFIG["results"] and c["results"] in c["mlflow"]["tracking_uri"]
    # the default setting otherwise: same data, model, seeds, classes, recipes, hparams
    for k in ("dataset", "archs", "seeds", "forget", "pretrain", "hparams", "retain_subset"):
        assert c[k] == CONFIG[k], k
    c["results"] = str(tmp_path / "r")
    check_config(c, ROOT / "workflow/schemas/config.schema.yaml")


def test_bad_protocol_names_the_key(tmp_path):
    from pbu.config import ConfigError, check_config

    c = _merged({"results": str(tmp_path / "r"), "tuning": {"protocol": "test-set"}})
    with pytest.raises(ConfigError, match=r"tuning\.protocol: 'test-set' is not one of"):
        check_config(c, ROOT / "workflow/schemas/config.schema.yaml")


# ------------------------------------------------------------------------------------------
# The validation protocol: the experimenter's held-out split of the training set
# ------------------------------------------------------------------------------------------


def _labels_rows(d) -> dict[bytes, int]:
    return {bytes(im.flatten().tolist()): int(y) for im, y in zip(d.images, d.labels)}


def test_holdout_is_a_seeded_stratified_split_with_forget_and_retained_images(data):
    held = hold_out(data, FRACTION, seed=0, forget_class=FORGET)
    val = {**_labels_rows(held.forget_val), **_labels_rows(held.retain_val)}
    fit = _labels_rows(held.fit)
    # a partition of the training set, by content
    assert set(val).isdisjoint(fit) and {**val, **fit} == _labels_rows(data)
    # stratified: round(fraction * n) of every class; the forget class on one side only
    per_class = {c: sum(1 for y in val.values() if y == c) for c in range(K)}
    assert per_class == {c: round(FRACTION * N_PER_CLASS) for c in range(K)}
    assert set(held.forget_val.labels.tolist()) == {FORGET}
    assert FORGET not in held.retain_val.labels.tolist() and len(held.retain_val) > 0
    rec = held.record
    assert (rec["forget_val"], rec["retain_val"]) == (len(held.forget_val), len(held.retain_val))
    assert rec["fit"] + rec["val"] == rec["train"] == len(data)
    # seeded: the same seed gives the same split; other seeds other splits
    again = hold_out(data, FRACTION, seed=0, forget_class=FORGET)
    assert torch.equal(again.forget_val.images, held.forget_val.images)
    assert torch.equal(again.retain_val.images, held.retain_val.images)
    assert again.record == rec
    others = {
        hold_out(data, FRACTION, seed=s, forget_class=FORGET).record["digest"] for s in (1, 2)
    }
    assert rec["digest"] not in others
    # one split per seed, whatever the forget class: every method and class of a seed share it
    assert (
        hold_out(data, FRACTION, seed=0, forget_class=FORGET + 1).record["digest"]
        == (rec["digest"])
    )


def test_holdout_needs_forget_and_retained_images(data):
    lonely = data.subset(
        torch.cat(
            [
                torch.nonzero(data.labels != FORGET).flatten(),
                torch.nonzero(data.labels == FORGET).flatten()[:1],
            ]
        )
    )
    with pytest.raises(HoldoutError, match="holds 0 forget-class"):
        hold_out(lonely, FRACTION, seed=0, forget_class=FORGET)


def test_holdout_of_real_digits_never_meets_the_test_set(mnist5k):
    train, test = mnist5k
    held = hold_out(train, FRACTION, seed=0, forget_class=2)
    val = set(_labels_rows(held.forget_val)) | set(_labels_rows(held.retain_val))
    assert len(val) == held.record["val"] == round(FRACTION * len(train))
    assert val <= set(_labels_rows(train))
    assert val.isdisjoint(_labels_rows(test))


class _Recorder:
    """Wraps a registered method: records the images of every input it is called with."""

    def __init__(self, name: str, monkeypatch):
        spec = methods.get_method(name)
        self.calls: list[methods.UnlearnInputs] = []

        def fn(model, inputs, hp, **kw):
            self.calls.append(inputs)
            return spec.fn(model, inputs, hp, **kw)

        monkeypatch.setitem(methods.REGISTRY, name, dataclasses.replace(spec, fn=fn))

    def rows(self) -> list[set[bytes]]:
        return [
            set().union(*(_rows(d.images) for d in (c.forget, c.retain) if d is not None))
            for c in self.calls
        ]


SPACES = {
    "finetune": {"lr": [1e-3, 1e-2]},
    "neggrad": {"lr": [1e-3, 3e-3]},
    "scrub": {"lr": [5e-4, 1e-3]},
    "pbu": {"lr": [1e-3, 3e-3]},
}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_validation_tuning_never_gives_the_method_the_held_out_split(
    name, data, trained, monkeypatch
):
    """A recording method sees, in every trial, its declared share of the training set minus
    the held-out split, and never a held-out image; PBU's Fisher neither."""
    import pbu.fisher

    recorder = _Recorder(name, monkeypatch)
    fisher_seen: list[torch.Tensor] = []
    real_fisher = pbu.fisher.fisher_diagonal

    def fisher_spy(model, loader, *a, **k):
        batches = list(loader)
        fisher_seen.extend(x for x, _ in batches)
        return real_fisher(model, batches, *a, **k)

    monkeypatch.setattr(pbu.fisher, "fisher_diagonal", fisher_spy)
    rec = _tune(name, data, trained, SPACES[name], 2, protocol="validation")
    held = hold_out(data, FRACTION, seed=0, forget_class=FORGET)
    val = _rows(held.forget_val.images) | _rows(held.retain_val.images)
    assert rec["protocol"] == "validation" and rec["holdout"] == held.record
    assert len(recorder.calls) == 2  # one per trial
    spec = methods.get_method(name)
    fit_forget = _rows(held.fit.subset(torch.nonzero(held.fit.labels == FORGET).flatten()).images)
    for inputs, seen in zip(recorder.calls, recorder.rows()):
        assert seen and seen.isdisjoint(val)
        if spec.access.forget:  # every forget-class training image but the held-out ones
            assert _rows(inputs.forget.images) == fit_forget
        else:
            assert inputs.forget is None
    if spec.needs_fisher:
        x = torch.cat(fisher_seen)
        forget = held.fit.subset(torch.nonzero(held.fit.labels == FORGET).flatten())
        want = torch.cat([xb for xb, _ in forget.loader(len(forget))])
        as_rows = lambda t: {bytes(r.numpy().tobytes()) for r in t}  # noqa: E731
        assert as_rows(x) == as_rows(want) and rec["fisher"]["samples"] == len(forget)


def test_validation_scores_every_method_by_one_rule(data, trained):
    """finetune never sees the forget class, yet under validation its forgetting is measured:
    recompute every trial's metrics by hand on the held-out split, and the choice by the rule."""
    rec = _tune(
        "finetune", data, trained, {"lr": [1e-3, 3e-2], "epochs": [1, 3]}, 4, protocol="validation"
    )
    assert rec["rule"]["forgetting_checked"] is True
    assert rec["rule"]["objective"] == "acc_retain_val"
    assert rec["rule"]["text"].startswith("validation protocol")
    held = hold_out(data, FRACTION, seed=0, forget_class=FORGET)
    spec = methods.get_method("finetune")
    inputs = methods.build_inputs(spec, held.fit, FORGET, K, retain_subset=RETAIN_SUBSET, seed=0)
    assert rec["split"] == {
        "retain_fit": len(inputs.retain),
        "forget_val": len(held.forget_val),
        "retain_val": len(held.retain_val),
    }
    xf, _ = next(iter(held.forget_val.loader(len(held.forget_val))))
    xr, yr = next(iter(held.retain_val.loader(len(held.retain_val))))
    for t in rec["trials"]:
        result, _ = methods.run("finetune", copy.deepcopy(trained), inputs, t["hparams"], seed=0)
        with torch.no_grad():
            acc_f = 100.0 * (result.model(xf).argmax(1) == FORGET).double().mean().item()
            acc_r = 100.0 * (result.model(xr).argmax(1) == yr).double().mean().item()
        assert math.isclose(t["metrics"]["acc_forget_val"], acc_f, abs_tol=1e-9)
        assert math.isclose(t["metrics"]["acc_retain_val"], acc_r, abs_tol=1e-9)
        assert t["feasible"] == (acc_f <= 5.0)
        assert t["score"] == (acc_r if t["feasible"] else -acc_f)
    best = max(
        rec["trials"],
        key=lambda t: (
            t["score"],
            -t["metrics"]["acc_forget_val"],
            t["metrics"]["acc_retain_val"],
            -t["trial"],
        ),
    )
    assert rec["chosen"]["trial"] == best["trial"]


def test_validation_without_a_feasible_trial_takes_the_closest_to_forgetting(data, trained, caplog):
    rec = _tune("finetune", data, trained, {"lr": [1e-3, 3e-2]}, 2, protocol="validation")
    rec0 = _tune(
        "finetune", data, trained, {"lr": [1e-3, 3e-2]}, 2, protocol="validation", threshold=-1.0
    )
    assert not any(t["feasible"] for t in rec0["trials"]) and rec0["chosen"]["feasible"] is False
    forget = [t["metrics"]["acc_forget_val"] for t in rec0["trials"]]
    assert rec0["chosen"]["metrics"]["acc_forget_val"] == min(forget)
    assert "no trial reached acc_forget_val" in caplog.text
    # the same trials as with the real threshold: only the choice rule differs
    assert [t["metrics"] for t in rec0["trials"]] == [t["metrics"] for t in rec["trials"]]


def _vtrial(i, forget, retain, agree=50.0, threshold=5.0):
    m = {"acc_forget_val": forget, "acc_retain_val": retain, "agree_forget_val": agree}
    feasible, score = score_trial(
        m, objective="acc_retain_val", threshold=threshold, forgetting_checked=True
    )
    return {"trial": i, "metrics": m, "feasible": feasible, "score": score}


def test_validation_rule_on_hand_made_trials():
    rank = lambda ts: rank_trials(ts, "acc_retain_val", agreement=False)  # noqa: E731
    trials = [
        _vtrial(0, forget=6.0, retain=99.0),  # infeasible: best retain, but forgets too little
        _vtrial(1, forget=5.0, retain=90.0),  # feasible at the threshold
        _vtrial(2, forget=0.0, retain=95.0),  # feasible, best retain: chosen
        _vtrial(3, forget=50.0, retain=99.5),  # infeasible, far from forgetting
        {"trial": 4, "metrics": {}, "feasible": False, "score": None},  # failed
    ]
    assert [t["feasible"] for t in trials[:4]] == [False, True, True, False]
    assert rank(trials) == [2, 1, 0, 3, 4]
    # equal retain-val: the lower forget-val wins, then the earlier trial
    assert rank([_vtrial(0, 4.0, 90.0), _vtrial(1, 1.0, 90.0)]) == [1, 0]
    assert rank([_vtrial(0, 1.0, 90.0), _vtrial(1, 1.0, 90.0)]) == [0, 1]
    # agree_forget_val plays no part under validation (it breaks the blind protocol's ties)
    tied = [_vtrial(0, 1.0, 90.0, agree=10.0), _vtrial(1, 1.0, 90.0, agree=90.0)]
    assert rank(tied) == [0, 1] and rank_trials(tied, "acc_retain_val") == [1, 0]
    # nothing feasible: the closest to forgetting, ties to the higher retain-val
    none = [_vtrial(0, 30.0, 99.0), _vtrial(1, 10.0, 60.0), _vtrial(2, 10.0, 80.0)]
    assert not any(t["feasible"] for t in none) and rank(none) == [2, 1, 0]


def test_tune_refuses_an_unknown_protocol(data, trained):
    with pytest.raises(ValueError, match="unknown tuning protocol 'test'"):
        _tune("neggrad", data, trained, {"lr": [1e-3]}, 1, protocol="test")


@pytest.fixture
def split_files(tmp_path, data, trained, square_images):
    """A prepared file whose test split holds other images than its training split."""
    save_prepared(tmp_path / "d.pt", data, square_images(K, 10, seed=1))
    save_checkpoint(tmp_path / "m.pt", trained, arch="small_cnn", model_args=MODEL_ARGS)
    return tmp_path


def test_tune_job_validates_on_training_images_never_test_images(split_files, monkeypatch):
    """Every image a validation-protocol trial is scored on is a held-out TRAINING image of the
    prepared file (recomputed from its train split), and none is a test image."""
    import pbu.tune
    from pbu.data import load_prepared
    from pbu.jobs.tune import tune

    scored: list[torch.Tensor] = []
    real = pbu.tune._predictions

    def spy(model, d, device):
        scored.append(d.images.clone())
        return real(model, d, device)

    monkeypatch.setattr(pbu.tune, "_predictions", spy)
    rec = tune(
        split_files / "d.pt",
        model=split_files / "m.pt",
        forget=FORGET,
        method="finetune",
        hparams=HP["finetune"],
        space={"lr": [1e-3, 1e-2]},
        budget=2,
        val_fraction=FRACTION,
        threshold=5.0,
        seed=0,
        retain_subset=RETAIN_SUBSET,
        out=split_files / "t.json",
        device="cpu",
        memory_format="contiguous",
        progress=False,
        protocol="validation",
    )
    train, test = load_prepared(split_files / "d.pt")
    held = hold_out(train, FRACTION, seed=0, forget_class=FORGET)
    seen = set().union(*(_rows(x) for x in scored))
    assert seen == _rows(held.forget_val.images) | _rows(held.retain_val.images)
    assert seen <= _rows(train.images) and seen.isdisjoint(_rows(test.images))
    assert rec["holdout"] == held.record and json.loads((split_files / "t.json").read_text())


def _unlearn(files, method, **kw):
    from pbu.jobs.unlearn import unlearn

    return unlearn(
        files / "d.pt",
        model=files / "m.pt",
        forget=FORGET,
        method=method,
        hparams=HP[method],
        seed=0,
        retain_subset=RETAIN_SUBSET,
        out_model=files / "u.pt",
        out_history=files / "h.json",
        out_info=files / "i.json",
        device="cpu",
        memory_format="contiguous",
        monitor_every=0,
        **kw,
    )


@pytest.mark.parametrize("method", ["finetune", "scrub"])
def test_unlearn_job_with_holdout_never_gives_the_method_the_held_out_split(
    method, split_files, monkeypatch
):
    from pbu.data import load_prepared

    recorder = _Recorder(method, monkeypatch)
    info = _unlearn(split_files, method, holdout=FRACTION)
    train, _ = load_prepared(split_files / "d.pt")
    held = hold_out(train, FRACTION, seed=0, forget_class=FORGET)
    (seen,) = recorder.rows()
    assert seen and seen <= _rows(train.images)
    assert seen.isdisjoint(_rows(held.forget_val.images) | _rows(held.retain_val.images))
    assert info["holdout"] == held.record and info["protocol"] == "config"
    # without the holdout the same job's data does include held-out images
    recorder.calls.clear()
    assert _unlearn(split_files, method)["holdout"] is None
    (seen,) = recorder.rows()
    assert not seen.isdisjoint(_rows(held.retain_val.images))


def test_unlearn_job_uses_a_validation_choice_only_without_its_split(split_files, capsys):
    from pbu.errors import CheckpointError, UsageError
    from pbu.jobs.fisher import fisher

    tuned = split_files / "t.json"
    assert _cli_files("tune", split_files, "pbu", tuned, **{"--protocol": "validation"}) == 0
    rec = json.loads(tuned.read_text())
    assert rec["protocol"] == "validation"
    with pytest.raises(UsageError, match=r"give holdout \(--holdout 0.2\)"):
        _unlearn(split_files, "pbu", hparams_from=tuned, fisher=split_files / "f.pt")
    with pytest.raises(UsageError, match="validated on another held-out split"):
        _unlearn(split_files, "pbu", hparams_from=tuned, holdout=0.3, fisher=split_files / "f.pt")
    kw = {"model": split_files / "m.pt", "forget": FORGET, "device": "cpu", "progress": False}
    kw.update(memory_format="contiguous", batch_size=16, chunk_size=16)
    fisher(split_files / "d.pt", out=split_files / "f.pt", out_info=split_files / "f.json", **kw)
    with pytest.raises(CheckpointError, match="computed with held-out validation split None"):
        _unlearn(split_files, "pbu", hparams_from=tuned, holdout=0.2, fisher=split_files / "f.pt")
    f_rec = fisher(
        split_files / "d.pt",
        out=split_files / "f.pt",
        out_info=split_files / "f.json",
        holdout=0.2,
        **kw,
    )
    assert f_rec["holdout"] == rec["holdout"]
    assert f_rec["samples"] == N_PER_CLASS - rec["holdout"]["forget_val"]
    info = _unlearn(
        split_files, "pbu", hparams_from=tuned, holdout=0.2, fisher=split_files / "f.pt"
    )
    assert info["protocol"] == "validation" and info["hparams"] == rec["chosen"]["hparams"]
    assert info["holdout"] == rec["holdout"] and info["hparams_from"]["protocol"] == "validation"
    # the CLI passes --holdout through
    assert (
        _cli_files(
            "unlearn",
            split_files,
            "finetune",
            None,
            **{"--holdout": "0.2", "--monitor-every": "0"},
        )
        == 0
    )
    assert json.loads((split_files / "i.json").read_text())["holdout"] == rec["holdout"]


def _cli_files(cmd: str, files: Path, method: str, out: Path | None, **over) -> int:
    """``_cli`` with the Fisher settings and the record's path for ``tune``."""
    if cmd == "tune":
        over = {"--out": out, "--fisher-settings": json.dumps(FISHER), **over}
    return _cli(cmd, files, method, **over)
