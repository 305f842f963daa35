"""Tests for pbu.report.paired (the seed as the unit: the hierarchical bootstrap, the exact
sign-flip test and the TOST on hand-made clustered numbers, checked against values computed by
hand or by brute force) and pbu.report.claims (each claim's verdict flipped by a hand-made runs
table: holds, does not hold, inconclusive / absent, preliminary)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pbu.report import build_all
from pbu.report.claims import (
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    PRELIMINARY,
    STATEMENTS,
    effect,
    evaluate_claims,
    fisher_margin,
    matched_threshold,
    within,
)
from pbu.report.markdown import claims_section
from pbu.report.paired import (
    compare,
    equivalence,
    from_pairs,
    hierarchical_ci,
    min_exact_p,
    preliminary,
    seeds_needed,
    sign_flip_p,
    significant,
)
from pbu.report.tables import claims_table, tradeoff_table

REFERENCE = Path(__file__).resolve().parents[2] / "config" / "paper" / "reference.csv"

# ------------------------------------------------------------------------ the seed as the unit


def _pair_bootstrap(values, n_boot=10_000, level=0.95, seed=0):
    """The interval earlier versions used: pairs resampled as if independent."""
    d = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    return tuple(np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))


def test_hierarchical_ci_is_wider_than_the_pair_bootstraps_when_seeds_differ():
    # 6 seeds x 3 forget classes: each seed shifts all of its pairs together (the trained model
    # is shared), the classes of one seed barely differ
    rng = np.random.default_rng(0)
    seeds = np.repeat(np.arange(6), 3)
    clustered = np.repeat(rng.normal(0.0, 3.0, 6), 3) + rng.normal(0.0, 0.1, 18)
    low, high = hierarchical_ci(seeds, clustered)
    p_low, p_high = _pair_bootstrap(clustered)
    assert high - low > 1.3 * (p_high - p_low)
    assert low < clustered.mean() < high
    # without a seed effect the two agree roughly (no clustering to account for)
    flat = rng.normal(0.0, 1.0, 18)
    low, high = hierarchical_ci(seeds, flat)
    p_low, p_high = _pair_bootstrap(flat)
    assert 0.7 < (high - low) / (p_high - p_low) < 1.4
    # seeded, and undefined with one seed
    assert hierarchical_ci(seeds, clustered) == hierarchical_ci(seeds, clustered)
    assert hierarchical_ci(seeds, clustered, seed=1) != hierarchical_ci(seeds, clustered)
    assert all(np.isnan(hierarchical_ci([0, 0, 0], [1.0, 2.0, 3.0])))


def test_hierarchical_ci_by_hand_with_two_seeds_of_one_value():
    # seed means 0 and 1: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert hierarchical_ci([0, 1], [0.0, 1.0]) == (0.0, 1.0)
    # classes are resampled within a seed: both seeds' means are 1 (seed 0 holds 0 and 2, seed
    # 1 holds 1 and 1), so resampling the seeds alone would give (1, 1)
    low, high = hierarchical_ci([0, 0, 1, 1], [0.0, 2.0, 1.0, 1.0])
    assert low < 1.0 < high


@pytest.mark.parametrize("k", range(1, 9))
def test_the_smallest_p_with_k_seeds_is_two_to_the_one_minus_k(k):
    means = np.arange(1.0, k + 1)  # every seed's mean difference positive
    assert sign_flip_p(means, "greater") == pytest.approx(2.0**-k)
    assert sign_flip_p(means, "two-sided") == pytest.approx(min(1.0, 2.0 ** (1 - k)))
    assert sign_flip_p(means, "less") == pytest.approx(1.0)
    assert min_exact_p(k, "greater") == 2.0**-k
    assert min_exact_p(k, "two-sided") == min(1.0, 2.0 ** (1 - k))
    # through a runs table: k seeds x 3 forget classes, the three classes of a seed do not add
    # units (nine pairs of three seeds are three units, not nine)
    rows = [
        (m, f, s, 90.0 + (s + 1 + 0.1 * f if m == "a" else 0.0))
        for m in ("a", "b")
        for s in range(k)
        for f in (2, 6, 8)
    ]
    runs = pd.DataFrame(rows, columns=["method", "forget", "seed", "acc"])
    stat = compare(runs, "a", "b", "acc", alternative="greater")
    assert (stat.n_seeds, stat.n_pairs) == (k, 3 * k)
    assert stat.p_value == pytest.approx(2.0**-k) == stat.min_p
    assert significant(stat) == (k >= 5) and preliminary(stat) == (k < 5)
    two = compare(runs, "a", "b", "acc", alternative="two-sided")
    assert two.p_value == pytest.approx(min(1.0, 2.0 ** (1 - k)))
    assert preliminary(two) == (k < 6)


def test_sign_flip_p_is_the_share_of_sign_patterns_at_least_as_extreme():
    rng = np.random.default_rng(3)
    for k in (2, 5, 8, 11):
        x = rng.normal(0.3, 1.0, k)
        sums = np.array([np.dot(s, x) for s in itertools.product((1, -1), repeat=k)])
        t = x.sum()
        assert sign_flip_p(x, "greater") == pytest.approx(np.mean(sums >= t - 1e-12))
        assert sign_flip_p(x, "less") == pytest.approx(np.mean(sums <= t + 1e-12))
        assert sign_flip_p(x, "two-sided") == pytest.approx(np.mean(abs(sums) >= abs(t) - 1e-12))
    # a seed whose mean is exactly 0 flips to itself: it neither helps nor hurts
    assert sign_flip_p([1.0, 2.0, 0.0], "greater") == pytest.approx(1 / 8 * 2)
    assert (seeds_needed("greater"), seeds_needed("two-sided")) == (5, 6)


def test_compare_pairs_by_class_and_seed_and_subtracts_b():
    rows = [
        ("a", 2, 0, 90.0),
        ("a", 2, 1, 91.0),
        ("a", 6, 0, 80.0),
        ("a", 6, 1, 70.0),  # b has no (6, 1): dropped
        ("b", 6, 0, 83.0),
        ("b", 2, 1, 90.0),
        ("b", 2, 0, 85.0),
        ("b", 8, 0, 50.0),  # a has no (8, 0): dropped
    ]
    runs = pd.DataFrame(rows, columns=["method", "forget", "seed", "acc_retain_test"])
    stat = compare(runs, "a", "b", "acc_retain_test")
    # pairs (2,0): 90-85 = 5, (6,0): 80-83 = -3 -> seed 0's mean 1; (2,1): 91-90 = 1 -> seed 1: 1
    assert (stat.n_seeds, stat.n_pairs) == (2, 3) and stat.mean_diff == pytest.approx(1.0)
    # the means are over seeds too: a = (85 + 91) / 2, b = (84 + 90) / 2
    assert stat.a_mean == pytest.approx(88.0) and stat.b_mean == pytest.approx(87.0)
    assert compare(runs, "b", "a", "acc_retain_test").mean_diff == pytest.approx(-1.0)
    assert compare(runs, "a", "b", "no_such_metric").n_pairs == 0
    # one method against a bound (b empty): its own values
    one = compare(runs, "a", "", "acc_retain_test", alternative="less", shift=95.0)
    assert one.mean_diff == pytest.approx((85.0 + 80.5) / 2) and np.isnan(one.b_mean)


def test_every_seed_mean_at_the_shift_gives_no_test():
    pairs = pd.DataFrame({"seed": np.repeat(range(6), 2), "diff": [1.0, -1.0] * 6})
    stat = from_pairs(pairs, alternative="greater")
    assert np.isnan(stat.p_value) and stat.n_nonzero == 0 and not significant(stat)
    assert "no test possible" in stat.note and stat.mean_diff == 0.0


# -------------------------------------------------------------------------------- TOST


def _two(a_values, b_values, seeds=range(6), classes=(2, 6, 8)) -> pd.DataFrame:
    rows = []
    for i, (s, f) in enumerate(itertools.product(seeds, classes)):
        rows += [("a", f, s, a_values[i]), ("b", f, s, b_values[i])]
    return pd.DataFrame(rows, columns=["method", "forget", "seed", "acc_retain_test"])


def _effect(runs: pd.DataFrame, margin: float = 0.5):
    tost = equivalence(runs, "a", "b", "acc_retain_test", margin)
    above = compare(runs, "a", "b", "acc_retain_test", alternative="greater")
    below = compare(runs, "a", "b", "acc_retain_test", alternative="less")
    return tost, effect(tost, above, below)[0]


def test_tost_on_identical_shifted_and_noisy_pairs():
    rng = np.random.default_rng(0)
    b = list(95.0 + rng.normal(0.0, 1.0, 18))
    # identical pairs: every seed's difference is 0, inside ±0.5 on both sides: p = 1/64 each
    tost, outcome = _effect(_two(b, b))
    assert tost.p_value == pytest.approx(1 / 64) and significant(tost)
    assert outcome == "no effect (equivalent within ±0.5)"
    assert within(tost) == (HOLDS, "")
    # shifted by +2 (±0.05 wobble): clearly outside the margin, and clearly above 0
    shift = rng.normal(0.0, 0.05, 18)
    tost, outcome = _effect(_two([x + 2.0 + e for x, e in zip(b, shift)], b))
    assert outcome == "helps" and within(tost)[0] == DOES_NOT_HOLD
    tost, outcome = _effect(_two([x - 2.0 + e for x, e in zip(b, shift)], b))
    assert outcome == "hurts"
    # a tiny but consistent shift (+0.1) is still no effect within ±0.5
    tost, outcome = _effect(_two([x + 0.1 + e / 5 for x, e in zip(b, shift)], b))
    assert outcome.startswith("no effect")
    # noisy pairs around 0: neither equivalent within ±0.5 nor different from 0
    by_seed = np.repeat([3.0, -2.0, 2.5, -3.0, 1.0, -1.5], 3)  # seeds disagree in sign
    noisy = [x + o + e for x, o, e in zip(b, by_seed, rng.normal(0.0, 1.0, 18))]
    tost, outcome = _effect(_two(noisy, b))
    assert outcome == INCONCLUSIVE and within(tost)[0] in (INCONCLUSIVE, DOES_NOT_HOLD)
    assert tost.ci_level == 0.90  # the TOST's own interval
    # the TOST's p is the larger of the two one-sided ones: +0.4 consistently is inside ±0.5
    # but only just: the lower test rejects (p = 1/64), the upper one too; at margin 0.45 the
    # upper test (d < 0.45) still holds; at 0.3 it does not (every seed is above 0.3)
    near = _two([x + 0.4 for x in b], b)
    assert equivalence(near, "a", "b", "acc_retain_test", 0.45).p_value == pytest.approx(1 / 64)
    assert equivalence(near, "a", "b", "acc_retain_test", 0.3).p_value == pytest.approx(1.0)
    # three seeds cannot decide: preliminary
    three = _two(b[:9], b[:9], seeds=range(3))
    tost, outcome = _effect(three)
    assert outcome == PRELIMINARY and within(tost)[0] == PRELIMINARY


# ------------------------------------------------------------------------------ the claims

SEEDS = range(6)
PAIRS = [(f, s) for f in (2, 6, 8) for s in SEEDS]  # 18 (forget, seed) pairs
BASE = {
    "original": dict(A_Df=99.0, A_Dr=98.0, mia=0.95, js=0.2, t=8.0, tpe=1.3, access="-"),
    "oracle": dict(A_Df=0.0, A_Dr=97.5, mia=0.80, js=0.0, t=8.0, tpe=1.3, access="-"),
    "pbu": dict(A_Df=0.5, A_Dr=96.5, mia=0.81, js=0.01, t=0.6, tpe=0.5, access="forget"),
    "neggrad": dict(A_Df=1.0, A_Dr=94.0, mia=0.85, js=0.03, t=0.5, tpe=0.5, access="forget"),
    "unsir": dict(A_Df=2.0, A_Dr=85.0, mia=0.9, js=0.05, t=2.0, tpe=2.0, access="forget + r"),
    "bad_teaching": dict(A_Df=3.0, A_Dr=90.0, mia=0.7, js=0.04, t=3.0, tpe=3.0, access="all"),
    "finetune": dict(A_Df=4.0, A_Dr=95.0, mia=0.9, js=0.02, t=2.0, tpe=1.0, access="all"),
    "pbu_ascent": dict(A_Df=0.5, A_Dr=93.0, mia=0.8, js=0.02, t=0.6, tpe=0.5, access="forget"),
    "pbu_no_fisher": dict(A_Df=0.5, A_Dr=95.5, mia=0.8, js=0.02, t=0.6, tpe=0.5, access="forget"),
}
COLUMNS = {
    "A_Df": "acc_forget_test",
    "A_Dr": "acc_retain_test",
    "mia": "mia_entropy_svc",
    "t": "total_time_s",
    "tpe": "total_time_per_epoch_s",
    "access": "data_access",
}


def _runs(noise: float = 0.2, drop=(), **overrides) -> pd.DataFrame:
    """18 pairs (6 seeds x 3 classes) per method: the method's base value + a small, seeded,
    zero-mean wobble per pair and metric (``noise`` its scale). ``overrides``: method ->
    {runs.csv column: value, or a list of 18 values}."""
    rows = []
    for k, method in enumerate(m for m in BASE if m not in drop):
        base = BASE[method]
        w = np.random.default_rng(k).normal(0.0, 1.0, (6, len(PAIRS)))
        w = noise * (w - w.mean(axis=1, keepdims=True))
        for i, (forget, seed) in enumerate(PAIRS):
            row = dict(dataset="mnist5k", arch="small_cnn", seed=seed, forget=forget)
            row["method"] = method
            for key, col in COLUMNS.items():
                row[col] = base[key]
            row["acc_retain_test"] += w[0, i]
            row["acc_forget_test"] = max(0.0, row["acc_forget_test"] + w[1, i] / 10)
            row["mia_entropy_svc"] += w[2, i] / 100
            row["total_time_s"] *= 1 + w[3, i] / 10
            row["total_time_per_epoch_s"] *= 1 + w[4, i] / 10
            row["js_forget_test"] = base["js"] * (1 + w[5, i] / 10)
            row["js_retain_test"] = base["js"] / 10
            for col, value in overrides.get(method, {}).items():
                row[col] = value[i] if isinstance(value, list) else value
            rows.append(row)
    return pd.DataFrame(rows)


def _claim(runs: pd.DataFrame, cid: str, settings=None):
    return next(c for c in evaluate_claims(runs, settings) if c.claim == cid)


def test_the_base_table_holds_every_claim_and_each_line_names_its_setting():
    claims = evaluate_claims(_runs())
    assert {c.claim: c.verdict for c in claims} == {c: HOLDS for c in STATEMENTS}
    assert {c.line for c in claims} == {"holds on mnist5k / small_cnn"}
    assert {c.units for c in claims} == {(6, 18)}
    text = "\n".join(claims_section(claims))
    for cid in STATEMENTS:
        assert re.search(
            rf"^- \*\*{cid}\*\* .*: \*\*holds on mnist5k / small_cnn\*\* "
            r"\[n_seeds = 6, n_pairs = 18\]",
            text,
            flags=re.M,
        )


def test_three_seeds_are_preliminary_with_the_point_estimate():
    runs = _runs(pbu={"acc_retain_test": 92.0})
    three = runs[runs["seed"] < 3]
    claims = evaluate_claims(three)
    assert {c.verdict for c in claims if c.claim != "C7"} == {PRELIMINARY}
    c2 = next(c for c in claims if c.claim == "C2")
    assert c2.line == "preliminary on mnist5k / small_cnn (3 seeds cannot reach p < 0.05)"
    assert c2.units == (3, 9)
    assert "point estimate: does not hold" in c2.parts[0].reason
    # the same numbers with six seeds decide
    assert _claim(runs, "C2").verdict == DOES_NOT_HOLD
    # four seeds are still too few one-sided (smallest p 1/16), five are enough
    assert _claim(runs[runs["seed"] < 4], "C3").verdict == PRELIMINARY
    assert _claim(runs[runs["seed"] < 5], "C3").verdict == HOLDS


def test_c1_at_the_paper_implied_stop_threshold_with_the_trade_off():
    c1 = _claim(_runs(pbu={"acc_forget_test": 3.0}), "C1")
    assert c1.verdict == DOES_NOT_HOLD and "at pbu's threshold" in c1.parts[0].label
    # stop-threshold variants: the verdict is read at 2 %, the others shown beside it
    runs = _runs(pbu={"acc_forget_test": 3.0})
    for name, df, dr in (
        ("pbu_stop0", 0.0, 95.0),
        ("pbu_stop2", 1.0, 96.0),
        ("pbu_stop5", 4.0, 97.0),
    ):
        extra = runs[runs["method"] == "pbu"].assign(
            method=name, acc_forget_test=df, acc_retain_test=dr
        )
        runs = pd.concat([runs, extra], ignore_index=True)
    settings = {"hparams": {"pbu": {"stop_threshold": 5.0}}}
    c1 = _claim(runs, "C1", settings)
    assert (
        c1.verdict == HOLDS and c1.parts[0].label == "PBU's A_Df at stop threshold 2 % (pbu_stop2)"
    )
    assert "2 % is the threshold its numbers imply" in c1.summary
    trade = tradeoff_table(c1)
    assert list(trade["method"]) == ["pbu_stop0", "pbu_stop2", "pbu", "pbu_stop5"]
    assert list(trade["stop threshold (%)"]) == ["0", "2", "5", "5"]
    assert trade.loc[trade["method"] == "pbu_stop0", "A_Dr (%)"].item().startswith("95.00")
    assert set(trade["n_seeds"]) == {6} and set(trade["n_pairs"]) == {18}
    # the tuned stop threshold of the setting wins over the config's
    tuned = {"tuned": {"small_cnn": {"hparams": {"pbu": {"stop_threshold": 2.0}}}}}
    c1 = _claim(_runs(), "C1", tuned)
    assert c1.parts[0].label == "PBU's A_Df at stop threshold 2 % (pbu)"


def test_c2_is_an_equivalence_within_two_points():
    assert _claim(_runs(pbu={"acc_retain_test": 92.0}), "C2").verdict == DOES_NOT_HOLD
    # 1.5 points below the oracle on average but spread between seeds: the interval reaches -2
    by_seed = {0: -4.0, 1: 4.0, 2: -3.0, 3: 3.0, 4: -1.0, 5: 1.0}
    wide = [97.5 - 1.5 + by_seed[s] for _, s in PAIRS]
    c2 = _claim(_runs(pbu={"acc_retain_test": wide}), "C2")
    assert c2.verdict == INCONCLUSIVE and "CI reaches ±2" in c2.reason
    # PBU above the oracle by more than 2 is not "within 2 points" either
    assert _claim(_runs(pbu={"acc_retain_test": 100.0}), "C2").verdict == DOES_NOT_HOLD


def test_c3_flips_and_absent_is_inconclusive():
    assert _claim(_runs(unsir={"acc_retain_test": 97.0}), "C3").verdict == DOES_NOT_HOLD
    c3 = _claim(_runs(drop=("bad_teaching",)), "C3")
    assert c3.verdict == INCONCLUSIVE and "absent: bad_teaching" in c3.reason
    both_absent = _claim(_runs(drop=("bad_teaching", "unsir")), "C3")
    assert both_absent.verdict == INCONCLUSIVE and "absent: unsir" in both_absent.reason


def test_c4_flips():
    assert _claim(_runs(pbu={"mia_entropy_svc": 0.9}), "C4").verdict == DOES_NOT_HOLD
    c4 = _claim(_runs(drop=("oracle",)), "C4")
    assert c4.verdict == INCONCLUSIVE and "absent: oracle" in c4.reason


def test_c5_fisher_part_reads_no_effect_helps_hurts():
    c5 = _claim(_runs(), "C5")
    fisher = next(p for p in c5.parts if p.label.startswith("Fisher term (vs"))
    assert fisher.outcome == "helps" and fisher.verdict == HOLDS
    # pbu_no_fisher identical to PBU: no effect, so the claim that it helps does not hold
    same = _runs()
    same.loc[same["method"] == "pbu_no_fisher", "acc_retain_test"] = same.loc[
        same["method"] == "pbu", "acc_retain_test"
    ].to_numpy()
    c5 = _claim(same, "C5")
    fisher = next(p for p in c5.parts if p.label.startswith("Fisher term (vs"))
    assert fisher.outcome == "no effect (equivalent within ±0.5)"
    assert c5.verdict == DOES_NOT_HOLD and "no effect (equivalent within ±0.5)" in c5.reason
    # the margin comes from the settings
    c5 = _claim(same, "C5", {"claims": {"fisher_margin": 0.25}})
    assert "within ±0.25" in c5.reason and fisher_margin({}) == 0.5
    c5 = _claim(_runs(pbu_no_fisher={"acc_retain_test": 98.0}), "C5")
    assert c5.verdict == DOES_NOT_HOLD and "Fisher term (vs pbu_no_fisher): hurts" in c5.reason
    c5 = _claim(_runs(drop=("pbu_ascent", "pbu_no_fisher")), "C5")
    assert c5.verdict == INCONCLUSIVE and "absent: pbu_ascent" in c5.reason
    c5 = _claim(_runs(pbu_ascent={"acc_forget_test": 20.0}), "C5")
    assert c5.verdict == INCONCLUSIVE and "forgetting not matched" in c5.reason
    # a variant that keeps more A_Dr by forgetting less is the trade-off, not a finding: the
    # Fisher part that would read "hurts" is inconclusive
    loose = _runs(pbu_no_fisher={"acc_retain_test": 98.0, "acc_forget_test": 20.0})
    fisher = next(p for p in _claim(loose, "C5").parts if p.label.startswith("Fisher term (vs"))
    assert fisher.verdict == INCONCLUSIVE and "forgetting not matched" in fisher.reason
    assert fisher.outcome == "hurts on A_Dr alone"
    # PBU itself not forgetting and keeping less A_Dr loses on both counts: it does not hold
    worse = _runs(pbu={"acc_forget_test": 20.0}, pbu_no_fisher={"acc_retain_test": 98.0})
    fisher = next(p for p in _claim(worse, "C5").parts if p.label.startswith("Fisher term (vs"))
    assert fisher.verdict == DOES_NOT_HOLD and fisher.reason == "hurts"
    # the A_Df differences are shown beside, without a verdict of their own
    assert [p.context for p in _claim(_runs(), "C5").parts] == [False, False, True, True]


def test_c6_flips_and_counts_no_tuning_time():
    c6 = _claim(_runs(pbu={"total_time_per_epoch_s": 2.0}), "C6")
    assert c6.verdict == DOES_NOT_HOLD and "per epoch" in c6.reason
    # without the totals, the method's own times are used
    runs = _runs().drop(columns=["total_time_s", "total_time_per_epoch_s"])
    runs["time_s"], runs["time_per_epoch_s"] = 1.0, 1.0
    runs.loc[runs["method"] == "pbu", ["time_s", "time_per_epoch_s"]] = [2.0, 2.0]
    assert _claim(runs, "C6").verdict == DOES_NOT_HOLD
    # a per-group tuning record's time is in PBU's total; it does not count
    runs = _runs()
    runs["tune_time_s"] = np.where(runs["method"] == "pbu", 9.0, np.nan)
    pbu = runs["method"] == "pbu"
    runs.loc[pbu, "total_time_per_epoch_s"] *= (runs.loc[pbu, "total_time_s"] + 9.0) / runs.loc[
        pbu, "total_time_s"
    ]
    runs.loc[pbu, "total_time_s"] += 9.0
    c6 = _claim(runs, "C6")
    assert c6.verdict == HOLDS
    assert c6.parts[0].stat.a_mean == pytest.approx(0.6, abs=0.05)


def test_c7_matched_forgetting_blind_first_and_flips():
    c7 = _claim(_runs(), "C7")
    labels = [p.label for p in c7.parts]
    assert labels[:2] == ["vs neggrad (forget-only), A_Dr", "vs neggrad (forget-only), distance"]
    assert not any("pbu_" in label or "oracle" in label for label in labels)  # no variants
    assert [lb.split(",")[0] for lb in labels[::2]] == [
        "vs neggrad (forget-only)",
        "vs finetune",
        "vs bad_teaching",
        "vs unsir",
    ]
    assert c7.summary.startswith("blind-only: holds")
    # a method that keeps more A_Dr but does not forget (A_Df 50 % > 5 %) is left out ...
    c7 = _claim(_runs(finetune={"acc_forget_test": 50.0, "acc_retain_test": 99.0}), "C7")
    assert c7.verdict == HOLDS and "finetune (50.00 %)" in c7.summary
    # ... while one that forgets and keeps more A_Dr is not
    c7 = _claim(_runs(finetune={"acc_retain_test": 99.0}), "C7")
    assert c7.verdict == DOES_NOT_HOLD and c7.reason == "against finetune (A_Dr)"
    # closer to the oracle counts too
    c7 = _claim(_runs(neggrad={"js_forget_test": 0.001}), "C7")
    assert c7.verdict == DOES_NOT_HOLD and c7.reason == "against neggrad (distance to oracle)"
    assert c7.summary.startswith("blind-only: does not hold (against neggrad (distance to")
    # PBU itself must forget
    c7 = _claim(_runs(pbu={"acc_forget_test": 8.0}), "C7")
    assert c7.verdict == DOES_NOT_HOLD and "PBU's mean A_Df" in c7.reason
    c7 = _claim(_runs(), "C7", {"tuning": {"threshold": 0.9}})
    assert c7.verdict == INCONCLUSIVE and "no other method forgets" in c7.reason
    assert "blind-only: inconclusive (no forget-only method forgets)" in c7.summary
    # with three seeds C7 is preliminary too
    assert _claim(_runs()[lambda r: r["seed"] < 3], "C7").verdict == PRELIMINARY


def test_c7_variants_by_base_method_and_no_blind_method():
    runs = _runs()
    runs.loc[runs["method"] == "neggrad", "method"] = "beta_zero"
    runs["base_method"] = runs["method"]
    runs.loc[runs["method"] == "beta_zero", "base_method"] = "pbu"
    c7 = _claim(runs, "C7")
    assert not any("beta_zero" in p.label for p in c7.parts)
    assert "blind-only: inconclusive (absent: no forget-only method)" in c7.summary


def test_matched_threshold_sources():
    assert matched_threshold({"tuning": {"threshold": 3.0}}) == (3.0, "tuning.threshold")
    pbu = {"hparams": {"pbu": {"stop_threshold": 4.0}}}
    assert matched_threshold(pbu) == (4.0, "hparams.pbu.stop_threshold")
    assert matched_threshold(None) == (5.0, "default")


def test_without_pbu_every_claim_is_inconclusive():
    claims = evaluate_claims(_runs(drop=("pbu",)))
    assert [c.claim for c in claims] == list(STATEMENTS)
    assert {c.verdict_text for c in claims} == {"inconclusive (absent: pbu)"}


def test_protocol_column_is_shown_where_present():
    runs = _runs()
    runs["protocol"] = np.where(runs["method"].isin(["oracle", "original"]), None, "dev_class")
    claims = evaluate_claims(runs)
    assert set(claims_table(claims)["protocol"]) == {"dev_class"}
    assert "PBU's hyperparameters: dev_class protocol)" in "\n".join(claims_section(claims))
    assert "protocol" not in claims_table(evaluate_claims(_runs())).columns


def test_report_has_a_verdict_line_per_claim_and_the_claims_tables(tmp_path):
    runs = pd.concat([_runs(), _runs(drop=("unsir",)).assign(arch="resnet18")], ignore_index=True)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    out = build_all(tmp_path / "runs.csv", None, None, REFERENCE, tmp_path / "out", {})
    text = out["report"][0].read_text()
    claims = text.split("## Claims")[1].split("\n## ")[0]
    verdict = r"\*\*(holds|does not hold|inconclusive|preliminary) on mnist5k / (\w+)\*\*"
    for arch in ("resnet18", "small_cnn"):
        part = claims.split(f"### mnist5k / {arch}")[1].split("###")[0]
        lines = re.findall(rf"^- \*\*(C\d)\*\* .*?: {verdict}", part, flags=re.M)
        assert [c for c, _, _ in lines] == list(STATEMENTS), part
        assert {a for _, _, a in lines} == {arch}
    assert (
        "**C3** A_Dr above UNSIR and Bad Teaching: **inconclusive on mnist5k / resnet18** "
        "(vs unsir: absent" in text
    )
    table = pd.read_csv(tmp_path / "out" / "tables" / "claims.csv")
    assert len(table) == 14 and set(table["claim"]) == set(STATEMENTS)
    assert set(table["n_seeds"]) == {6} and set(table["n_pairs"]) == {18}
    comps = pd.read_csv(tmp_path / "out" / "tables" / "claims_comparisons.csv")
    assert {"mean_diff", "ci_low", "ci_high", "p_value", "n_seeds", "n_pairs"} <= set(comps.columns)
    assert (tmp_path / "out" / "figures" / "ablation.png").is_file()
    assert "](tables/claims.md)" in text and "](figures/ablation.png)" in text


def test_a_claim_needs_the_seed_level_test_not_just_its_interval():
    # five seeds, one of them against the claim: the interval may clear 0 but the sign-flip
    # test (4 of 5 seeds above 0) cannot give p < 0.05 (p = 2/32)
    by_seed = {0: 3.0, 1: 3.0, 2: 3.0, 3: 3.0, 4: -0.5, 5: 0.0}  # seed 5 left out
    runs = _runs(unsir={"acc_retain_test": [96.5 - by_seed[s] for _, s in PAIRS]})
    runs = runs[runs["seed"] < 5]
    part = next(p for p in _claim(runs, "C3").parts if p.label == "vs unsir")
    assert part.stat.ci_low > 0 and part.stat.p_value == pytest.approx(2 / 32)
    assert part.verdict == INCONCLUSIVE


def test_ablation_figure_data_is_variant_minus_pbu():
    from pbu.report.figures import ablation_frame

    table = ablation_frame(_runs())
    assert list(table["a"]) == ["pbu_no_fisher", "pbu_ascent"]  # the figure's order
    assert set(table["b"]) == {"pbu"} and set(table["n_pairs"]) == {18}
    assert set(table["n_seeds"]) == {6}
    diffs = dict(zip(table["a"], table["mean_diff"]))
    assert diffs["pbu_ascent"] == pytest.approx(93.0 - 96.5)  # wobbles have mean zero
    assert diffs["pbu_no_fisher"] == pytest.approx(95.5 - 96.5)
    assert (table["ci_low"] < table["mean_diff"]).all()
    assert (table["mean_diff"] < table["ci_high"]).all()
    assert ablation_frame(_runs(drop=("pbu_ascent", "pbu_no_fisher"))).empty
