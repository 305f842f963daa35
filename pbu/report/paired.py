"""Paired statistics over the (forget class, seed) pairs of one setting, with the SEED as the unit.

Two methods run on the same pairs, so their difference is measured pair by pair: ``d = a − b``
for each (forget class, seed) where both have a value. The pairs of one seed share the trained
model θ*, so they are not independent: nine pairs from three seeds are three units, not nine.
Every statistic here treats the seed as the unit:

- ``mean_diff``: the mean over seeds of each seed's mean difference (with the same classes in
  every seed, the mean over pairs);
- ``ci_low`` / ``ci_high``: a seeded hierarchical bootstrap interval of that mean
  (:func:`hierarchical_ci`: resample the seeds with replacement, then the forget classes within
  each drawn seed; :data:`N_BOOT` resamples); 95 % for a directional claim, 90 % for an
  equivalence (TOST); undefined (NaN) with fewer than two seeds;
- ``p_value``: an exact sign-flip (permutation) test on the per-seed mean differences minus
  ``shift`` (:func:`sign_flip_p`): under H0 each seed's mean difference is as likely to have
  either sign, so all 2^k sign patterns of k seeds are equally likely; ``alternative``
  ``"greater"`` (H1: d > shift), ``"less"`` or ``"two-sided"``;
- ``min_p``: the smallest p-value the test can give with the ``n_nonzero`` seeds whose mean
  differs from ``shift``: 2^−k one-sided, 2^(1−k) two-sided. With k < 5 (one-sided) or k < 6
  (two-sided) seeds it is at least 0.05: no result can be significant, and the claims say
  "preliminary" (:func:`preliminary`).

The pair-level tests of earlier versions (a bootstrap over pairs, a Wilcoxon test with n = 9)
counted pairs as independent and are gone: with three seeds no exact test goes below p = 0.125.

:func:`significant` is the one place that decides "p < 0.05 and the test could have said so".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

N_BOOT = 10_000  #: bootstrap resamples
SEED = 0  #: default bootstrap seed
LEVEL = 0.95  #: confidence level of a directional claim's interval
TOST_LEVEL = 0.90  #: an equivalence's interval (1 − 2α: the TOST's own interval)
ALPHA = 0.05  #: significance level of every test
PAIR = ["forget", "seed"]
ALTERNATIVES = ("greater", "less", "two-sided")
EXACT_MAX_SEEDS = 40  #: beyond this many seeds the sign-flip p-value is a seeded Monte Carlo one
MC_DRAWS = 200_000


@dataclass(frozen=True)
class Paired:
    """The paired comparison of ``a`` against ``b`` on one metric (differences ``a − b``; a
    one-sample comparison of ``a`` itself when ``b`` is empty)."""

    metric: str
    a: str
    b: str
    n_seeds: int  # seeds with at least one pair: the units
    n_pairs: int  # (forget class, seed) pairs where both have a value
    a_mean: float
    b_mean: float
    mean_diff: float  # mean over seeds of the per-seed mean of a − b
    ci_low: float
    ci_high: float
    ci_level: float
    shift: float  # the test is of (a − b) − shift; an equivalence's margin
    alternative: str
    p_value: float  # the exact sign-flip test on the per-seed means; NaN when none is possible
    n_nonzero: int  # seeds whose mean differs from ``shift``
    min_p: float  # the smallest p the test can give with n_nonzero seeds
    note: str  # "" or why the p-value cannot (or did not) decide

    def as_dict(self) -> dict[str, object]:
        """The fields as a dict (a row of the comparisons table)."""
        return asdict(self)


# ------------------------------------------------------------------------------------------
# The seed-level machinery
# ------------------------------------------------------------------------------------------


def seed_means(
    seeds: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Each seed's mean of ``values`` (in the order of the sorted seeds)."""
    frame = pd.DataFrame({"seed": np.asarray(seeds), "v": np.asarray(values, dtype=float)})
    return frame.groupby("seed", sort=True)["v"].mean().to_numpy(float)


