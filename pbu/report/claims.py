"""A verdict for each of the paper's claims, per setting (dataset, arch), from the runs alone.

Every verdict is one of ``supported``, ``not supported`` or ``inconclusive`` (with the reason in
brackets), and rests on paired comparisons over the (forget class, seed) pairs of the setting
(:mod:`pbu.report.paired`: the mean paired difference d = a − b, its seeded bootstrap 95 % CI
and a Wilcoxon signed-rank p-value). The rules, word for word what the report prints
(:data:`RULES`):

- **A claim "d > s"** (a above b by more than s; ``greater``): *supported* when the CI lies
  above s and the one-sided Wilcoxon test (H1: d > s) gives p < 0.05 from a test that could
  reach it; *not supported* when the mean d ≤ s; *inconclusive* otherwise (the point estimate
  agrees but the evidence is not enough: too few pairs, or p ≥ 0.05). ``less`` mirrors it.
- **A claim "|d| < t"** (``within``): *supported* when the CI lies inside (−t, t) and both
  one-sided tests (TOST) give p < 0.05; *not supported* when |mean d| > t; else inconclusive.
- **Parts**: a claim with several comparisons is *not supported* if any part is, else
  *inconclusive* if any part is, else *supported*. A compared method missing from the runs
  makes its part *inconclusive (absent: name)*, never an error.
- **Matched forgetting**: a method forgets when its mean A_Df ≤ the threshold (``tuning.
  threshold`` of the config, else PBU's ``stop_threshold``, else 5 %).

The claims (PBU is ``pbu``; its variants are ``pbu_no_fisher``, ``pbu_no_l2``, ``pbu_ascent``,
``pbu_fisher_unit`` and any other ``pbu_*`` method or row whose ``base_method`` is ``pbu``):

- **C1** A_Df ≈ 0: PBU's A_Df itself, ``less`` than 2 %; *supported* also needs every pair
  ≤ 2 % (the worst pair is printed).
- **C2** A_Dr within 2 points of the oracle: PBU − oracle on A_Dr, ``greater`` than −2.
- **C3** A_Dr above UNSIR and above Bad Teaching: PBU − ``unsir`` and PBU − ``bad_teaching``
  on A_Dr, ``greater`` than 0, two parts.
- **C4** forgetting like retraining's: PBU's forget score against the ceiling's when the run
  has one (:mod:`pbu.report.forget_score`), else PBU − oracle on ``mia_entropy_svc``,
  ``within`` ±0.05, *inconclusive (attack at chance)* when that attack is at chance.
- **C5** the stability terms help (PBU − ``pbu_ascent``) and the Fisher term in particular
  (PBU − ``pbu_no_fisher``): on A_Dr, ``greater`` than 0, two parts; a part is inconclusive
  unless both of its methods forget (matched forgetting). The A_Df differences are shown
  beside them (two-sided, no verdict).
- **C6** cheaper than retraining: PBU − oracle on seconds from θ* with prerequisites
  (``total_time_s``: PBU's Fisher included; the oracle's is its training) and on seconds per
  epoch with prerequisites (``total_time_per_epoch_s``), each ``less`` than 0; runs without
  the totals fall back to ``time_s`` / ``time_per_epoch_s``.
- **C7** PBU surpasses the state of the art: against every other method of the run (not the
  oracle, the original model or PBU's variants) that forgets (matched forgetting), on A_Dr
  (``greater`` than 0) and on the distance to the oracle (``js_to_oracle``, the mean JS
  divergence on forget- and retain-test outputs; the mean accuracy gap without JS columns;
  ``less`` than 0). If PBU itself does not forget it is *not supported*. The blind-only
  comparison (PBU against the forget-only methods: ``data_access`` "forget") comes first; the
  verdict is over every method that forgets, and *inconclusive* when none does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pbu.report.forget_score import C4_SCORE_TOLERANCE, attack_check, c4_on_forget_score
from pbu.report.inputs import pbu_variants, setting_pairs
from pbu.report.paired import (
    PAIR,
    Paired,
    compare,
    equivalence,
    from_differences,
    significant,
)
from pbu.report.render import to_markdown, write_file, write_text
from pbu.report.stats import run_distances
from pbu.report.vocab import ACC_F, ACC_R, RUN_METRICS, order_methods

log = logging.getLogger(__name__)

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
PBU = "pbu"
C1_BOUND = 2.0  #: % A_Df that counts as "≈ 0"
C2_MARGIN = 2.0  #: points of A_Dr below the oracle's still "within"
C4_METRIC = "mia_entropy_svc"
C4_TOLERANCE = 0.05  #: absolute difference in the MIA's member share
DEFAULT_THRESHOLD = 5.0  #: % A_Df that counts as forgotten (matched forgetting)
FORGET_ONLY = "forget"  #: the ``data_access`` label of forget-only methods (blind, as PBU)
TIME_TOTAL, TIME_EPOCH, DISTANCE = "time_total", "time_per_epoch", "distance_to_oracle"

STATEMENTS = {
    "C1": f"A_Df ≈ 0 (≤ {C1_BOUND:g} %)",
    "C2": f"A_Dr within {C2_MARGIN:g} points of the oracle",
    "C3": "A_Dr above UNSIR and Bad Teaching",
    "C4": "forgetting like retraining's (the forget score near the ceiling's when the run has "
    f"one, else the entropy-SVC MIA within ±{C4_TOLERANCE:g} of the oracle's, a valid attack)",
    "C5": "the stability terms help (vs pbu_ascent), the Fisher term in particular "
    "(vs pbu_no_fisher)",
    "C6": "cheaper than retraining, per epoch and in total, prerequisites included",
    "C7": "surpasses the state of the art: above every other method at matched forgetting, on "
    "A_Dr and on distance to the oracle (blind-only comparison first)",
}

#: How verdicts are computed, as the report prints it (the module docstring says the same).
RULES = [
    "Each comparison pairs two methods over the (forget class, seed) pairs of a setting: the "
    "mean paired difference d = a − b, its seeded percentile-bootstrap 95 % CI (10,000 "
    "resamples) and a Wilcoxon signed-rank p-value (scipy, zero differences dropped).",
    "Claim d > s: supported when the CI lies above s and the one-sided test (H1: d > s) gives "
    "p < 0.05 from a test that could reach it (with fewer than 5 non-zero differences it "
    "cannot); not supported when the mean d ≤ s; inconclusive otherwise. d < s mirrors it.",
    "Claim |d| < t: supported when the CI lies inside (−t, t) and both one-sided tests (TOST) "
    "give p < 0.05; not supported when |mean d| > t; inconclusive otherwise.",
    "A claim with several parts is not supported if any part is, else inconclusive if any "
    "is, else supported. A compared method that is not in the run leaves its part "
    "inconclusive (absent).",
    "Matched forgetting: a method forgets when its mean A_Df ≤ the threshold.",
    f"C1: PBU's A_Df < {C1_BOUND:g} %, and every pair ≤ {C1_BOUND:g} % for supported. "
    f"C2: PBU − oracle A_Dr > −{C2_MARGIN:g}. C3: PBU − UNSIR and PBU − Bad Teaching A_Dr > 0. "
    f"C4: PBU − ceiling forget score > −{C4_SCORE_TOLERANCE:g} (CI over images), else |PBU − "
    f"oracle| entropy-SVC MIA < {C4_TOLERANCE:g} if that attack is valid. C5: PBU − pbu_ascent and "
    "PBU − pbu_no_fisher A_Dr > 0, both methods forgetting. C6: PBU − oracle time < 0, in "
    "total and per epoch, prerequisites included (PBU's Fisher). C7: against every other "
    "method that forgets (not the oracle, the original model or PBU's variants), PBU − method "
    "A_Dr > 0 and distance to the oracle (mean JS divergence) < 0; not supported if PBU does "
    "not forget; the forget-only (blind) methods first.",
]

_LABELS = {
    ACC_F: ("A_Df", "{:.2f}"),
    ACC_R: ("A_Dr", "{:.2f}"),
    C4_METRIC: ("MIA entropy-SVC", "{:.3f}"),
    TIME_TOTAL: ("time (s), prerequisites incl.", "{:.2f}"),
    TIME_EPOCH: ("time/epoch (s), prerequisites incl.", "{:.3f}"),
    DISTANCE: ("distance to oracle", "{:.4f}"),
}


@dataclass
class Part:
    """One comparison of a claim: its statistics (None when a method is absent) and verdict."""

    label: str
    stat: Paired | None
    verdict: str
    reason: str = ""
    context: bool = False  # shown beside the claim, not part of its verdict


@dataclass
class Claim:
    """One claim's verdict in one setting, with the comparisons it rests on."""

    dataset: str
    arch: str
    claim: str
    verdict: str
    reason: str = ""
    summary: str = ""
    parts: list[Part] = field(default_factory=list)
    protocol: str | None = None  # PBU's tuning protocol, where runs.csv says

    @property
    def statement(self) -> str:
        return STATEMENTS[self.claim]

    @property
    def verdict_text(self) -> str:
        """``"inconclusive (absent: unsir)"``: the verdict with its reason, if any."""
        return f"{self.verdict} ({self.reason})" if self.reason else self.verdict


