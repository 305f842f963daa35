"""Tests for pbu.report.paired (paired statistics on hand-made numbers, checked against values
computed by hand from the exact signed-rank distribution) and pbu.report.claims (each claim's
verdict flipped by a hand-made runs table: supported, not supported, inconclusive / absent)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pbu.report import build_all
from pbu.report.claims import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    STATEMENTS,
    SUPPORTED,
    claims_section,
    claims_table,
    evaluate_claims,
    matched_threshold,
)
from pbu.report.paired import (
    bootstrap_ci,
    compare,
    equivalence,
    from_differences,
    min_exact_p,
    significant,
    wilcoxon_test,
)

REFERENCE = Path(__file__).resolve().parents[2] / "config" / "paper" / "reference.csv"

# ------------------------------------------------------------------------ paired statistics


def test_wilcoxon_p_values_from_the_exact_distribution():
    # d = 1, -2, 3, 4, 5, 6: the positive ranks sum to W+ = 19. Under H0 each of the 2**6 = 64
    # sign patterns is equally likely; W+ >= 19 for the all-positive pattern (21) and those
    # with only rank 1 (20) or only rank 2 (19) negative: p = 3/64 one-sided, 6/64 two-sided.
    d = [1.0, -2.0, 3.0, 4.0, 5.0, 6.0]
    p, n_nonzero, min_p, note = wilcoxon_test(d, "greater")
    assert p == pytest.approx(3 / 64) and n_nonzero == 6 and min_p == 1 / 64 and note == ""
    assert wilcoxon_test(d, "two-sided")[0] == pytest.approx(6 / 64)
    assert wilcoxon_test(d, "less")[0] == pytest.approx(1 - 2 / 64)  # P(W+ <= 19) = 62/64
    # shifted by 2.2: d - 2.2 = -1.2, -4.2, 0.8, 1.8, 2.8, 3.8, ranks 2, 6, 1, 3, 4, 5: W+ = 13.
    # Subsets of {1..6} with a rank sum >= 13 are the complements of those with sum <= 8:
    # 1 + 1 + 1 + 2 + 2 + 3 + 4 + 4 + 4 = 22 (sums 0 to 8), so p = 22/64
    p, n_nonzero, _, _ = wilcoxon_test(d, "greater", shift=2.2)
    assert n_nonzero == 6 and p == pytest.approx(22 / 64)
    # a difference equal to the shift is dropped: d - 1 has one zero, n = 5
    assert wilcoxon_test(d, "greater", shift=1.0)[1] == 5


def test_too_few_pairs_cannot_be_significant_and_say_so():
    assert min_exact_p(5, "two-sided") == pytest.approx(0.0625)
    assert min_exact_p(5, "greater") == pytest.approx(1 / 32)
    # five positive differences: the smallest two-sided p there is, still >= 0.05
    stat = from_differences([1.0, 2.0, 3.0, 4.0, 5.0], alternative="two-sided")
    assert stat.p_value == pytest.approx(0.0625)
    assert "cannot give p < 0.05" in stat.note and not significant(stat)
    # one-sided with four: p = 1/16 and the note says why nothing can be shown
    stat = from_differences([1.0, 2.0, 3.0, 4.0], alternative="greater")
    assert stat.p_value == pytest.approx(1 / 16) and "cannot" in stat.note
    assert not significant(stat)
    # one-sided with five can: p = 1/32
    stat = from_differences([1.0, 2.0, 3.0, 4.0, 5.0], alternative="greater")
    assert stat.p_value == pytest.approx(1 / 32) and stat.note == "" and significant(stat)


def test_all_zero_differences_give_no_test():
    stat = from_differences([0.0] * 6, alternative="greater")
    assert np.isnan(stat.p_value) and stat.n == 6 and stat.n_nonzero == 0
    assert "all 6 differences are zero" in stat.note and not significant(stat)
    assert (stat.mean_diff, stat.ci_low, stat.ci_high) == (0.0, 0.0, 0.0)
    # the claim "a above b" is then not supported (the mean is not above 0), never an error
    runs = _runs(pbu={"acc_retain_test": 95.0}, unsir={"acc_retain_test": 95.0})
    c3 = _claim(runs, "C3")
    part = next(p for p in c3.parts if p.label == "vs unsir")
    assert part.verdict == NOT_SUPPORTED and np.isnan(part.stat.p_value)


def test_bootstrap_ci_by_hand_deterministic_and_around_zero():
    # two pairs 0 and 1: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert all(np.isnan(bootstrap_ci([3.0])))
    clear = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0]
    low, high = bootstrap_ci(clear)
    assert 0.8 <= low < 1.0 < high <= 1.2  # excludes zero, inside the data's range
    assert bootstrap_ci(clear) == (low, high)  # seeded: the same interval every time
    spread = np.random.default_rng(0).normal(1.0, 0.5, 9)
    assert bootstrap_ci(spread, seed=1) != bootstrap_ci(spread)  # the seed is used
    low, high = bootstrap_ci([-3.0, 3.0, -2.0, 2.0, -1.0, 1.5])
    assert low < 0.0 < high


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
    # pairs (2,0): 90-85 = 5, (2,1): 91-90 = 1, (6,0): 80-83 = -3
    assert stat.n == 3 and stat.mean_diff == pytest.approx(1.0)
    assert stat.a_mean == pytest.approx(87.0) and stat.b_mean == pytest.approx(86.0)
    assert compare(runs, "b", "a", "acc_retain_test").mean_diff == pytest.approx(-1.0)
    assert compare(runs, "a", "b", "no_such_metric").n == 0


def test_equivalence_takes_the_larger_one_sided_p():
    d = np.array([0.01, -0.01, 0.02, 0.0, 0.015, -0.005, 0.01])
    runs = pd.DataFrame(
        {
            "method": ["a"] * 7 + ["b"] * 7,
            "forget": list(range(7)) * 2,
            "seed": [0] * 14,
            "m": list(0.5 + d) + [0.5] * 7,
        }
    )
    stat = equivalence(runs, "a", "b", "m", 0.05)
    # every difference is inside ±0.05: both one-sided tests see 7 differences on their side
    assert stat.p_value == pytest.approx(1 / 128) and significant(stat)
    assert stat.alternative == "within ±0.05" and stat.mean_diff == pytest.approx(d.mean())


# ------------------------------------------------------------------------------ the claims

PAIRS = [(f, s) for f in (2, 6, 8) for s in (0, 1, 2)]  # 9 (forget, seed) pairs
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
    """Nine pairs per method: the method's base value + a small, seeded, zero-mean wobble per
    pair and metric (``noise`` its scale), so that differences are not tied (a tie sends
    scipy to its slower permutation test). ``overrides``: method -> {runs.csv column: value,
    or a list of 9 values}."""
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


def test_the_base_table_supports_every_claim_but_c7():
    got = {c.claim: c.verdict for c in evaluate_claims(_runs())}
    # C7: PBU is above neggrad, unsir and bad_teaching, but finetune's A_Df (4 %) is under the
    # 5 % threshold and its A_Dr 95 < PBU's 96.5... so it is supported too
    assert got == {c: SUPPORTED for c in STATEMENTS}, got


def test_c1_flips():
    assert _claim(_runs(pbu={"acc_forget_test": 3.0}), "C1").verdict == NOT_SUPPORTED
    one_bad = [0.2] * 8 + [3.0]  # mean 0.51 %, one pair above 2 %
    c1 = _claim(_runs(pbu={"acc_forget_test": one_bad}), "C1")
    assert c1.verdict == INCONCLUSIVE and "a pair is above 2 %" in c1.reason
    assert "worst pair 3.00 % (class 8, seed 2)" in c1.summary


def test_c2_flips():
    assert _claim(_runs(pbu={"acc_retain_test": 92.0}), "C2").verdict == NOT_SUPPORTED
    # mean 1.5 points below the oracle, but spread: the CI reaches -2
    wide = [97.5 - 1.5 + x for x in (-4, 4, -3, 3, -2, 2, -1, 1, 0)]
    c2 = _claim(_runs(pbu={"acc_retain_test": wide}), "C2")
    assert c2.verdict == INCONCLUSIVE and "CI reaches -2" in c2.reason


def test_c3_flips_and_absent_is_inconclusive():
    assert _claim(_runs(unsir={"acc_retain_test": 97.0}), "C3").verdict == NOT_SUPPORTED
    c3 = _claim(_runs(drop=("bad_teaching",)), "C3")
    assert c3.verdict == INCONCLUSIVE and "absent: bad_teaching" in c3.reason
    both_absent = _claim(_runs(drop=("bad_teaching", "unsir")), "C3")
    assert both_absent.verdict == INCONCLUSIVE and "absent: unsir" in both_absent.reason


def test_c4_flips():
    assert _claim(_runs(pbu={"mia_entropy_svc": 0.9}), "C4").verdict == NOT_SUPPORTED
    c4 = _claim(_runs(drop=("oracle",)), "C4")
    assert c4.verdict == INCONCLUSIVE and "absent: oracle" in c4.reason


def test_c5_flips_absent_and_unmatched_forgetting():
    c5 = _claim(_runs(pbu_no_fisher={"acc_retain_test": 97.0}), "C5")
    assert c5.verdict == NOT_SUPPORTED and "Fisher term" in c5.reason
    c5 = _claim(_runs(drop=("pbu_ascent", "pbu_no_fisher")), "C5")
    assert c5.verdict == INCONCLUSIVE and "absent: pbu_ascent" in c5.reason
    c5 = _claim(_runs(pbu_ascent={"acc_forget_test": 20.0}), "C5")
    assert c5.verdict == INCONCLUSIVE and "forgetting not matched" in c5.reason
    # the A_Df differences are shown beside, without a verdict of their own
    assert [p.context for p in _claim(_runs(), "C5").parts] == [False, True, False, True]


def test_c6_flips():
    c6 = _claim(_runs(pbu={"total_time_per_epoch_s": 2.0}), "C6")
    assert c6.verdict == NOT_SUPPORTED and "per epoch" in c6.reason
    # without the totals, the method's own times are used
    runs = _runs().drop(columns=["total_time_s", "total_time_per_epoch_s"])
    runs["time_s"], runs["time_per_epoch_s"] = 1.0, 1.0
    runs.loc[runs["method"] == "pbu", ["time_s", "time_per_epoch_s"]] = [2.0, 2.0]
    assert _claim(runs, "C6").verdict == NOT_SUPPORTED


def test_c7_matched_forgetting_blind_first_and_flips():
    c7 = _claim(_runs(), "C7")
    labels = [p.label for p in c7.parts]
    assert labels[:2] == ["vs neggrad (forget-only), A_Dr", "vs neggrad (forget-only), distance"]
    assert not any("pbu_" in label or "oracle" in label for label in labels)  # no variants
    # then the others in the report's method order (the set of methods has none)
    assert [lb.split(",")[0] for lb in labels[::2]] == [
        "vs neggrad (forget-only)",
        "vs finetune",
        "vs bad_teaching",
        "vs unsir",
    ]
    assert c7.summary.startswith("blind-only: supported")
    # a method that keeps more A_Dr but does not forget (A_Df 50 % > 5 %) is left out ...
    c7 = _claim(_runs(finetune={"acc_forget_test": 50.0, "acc_retain_test": 99.0}), "C7")
    assert c7.verdict == SUPPORTED and "finetune (50.00 %)" in c7.summary
    # ... while one that forgets and keeps more A_Dr is not
    c7 = _claim(_runs(finetune={"acc_retain_test": 99.0}), "C7")
    assert c7.verdict == NOT_SUPPORTED and c7.reason == "against finetune (A_Dr)"
    assert c7.summary.startswith("blind-only: supported")
    # closer to the oracle counts too
    c7 = _claim(_runs(neggrad={"js_forget_test": 0.001}), "C7")
    assert c7.verdict == NOT_SUPPORTED and c7.reason == "against neggrad (distance to oracle)"
    assert c7.summary.startswith("blind-only: not supported (against neggrad (distance to")
    # PBU itself must forget
    c7 = _claim(_runs(pbu={"acc_forget_test": 8.0}), "C7")
    assert c7.verdict == NOT_SUPPORTED and "PBU's mean A_Df" in c7.reason
    # the threshold comes from the settings: at 0.9 % only PBU and neggrad... neggrad's 1 %
    # is out, so no other method forgets
    c7 = _claim(_runs(), "C7", {"tuning": {"threshold": 0.9}})
    assert c7.verdict == INCONCLUSIVE and "no other method forgets" in c7.reason
    assert "blind-only: inconclusive (no forget-only method forgets)" in c7.summary


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
    runs["protocol"] = np.where(runs["method"].isin(["oracle", "original"]), None, "blind")
    claims = evaluate_claims(runs)
    assert set(claims_table(claims)["protocol"]) == {"blind"}
    assert "(PBU's hyperparameters: blind protocol)" in "\n".join(claims_section(claims))
    assert "protocol" not in claims_table(evaluate_claims(_runs())).columns


def test_report_has_a_verdict_line_per_claim_and_the_claims_tables(tmp_path):
    runs = pd.concat([_runs(), _runs(drop=("unsir",)).assign(arch="resnet18")], ignore_index=True)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    out = build_all(tmp_path / "runs.csv", None, None, REFERENCE, tmp_path / "out", {})
    text = out["report"][0].read_text()
    claims = text.split("## Claims")[1].split("\n## ")[0]
    verdict = r"\*\*(supported|not supported|inconclusive)\*\*"
    for arch in ("resnet18", "small_cnn"):
        part = claims.split(f"### mnist5k / {arch}")[1].split("###")[0]
        lines = re.findall(rf"^- \*\*(C\d)\*\* .*?: {verdict}", part, flags=re.M)
        assert [c for c, _ in lines] == list(STATEMENTS), part
    assert "**C3** A_Dr above UNSIR and Bad Teaching: **inconclusive** (vs unsir: absent" in text
    table = pd.read_csv(tmp_path / "out" / "tables" / "claims.csv")
    assert len(table) == 14 and set(table["claim"]) == set(STATEMENTS)
    comps = pd.read_csv(tmp_path / "out" / "tables" / "claims_comparisons.csv")
    assert {"mean_diff", "ci_low", "ci_high", "p_value", "alternative"} <= set(comps.columns)
    assert (tmp_path / "out" / "figures" / "ablation.png").is_file()
    assert "](tables/claims.md)" in text and "](figures/ablation.png)" in text


def test_too_few_pairs_leave_a_claim_inconclusive():
    runs = _runs()
    four = runs[runs["forget"].eq(2) | (runs["forget"].eq(6) & runs["seed"].eq(0))]
    c2 = _claim(four, "C2")  # PBU 1 point below the oracle: the CI is clear of -2 ...
    stat = c2.parts[0].stat
    assert stat.n == 4 and stat.ci_low > -2
    # ... but four pairs cannot give p < 0.05 one-sided (smallest p = 1/16)
    assert c2.verdict == INCONCLUSIVE and "cannot give p < 0.05" in c2.reason
    assert _claim(runs, "C2").verdict == SUPPORTED  # the same with all nine pairs


def test_ablation_figure_data_is_variant_minus_pbu():
    from pbu.report.figures import ablation_frame

    table = ablation_frame(_runs())
    assert list(table["a"]) == ["pbu_no_fisher", "pbu_ascent"]  # the figure's order
    assert set(table["b"]) == {"pbu"} and set(table["n"]) == {9}
    diffs = dict(zip(table["a"], table["mean_diff"]))
    assert diffs["pbu_ascent"] == pytest.approx(93.0 - 96.5)  # wobbles have mean zero
    assert diffs["pbu_no_fisher"] == pytest.approx(95.5 - 96.5)
    assert (table["ci_low"] < table["mean_diff"]).all()
    assert (table["mean_diff"] < table["ci_high"]).all()
    assert ablation_frame(_runs(drop=("pbu_ascent", "pbu_no_fisher"))).empty
