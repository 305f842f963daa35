"""The per-example forget score (pbu.metrics.forget_score) on hand-made confidence sets, and the
stage that gathers the evaluations' saved confidences (pbu.jobs.forget_score)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pbu import layout
from pbu import metrics as M
from pbu.jobs import forget_score as FS
from pbu.metrics import forget_score as F

# ------------------------------------------------------------------------------ confidence


def test_logit_confidence_is_log_odds_of_the_true_class():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0], [1.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    got = M.logit_confidence(logits, labels)
    p = torch.softmax(logits.double(), 1)
    want = [math.log(p[i, y] / (1 - p[i, y])) for i, y in enumerate(labels.tolist())]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[1] == pytest.approx(math.log(3.0))


def test_logit_confidence_stays_finite_and_exact_for_confident_models():
    """1 - p_y rounds to 0 at p_y ~ 1 and the softmax underflows for a logit gap of 1000: the
    other classes' summed mass and the 1e-45 floor keep the value finite (about ±103.6)."""
    logits = torch.tensor([[40.0, 0.0, 0.0], [1000.0, 0.0, 0.0], [0.0, 1000.0, 0.0]])
    got = M.logit_confidence(logits, torch.tensor([0, 0, 0]))
    assert got[0] == pytest.approx(40.0 - math.log(2.0), abs=1e-9)  # log(p_y / (2 e^-40 p_y))
    floor = -math.log(1e-45)
    assert got[1] == pytest.approx(floor) and got[2] == pytest.approx(-floor)
    assert np.isfinite(got).all() and got.dtype == np.float64


# ------------------------------------------------------------------------------ ε per example


def brute_force_single(a, b, delta=1e-5, per_unit=100, cap=50.0):
    """An independent ε of the single-threshold rules: a loop over every threshold of the
    grid, positive = the set with the larger median, FPR/FNR counted one by one."""
    pos, neg = (a, b) if np.median(a) > np.median(b) else (b, a)
    lo = math.floor(min(min(a), min(b)) * per_unit)
    hi = math.ceil((max(max(a), max(b)) + 1 / per_unit) * per_unit)
    best = 0.0
    for k in range(lo, hi + 1):
        t = k / per_unit
        fpr = sum(v >= t for v in neg) / len(neg)
        fnr = sum(v < t for v in pos) / len(pos)
        if fpr == 0 and fnr == 0:
            return cap
        if fpr == 0 or fnr == 0:
            continue
        e = max(
            math.log(max(1 - delta - fpr, 1e-300)) - math.log(fnr),
            math.log(max(1 - delta - fnr, 1e-300)) - math.log(fpr),
        )
        best = max(best, e)
    return min(best, cap)


@pytest.mark.parametrize("seed", range(6))
def test_single_threshold_eps_matches_a_brute_force_count(seed):
    rng = np.random.default_rng(seed)
    n = [4, 8, 16][seed % 3]
    a, b = rng.normal(-20, 2, n), rng.normal(-20 + seed * 0.6, 2, n)
    got = F.epsilon_one(a, b, double_threshold=False).eps
    assert got == pytest.approx(brute_force_single(a, b), abs=1e-9)


def test_hand_made_eps():
    """Positives 5, 6, 7, 8 against 0, 1, 2, 5.5: the best rule that keeps both error rates
    above 0 misses one of each (FPR = FNR = 1/4): ε = log(0.75 - δ) - log(0.25) ≈ ln 3.
    The threshold at 5 (FNR 0, FPR 1/4) and at 5.6 (FNR 1/4, FPR 0) are discarded."""
    eps = F.epsilon_one([5, 6, 7, 8], [0, 1, 2, 5.5], double_threshold=False).eps
    assert eps == pytest.approx(math.log(0.75 - 1e-5) - math.log(0.25))


def test_disjoint_sets_give_eps_at_the_cap_and_score_zero():
    rng = np.random.default_rng(0)
    for n in (4, 8, 32):
        a, b = rng.normal(-20, 2, (n, 50)), rng.normal(-5, 2, (n, 50))
        b = np.maximum(b, a.max() + 1.0)  # every b above every a: perfectly separable
        eps, peaky = F.epsilon(a, b)
        assert (eps == F.EPS_CAP).all() and not peaky.any()
        assert F.forgetting_score(eps, n) == 0.0


