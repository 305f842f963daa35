"""Paired statistics over the (forget class, seed) pairs of one setting (dataset, arch).

Two methods run on the same pairs (the same original model, the same forget class), so their
difference is measured pair by pair: ``d_i = a_i − b_i`` for each pair ``i`` where both have a
value. :func:`compare` summarises ``d``:

- ``mean_diff``: the mean paired difference (a minus b);
- ``ci_low`` / ``ci_high``: a seeded percentile bootstrap 95 % CI of that mean
  (:data:`N_BOOT` resamples of the pairs with replacement; the same seed gives the same interval);
  undefined (NaN) for fewer than two pairs;
- ``p_value``: the Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, its defaults:
  ``zero_method="wilcox"`` drops zero differences, ``method="auto"`` uses the exact null
  distribution for small samples without zeros and the normal approximation otherwise) of
  ``d − shift`` with the stated ``alternative``: ``"greater"`` (H1: the differences lie above
  ``shift``), ``"less"`` or ``"two-sided"``;
- ``min_p``: the smallest p-value the exact test can give with the ``n_nonzero`` non-zero
  differences: ``1 / 2**n`` one-sided, ``2 / 2**n`` two-sided. Below n = 5 (one-sided) or
  n = 6 (two-sided) it is at least 0.05, so no result can be significant at 5 %, and
  ``note`` says so instead of implying a test was passed;
- all differences equal to ``shift`` (for instance all zero): no test is possible; ``p_value``
  is NaN and ``note`` says so.

:func:`significant` is the one place that decides "p < 0.05 and the test could have said so".
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

N_BOOT = 10_000  #: bootstrap resamples
SEED = 0  #: default bootstrap seed
LEVEL = 0.95  #: confidence level of the bootstrap interval
ALPHA = 0.05  #: significance level of the Wilcoxon test
PAIR = ["forget", "seed"]
ALTERNATIVES = ("greater", "less", "two-sided")


@dataclass(frozen=True)
class Paired:
    """The paired comparison of ``a`` against ``b`` on one metric (differences ``a − b``)."""

    metric: str
    a: str
    b: str
    n: int  # pairs where both have a value
    a_mean: float
    b_mean: float
    mean_diff: float  # mean of a − b over the pairs
    ci_low: float
    ci_high: float
    shift: float  # the Wilcoxon test is of (a − b) − shift
    alternative: str
    p_value: float  # NaN when no test is possible
    n_nonzero: int  # differences other than ``shift``
    min_p: float  # the smallest p the exact test can give with n_nonzero
    note: str  # "" or why the p-value cannot (or did not) decide

    def as_dict(self) -> dict[str, object]:
        """The fields as a dict (a row of the comparisons table)."""
        return asdict(self)


def bootstrap_ci(
    diffs: Sequence[float] | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (NaN, NaN for fewer than 2)."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def min_exact_p(n_nonzero: int, alternative: str) -> float:
    """The smallest p-value the exact signed-rank test can give with ``n_nonzero`` differences:
    every difference on the alternative's side, probability ``1 / 2**n`` under H0 (doubled for
    a two-sided test, at most 1)."""
    if n_nonzero <= 0:
        return 1.0
    p = 0.5**n_nonzero
    return min(1.0, 2 * p) if alternative == "two-sided" else p


def wilcoxon_test(
    diffs: Sequence[float] | np.ndarray, alternative: str = "two-sided", shift: float = 0.0
) -> tuple[float, int, float, str]:
    """Wilcoxon signed-rank test of ``diffs − shift``: ``(p, n_nonzero, min_p, note)``.

    ``p`` is NaN when every difference equals ``shift`` (nothing to rank). ``note`` is empty
    unless the test cannot decide: no differences, all equal to ``shift``, or too few
    non-zero differences for the exact test to reach p < :data:`ALPHA`."""
    from scipy.stats import wilcoxon

    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, not {alternative!r}")
    d = np.asarray(diffs, dtype=float) - shift
    d = d[~np.isnan(d)]
    n_nonzero = int(np.count_nonzero(d))
    min_p = min_exact_p(n_nonzero, alternative)
    if d.size == 0:
        return float("nan"), 0, 1.0, "no pairs"
    what = "zero" if shift == 0 else f"equal to {shift:g}"
    if n_nonzero == 0:
        return float("nan"), 0, 1.0, f"all {d.size} differences are {what}: no test possible"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's approximation on tiny n
        p = float(wilcoxon(d, alternative=alternative).pvalue)
    note = ""
    if min_p >= ALPHA:
        sided = "two-sided" if alternative == "two-sided" else "one-sided"
        note = (
            f"{n_nonzero} non-zero difference(s): the exact {sided} test cannot give "
            f"p < {ALPHA:g} (smallest p = {min_p:.3g})"
        )
    return p, n_nonzero, min_p, note


def significant(result: Paired) -> bool:
    """p < :data:`ALPHA`, from a test that could have reached it (``min_p`` below ALPHA)."""
    return bool(pd.notna(result.p_value) and result.p_value < ALPHA and result.min_p < ALPHA)


def paired_values(runs: pd.DataFrame, a: str, b: str, metric: str) -> pd.DataFrame:
    """Per (forget, seed) pair of one setting's ``runs``: the metric of ``a`` and of ``b``,
    pairs where either is missing dropped. A method with several rows for one pair (e.g. one
    per tuning protocol) contributes their mean, with a warning. Columns ``forget``, ``seed``,
    ``a``, ``b``, ``diff`` (a − b)."""
    cols = [*PAIR, "a", "b", "diff"]
    if metric not in runs.columns:
        return pd.DataFrame(columns=cols)

    def side(method: str) -> pd.Series:
        rows = runs.loc[runs["method"] == method, [*PAIR, metric]].dropna()
        if rows.duplicated(PAIR).any():
            log.warning("%s has several rows per (forget, seed): their mean is compared", method)
        return rows.groupby(PAIR)[metric].mean()

    both = pd.concat({"a": side(a), "b": side(b)}, axis=1, join="inner").dropna()
    both = both.reset_index().sort_values(PAIR, ignore_index=True)
    both["diff"] = both["a"] - both["b"]
    return both[cols]


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
    pairs of ``runs`` (one setting); see the module docstring."""
    pairs = paired_values(runs, a, b, metric)
    return from_differences(
        pairs["diff"].to_numpy(float),
        metric=metric,
        a=a,
        b=b,
        a_values=pairs["a"].to_numpy(float),
        b_values=pairs["b"].to_numpy(float),
        alternative=alternative,
        shift=shift,
        seed=seed,
    )