def hierarchical_ci(
    seeds: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of the per-seed means of ``values``, by a
    two-stage bootstrap: draw as many seeds as there are, with replacement; within each drawn
    seed draw its values (forget classes) with replacement; average within, then across. NaN,
    NaN for fewer than two seeds (no spread between units to resample)."""
    frame = pd.DataFrame({"seed": np.asarray(seeds), "v": np.asarray(values, dtype=float)})
    groups = [g.to_numpy(float) for _, g in frame.groupby("seed", sort=True)["v"]]
    k = len(groups)
    if k < 2:
        return float("nan"), float("nan")
    sizes = np.array([len(g) for g in groups])
    padded = np.zeros((k, sizes.max()))
    for i, g in enumerate(groups):
        padded[i, : len(g)] = g
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, k, size=(n_boot, k))  # stage 1: seeds
    n = sizes[drawn]  # (n_boot, k): each drawn seed's number of values
    within = np.floor(rng.random((n_boot, k, sizes.max())) * n[..., None]).astype(int)
    picked = padded[drawn[..., None], within]  # stage 2: values within each drawn seed
    mask = np.arange(sizes.max())[None, None, :] < n[..., None]
    means = ((picked * mask).sum(axis=2) / n).mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _flip_sums(x: np.ndarray) -> np.ndarray:
    """The sums of ±x over every sign pattern (2^len(x) values)."""
    sums = np.zeros(1)
    for v in x:
        sums = np.concatenate([sums + v, sums - v])
    return sums


def _count_at_least(x: np.ndarray, t: float) -> int:
    """How many of the 2^k sign patterns of ``x`` give a sum >= t, exactly (meet in the middle:
    every sum of the first half against the sorted sums of the second)."""
    half = len(x) // 2
    left, right = _flip_sums(x[:half]), np.sort(_flip_sums(x[half:]))
    return int((len(right) - np.searchsorted(right, t - left, side="left")).sum())


def sign_flip_p(values: Sequence[float] | np.ndarray, alternative: str = "two-sided") -> float:
    """Exact sign-flip test of H0 "the values are symmetric around 0": the share of the 2^k
    sign patterns whose sum is at least as extreme as the observed one (``"greater"``: sum >=
    observed; ``"less"``: <=; ``"two-sided"``: |sum| >= |observed|). Beyond
    :data:`EXACT_MAX_SEEDS` values, a seeded Monte Carlo estimate ((b + 1) / (N + 1)). NaN for
    no values."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, not {alternative!r}")
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan")
    if alternative == "less":
        x = -x
    observed = x.sum()
    tol = 1e-9 * max(1.0, float(np.abs(x).sum()))
    if x.size > EXACT_MAX_SEEDS:
        signs = np.random.default_rng(SEED).choice([-1.0, 1.0], size=(MC_DRAWS, x.size))
        sums = signs @ x
        if alternative == "two-sided":
            hits = np.abs(sums) >= abs(observed) - tol
        else:
            hits = sums >= observed - tol
        return float((hits.sum() + 1) / (MC_DRAWS + 1))
    total = 2.0**x.size
    if alternative == "two-sided":
        if abs(observed) <= tol:
            return 1.0
        # |sum| >= |obs|: the upper tail and, by symmetry, the lower tail
        return min(1.0, 2 * _count_at_least(x, abs(observed) - tol) / total)
    return _count_at_least(x, observed - tol) / total


def min_exact_p(n_nonzero: int, alternative: str) -> float:
    """The smallest p-value the sign-flip test can give with ``n_nonzero`` non-zero seed means:
    every one on the alternative's side, probability 2^−k under H0 (doubled two-sided, at most
    1)."""
    if n_nonzero <= 0:
        return 1.0
    p = 0.5**n_nonzero
    return min(1.0, 2 * p) if alternative == "two-sided" else p


def seeds_needed(alternative: str, alpha: float = ALPHA) -> int:
    """The fewest seeds with which the test can reach p < ``alpha`` (5 one-sided, 6 two-sided
    at 0.05)."""
    k = 1
    while min_exact_p(k, alternative) >= alpha:
        k += 1
    return k


def significant(result: Paired) -> bool:
    """p < :data:`ALPHA`, from a test that could have reached it (``min_p`` below ALPHA)."""
    return bool(pd.notna(result.p_value) and result.p_value < ALPHA and result.min_p < ALPHA)


def preliminary(result: Paired) -> bool:
    """The comparison has too few seeds for its test ever to reach p < :data:`ALPHA` (an
    equivalence: each of its one-sided tests)."""
    alternative = "greater" if result.alternative.startswith("within") else result.alternative
    return 0 < result.n_seeds < seeds_needed(alternative)


def preliminary_note(n_seeds: int) -> str:
    """The words a preliminary verdict carries."""
    return f"{n_seeds} seed{'s' if n_seeds != 1 else ''} cannot reach p < {ALPHA:g}"


# ------------------------------------------------------------------------------------------
# Comparisons of two methods (or of one method with a bound)
# ------------------------------------------------------------------------------------------


def paired_values(runs: pd.DataFrame, a: str, b: str, metric: str) -> pd.DataFrame:
    """Per (forget, seed) pair of one setting's ``runs``: the metric of ``a`` and of ``b``,
    pairs where either is missing dropped. A method with several rows for one pair (e.g. one
    per tuning protocol) contributes their mean, with a warning. Columns ``forget``, ``seed``,
    ``a``, ``b``, ``diff`` (a − b). ``b`` empty: ``b`` is 0 (a one-sample comparison)."""
    cols = [*PAIR, "a", "b", "diff"]
    if metric not in runs.columns:
        return pd.DataFrame(columns=cols)

    def side(method: str) -> pd.Series:
        rows = runs.loc[runs["method"] == method, [*PAIR, metric]].dropna()
        if rows.duplicated(PAIR).any():
            log.warning("%s has several rows per (forget, seed): their mean is compared", method)
        return rows.groupby(PAIR)[metric].mean()

    a_side = side(a)
    b_side = side(b) if b else pd.Series(0.0, index=a_side.index)
    both = pd.concat({"a": a_side, "b": b_side}, axis=1, join="inner").dropna()
    both = both.reset_index().sort_values(PAIR, ignore_index=True)
    both["diff"] = both["a"] - both["b"]
    return both[cols]