# ------------------------------------------------------------------------------- verdicts


def _fmt(metric: str, value: float, sign: bool = False) -> str:
    if value is None or pd.isna(value):
        return "–"
    fmt = _LABELS.get(metric, (metric, "{:.4g}"))[1]
    return (fmt.replace("{:", "{:+") if sign else fmt).format(value)


def _label(metric: str) -> str:
    return _LABELS.get(metric, (RUN_METRICS.get(metric, (metric,))[0],))[0]


def directional(stat: Paired, direction: str) -> tuple[str, str]:
    """The verdict on the claim ``d > shift`` (``direction="greater"``) or ``d < shift``
    (``"less"``), with its reason; see the module docstring."""
    s = stat.shift
    if stat.n == 0:
        return INCONCLUSIVE, "no common (forget, seed) pairs"
    sign = 1.0 if direction == "greater" else -1.0
    op = ">" if direction == "greater" else "<"
    if sign * (stat.mean_diff - s) <= 0:
        what = "mean d" if stat.b else "mean"  # a one-sample claim compares values to s
        return NOT_SUPPORTED, f"{what} {_fmt(stat.metric, stat.mean_diff, True)}, not {op} {s:g}"
    ci_clear = (stat.ci_low > s) if direction == "greater" else (stat.ci_high < s)
    if ci_clear and significant(stat):
        return SUPPORTED, ""
    if stat.note:
        return INCONCLUSIVE, stat.note
    if not ci_clear:
        return INCONCLUSIVE, f"the CI reaches {s:g}"
    return INCONCLUSIVE, f"p = {stat.p_value:.3g} ≥ 0.05"