def from_differences(
    diffs: Sequence[float] | np.ndarray,
    *,
    metric: str = "",
    a: str = "a",
    b: str = "b",
    a_values: Sequence[float] | np.ndarray | None = None,
    b_values: Sequence[float] | np.ndarray | None = None,
    alternative: str = "two-sided",
    shift: float = 0.0,
    seed: int = SEED,
) -> Paired:
    """:class:`Paired` from the differences themselves (``a_values`` / ``b_values``, if given,
    only fill the two means)."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    p, n_nonzero, min_p, note = wilcoxon_test(d, alternative, shift)
    low, high = bootstrap_ci(d, seed=seed)
    if d.size == 1:
        note = "; ".join(x for x in (note, "one pair: no interval") if x)

    def mean(v: Sequence[float] | np.ndarray | None) -> float:
        return float(np.mean(v)) if v is not None and len(v) else float("nan")

    return Paired(
        metric=metric,
        a=a,
        b=b,
        n=int(d.size),
        a_mean=mean(a_values),
        b_mean=mean(b_values),
        mean_diff=float(d.mean()) if d.size else float("nan"),
        ci_low=low,
        ci_high=high,
        shift=float(shift),
        alternative=alternative,
        p_value=p,
        n_nonzero=n_nonzero,
        min_p=min_p,
        note=note,
    )


def equivalence(
    runs: pd.DataFrame, a: str, b: str, metric: str, tolerance: float, *, seed: int = SEED
) -> Paired:
    """Is ``a`` within ``± tolerance`` of ``b``? Two one-sided Wilcoxon tests (TOST) of the
    paired differences: H1 ``d > −tolerance`` and H1 ``d < +tolerance``; ``p_value`` is the
    larger of the two (both must reject), ``min_p`` the one-sided minimum, and ``alternative``
    reads ``"within ±tolerance"``."""
    pairs = paired_values(runs, a, b, metric)
    d = pairs["diff"].to_numpy(float)
    lower = from_differences(d, alternative="greater", shift=-tolerance, seed=seed)
    upper = from_differences(d, alternative="less", shift=tolerance, seed=seed)
    p = max(lower.p_value, upper.p_value)  # NaN if either is NaN
    note = "; ".join(dict.fromkeys(x for x in (lower.note, upper.note) if x))
    return Paired(
        metric=metric,
        a=a,
        b=b,
        n=lower.n,
        a_mean=float(pairs["a"].mean()) if len(pairs) else float("nan"),
        b_mean=float(pairs["b"].mean()) if len(pairs) else float("nan"),
        mean_diff=lower.mean_diff,
        ci_low=lower.ci_low,
        ci_high=lower.ci_high,
        shift=float(tolerance),
        alternative=f"within ±{tolerance:g}",
        p_value=float("nan") if np.isnan(lower.p_value) or np.isnan(upper.p_value) else p,
        n_nonzero=min(lower.n_nonzero, upper.n_nonzero),
        min_p=max(lower.min_p, upper.min_p),
        note=note,
    )