def test_same_distribution_scores_like_the_ceiling_not_one():
    """Two sets drawn from one distribution: the best of many thresholds finds some separation
    by chance, so the score is far from 1. Measured here (400 examples, N(−20, 2)), with single
    thresholds: median ε 1.10 and score 0.31-0.33 at N = 8 to 64; with the two-threshold rules
    too (the challenge's definition): median ε 1.39-1.50, score 0.20-0.24. The audit behind
    issue 22 found ε ≈ 1.1 and score ≈ 0.3 with single thresholds."""
    rng = np.random.default_rng(1)
    for n in (8, 16, 32, 64):
        a, b = rng.normal(-20, 2, (n, 400)), rng.normal(-20, 2, (n, 400))
        single, _ = F.epsilon(a, b, double_threshold=False)
        both, _ = F.epsilon(a, b)
        assert np.median(single) == pytest.approx(1.10, abs=0.05), n
        assert 0.28 <= F.forgetting_score(single, n) <= 0.38, n
        assert 1.3 <= np.median(both) <= 1.6, n
        assert 0.17 <= F.forgetting_score(both, n) <= 0.26, n
        assert (both >= single).all()  # more rules can only find more


def test_a_shifted_set_scores_lower_than_an_identical_one():
    rng = np.random.default_rng(2)
    n = 16
    ref = rng.normal(-20, 2, (n, 300))
    same = rng.normal(-20, 2, (n, 300))
    scores = [
        F.forgetting_score(F.epsilon(same + shift, ref)[0], n) for shift in (0.0, 1.0, 2.0, 4.0)
    ]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1] + 0.15, scores


def test_the_score_is_symmetric_under_swapping_the_sets():
    rng = np.random.default_rng(3)
    a, b = rng.normal(-20, 2, (8, 200)), rng.normal(-19, 3, (8, 200))
    b[:, :5] = a[:, :5]  # some examples with equal medians: both directions are tried
    for double in (False, True):
        ab = F.epsilon(a, b, double_threshold=double)[0]
        ba = F.epsilon(b, a, double_threshold=double)[0]
        np.testing.assert_array_equal(ab, ba)


def test_peaky_examples_get_the_cap_without_a_search():
    """One set nearly constant (range under 1 % of the other's): ε = cap, flagged peaky, even
    where a threshold search would find little (the constant sits inside the spread)."""
    spread = np.array([-30.0, -27, -24, -19.9, -18, -15, -12, -10])
    res = F.epsilon_one(np.full(8, -20.0), spread)
    assert res == F.EpsilonResult(F.EPS_CAP, True)
    res = F.epsilon_one(np.full(8, -20.0) + np.linspace(0, 0.19, 8), spread)  # 0.95 %
    assert res.peaky and res.eps == F.EPS_CAP
    res = F.epsilon_one(np.full(8, -20.0) + np.linspace(0, 0.21, 8), spread)  # 1.05 %
    assert not res.peaky and res.eps < F.EPS_CAP
    # two constant sets: equal -> indistinguishable, different -> separable; neither peaky
    assert F.epsilon_one([1.0, 1.0], [1.0, 1.0]) == F.EpsilonResult(0.0, False)
    assert F.epsilon_one([1.0, 1.0], [2.0, 2.0]) == F.EpsilonResult(F.EPS_CAP, False)


def test_the_window_rule_catches_a_peaky_set_inside_a_wide_one():
    """A tight set in the middle of a wide one: no single threshold separates them, a window
    as wide as the tight set's range does (every tight value in, only one wide value in)."""
    tight = np.array([-20.2, -20.1, -20.0, -19.9, -19.8, -20.05, -19.95, -20.15])
    wide = np.array([-40.0, -35, -30, -25, -20.0, -15, -10, -5])
    single = F.epsilon_one(tight, wide, double_threshold=False).eps
    both = F.epsilon_one(tight, wide).eps
    # window [-20.2, -19.8]: FNR 0 (discarded) ... the kept best misses one tight value
    assert both > single + 0.5, (single, both)


# ------------------------------------------------------------------------------ the buckets