def within(stat: Paired) -> tuple[str, str]:
    """The verdict on ``|d| < shift`` (an equivalence claim, ``stat`` from
    :func:`~pbu.report.paired.equivalence`)."""
    t = stat.shift
    if stat.n == 0:
        return INCONCLUSIVE, "no common (forget, seed) pairs"
    if abs(stat.mean_diff) > t:
        return NOT_SUPPORTED, f"|mean d| {_fmt(stat.metric, abs(stat.mean_diff))} > {t:g}"
    if -t < stat.ci_low and stat.ci_high < t and significant(stat):
        return SUPPORTED, ""
    if stat.note:
        return INCONCLUSIVE, stat.note
    if not (-t < stat.ci_low and stat.ci_high < t):
        return INCONCLUSIVE, f"the CI reaches ±{t:g}"
    return INCONCLUSIVE, f"p = {stat.p_value:.3g} ≥ 0.05"


def combine(parts: Sequence[Part]) -> tuple[str, str]:
    """Any part not supported: not supported; else any inconclusive: inconclusive; else
    supported. The reason names the parts that decided."""
    decisive = [p for p in parts if not p.context]
    if not decisive:
        return INCONCLUSIVE, "nothing to compare"
    for verdict in (NOT_SUPPORTED, INCONCLUSIVE):
        hit = [p for p in decisive if p.verdict == verdict]
        if hit:
            return verdict, "; ".join(
                f"{p.label}: {p.reason}" if p.reason else p.label for p in hit
            )
    return SUPPORTED, ""


