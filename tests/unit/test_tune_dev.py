"""The development-class protocol (pbu.tune.tune_dev_class, pbu tune-dev), its frozen config
(pbu.tuned, pbu freeze) and how a run loads it (pbu.config, pbu unlearn --tuned): models trained
without the held-out split, the objective recomputed by hand, equal budgets, PBU's α/β/γ in its
space, the variants' defining zeros, the tie rate, the provenance, and protocol dev_class."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pbu import methods
from pbu.checkpoint import load_checkpoint
from pbu.cli import main
from pbu.data import class_split, save_prepared
from pbu.errors import UsageError
from pbu.tune import hold_out
from pbu.tune_dev import DEV_WEIGHTS, dev_loss, loss_attack_auc, tie_report
from pbu.tuned import FrozenError, apply, choice, dump, freeze_records, load_frozen, tie_rates

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
HP = CONFIG["hparams"]
K, DEV, N_PER_CLASS, FRACTION, SEEDS = 4, 1, 30, 0.2, (100, 101)
FISHER = {"kind": "true", "bn_mode": "eval", "mc_samples": 1, "chunk_size": 16, "batch_size": 32}
RECIPE = {"epochs": 3, "batch_size": 30, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0}
PBU_SPACE = {
    "alpha": {"low": 1.0, "high": 1000.0, "log": True},
    "beta": {"low": 1.0, "high": 1000.0, "log": True},
    "gamma": {"low": 1.0, "high": 1000.0, "log": True},
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "stop_threshold": [0.0, 5.0],
}


@pytest.fixture(scope="module")
def dev_files(tmp_path_factory, square_images):
    """A prepared file (its test split other images) and, per tuning seed, θ* and the
    development class's oracle trained with ``--holdout``."""
    from pbu.jobs.train import oracle, pretrain

    root = tmp_path_factory.mktemp("dev")
    save_prepared(root / "d.pt", square_images(K, N_PER_CLASS), square_images(K, 10, seed=1))
    kw = {"arch": "small_cnn", "recipe": RECIPE, "holdout": FRACTION, "device": "cpu"}
    kw["progress"] = False
    for s in SEEDS:
        pretrain(
            root / "d.pt", seed=s, out_model=root / f"m{s}.pt", out_info=root / f"m{s}.json", **kw
        )
        oracle(
            root / "d.pt",
            forget=DEV,
            seed=s,
            out_model=root / f"o{s}.pt",
            out_info=root / f"o{s}.json",
            **kw,
        )
    return root


def _tune_dev(files: Path, method: str, space, budget=3, name=None, **kw):
    from pbu.jobs.tune import tune_dev

    name = name or method
    return tune_dev(
        files / "d.pt",
        models={s: files / f"m{s}.pt" for s in SEEDS},
        oracles={s: files / f"o{s}.pt" for s in SEEDS},
        forget=DEV,
        method=method,
        hparams=kw.pop("hparams", HP[method]),
        space=space,
        budget=budget,
        sampler_seed=0,
        val_fraction=FRACTION,
        out=files / f"{name}.json",
        storage=files / f"{name}.db",
        variant=None if name == method else name,
        retain_subset=40,
        fisher_settings=FISHER,
        device="cpu",
        memory_format="contiguous",
        progress=False,
        **kw,
    )


# ------------------------------------------------------------------------------------------
# The models never saw the held-out split
# ------------------------------------------------------------------------------------------


def test_pretrain_and_oracle_hold_out_the_split(dev_files):
    from pbu.data import load_prepared

    train, _ = load_prepared(dev_files / "d.pt")
    for s in SEEDS:
        held = hold_out(train, FRACTION, s, DEV)
        info = json.loads((dev_files / f"m{s}.json").read_text())
        oinfo = json.loads((dev_files / f"o{s}.json").read_text())
        assert info["holdout"]["digest"] == held.record["digest"] == oinfo["holdout"]["digest"]
        assert info["train_samples"] == len(held.fit) == K * N_PER_CLASS - held.record["val"]
        # the oracle: the same split out, then the development class out
        assert oinfo["train_samples"] == len(class_split(held.fit.labels, DEV)[1])
        _, meta = load_checkpoint(dev_files / f"m{s}.pt", with_info=True)
        assert meta["meta"]["holdout"]["digest"] == held.record["digest"]