def from_pairs(
    pairs: pd.DataFrame,
    *,
    metric: str = "",
    a: str = "a",
    b: str = "b",
    alternative: str = "two-sided",
    shift: float = 0.0,
    level: float = LEVEL,
    seed: int = SEED,
) -> Paired:
    """:class:`Paired` from a frame of pairs (columns ``seed``, ``diff`` and, for the two means,
    ``a`` and ``b``)."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, not {alternative!r}")
    pairs = pairs.dropna(subset=["diff"])
    n_pairs = len(pairs)
    if n_pairs == 0:
        nan = float("nan")
        return Paired(metric, a, b, 0, 0, nan, nan, nan, nan, nan, level, float(shift),
                      alternative, nan, 0, 1.0, "no pairs")  # fmt: skip
    means = seed_means(pairs["seed"], pairs["diff"])
    shifted = means - shift
    n_nonzero = int(np.count_nonzero(np.abs(shifted) > 1e-12))
    min_p = min_exact_p(n_nonzero, alternative)
    p = sign_flip_p(shifted, alternative) if n_nonzero else float("nan")
    low, high = hierarchical_ci(pairs["seed"], pairs["diff"], level=level, seed=seed)
    notes = []
    what = "zero" if shift == 0 else f"equal to {shift:g}"
    if n_nonzero == 0:
        notes.append(f"every seed's mean difference is {what}: no test possible")
    elif min_p >= ALPHA:
        sided = "two-sided" if alternative == "two-sided" else "one-sided"
        notes.append(
            f"{n_nonzero} seed(s) whose mean differs: the exact {sided} test cannot give "
            f"p < {ALPHA:g} (smallest p = {min_p:.3g})"
        )
    if len(means) == 1:
        notes.append("one seed: no interval")

    def mean_of(col: str) -> float:
        if col not in pairs.columns:
            return float("nan")
        return float(seed_means(pairs["seed"], pairs[col]).mean())

    return Paired(
        metric=metric,
        a=a,
        b=b,
        n_seeds=len(means),
        n_pairs=n_pairs,
        a_mean=mean_of("a"),
        b_mean=mean_of("b") if b else float("nan"),
        mean_diff=float(means.mean()),
        ci_low=low,
        ci_high=high,
        ci_level=level,
        shift=float(shift),
        alternative=alternative,
        p_value=p,
        n_nonzero=n_nonzero,
        min_p=min_p,
        note="; ".join(notes),
    )


def compare(
    runs: pd.DataFrame,
    a: str,
    b: str,
    metric: str,
    *,
    alternative: str = "two-sided",
    shift: float = 0.0,
    seed: int = SEED,
) -> Paired:
    """The paired comparison of methods ``a`` and ``b`` on ``metric`` over the (forget, seed)
    pairs of ``runs`` (one setting), the seed the unit; ``b`` empty: ``a``'s values against
    ``shift``. See the module docstring."""
    pairs = paired_values(runs, a, b, metric)
    return from_pairs(
        pairs, metric=metric, a=a, b=b, alternative=alternative, shift=shift, seed=seed
    )


def equivalence(
    runs: pd.DataFrame, a: str, b: str, metric: str, margin: float, *, seed: int = SEED
) -> Paired:
    """Is ``a`` within ``± margin`` of ``b``? Two one-sided sign-flip tests on the per-seed
    mean differences (TOST): H1 ``d > −margin`` and H1 ``d < +margin``; ``p_value`` is the
    larger of the two (both must reject), ``min_p`` the one-sided minimum, the interval the
    hierarchical bootstrap's 90 % one (the TOST's own), and ``alternative`` reads
    ``"within ±margin"``."""
    pairs = paired_values(runs, a, b, metric)
    lower = from_pairs(pairs, alternative="greater", shift=-margin, level=TOST_LEVEL, seed=seed)
    upper = from_pairs(pairs, alternative="less", shift=margin, level=TOST_LEVEL, seed=seed)
    both = (lower.p_value, upper.p_value)
    note = "; ".join(dict.fromkeys(x for x in (lower.note, upper.note) if x))
    return Paired(
        metric=metric,
        a=a,
        b=b,
        n_seeds=lower.n_seeds,
        n_pairs=lower.n_pairs,
        a_mean=lower.a_mean,
        b_mean=lower.b_mean,
        mean_diff=lower.mean_diff,
        ci_low=lower.ci_low,
        ci_high=lower.ci_high,
        ci_level=TOST_LEVEL,
        shift=float(margin),
        alternative=f"within ±{margin:g}",
        p_value=float("nan") if any(np.isnan(both)) else max(both),
        n_nonzero=min(lower.n_nonzero, upper.n_nonzero),
        min_p=max(lower.min_p, upper.min_p),
        note=note,
    )