def combine_by_method(parts: Sequence[Part]) -> tuple[str, str]:
    """:func:`combine`, with a short reason for many parts: the compared methods that decided,
    each with the metrics that did (``"against neggrad (A_Dr, distance to oracle), ssd
    (A_Dr)"``)."""
    verdict, _ = combine(parts)
    if verdict == SUPPORTED or not parts:
        return verdict, ""
    which: dict[str, list[str]] = {}
    for p in parts:
        if p.verdict == verdict and not p.context and p.stat is not None:
            which.setdefault(p.stat.b, []).append(_label(p.stat.metric))
    return verdict, "against " + ", ".join(f"{m} ({', '.join(k)})" for m, k in which.items())


def describe(stat: Paired) -> str:
    """One comparison in words: ``pbu − oracle, A_Dr: −4.70 (95 % CI −6.10 to −3.30), n = 9,
    Wilcoxon H1: d > −2, p = 0.998``."""
    m = stat.metric
    who = f"{stat.a} − {stat.b}" if stat.b else stat.a
    lead = f"{who}, {_label(m)}: {_fmt(m, stat.mean_diff, sign=bool(stat.b))}"
    if stat.b:
        lead += f" ({_fmt(m, stat.a_mean)} vs {_fmt(m, stat.b_mean)})"
    if not np.isnan(stat.ci_low):
        lead += (
            f", 95 % CI {_fmt(m, stat.ci_low, sign=bool(stat.b))} to "
            f"{_fmt(m, stat.ci_high, sign=bool(stat.b))}"
        )
    lead += f", n = {stat.n}"
    if stat.alternative.startswith("within"):
        test = f"TOST |d| < {stat.shift:g}"
    else:
        op = {"greater": ">", "less": "<", "two-sided": "≠"}[stat.alternative]
        test = f"H1: d {op} {stat.shift:g}"
    p = "–" if np.isnan(stat.p_value) else f"{stat.p_value:.3g}"
    return f"{lead}; Wilcoxon {test}, p = {p}"


# --------------------------------------------------------------------------------- claims


def matched_threshold(settings: Mapping[str, Any] | None) -> tuple[float, str]:
    """The A_Df (%) that counts as forgotten, and where it came from: the config's
    ``tuning.threshold``, else PBU's ``stop_threshold``, else 5 %."""
    settings = settings or {}
    tuning = settings.get("tuning")
    if isinstance(tuning, Mapping) and isinstance(tuning.get("threshold"), (int, float)):
        return float(tuning["threshold"]), "tuning.threshold"
    pbu = (settings.get("hparams") or {}).get(PBU)
    if isinstance(pbu, Mapping) and isinstance(pbu.get("stop_threshold"), (int, float)):
        return float(pbu["stop_threshold"]), "hparams.pbu.stop_threshold"
    return DEFAULT_THRESHOLD, "default"


def _with_derived(runs: pd.DataFrame) -> pd.DataFrame:
    """The setting's runs with the derived metrics: times with prerequisites (falling back to
    the method's own) and the distance to the oracle (JS, else the accuracy gap)."""
    runs = run_distances(runs)
    nan = pd.Series(np.nan, index=runs.index)
    for out, total, own in (
        (TIME_TOTAL, "total_time_s", "time_s"),
        (TIME_EPOCH, "total_time_per_epoch_s", "time_per_epoch_s"),
    ):
        runs[out] = runs.get(total, nan).fillna(runs.get(own, nan))
    runs[DISTANCE] = runs["js_to_oracle"].fillna(runs["acc_gap_to_oracle"])
    return runs


def _mean_df(runs: pd.DataFrame, method: str) -> float:
    if ACC_F not in runs.columns:
        return float("nan")
    return float(runs.loc[runs["method"] == method, ACC_F].mean())


def _forgets(runs: pd.DataFrame, method: str, threshold: float) -> bool:
    """Mean A_Df ≤ threshold (False without A_Df values)."""
    return bool(_mean_df(runs, method) <= threshold)


def _df_text(runs: pd.DataFrame, method: str) -> str:
    """``"12.30 %"``, or ``"no A_Df"``."""
    value = _mean_df(runs, method)
    return "no A_Df" if np.isnan(value) else f"{value:.2f} %"


def _greater(runs, methods, a, b, metric, label, shift=0.0, direction="greater") -> Part:
    """A directional part; inconclusive (absent) when a method is missing."""
    absent = [m for m in (a, b) if m not in methods]
    if absent:
        return Part(label, None, INCONCLUSIVE, "absent: " + ", ".join(absent))
    stat = compare(runs, a, b, metric, alternative=direction, shift=shift)
    return Part(label, stat, *directional(stat, direction))