# ------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------


def test_loss_attack_auc_and_the_objective_by_hand():
    # members: logits that put all their mass on the label (loss ~0); non-members: uniform
    labels = torch.zeros(6, dtype=torch.long)
    sure = torch.tensor([[20.0, 0.0, 0.0]] * 6)
    flat = torch.zeros(6, 3)
    assert loss_attack_auc(sure, labels, flat, labels) == pytest.approx(100.0)
    assert loss_attack_auc(flat, labels, sure, labels) == pytest.approx(0.0)
    assert loss_attack_auc(flat, labels, flat, labels) == pytest.approx(50.0)  # all tied
    oracle = {"RA": 99.0, "FA": 0.0, "VA": 88.0, "MIA": 50.0}
    model = {"RA": 97.0, "FA": 4.0, "VA": 87.0, "MIA": 54.0}
    assert dev_loss(model, oracle) == pytest.approx((2.0 + 4.0 + 1.0 + 4.0) / 4)
    assert dev_loss(oracle, oracle) == 0.0 and set(DEV_WEIGHTS) == set(oracle)


def test_tie_report_counts_only_other_hyperparameters_at_the_same_value():
    pts = [{"lr": 1}, {"lr": 2}, {"lr": 3}, {"lr": 1}]
    assert tie_report([3.0, 1.0, 2.0, 5.0], pts) == {
        "trial": 1,
        "value": 1.0,
        "tied": False,
        "n_tied": 0,
        "gap": 1.0,
    }
    tied = tie_report([1.0, 1.0, 2.0, None], pts)
    assert tied["trial"] == 0 and tied["tied"] and tied["n_tied"] == 1  # the earlier wins
    # the same point again (a repeated configuration) is no tie between choices
    same = tie_report([1.0, 3.0, 2.0, 1.0], pts)
    assert same["trial"] == 0 and not same["tied"] and same["gap"] == 1.0
    assert tie_report([None, float("nan")], pts[:2])["trial"] is None


def test_dev_tuning_scores_each_trial_against_each_seeds_oracle(dev_files):
    """Recompute one trial's per-seed metrics independently: rerun the method with its
    hyperparameters on the data the job builds, score it on the held-out split by hand."""
    from pbu.data import load_prepared
    from pbu.fisher import fisher_diagonal

    rec = _tune_dev(dev_files, "pbu", PBU_SPACE)
    assert rec["protocol"] == "dev_class" and rec["seeds"] == list(SEEDS)
    assert len(rec["trials"]) == rec["budget"] == 3
    assert set(rec["trials"][0]["varied"]) == {"alpha", "beta", "gamma", "lr", "stop_threshold"}
    assert rec["sampling"] == "tpe" and "TPESampler(seed=0" in rec["sampler"]
    for t in rec["trials"]:
        losses = [t["per_seed"][str(s)]["loss"] for s in SEEDS]
        assert t["score"] == pytest.approx(np.mean(losses))
        for s in SEEDS:
            ps = t["per_seed"][str(s)]
            assert ps["loss"] == pytest.approx(dev_loss(ps, rec["oracle"][str(s)]))
    best = min(rec["trials"], key=lambda t: (t["score"], t["trial"]))
    assert rec["chosen"]["trial"] == best["trial"]
    # by hand, seed 100, the chosen trial
    train, _ = load_prepared(dev_files / "d.pt")
    s = SEEDS[0]
    held = hold_out(train, FRACTION, s, DEV)
    theta = load_checkpoint(dev_files / f"m{s}.pt").eval()
    spec = methods.get_method("pbu")
    forget_fit = held.fit.subset(class_split(held.fit.labels, DEV)[0])
    fisher = fisher_diagonal(
        copy.deepcopy(theta),
        forget_fit.loader(32),
        kind="true",
        bn_mode="eval",
        mc_samples=1,
        chunk_size=16,
        seed=s,
    )
    inputs = methods.UnlearnInputs(DEV, K, forget_fit, None, fisher)
    assert spec.access.retain == "none"
    result, _ = methods.run("pbu", copy.deepcopy(theta), inputs, best["hparams"], seed=s)
    with torch.no_grad():
        x, _ = next(iter(forget_fit.loader(len(forget_fit))))
        fa = 100.0 * (result.model(x).argmax(1) == DEV).double().mean().item()
        xv = torch.cat(
            [next(iter(d.loader(len(d))))[0] for d in (held.forget_val, held.retain_val)]
        )
        yv = torch.cat([held.forget_val.labels, held.retain_val.labels])
        va = 100.0 * (result.model(xv).argmax(1) == yv).double().mean().item()
    ps = best["per_seed"][str(s)]
    assert math.isclose(ps["FA"], fa, abs_tol=1e-9) and math.isclose(ps["VA"], va, abs_tol=1e-9)
    # the Optuna study is in its SQLite file, with the budget's trials
    import optuna

    study = optuna.load_study(study_name=rec["study_name"], storage=rec["storage"])
    assert len(study.trials) == 3 and rec["storage"].endswith("pbu.db")
    assert [t.params for t in study.trials] == [t["varied"] for t in rec["trials"]]