@pytest.mark.parametrize(
    "n, max_eps", [(2, 0), (3, 1), (4, 2), (8, 2), (9, 3), (32, 4), (64, 5), (512, 7)]
)
def test_max_epsilon_is_ceil_ln_n_minus_1(n, max_eps):
    assert F.max_epsilon(n) == max_eps == math.ceil(math.log(n - 1))


@pytest.mark.parametrize(
    "eps, points",
    [
        (0.0, 1.0),
        (0.4999, 1.0),
        (0.5, 0.5),
        (0.9999, 0.5),
        (1.0, 0.25),
        (1.5, 0.125),
        (3.4999, 1 / 64),
        (3.5, 1 / 128),
        (3.9999, 1 / 128),
        (4.0, 0.0),
        (50.0, 0.0),
    ],
)
def test_bucket_edges_at_n_32(eps, points):
    assert F.bucket_points([eps], 32)[0] == points


def test_bucket_edges_at_small_n():
    assert list(F.bucket_points([0.0, 0.5, 0.99, 1.0], 3)) == [1.0, 0.5, 0.5, 0.0]  # max ε 1
    assert list(F.bucket_points([0.0, 0.3], 2)) == [0.0, 0.0]  # max ε 0: nothing scores
    with pytest.raises(ValueError, match="at least 2 models"):
        F.max_epsilon(1)


def test_forget_score_is_the_mean_of_the_points():
    assert F.forgetting_score([0.1, 0.6, 1.2, 60.0], 32) == pytest.approx((1 + 0.5 + 0.25 + 0) / 4)


def test_offsets_in_oracle_sds_with_their_sign():
    ref = np.array([[-22.0, 0.0], [-20.0, 1.0], [-18.0, 2.0]])  # medians -20, 1; sds 2, 1
    unl = np.array([[-14.0, 1.0], [-16.0, 1.0], [-15.0, 1.0]])  # medians -15, 1
    np.testing.assert_allclose(F.offsets(unl, ref), [2.5, 0.0])
    np.testing.assert_allclose(F.offsets(unl - 10, ref), [-2.5, -10.0])
    const = np.array([[-20.0], [-20.0], [-20.0]])
    assert F.offsets(const + 1, const)[0] == np.inf and F.offsets(const, const)[0] == 0.0


# ------------------------------------------------------------------------------ the stage


def _group(root, seed, forget, conf, acc, names, index):
    path = layout.path(
        "confidences", root, dataset="mnist5k", arch="small_cnn", seed=seed, forget=forget
    )
    FS.write_confidences(path, FS.Confidences(names, [seed] * len(names), conf, acc, index, forget))
    return path


def test_confidences_files_round_trip(tmp_path):
    conf = FS.Confidences(["oracle", "pbu"], [3, 3], np.eye(2) * -20.5, [98.0, 97.5], [7, 9], 2)
    path = tmp_path / "c.npz"
    FS.write_confidences(path, conf)
    back = FS.read_confidences(path)
    assert back.model == ["oracle", "pbu"] and back.seed == [3, 3] and back.forget == 2
    np.testing.assert_array_equal(back.confidence, conf.confidence)
    np.testing.assert_array_equal(back.index, [7, 9])
    assert back.confidence.dtype == np.float64 and list(back.acc_retain_test) == [98.0, 97.5]


@pytest.fixture
def world(tmp_path):
    """Two classes, N = 6 seeds, 40 images: the oracles at N(−20, 2) per image, a method
    "same" drawn like them, a method "high" 10 above (under-forgetting), the originals far above
    (+5), and a ceiling of 6 further oracles."""
    rng = np.random.default_rng(7)
    n_img, seeds = 40, range(6)
    base = {c: rng.normal(-20, 3, n_img) for c in (2, 6)}
    groups, ceiling = [], []
    for c in (2, 6):
        index = np.arange(n_img) + 100 * c
        for s in seeds:
            rows = {
                "oracle": base[c] + rng.normal(0, 2, n_img),
                "same": base[c] + rng.normal(0, 2, n_img),
                "high": base[c] + 10 + rng.normal(0, 2, n_img),
                "original": rng.normal(5, 1, n_img),
            }
            acc = {"oracle": 98.0, "same": 73.5, "high": 49.0, "original": 99.0}
            groups.append(
                _group(
                    tmp_path,
                    s,
                    c,
                    np.stack(list(rows.values())),
                    [acc[k] for k in rows],
                    list(rows),
                    index,
                )
            )
        path = layout.path(
            "ceiling_confidences", tmp_path, dataset="mnist5k", arch="small_cnn", forget=c
        )
        FS.write_confidences(
            path,
            FS.Confidences(
                ["oracle"] * 6,
                [10 + s for s in seeds],
                np.stack([base[c] + rng.normal(0, 2, n_img) for _ in seeds]),
                [98.0] * 6,
                index,
                c,
            ),
        )
        ceiling.append(path)
    return groups, ceiling


