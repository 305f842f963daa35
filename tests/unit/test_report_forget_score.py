"""The report's answer to "is the class gone?" (pbu.report.forget_score): the at-chance rule,
attack validity pooled over runs, C4 decided on a valid attack or on the forget score, the
table, figure and section."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pbu.report import forget_score as R
from pbu.report.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, evaluate_claims

from .test_claims import _runs

# ------------------------------------------------------------------------------ at chance


@pytest.mark.parametrize(
    "bacc, se, chance",
    [
        (0.5, 0.0, True),  # the entropy SVC of the default run: "member" for everyone
        (0.549, 0.001, True),  # below 0.55
        (0.55, 0.0, False),
        (0.60, 0.02, False),  # CI 0.561-0.639
        (0.60, 0.052, True),  # CI reaches 0.498
        (0.70, 0.1, False),  # CI reaches 0.504
        (0.70, 0.103, True),  # CI reaches 0.498
        (math.nan, 0.0, True),
    ],
)
def test_at_chance_rule(bacc, se, chance):
    assert R.at_chance(bacc, se) is chance


def test_validity_pools_the_runs_standard_errors():
    rows = pd.DataFrame(
        {
            "method": ["pbu", "oracle", "pbu", "ssd"],
            "mia_entropy_svc_valid_bacc": [0.6, 0.7, 0.8, 0.1],
            "mia_entropy_svc_valid_bacc_se": [0.03, 0.04, 0.0, 0.5],
            "mia_entropy_svc_valid_auc": [0.6, 0.8, 0.7, 0.5],
        }
    )
    v = R.pooled_validity(rows[rows["method"] != "ssd"], "mia_entropy_svc")
    assert v["bacc"] == pytest.approx(0.7) and v["auc"] == pytest.approx(0.7)
    assert v["bacc_se"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 3)
    assert v["n"] == 3 and v["at_chance"] is False
    assert (
        R.pooled_validity(rows.drop(columns=["mia_entropy_svc_valid_auc"]), "mia_entropy_svc")
        is None
    )


def _with_validity(runs: pd.DataFrame, bacc: float, se: float = 0.01) -> pd.DataFrame:
    out = runs.copy()
    out["mia_entropy_svc_valid_bacc"], out["mia_entropy_svc_valid_bacc_se"] = bacc, se
    out["mia_entropy_svc_valid_auc"] = bacc
    return out


def _c4(runs, forget_score=None):
    return next(c for c in evaluate_claims(runs, None, forget_score) if c.claim == "C4")


def test_c4_rests_on_the_mia_only_when_the_attack_is_valid():
    """The base table's C4 holds on the MIA (within ±0.05 of the oracle's); at chance
    the same numbers give "inconclusive (attack at chance)", with the balanced accuracy in the
    line; an attack only PBU's and the oracle's runs make valid counts (not other methods')."""
    runs = _runs()
    assert _c4(_with_validity(runs, 0.8)).verdict == HOLDS
    c4 = _c4(_with_validity(runs, 0.5, 0.0))
    assert (c4.verdict, c4.reason) == (INCONCLUSIVE, "attack at chance")
    assert c4.verdict_text == "inconclusive (attack at chance)"
    assert "held-out balanced accuracy 0.500" in c4.summary and "(pbu, oracle)" in c4.summary
    mixed = _with_validity(runs, 0.5, 0.0)
    mixed.loc[~mixed["method"].isin(["pbu", "oracle"]), "mia_entropy_svc_valid_bacc"] = 0.99
    assert _c4(mixed).reason == "attack at chance"
    # a "does not hold" on an attack at chance is not a finding either
    far = _with_validity(_runs(pbu={"mia_entropy_svc": 0.9}), 0.5, 0.0)
    assert _c4(far).verdict == INCONCLUSIVE
    # runs of an older version (no validity columns): decided on the MIA, saying so
    old = _c4(runs)
    assert old.verdict == HOLDS and "validity was not measured" in old.summary


def _fs(pbu_points, ceiling_points, forget=(2, 6)):
    """Hand-made forget-score tables: per class 100 images with the given points."""
    images = []
    for f in forget:
        for i in range(100):
            for name, pts in (("pbu", pbu_points), ("ceiling", ceiling_points)):
                p = pts[i % len(pts)]
                images.append(
                    {"dataset": "mnist5k", "arch": "small_cnn", "forget": f, "method": name,
                     "image": i, "points": p, "eps": 0.1, "offset_sd": 0.0}
                )  # fmt: skip
    return pd.DataFrame(), pd.DataFrame(images)


@pytest.mark.parametrize(
    "pbu, ceiling, verdict",
    [
        ([0.0], [0.25], DOES_NOT_HOLD),  # every image separable: d = -0.25
        ([0.25, 0.25, 0.5, 0.0], [0.25, 0.25, 0.5, 0.0], HOLDS),  # the ceiling's own
        ([0.0, 0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], INCONCLUSIVE),  # d = 0, wide CI
    ],
)
def test_c4_on_the_forget_score(pbu, ceiling, verdict):
    res = R.c4_on_forget_score(_fs(pbu, ceiling), "mnist5k", "small_cnn")
    assert res[0] == verdict, res
    c4 = _c4(_with_validity(_runs(), 0.5, 0.0), _fs(pbu, ceiling))
    assert c4.verdict == verdict and "vs ceiling" in c4.summary  # the MIA is not asked
    assert "over 200 images" in c4.summary
    # its units are PBU's models (6 seeds x 3 forget classes in _runs), not the empty (0, 0) of
    # a claim without a paired comparison
    assert c4.units == (6, 18)


def test_c4_on_the_forget_score_pairs_images_and_resamples_within_classes():
    # PBU one bucket below the ceiling on class 2, equal on class 6: d = -0.125 exactly
    fs = _fs([0.25], [0.5], forget=(2,))
    fs2 = _fs([0.5], [0.5], forget=(6,))
    both = (pd.DataFrame(), pd.concat([fs[1], fs2[1]]))
    verdict, _, numbers = R.c4_on_forget_score(both, "mnist5k", "small_cnn")
    assert verdict == DOES_NOT_HOLD and "d = -0.125" in numbers
    assert "95 % CI -0.125 to -0.125" in numbers  # strata: no resample mixes the classes
    assert R.c4_on_forget_score(both, "cifar10", "small_cnn") is None
    assert R.c4_on_forget_score(None, "mnist5k", "small_cnn") is None


# ------------------------------------------------------------------------------ files, section


def _table():
    rows = []
    for f in ("2", "all"):
        for m, score in (("pbu", 0.0), ("floor", 0.0), ("ceiling", 0.3), ("finetune", 0.01)):
            rows.append(
                {"dataset": "mnist5k", "arch": "small_cnn", "forget": f, "method": m,
                 "kind": m if m in ("ceiling", "floor") else "method", "n_models": 4,
                 "score": score, "score_ci_low": score, "score_ci_high": score + 0.01,
                 "utility_score": score, "eps_median": 50.0, "eps_cap_share": 1.0,
                 "peaky_share": 0.0, "offset_sd_signed_median": 7.0 if m != "ceiling" else 0.1,
                 "direction": "under-forgetting"}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_read_forget_score_only_when_the_run_turns_it_on(tmp_path):
    _table().to_csv(tmp_path / "forget_score.csv", index=False)
    on = {"evaluation": {"forget_score": {"enabled": True}}}
    assert (
        R.read_forget_score(tmp_path, {"evaluation": {"forget_score": {"enabled": False}}}) is None
    )
    assert R.read_forget_score(tmp_path, {}) is None  # a stale table is never read
    table, images = R.read_forget_score(tmp_path, on)
    assert set(table["forget"]) == {"2", "all"} and images.empty
    assert R.read_forget_score(tmp_path / "nothing", on) is None


def test_table_puts_the_calibration_rows_first_and_uses_the_pooled_rows():
    t = R.forget_score_table(_table())
    assert list(t["method"]) == ["ceiling", "floor", "finetune", "pbu"]
    assert list(t["forget score"]) == ["0.300", "0.000", "0.010", "0.000"]
    assert t.loc[t["method"] == "pbu", "offset (oracle sd)"].item() == "+7.0"


def test_write_forget_score_files_and_the_section(tmp_path):
    images = pd.DataFrame(
        [{"dataset": "mnist5k", "arch": "small_cnn", "forget": "2", "method": m, "image": i,
          "points": 0.0, "eps": 50.0, "offset_sd": float(np.sin(i)) * 5}
         for m in ("pbu", "finetune", "ceiling", "floor") for i in range(20)]
    )  # fmt: skip
    tables, figures = R.write_forget_score((_table(), images), tmp_path / "t", tmp_path / "f")
    assert {p.name for p in tables} == {"forget_score.csv", "forget_score.md"}
    assert {p.name for p in figures} == {"forget_score.png", "forget_score.pdf"}
    assert all(p.stat().st_size > 1000 for p in figures)
    runs = _with_validity(_runs(), 0.5, 0.0)
    text = "\n".join(R.section(runs, (_table(), images), tmp_path, tables))
    assert "| ceiling " in text and "[forget_score.md](t/forget_score.md)" in text
    assert "mia_entropy_svc" in text and "| yes " in text  # the attack at chance, in the table
    absent = "\n".join(R.section(_runs(), None, tmp_path))
    assert "config/forgetting.yaml" in absent and "carry no attack validity" in absent
    assert R.write_forget_score(None, tmp_path, tmp_path) == ([], [])