def test_a_variant_keeps_its_defining_zeros_and_cannot_tune_them(dev_files):
    space = {k: v for k, v in PBU_SPACE.items() if k != "beta"}
    rec = _tune_dev(dev_files, "pbu", space, budget=2, name="pbu_no_fisher", overrides={"beta": 0})
    assert rec["method"] == "pbu_no_fisher" and rec["base_method"] == "pbu"
    assert all(t["hparams"]["beta"] == 0 for t in rec["trials"])
    assert "beta" not in rec["space"] and rec["overrides"] == {"beta": 0}
    with pytest.raises(UsageError, match="beta define"):
        _tune_dev(dev_files, "pbu", PBU_SPACE, name="pbu_no_fisher", overrides={"beta": 0})


def test_models_that_saw_the_split_are_refused(dev_files, square_cnn, square_images):
    from pbu.checkpoint import save_checkpoint

    files = dev_files
    seen = square_cnn(square_images(K, N_PER_CLASS), K)  # trained on every image
    save_checkpoint(
        files / "seen.pt",
        seen,
        arch="small_cnn",
        model_args={"num_classes": K, "in_channels": 1, "image_size": 28, "width": 4, "hidden": 16},
    )
    from pbu.jobs.tune import tune_dev

    with pytest.raises(UsageError, match="was not trained without this split"):
        tune_dev(
            files / "d.pt",
            models={100: files / "seen.pt"},
            oracles={100: files / "o100.pt"},
            forget=DEV,
            method="neggrad",
            hparams=HP["neggrad"],
            space={"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
            budget=1,
            sampler_seed=0,
            val_fraction=FRACTION,
            out=files / "x.json",
            device="cpu",
            memory_format="contiguous",
            progress=False,
        )


# ------------------------------------------------------------------------------------------
# The frozen config
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def records(dev_files):
    recs = [
        _tune_dev(dev_files, "pbu", PBU_SPACE),
        _tune_dev(dev_files, "unsir", {"impair_lr": {"low": 1e-3, "high": 3e-2, "log": True}}),
    ]
    for r in recs:
        r.update(dataset="mnist5k", arch="small_cnn")  # the setting of the fixture's data
    return recs


def test_the_frozen_record_shows_equal_trials_pbus_terms_and_the_tie_rate(records, dev_files):
    frozen = freeze_records(records, commit="abc1234", date="2026-12-05 12:00 UTC")
    prov = frozen["provenance"]
    assert frozen["format"] == "pbu-tuned-hparams/1" and frozen["protocol"] == "dev_class"
    assert (frozen["dataset"], frozen["arch"]) == ("mnist5k", "small_cnn")
    assert prov["forget_class"] == DEV and prov["seeds"] == list(SEEDS)
    assert prov["budget"] == 3 and prov["trials_per_method"] == [3]  # the same for every method
    assert prov["commit"] == "abc1234" and prov["date"] == "2026-12-05 12:00 UTC"
    assert "config/tune.yaml" in prov["command"] and prov["objective"].startswith("development")
    assert {m["trials"] for m in frozen["methods"].values()} == {3}
    assert {"alpha", "beta", "gamma"} <= set(frozen["methods"]["pbu"]["hparams"])
    assert frozen["methods"]["pbu"]["hparams"] == records[0]["chosen"]["varied"]
    ties = frozen["ties"]
    assert ties["choices"] == {"tied": 0, "of": 2, "rate": 0.0} and ties["limit"] == 0.1
    assert ties["per_seed_choices"]["of"] == 4
    # a tie, made by hand: another trial with other hyperparameters at the best value
    tied = copy.deepcopy(records[1])
    tied["trials"][1]["score"] = tied["trials"][0]["score"] = min(
        t["score"] for t in tied["trials"]
    )
    assert tie_rates([records[0], tied])["choices"] == {"tied": 1, "of": 2, "rate": 0.5}
    # the file: a header with the command, then YAML that loads back
    path = dev_files / "frozen.yaml"
    path.write_text(dump(frozen))
    assert path.read_text().startswith("# Generated by `pbu freeze`")
    assert load_frozen(path) == json.loads(json.dumps(frozen))
    with pytest.raises(FrozenError, match="differ in budget"):
        freeze_records([records[0], {**records[1], "budget": 4}])


def test_a_variant_takes_its_own_choice_else_its_base_methods_with_its_overrides(records):
    frozen = freeze_records(records, commit="x", date="d")
    hp, who = choice(frozen, "pbu", "pbu")
    assert who == "pbu" and hp == records[0]["chosen"]["varied"]
    hp, who = choice(frozen, "pbu_stop2", "pbu")  # absent: PBU's choice
    assert who == "pbu" and apply(HP["pbu"], hp, {"stop_threshold": 2.0})["stop_threshold"] == 2.0
    assert choice(frozen, "finetune", "finetune") is None


def _config(tmp_path, frozen_path: Path | None, **over):
    c = copy.deepcopy(CONFIG)
    c["results"] = str(tmp_path / "r")
    c["tuning"]["frozen"] = (
        str(frozen_path.parent / "{dataset}_{arch}.yaml") if frozen_path else None
    )
    c.update(over)
    c["variants"] = dict(
        c["variants"], pbu_stop2={"method": "pbu", "hparams": {"stop_threshold": 2.0}}
    )
    c["methods"] = [*c["methods"], "pbu_stop2"]
    return c


def test_a_run_loads_the_frozen_choice_of_its_setting(records, tmp_path):
    from pbu.config import ConfigError, check_config, load_tuned, tuned_choice

    schema = ROOT / "workflow/schemas/config.schema.yaml"
    frozen = freeze_records(records, commit="x", date="d")
    path = tmp_path / "mnist5k_small_cnn.yaml"
    path.write_text(dump(frozen))
    cfg = check_config(_config(tmp_path, path), schema)
    tuned = load_tuned(cfg)
    assert set(tuned) == {"small_cnn"} and tuned["small_cnn"][0] == path
    got = tuned_choice(cfg, tuned, "small_cnn", "pbu")
    assert got["hparams"] == frozen["methods"]["pbu"]["hparams"]
    assert got["source"]["protocol"] == "dev_class" and got["source"]["file"] == str(path)
    assert got["source"]["forget_class"] == DEV and got["source"]["seeds"] == list(SEEDS)
    # a variant absent from the file: PBU's choice without the value its override fixes
    stop2 = tuned_choice(cfg, tuned, "small_cnn", "pbu_stop2")
    assert stop2["source"]["choice_of"] == "pbu" and "stop_threshold" not in stop2["hparams"]
    assert tuned_choice(cfg, tuned, "small_cnn", "finetune") is None  # not tuned: config
    # the development class is never reported
    with pytest.raises(ConfigError, match=f"tuned on class {DEV}, which this run reports"):
        check_config(_config(tmp_path, path, forget=[DEV, 2]), schema)
    # another setting's file
    other = dict(frozen, arch="resnet18")
    path.write_text(dump(other))
    with pytest.raises(ConfigError, match="tuned for mnist5k / resnet18"):
        check_config(_config(tmp_path, path), schema)
    # no file for the setting: nothing loaded (protocol config)
    path.unlink()
    assert load_tuned(check_config(_config(tmp_path, path), schema)) == {}


def test_the_committed_frozen_config_is_the_default_runs(tmp_path):
    """config/tuned/mnist5k_small_cnn.yaml: every method and variant of the default run, the
    same number of trials each, PBU's α/β/γ tuned, at most 10 % tied choices, provenance."""
    path = ROOT / "config" / "tuned" / "mnist5k_small_cnn.yaml"
    if not path.is_file():
        pytest.skip("no frozen config committed")
    frozen = load_frozen(path)
    prov = frozen["provenance"]
    assert set(frozen["methods"]) == set(CONFIG["methods"])
    assert prov["trials_per_method"] == [prov["budget"]]
    assert {m["trials"] for m in frozen["methods"].values()} == {prov["budget"]}
    assert {"alpha", "beta", "gamma", "lr", "stop_threshold"} == set(
        frozen["methods"]["pbu"]["hparams"]
    )
    assert frozen["methods"]["pbu_no_fisher"]["overrides"] == {"beta": 0}
    assert "beta" not in frozen["methods"]["pbu_no_fisher"]["hparams"]
    assert frozen["ties"]["choices"]["rate"] <= 0.10
    assert prov["forget_class"] not in CONFIG["forget"]
    for key in ("seeds", "budget", "objective", "date", "commit", "command", "sampler_seed"):
        assert prov[key] not in (None, ""), key
    assert "TPESampler" in frozen["methods"]["pbu"]["sampler"]


def test_unlearn_job_with_the_frozen_choice_says_dev_class(records, tmp_path, dev_files):
    from pbu.aggregate import protocol_of
    from pbu.jobs.unlearn import unlearn

    hp = records[0]["chosen"]["varied"]
    source = {"file": "config/tuned/x.yaml", "protocol": "dev_class", "choice_of": "pbu"}
    from pbu.jobs.fisher import fisher

    fkw = {"model": dev_files / "m100.pt", "forget": 2, "device": "cpu", "progress": False}
    fisher(dev_files / "d.pt", out=tmp_path / "f.pt", out_info=tmp_path / "f.json", **fkw)
    info = unlearn(
        dev_files / "d.pt",
        model=dev_files / "m100.pt",
        forget=2,
        method="pbu",
        hparams=HP["pbu"],
        seed=0,
        out_model=tmp_path / "u.pt",
        out_history=tmp_path / "h.json",
        out_info=tmp_path / "i.json",
        fisher=tmp_path / "f.pt",
        tuned={"hparams": hp, "source": source},
        variant="pbu_stop2",
        overrides={"stop_threshold": 2.0},
        device="cpu",
        memory_format="contiguous",
        monitor_every=0,
    )
    assert info["protocol"] == "dev_class" and protocol_of("pbu_stop2", info) == "dev_class"
    assert info["hparams_source"]["file"] == "config/tuned/x.yaml"
    assert info["hparams_source"]["hparams"] == hp and info["hparams_from"] is None
    for k in ("alpha", "beta", "gamma", "lr"):
        assert info["hparams"][k] == hp[k]
    assert info["hparams"]["stop_threshold"] == 2.0  # the variant's override wins


def test_cli_tune_dev_and_freeze(dev_files, capsys):
    args = ["tune-dev", "--data", str(dev_files / "d.pt"), "--forget", str(DEV)]
    for s in SEEDS:
        args += [
            "--model",
            f"{s}={dev_files / f'm{s}.pt'}",
            "--oracle",
            f"{s}={dev_files / f'o{s}.pt'}",
        ]
    args += ["--method", "neggrad", "--hparams", json.dumps(HP["neggrad"])]
    args += ["--space", json.dumps({"lr": {"low": 1e-4, "high": 1e-2, "log": True}})]
    args += ["--budget", "2", "--val-fraction", str(FRACTION), "--device", "cpu", "--quiet"]
    args += ["--memory-format", "contiguous", "--storage", str(dev_files / "cli.db")]
    assert main([*args, "--out", str(dev_files / "cli.json")]) == 0
    rec = json.loads((dev_files / "cli.json").read_text())
    assert len(rec["trials"]) == 2 and rec["method"] == "neggrad"
    rec.update(dataset="mnist5k")
    (dev_files / "cli.json").write_text(json.dumps(rec))
    out = dev_files / "cli.yaml"
    argv = ["freeze", "--record", str(dev_files / "cli.json"), "--out", str(out)]
    argv += ["--training", str(dev_files / "m100.json")]
    assert main(argv) == 0
    frozen = load_frozen(out)
    assert set(frozen["methods"]) == {"neggrad"} and frozen["cost_s"]["training_tuning_seeds"] > 0
    assert main(["tune-dev", *args[1:], "--out", str(dev_files / "y.json"), "--model", "x"]) == 2
    assert "--model expects SEED=PATH" in capsys.readouterr().err