def test_the_stage_scores_methods_ceiling_and_floor(world, tmp_path):
    groups, ceiling = world
    paths = FS.forget_score(
        tmp_path / "aggregate", confidences=groups, ceiling=ceiling, settings={"bootstrap": 200}
    )
    import csv

    rows = list(csv.DictReader(open(paths["forget_score_csv"])))
    by = {(r["forget"], r["method"]): r for r in rows}
    assert set(by) == {
        (f, m) for f in ("2", "6", "all") for m in ("same", "high", "ceiling", "floor")
    }
    for f in ("2", "6", "all"):
        same, high = float(by[f, "same"]["score"]), float(by[f, "high"]["score"])
        ceil, floor = float(by[f, "ceiling"]["score"]), float(by[f, "floor"]["score"])
        assert floor == 0.0 and high < 0.05  # separable: no points
        assert abs(same - ceil) < 0.15 and same > 0.1  # like retraining
        assert by[f, "high"]["direction"] == "under-forgetting"
        assert by[f, "same"]["direction"] == "within retraining's spread"
        assert float(by[f, "high"]["offset_sd_signed_median"]) > 3
        assert float(by[f, "floor"]["eps_cap_share"]) == 1.0
        assert by[f, "same"]["kind"] == "method" and by[f, "ceiling"]["kind"] == "ceiling"
        lo, hi = float(by[f, "same"]["score_ci_low"]), float(by[f, "same"]["score_ci_high"])
        assert lo <= same <= hi
    all_row = by["all", "same"]
    assert int(all_row["n_images"]) == 80 and int(all_row["n_models"]) == 6
    assert float(all_row["max_eps"]) == 2  # ceil(ln 5)
    # utility: × mean A_Dr / the oracles' mean A_Dr
    same = by["2", "same"]
    assert float(same["score"]) > 0.1
    assert float(same["utility_score"]) == pytest.approx(float(same["score"]) * 73.5 / 98)
    assert float(same["acc_retain_test"]) == 73.5 and float(same["oracle_acc_retain_test"]) == 98
    runs = list(csv.DictReader(open(paths["forget_score_runs_csv"])))
    assert len(runs) == 2 * (6 * 4 + 6)  # every model of every group, and the ceiling's
    images = list(csv.DictReader(open(paths["forget_score_images_csv"])))
    assert len(images) == 2 * 4 * 40
    assert {int(r["image"]) for r in images if r["forget"] == "6"} == set(range(600, 640))


def test_the_stage_refuses_files_of_other_images(world, tmp_path):
    groups, _ = world
    bad = FS.read_confidences(groups[0])
    bad.index = bad.index + 1
    FS.write_confidences(groups[0], bad)
    with pytest.raises(ValueError, match="images differ"):
        FS.forget_scores(groups)


def test_the_stage_compares_each_method_with_the_oracles_of_the_same_class(world, tmp_path):
    """A method's matrix holds its own models of that class, by seed: the score of "same"
    with its rows replaced by the oracles' is exactly the ceiling of identical sets."""
    groups, _ = world
    sets = FS.gather(groups)
    key = ("mnist5k", "small_cnn", 2)
    seeds, ref, _ = sets[key].matrix("oracle")
    assert seeds == list(range(6)) and ref.shape == (6, 40)
    for s in seeds:
        sets[key].models["same"][s] = sets[key].models["oracle"][s]
    comps, _ = FS.score_sets(sets[key], key, FS.ForgetScoreSettings(bootstrap=0))
    assert (comps["same"].eps == 0).all() and comps["same"].points.mean() == 1.0


def test_direction_of_the_offset():
    assert FS.direction(0.99) == FS.direction(-0.99) == "within retraining's spread"
    assert FS.direction(1.0) == "under-forgetting" and FS.direction(-1.0) == "over-forgetting"