def _c1(runs: pd.DataFrame) -> tuple[list[Part], str]:
    rows = runs.loc[runs["method"] == PBU, [*PAIR, ACC_F]].dropna() if ACC_F in runs else None
    if rows is None or rows.empty:
        return [Part("PBU's A_Df", None, INCONCLUSIVE, "no A_Df values")], ""
    x = rows[ACC_F].to_numpy(float)
    stat = from_differences(
        x, metric=ACC_F, a=PBU, b="", a_values=x, alternative="less", shift=C1_BOUND
    )
    verdict, reason = directional(stat, "less")
    worst = rows.loc[rows[ACC_F].idxmax()]
    if verdict == SUPPORTED and worst[ACC_F] > C1_BOUND:
        verdict, reason = INCONCLUSIVE, f"a pair is above {C1_BOUND:g} %"
    extra = (
        f"worst pair {worst[ACC_F]:.2f} % (class {int(worst['forget'])}, seed {int(worst['seed'])})"
    )
    return [Part("PBU's A_Df", stat, verdict, reason)], extra


def _c5(runs, methods, threshold) -> list[Part]:
    parts: list[Part] = []
    for variant, what in (("pbu_ascent", "stability terms"), ("pbu_no_fisher", "Fisher term")):
        label = f"{what} (vs {variant})"
        part = _greater(runs, methods, PBU, variant, ACC_R, label)
        if part.stat is not None and part.stat.n and part.verdict != NOT_SUPPORTED:
            loose = [m for m in (PBU, variant) if not _forgets(runs, m, threshold)]
            if loose:
                part.verdict = INCONCLUSIVE
                part.reason = f"forgetting not matched (mean A_Df ≤ {threshold:g} % needed): " + (
                    ", ".join(f"{m} {_df_text(runs, m)}" for m in loose)
                )
        parts.append(part)
        if part.stat is not None:
            ctx = compare(runs, PBU, variant, ACC_F, alternative="two-sided")
            parts.append(Part(f"{what}: A_Df (vs {variant})", ctx, "", context=True))
    return parts


def _c7(runs, methods, threshold, variants) -> tuple[list[Part], str, tuple[str, str]]:
    """The parts of C7, a summary, and the blind-only verdict."""
    peers = order_methods(m for m in methods if m not in (PBU, "oracle", "original", *variants))
    access = (
        runs.groupby("method")["data_access"].agg(lambda s: "; ".join(sorted(set(s.dropna()))))
        if "data_access" in runs.columns
        else pd.Series(dtype=object)
    )
    blind = [m for m in peers if access.get(m) == FORGET_ONLY]
    peers = blind + [m for m in peers if m not in blind]  # the blind-only comparison first
    matched = [m for m in peers if _forgets(runs, m, threshold)]
    loose = [m for m in peers if m not in matched]
    notes = []
    if loose:
        notes.append(
            f"not at matched forgetting (mean A_Df > {threshold:g} %): "
            + ", ".join(f"{m} ({_df_text(runs, m)})" for m in loose)
        )
    parts: list[Part] = []
    by_peer: dict[str, list[Part]] = {}
    for m in matched:
        tag = f"vs {m} (forget-only)" if m in blind else f"vs {m}"
        by_peer[m] = [
            _greater(runs, methods, PBU, m, ACC_R, f"{tag}, A_Dr"),
            _greater(runs, methods, PBU, m, DISTANCE, f"{tag}, distance", direction="less"),
        ]
        parts += by_peer[m]
    blind_parts = [p for m in matched if m in blind for p in by_peer[m]]
    if not blind:
        blind_verdict = (INCONCLUSIVE, "absent: no forget-only method")
    elif not blind_parts:
        blind_verdict = (INCONCLUSIVE, "no forget-only method forgets")
    else:
        blind_verdict = combine_by_method(blind_parts)
    return parts, "; ".join(notes), blind_verdict


def _protocol(runs: pd.DataFrame, method: str) -> str | None:
    if "protocol" not in runs.columns:
        return None
    values = sorted({str(v) for v in runs.loc[runs["method"] == method, "protocol"].dropna()})
    return "; ".join(values) or None


