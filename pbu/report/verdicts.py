"""How one comparison, or a claim's comparisons together, become a verdict (the rules of
:mod:`pbu.report.claims`): *holds*, *does not hold*, *inconclusive*, or *preliminary* with too
few seeds; an equivalence's reading (*no effect*, *helps*, *hurts*); the words of a comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pbu.report.paired import ALPHA, Paired, preliminary, preliminary_note, significant
from pbu.report.vocab import ACC_F, ACC_R, RUN_METRICS

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, PRELIMINARY = (
    "holds",
    "does not hold",
    "inconclusive",
    "preliminary",
)
NO_EFFECT, HELPS, HURTS = "no effect", "helps", "hurts"
#: The claims' derived metrics (pbu.report.claims adds them to a setting's runs).
TIME_TOTAL, TIME_EPOCH, DISTANCE = "time_total", "time_per_epoch", "distance_to_oracle"

_LABELS = {
    ACC_F: ("A_Df", "{:.2f}"),
    ACC_R: ("A_Dr", "{:.2f}"),
    "mia_entropy_svc": ("MIA entropy-SVC", "{:.3f}"),
    TIME_TOTAL: ("time (s), prerequisites incl.", "{:.2f}"),
    TIME_EPOCH: ("time/epoch (s), prerequisites incl.", "{:.3f}"),
    DISTANCE: ("distance to oracle", "{:.4f}"),
}


@dataclass
class Part:
    """One comparison of a claim: its statistics (None when a method is absent) and verdict;
    ``outcome`` is an equivalence's reading (C5's Fisher part: no effect, helps, hurts)."""

    label: str
    stat: Paired | None
    verdict: str
    reason: str = ""
    context: bool = False  # shown beside the claim, not part of its verdict
    outcome: str = ""


def _fmt(metric: str, value: float, sign: bool = False) -> str:
    if value is None or pd.isna(value):
        return "–"
    fmt = _LABELS.get(metric, (metric, "{:.4g}"))[1]
    return (fmt.replace("{:", "{:+") if sign else fmt).format(value)


def _label(metric: str) -> str:
    return _LABELS.get(metric, (RUN_METRICS.get(metric, (metric,))[0],))[0]


def _prelim(stat: Paired, lean: str) -> tuple[str, str]:
    return PRELIMINARY, f"{preliminary_note(stat.n_seeds)}; point estimate: {lean}"


def directional(stat: Paired, direction: str) -> tuple[str, str]:
    """The verdict on the claim ``d > shift`` (``direction="greater"``) or ``d < shift``
    (``"less"``), with its reason; see the module docstring."""
    s = stat.shift
    if stat.n_pairs == 0:
        return INCONCLUSIVE, "no common (forget, seed) pairs"
    sign = 1.0 if direction == "greater" else -1.0
    op = ">" if direction == "greater" else "<"
    wrong_side = sign * (stat.mean_diff - s) <= 0
    what = "mean d" if stat.b else "mean"  # a one-sample claim compares values to s
    if preliminary(stat):
        return _prelim(stat, DOES_NOT_HOLD if wrong_side else HOLDS)
    if wrong_side:
        return DOES_NOT_HOLD, f"{what} {_fmt(stat.metric, stat.mean_diff, True)}, not {op} {s:g}"
    ci_clear = (stat.ci_low > s) if direction == "greater" else (stat.ci_high < s)
    if ci_clear and significant(stat):
        return HOLDS, ""
    if stat.note:
        return INCONCLUSIVE, stat.note
    if not ci_clear:
        return INCONCLUSIVE, f"the CI reaches {s:g}"
    return INCONCLUSIVE, f"p = {stat.p_value:.3g} ≥ {ALPHA:g}"


def _equivalent(stat: Paired) -> bool:
    t = stat.shift
    return bool(-t < stat.ci_low and stat.ci_high < t and significant(stat))


def within(stat: Paired) -> tuple[str, str]:
    """The verdict on ``|d| < shift`` (an equivalence claim, ``stat`` from
    :func:`~pbu.report.paired.equivalence`)."""
    t = stat.shift
    if stat.n_pairs == 0:
        return INCONCLUSIVE, "no common (forget, seed) pairs"
    outside = abs(stat.mean_diff) > t
    if preliminary(stat):
        return _prelim(stat, DOES_NOT_HOLD if outside else HOLDS)
    if outside:
        return DOES_NOT_HOLD, f"|mean d| {_fmt(stat.metric, abs(stat.mean_diff))} > {t:g}"
    if _equivalent(stat):
        return HOLDS, ""
    if stat.note:
        return INCONCLUSIVE, stat.note
    if not (-t < stat.ci_low and stat.ci_high < t):
        return INCONCLUSIVE, f"the CI reaches ±{t:g}"
    return INCONCLUSIVE, f"p = {stat.p_value:.3g} ≥ {ALPHA:g}"


def effect(tost: Paired, above: Paired, below: Paired) -> tuple[str, str]:
    """What a difference is, read from an equivalence test and the two one-sided tests against
    0: ``no effect (equivalent within ±m)`` (TOST holds), else ``helps`` (d > 0: 95 % interval
    above 0 and p < 0.05), ``hurts`` (d < 0, mirrored) or ``inconclusive``; ``preliminary``
    with too few seeds. Returns (outcome, why)."""
    m = tost.shift
    if tost.n_pairs == 0:
        return INCONCLUSIVE, "no common (forget, seed) pairs"
    if preliminary(tost):
        return PRELIMINARY, preliminary_note(tost.n_seeds)
    if _equivalent(tost):
        return f"{NO_EFFECT} (equivalent within ±{m:g})", ""
    if above.ci_low > 0 and significant(above):
        return HELPS, ""
    if below.ci_high < 0 and significant(below):
        return HURTS, ""
    return INCONCLUSIVE, f"neither equivalent within ±{m:g} nor different from 0"


def combine(parts: Sequence[Part]) -> tuple[str, str]:
    """Any part preliminary: preliminary; else any not holding: does not hold; else any
    inconclusive: inconclusive; else holds. The reason names the parts that decided."""
    decisive = [p for p in parts if not p.context]
    if not decisive:
        return INCONCLUSIVE, "nothing to compare"
    prelim = [p for p in decisive if p.verdict == PRELIMINARY and p.stat is not None]
    if prelim:
        return PRELIMINARY, preliminary_note(min(p.stat.n_seeds for p in prelim))
    for verdict in (DOES_NOT_HOLD, INCONCLUSIVE):
        hit = [p for p in decisive if p.verdict == verdict]
        if hit:
            return verdict, "; ".join(
                f"{p.label}: {p.reason}" if p.reason else p.label for p in hit
            )
    return HOLDS, ""


def combine_by_method(parts: Sequence[Part]) -> tuple[str, str]:
    """:func:`combine`, with a short reason for many parts: the compared methods that decided,
    each with the metrics that did (``"against neggrad (A_Dr, distance to oracle), ssd
    (A_Dr)"``)."""
    verdict, reason = combine(parts)
    if verdict in (HOLDS, PRELIMINARY) or not parts:
        return verdict, reason if verdict == PRELIMINARY else ""
    which: dict[str, list[str]] = {}
    for p in parts:
        if p.verdict == verdict and not p.context and p.stat is not None:
            which.setdefault(p.stat.b, []).append(_label(p.stat.metric))
    return verdict, "against " + ", ".join(f"{m} ({', '.join(k)})" for m, k in which.items())


def describe(stat: Paired) -> str:
    """One comparison in words: ``pbu − oracle, A_Dr: −4.70 (92.21 vs 96.91), 95 % CI −6.10 to
    −3.30, n_seeds = 3, n_pairs = 9; sign-flip H1: d > −2, p = 0.125``."""
    m = stat.metric
    who = f"{stat.a} − {stat.b}" if stat.b else stat.a
    lead = f"{who}, {_label(m)}: {_fmt(m, stat.mean_diff, sign=bool(stat.b))}"
    if stat.b:
        lead += f" ({_fmt(m, stat.a_mean)} vs {_fmt(m, stat.b_mean)})"
    if not np.isnan(stat.ci_low):
        lead += (
            f", {100 * stat.ci_level:g} % CI {_fmt(m, stat.ci_low, sign=bool(stat.b))} to "
            f"{_fmt(m, stat.ci_high, sign=bool(stat.b))}"
        )
    lead += f", n_seeds = {stat.n_seeds}, n_pairs = {stat.n_pairs}"
    if stat.alternative.startswith("within"):
        test = f"TOST |d| < {stat.shift:g}"
    else:
        op = {"greater": ">", "less": "<", "two-sided": "≠"}[stat.alternative]
        test = f"H1: d {op} {stat.shift:g}"
    p = "–" if np.isnan(stat.p_value) else f"{stat.p_value:.3g}"
    return f"{lead}; sign-flip {test}, p = {p}"