def _setting_claims(
    sub: pd.DataFrame, threshold: float, forget_score: tuple | None = None
) -> list[tuple[str, list[Part], str, tuple[str, str] | None]]:
    """``(claim, parts, extra summary, verdict or None to combine the parts)`` of one setting
    whose runs hold PBU (``sub`` with the derived metrics)."""
    methods = set(sub["method"])
    c1, worst = _c1(sub)
    c2 = [_greater(sub, methods, PBU, "oracle", ACC_R, "vs oracle", shift=-C2_MARGIN)]
    c3 = [_greater(sub, methods, PBU, m, ACC_R, f"vs {m}") for m in ("unsir", "bad_teaching")]
    c4_extra, c4_verdict = "", None
    on_score = c4_on_forget_score(forget_score, *sub[["dataset", "arch"]].iloc[0])
    if on_score is not None:  # the per-example test decides; the MIA is not asked
        c4 = [Part("forget score vs ceiling", None, on_score[0], on_score[1])]
        c4_extra = on_score[2]
    elif "oracle" not in methods:
        c4 = [Part("vs oracle", None, INCONCLUSIVE, "absent: oracle")]
    else:
        stat = equivalence(sub, PBU, "oracle", C4_METRIC, C4_TOLERANCE)
        c4 = [Part("vs oracle", stat, *within(stat))]
        chance, c4_extra = attack_check(sub, C4_METRIC, [PBU, "oracle"])
        if chance:  # the verdict reads "inconclusive (attack at chance)"
            c4[0].verdict = INCONCLUSIVE
            c4_verdict = c4[0].verdict, c4[0].reason = INCONCLUSIVE, "attack at chance"
    c6 = [
        _greater(sub, methods, PBU, "oracle", m, label, direction="less")
        for m, label in ((TIME_TOTAL, "in total"), (TIME_EPOCH, "per epoch"))
    ]
    c7, notes, blind = _c7(sub, methods, threshold, pbu_variants(sub))
    if np.isnan(_mean_df(sub, PBU)):
        c7_verdict = (INCONCLUSIVE, "no A_Df for PBU: matched forgetting undefined")
    elif not _forgets(sub, PBU, threshold):
        c7_verdict = (NOT_SUPPORTED, f"PBU's mean A_Df {_df_text(sub, PBU)} > {threshold:g} %")
    elif not c7:
        c7_verdict = (INCONCLUSIVE, "no other method forgets")
    else:
        c7_verdict = combine_by_method(c7)
    n_peers = len({p.label.split(",")[0] for p in c7})
    c7_summary = "; ".join(
        x
        for x in (
            f"blind-only: {blind[0]}" + (f" ({blind[1]})" if blind[1] else ""),
            f"{n_peers} method(s) compared at matched forgetting (the table below)",
            notes,
        )
        if x
    )
    return [
        ("C1", c1, worst, None),
        ("C2", c2, "", None),
        ("C3", c3, "", None),
        ("C4", c4, c4_extra, c4_verdict),
        ("C5", _c5(sub, methods, threshold), "", None),
        ("C6", c6, "", None),
        ("C7", c7, c7_summary, c7_verdict),
    ]


def evaluate_claims(
    runs: pd.DataFrame, settings: Mapping[str, Any] | None = None, forget_score: tuple | None = None
) -> list[Claim]:
    """Every claim's verdict in every setting of ``runs`` (C4: ``forget_score``'s tables)."""
    threshold, _ = matched_threshold(settings)
    out: list[Claim] = []
    for dataset, arch in setting_pairs(runs):
        sub = _with_derived(runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)])
        protocol = _protocol(sub, PBU)
        if PBU not in set(sub["method"]):
            out += [
                Claim(dataset, arch, c, INCONCLUSIVE, f"absent: {PBU}", protocol=protocol)
                for c in STATEMENTS
            ]
            continue
        for cid, parts, extra, verdict in _setting_claims(sub, threshold, forget_score):
            verdict, reason = verdict or combine(parts)
            if cid == "C7":  # many parts: their numbers are in the comparisons table
                text = extra
            else:
                text = "; ".join([describe(p.stat) for p in parts if p.stat is not None] + [extra])
            out.append(
                Claim(dataset, arch, cid, verdict, reason, text.strip("; "), parts, protocol)
            )
    return out


# ---------------------------------------------------------------------------- tables, text


def claims_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per (setting, claim): the statement, the verdict (with its reason) and the
    numbers in words; a ``protocol`` column (PBU's) when runs.csv has one."""
    rows = [
        {
            "dataset": c.dataset,
            "arch": c.arch,
            **({"protocol": c.protocol} if c.protocol is not None else {}),
            "claim": c.claim,
            "statement": c.statement,
            "verdict": c.verdict,
            "reason": c.reason,
            "numbers": c.summary,
        }
        for c in claims
    ]
    return pd.DataFrame(rows)


def comparisons_table(claims: Sequence[Claim], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per comparison: the claim, the part, the paired statistics (numbers) and the
    part's verdict; ``protocol_a`` / ``protocol_b`` when ``runs`` has a protocol column."""
    rows = []
    for c in claims:
        for p in c.parts:
            row: dict[str, Any] = {
                "dataset": c.dataset,
                "arch": c.arch,
                "claim": c.claim,
                "part": p.label,
            }
            if p.stat is not None:
                row |= p.stat.as_dict()
                if runs is not None and "protocol" in runs.columns:
                    here = runs[(runs["dataset"] == c.dataset) & (runs["arch"] == c.arch)]
                    row["protocol_a"] = _protocol(here, p.stat.a)
                    row["protocol_b"] = _protocol(here, p.stat.b)
            row["verdict"] = "(context)" if p.context else p.verdict
            row["reason"] = p.reason
            rows.append(row)
    return pd.DataFrame(rows)


def claims_section(claims: Sequence[Claim], settings: Mapping[str, Any] | None = None) -> list[str]:
    """The report's "Claims" section: the rules, then per setting a verdict line per claim
    and the table of its paired comparisons."""
    threshold, source = matched_threshold(settings)
    lines = ["## Claims", ""]
    lines += [
        "Each of the paper's claims gets a verdict per setting, computed from the runs "
        f"(`pbu/report/claims.py`). Matched forgetting threshold: {threshold:g} % "
        f"({source}).",
        "",
    ]
    lines += [f"- {rule}" for rule in RULES] + [""]
    if not claims:
        return lines + ["No runs.", ""]
    settings_seen: list[tuple[str, str]] = []
    for c in claims:
        if (c.dataset, c.arch) not in settings_seen:
            settings_seen.append((c.dataset, c.arch))
    for dataset, arch in settings_seen:
        here = [c for c in claims if (c.dataset, c.arch) == (dataset, arch)]
        head = f"### {dataset} / {arch}"
        if here[0].protocol:
            head += f" (PBU's hyperparameters: {here[0].protocol} protocol)"
        lines += [head, ""]
        for c in here:
            line = f"- **{c.claim}** {c.statement}: **{c.verdict}**"
            line += f" ({c.reason})." if c.reason else "."
            if c.summary:
                line += f" {c.summary}."
            lines.append(line)
        table = comparisons_table(here)
        if not table.empty and "mean_diff" in table.columns:
            shown = table.dropna(subset=["mean_diff"])[
                ["claim", "part", "a", "b", "metric", "n", "mean_diff", "ci_low", "ci_high"]
                + ["alternative", "shift", "p_value", "verdict"]
            ]
            shown = shown.assign(metric=shown["metric"].map(_label))
            lines += ["", "Paired comparisons (d = a − b over (forget class, seed) pairs):", ""]
            lines.append(to_markdown(shown))
        lines.append("")
    return lines


def write_claims(
    claims: Sequence[Claim], out_dir: str | os.PathLike, runs: pd.DataFrame | None = None
) -> list[Path]:
    """Write ``claims.{csv,md}`` (verdicts) and ``claims_comparisons.{csv,md}`` (the paired
    statistics) into ``out_dir``, atomically. Returns the paths."""
    out = Path(out_dir)
    verdicts = claims_table(claims)
    comps = comparisons_table(claims, runs)
    paths = []
    for name, frame in (("claims", verdicts), ("claims_comparisons", comps)):
        paths += [
            write_file(out / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False)),
            write_text(out / f"{name}.md", to_markdown(frame)),
        ]
    log.info("wrote the claims' verdicts (%d) to %s", len(claims), out)
    return paths
