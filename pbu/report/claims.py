"""A verdict for each of the paper's claims, per setting (dataset, arch), from the runs alone.

Every verdict names its setting: *holds on <setting>*, *does not hold on <setting>*,
*inconclusive on <setting>* (with the reason in brackets), or *preliminary on <setting> (k seeds
cannot reach p < 0.05)* when the setting has too few seeds for the test to ever decide. A verdict
is about the setting that ran (e.g. mnist5k / small_cnn), never about the paper's own settings
(full MNIST, ImageNet-initialised ResNets), which cannot run offline.

Each verdict rests on paired comparisons over the (forget class, seed) pairs of the setting with
the SEED as the unit (:mod:`pbu.report.paired`: the mean over seeds of each seed's mean
difference d = a − b, a hierarchical bootstrap interval, an exact sign-flip test on the per-seed
means; every line says n_seeds and n_pairs). The rules, word for word what the report prints
(:data:`RULES`):

- **A claim "d > s"** (``greater``): *holds* when the 95 % interval lies above s and the one-sided
  sign-flip test (H1: d > s) gives p < 0.05; *does not hold* when the mean d ≤ s; *inconclusive*
  otherwise. ``less`` mirrors it.
- **A claim "|d| < t"** (``within``, an equivalence): *holds* when the 90 % interval lies inside
  (−t, t) and both one-sided tests (TOST) give p < 0.05; *does not hold* when |mean d| > t;
  *inconclusive* otherwise.
- **Preliminary**: with fewer seeds than the test needs to reach p < 0.05 (5 one-sided, 6
  two-sided), no verdict: *preliminary (k seeds cannot reach p < 0.05)*; the point estimate is
  still printed.
- **Parts**: a claim with several comparisons is *preliminary* if any part is, else *does not
  hold* if any part does not, else *inconclusive* if any part is, else *holds*. A compared
  method missing from the runs makes its part *inconclusive (absent: name)*, never an error.
- **Matched forgetting**: a method forgets when its mean A_Df ≤ the threshold (``tuning.
  threshold`` of the config, else PBU's ``stop_threshold``, else 5 %).

The claims (PBU is ``pbu``; its variants are every ``pbu_*`` method or row whose ``base_method``
is ``pbu``):

- **C1** A_Df ≈ 0: PBU's A_Df itself, ``less`` than 2 %, at the stop threshold the paper's
  numbers imply: its PBU A_Df never exceeds 1.9 % (reference table), so 2 % (``pbu_stop2``:
  PBU with stop_threshold 2; ``pbu`` itself when that variant is absent, at its own threshold).
  The trade-off is shown beside it: PBU's A_Df and A_Dr at each stop threshold present
  (``pbu_stop0``, ``pbu_stop2``, ``pbu_stop5`` and ``pbu``).
- **C2** A_Dr within 2 points of the oracle: PBU − oracle on A_Dr, ``within`` ±2.
- **C3** A_Dr above UNSIR and above Bad Teaching: PBU − ``unsir`` and PBU − ``bad_teaching``
  on A_Dr, ``greater`` than 0, two parts.
- **C4** forgetting like retraining's: PBU's forget score against the ceiling's when the run
  has one (:mod:`pbu.report.forget_score`), else PBU − oracle on ``mia_entropy_svc``,
  ``within`` ±0.05 at the seed level, *inconclusive (attack at chance)* when that attack is at
  chance.
- **C5** the stability terms help (PBU − ``pbu_ascent`` on A_Dr, ``greater`` than 0) and the
  Fisher term in particular (PBU − ``pbu_no_fisher`` on A_Dr): the Fisher part reads *no effect
  (equivalent within ±m)* (TOST with the margin m of ``claims.fisher_margin``, 0.5 points by
  default), *helps* (d > 0: the part holds), *hurts* (d < 0) or *inconclusive*; a part is
  inconclusive unless both of its methods forget. The A_Df differences are shown beside them.
- **C6** cheaper than retraining: PBU − oracle on seconds from θ* with prerequisites (PBU's
  Fisher included, the oracle's training) and per epoch, each ``less`` than 0. No tuning time
  counts, for any method (the frozen development-class choice is made once per setting; a
  per-group tuning record's time is taken out).
- **C7** PBU surpasses the state of the art: against every other method of the run (not the
  oracle, the original model or PBU's variants) that forgets, on A_Dr (``greater`` than 0) and
  on the distance to the oracle (``js_to_oracle``; the mean accuracy gap without JS columns;
  ``less`` than 0). If PBU itself does not forget it does not hold. The blind-only comparison
  (against the forget-only methods) comes first; the verdict is over every method that forgets,
  and *inconclusive* when none does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pbu.report.forget_score import C4_SCORE_TOLERANCE, attack_check, c4_on_forget_score
from pbu.report.inputs import pbu_variants, setting_pairs
from pbu.report.paired import ALPHA, PAIR, compare, equivalence, seeds_needed
from pbu.report.stats import run_distances
from pbu.report.verdicts import (  # noqa: F401 (re-exported: the verdicts are the claims')
    DISTANCE,
    DOES_NOT_HOLD,
    HELPS,
    HOLDS,
    HURTS,
    INCONCLUSIVE,
    NO_EFFECT,
    PRELIMINARY,
    TIME_EPOCH,
    TIME_TOTAL,
    Part,
    _label,
    combine,
    combine_by_method,
    describe,
    directional,
    effect,
    within,
)
from pbu.report.vocab import ACC_F, ACC_R, order_methods

log = logging.getLogger(__name__)

PBU = "pbu"
C1_BOUND = 2.0  #: % A_Df that counts as "≈ 0"
C1_STOP = 2.0  #: the stop threshold (%) the paper's A_Df (0-1.9 %, never above 2) implies
C2_MARGIN = 2.0  #: points of A_Dr either side of the oracle's still "within"
C4_METRIC = "mia_entropy_svc"
C4_TOLERANCE = 0.05  #: absolute difference in the MIA's member share
C4_SCORE_PART = "forget score vs ceiling"  #: C4's one part when the forget score decides it
FISHER_MARGIN = 0.5  #: C5's equivalence margin (A_Dr points) unless claims.fisher_margin says
DEFAULT_THRESHOLD = 5.0  #: % A_Df that counts as forgotten (matched forgetting)
FORGET_ONLY = "forget"  #: the ``data_access`` label of forget-only methods (blind, as PBU)
STOP_NAME = re.compile(r"^pbu_stop(\d+(?:\.\d+)?)$")

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
    "The seed is the unit: the pairs of one seed share the trained model. Each comparison of a "
    "setting pairs two methods over its (forget class, seed) pairs: d = a − b per pair, its mean "
    "over seeds of the per-seed means, a seeded hierarchical-bootstrap interval (10,000 "
    "resamples of the seeds, then of the forget classes within each) and an exact sign-flip "
    "test on the per-seed mean differences; n_seeds and n_pairs with every number.",
    "Claim d > s: holds when the 95 % interval lies above s and the one-sided test (H1: d > s) "
    "gives p < 0.05; does not hold when the mean d ≤ s; inconclusive otherwise. d < s mirrors "
    "it. Claim |d| < t (equivalence): holds when the 90 % interval lies inside (−t, t) and both "
    "one-sided tests (TOST) give p < 0.05; does not hold when |mean d| > t; inconclusive "
    "otherwise.",
    f"Preliminary: with k seeds the test's smallest p is 2^−k one-sided and 2^(1−k) two-sided, "
    f"so fewer than {seeds_needed('greater')} seeds (one-sided) cannot reach p < {ALPHA:g}: "
    "such a setting gets no verdict but 'preliminary (k seeds cannot reach p < 0.05)', with "
    "the point estimate.",
    "A claim with several parts is preliminary if any part is, else does not hold if any part "
    "does not, else inconclusive if any is, else holds. A compared method that is not in the "
    "run leaves its part inconclusive (absent). Matched forgetting: a method forgets when its "
    "mean A_Df ≤ the threshold.",
    f"C1: PBU's A_Df < {C1_BOUND:g} % at stop threshold {C1_STOP:g} % (pbu_stop2; the paper's "
    f"A_Df never exceeds 1.9 %), pbu at its own threshold without that variant. C2: |PBU − "
    f"oracle A_Dr| < {C2_MARGIN:g}. C3: PBU − UNSIR and PBU − Bad Teaching A_Dr > 0. C4: PBU − "
    f"ceiling forget score > −{C4_SCORE_TOLERANCE:g} (CI over images) when the run has the "
    f"score, else |PBU − oracle| entropy-SVC MIA < {C4_TOLERANCE:g} if that attack is valid "
    f"(inconclusive, attack at chance, if not). C5: PBU − pbu_ascent A_Dr > 0; PBU − "
    "pbu_no_fisher A_Dr: no effect (equivalent within ±margin), helps, hurts or inconclusive; "
    "both methods forgetting (else inconclusive, unless PBU is the one that does not forget and "
    "keeps less A_Dr). C6: PBU − oracle time < 0, in total and per epoch, "
    "prerequisites included (PBU's Fisher), no tuning time for any method. C7: against every "
    "other method that forgets (not the oracle, the original model or PBU's variants), PBU − "
    "method A_Dr > 0 and distance to the oracle (mean JS divergence) < 0; does not hold if PBU "
    "does not forget; the forget-only (blind) methods first.",
]


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
    # (n_seeds, n_pairs) of a claim decided without a paired comparison (C4 on the forget
    # score: PBU's models, one per seed and forget class, against as many oracles)
    models: tuple[int, int] | None = None

    @property
    def statement(self) -> str:
        return STATEMENTS[self.claim]

    @property
    def setting(self) -> str:
        return f"{self.dataset} / {self.arch}"

    @property
    def verdict_text(self) -> str:
        """``"inconclusive (absent: unsir)"``: the verdict with its reason, if any."""
        return f"{self.verdict} ({self.reason})" if self.reason else self.verdict

    @property
    def line(self) -> str:
        """``"holds on mnist5k / small_cnn"``: the verdict naming its setting, with its reason."""
        text = f"{self.verdict} on {self.setting}"
        return f"{text} ({self.reason})" if self.reason else text

    @property
    def units(self) -> tuple[int, int]:
        """(n_seeds, n_pairs) of the claim: the fewest over its deciding comparisons."""
        stats = [p.stat for p in self.parts if p.stat is not None and not p.context]
        stats = stats or [p.stat for p in self.parts if p.stat is not None]
        if not stats:
            return self.models or (0, 0)
        return min(s.n_seeds for s in stats), min(s.n_pairs for s in stats)


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


def fisher_margin(settings: Mapping[str, Any] | None) -> float:
    """C5's equivalence margin (A_Dr points): ``claims.fisher_margin``, else 0.5."""
    claims = (settings or {}).get("claims")
    if isinstance(claims, Mapping) and isinstance(claims.get("fisher_margin"), (int, float)):
        return float(claims["fisher_margin"])
    return FISHER_MARGIN


def stop_threshold_of(method: str, arch: str, settings: Mapping[str, Any] | None) -> float | None:
    """The stop threshold (%) a PBU run used: the frozen choice of the setting (``tuned``),
    else the config's hyperparameters (a variant's overrides over them), else a
    ``pbu_stop<t>`` name; None when unknown."""
    settings = settings or {}
    variant = (settings.get("variants") or {}).get(method) or {}
    own = (variant.get("hparams") or {}).get("stop_threshold")
    if isinstance(own, (int, float)):
        return float(own)
    match = STOP_NAME.match(method)
    if match:
        return float(match.group(1))
    tuned = ((settings.get("tuned") or {}).get(arch) or {}).get("hparams") or {}
    for source in (tuned.get(method), (settings.get("hparams") or {}).get(method)):
        if isinstance(source, Mapping) and isinstance(source.get("stop_threshold"), (int, float)):
            return float(source["stop_threshold"])
    return None


def stop_variants(
    methods: set[str], arch: str, settings: Mapping[str, Any] | None
) -> dict[str, float]:
    """PBU's runs at a known stop threshold: ``pbu`` and every ``pbu_stop<t>`` variant present
    (method -> threshold, by threshold)."""
    out = {}
    for m in sorted(methods):
        if m == PBU or STOP_NAME.match(m):
            t = stop_threshold_of(m, arch, settings)
            if t is not None:
                out[m] = t
    return dict(sorted(out.items(), key=lambda kv: (kv[1], kv[0] != PBU)))


def _with_derived(runs: pd.DataFrame) -> pd.DataFrame:
    """The setting's runs with the derived metrics: times with prerequisites (falling back to
    the method's own), without any tuning time, and the distance to the oracle (JS, else the
    accuracy gap)."""
    runs = run_distances(runs)
    nan = pd.Series(np.nan, index=runs.index)
    zero = pd.Series(0.0, index=runs.index)
    total = runs.get("total_time_s", nan).fillna(runs.get("time_s", nan))
    tuning = runs.get("tune_time_s", zero).fillna(0.0)
    runs[TIME_TOTAL] = total - tuning
    per_epoch = runs.get("total_time_per_epoch_s", nan).fillna(runs.get("time_per_epoch_s", nan))
    runs[TIME_EPOCH] = per_epoch * (runs[TIME_TOTAL] / total.where(total != 0))
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


def _absent(methods: set[str], label: str, *names: str) -> Part | None:
    absent = [m for m in names if m and m not in methods]
    if absent:
        return Part(label, None, INCONCLUSIVE, "absent: " + ", ".join(absent))
    return None


def _greater(runs, methods, a, b, metric, label, shift=0.0, direction="greater") -> Part:
    """A directional part; inconclusive (absent) when a method is missing."""
    missing = _absent(methods, label, a, b)
    if missing:
        return missing
    stat = compare(runs, a, b, metric, alternative=direction, shift=shift)
    return Part(label, stat, *directional(stat, direction))


def _within(runs, methods, a, b, metric, label, margin) -> Part:
    """An equivalence part; inconclusive (absent) when a method is missing."""
    missing = _absent(methods, label, a, b)
    if missing:
        return missing
    stat = equivalence(runs, a, b, metric, margin)
    return Part(label, stat, *within(stat))


def _c1(runs: pd.DataFrame, arch: str, settings) -> tuple[list[Part], str]:
    """C1 at the stop threshold the paper implies, and the trade-off beside it."""
    methods = set(runs["method"])
    stops = stop_variants(methods, arch, settings)
    at = next((m for m, t in stops.items() if t == C1_STOP and m != PBU), None)
    at = at or (PBU if PBU in methods else None)
    if at is None or ACC_F not in runs.columns:
        return [Part("PBU's A_Df", None, INCONCLUSIVE, "no A_Df values")], ""
    t = stops.get(at)
    where = f"at stop threshold {t:g} % ({at})" if t is not None else f"at {at}'s threshold"
    stat = compare(runs, at, "", ACC_F, alternative="less", shift=C1_BOUND)
    if stat.n_pairs == 0:
        return [Part(f"PBU's A_Df {where}", None, INCONCLUSIVE, "no A_Df values")], ""
    parts = [Part(f"PBU's A_Df {where}", stat, *directional(stat, "less"))]
    for m, thr in stops.items():  # the trade-off: A_Df and A_Dr at each threshold present
        for metric in (ACC_F, ACC_R):
            if metric in runs.columns:
                s = compare(runs, m, "", metric, alternative="two-sided", shift=0.0)
                if s.n_pairs:
                    parts.append(
                        Part(f"stop {thr:g} % ({m}): {_label(metric)}", s, "", context=True)
                    )
    rows = runs.loc[runs["method"] == at, [*PAIR, ACC_F]].dropna()
    worst = rows.loc[rows[ACC_F].idxmax()]
    paper = "the paper's PBU A_Df never exceeds 1.9 %"
    extra = (
        f"{where}: {paper}, so {C1_STOP:g} % is the threshold its numbers imply"
        if t == C1_STOP
        else f"{where}: no pbu_stop2 run, so not at the {C1_STOP:g} % the paper's numbers imply"
    )
    extra += (
        f"; worst pair {worst[ACC_F]:.2f} % (class {int(worst['forget'])}, "
        f"seed {int(worst['seed'])})"
    )
    return parts, extra


def _matched(part: Part, runs: pd.DataFrame, pair: Sequence[str], threshold: float) -> Part:
    """``part`` made inconclusive unless both methods forget (when it could still decide).

    A comparison on A_Dr at unmatched forgetting decides nothing when the other method keeps
    more A_Dr by forgetting less: that is the trade-off, not the term's effect. A finding
    against the first method stands only when it is itself the one that does not forget (then
    it loses on both counts)."""
    if part.stat is None or not part.stat.n_pairs or part.verdict == PRELIMINARY:
        return part
    loose = [m for m in pair if not _forgets(runs, m, threshold)]
    if loose and not (part.verdict == DOES_NOT_HOLD and pair[0] in loose):
        if part.outcome:
            part.outcome = f"{part.outcome} on A_Dr alone"
        part.verdict = INCONCLUSIVE
        part.reason = f"forgetting not matched (mean A_Df ≤ {threshold:g} % needed): " + (
            ", ".join(f"{m} {_df_text(runs, m)}" for m in loose)
        )
    return part


def _c5(runs, methods, threshold, margin) -> list[Part]:
    stability = _greater(runs, methods, PBU, "pbu_ascent", ACC_R, "stability terms (vs pbu_ascent)")
    parts = [_matched(stability, runs, (PBU, "pbu_ascent"), threshold)]
    label = "Fisher term (vs pbu_no_fisher)"
    fisher = _absent(methods, label, PBU, "pbu_no_fisher")
    if fisher is None:
        tost = equivalence(runs, PBU, "pbu_no_fisher", ACC_R, margin)
        above = compare(runs, PBU, "pbu_no_fisher", ACC_R, alternative="greater")
        below = compare(runs, PBU, "pbu_no_fisher", ACC_R, alternative="less")
        outcome, why = effect(tost, above, below)
        if outcome in (PRELIMINARY, INCONCLUSIVE):
            verdict, reason = outcome, why
        elif outcome == HELPS:
            verdict, reason = HOLDS, ""
        else:  # no effect, or hurts: the claim that it helps does not hold
            verdict, reason = DOES_NOT_HOLD, outcome
        fisher = Part(label, tost, verdict, reason, outcome=outcome)
        fisher = _matched(fisher, runs, (PBU, "pbu_no_fisher"), threshold)
    parts.append(fisher)
    for variant, what in (("pbu_ascent", "stability terms"), ("pbu_no_fisher", "Fisher term")):
        if variant in methods and PBU in methods:
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


def protocol_of_method(runs: pd.DataFrame, method: str) -> str | None:
    """The protocol(s) that chose a method's hyperparameters in ``runs`` (joined by "; ")."""
    if "protocol" not in runs.columns:
        return None
    values = sorted({str(v) for v in runs.loc[runs["method"] == method, "protocol"].dropna()})
    return "; ".join(values) or None


def _setting_claims(
    sub: pd.DataFrame,
    arch: str,
    threshold: float,
    settings: Mapping[str, Any] | None,
    forget_score: tuple | None = None,
) -> list[tuple[str, list[Part], str, tuple[str, str] | None]]:
    """``(claim, parts, extra summary, verdict or None to combine the parts)`` of one setting
    whose runs hold PBU (``sub`` with the derived metrics)."""
    methods = set(sub["method"])
    c1, c1_note = _c1(sub, arch, settings)
    c2 = [_within(sub, methods, PBU, "oracle", ACC_R, "vs oracle", C2_MARGIN)]
    c3 = [_greater(sub, methods, PBU, m, ACC_R, f"vs {m}") for m in ("unsir", "bad_teaching")]
    c4_extra, c4_verdict = "", None
    on_score = c4_on_forget_score(forget_score, *sub[["dataset", "arch"]].iloc[0])
    if on_score is not None:  # the per-example test decides; the MIA is not asked
        c4 = [Part(C4_SCORE_PART, None, on_score[0], on_score[1])]
        c4_extra = on_score[2]
    else:
        c4 = [_within(sub, methods, PBU, "oracle", C4_METRIC, "vs oracle", C4_TOLERANCE)]
        if "oracle" in methods:
            chance, c4_extra = attack_check(sub, C4_METRIC, [PBU, "oracle"])
            if chance:  # the verdict reads "inconclusive (attack at chance)"
                c4_verdict = c4[0].verdict, c4[0].reason = INCONCLUSIVE, "attack at chance"
    c6 = [
        _greater(sub, methods, PBU, "oracle", m, label, direction="less")
        for m, label in ((TIME_TOTAL, "in total"), (TIME_EPOCH, "per epoch"))
    ]
    c7, notes, blind = _c7(sub, methods, threshold, pbu_variants(sub))
    if np.isnan(_mean_df(sub, PBU)):
        c7_verdict = (INCONCLUSIVE, "no A_Df for PBU: matched forgetting undefined")
    elif not _forgets(sub, PBU, threshold):
        c7_verdict = (DOES_NOT_HOLD, f"PBU's mean A_Df {_df_text(sub, PBU)} > {threshold:g} %")
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
        ("C1", c1, c1_note, None),
        ("C2", c2, "", None),
        ("C3", c3, "", None),
        ("C4", c4, c4_extra, c4_verdict),
        ("C5", _c5(sub, methods, threshold, fisher_margin(settings)), "", None),
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
        protocol = protocol_of_method(sub, PBU)
        if PBU not in set(sub["method"]):
            out += [
                Claim(dataset, arch, c, INCONCLUSIVE, f"absent: {PBU}", protocol=protocol)
                for c in STATEMENTS
            ]
            continue
        for cid, parts, extra, verdict in _setting_claims(
            sub, arch, threshold, settings, forget_score
        ):
            verdict, reason = verdict or combine(parts)
            if cid == "C7":  # many parts: their numbers are in the comparisons table
                text = extra
            else:
                shown = [p for p in parts if p.stat is not None and not (cid == "C1" and p.context)]
                text = "; ".join(
                    [
                        (f"{p.label}: {p.outcome}; " if p.outcome else "") + describe(p.stat)
                        for p in shown
                    ]
                    + [extra]
                )
            models = None
            if [p.label for p in parts] == [C4_SCORE_PART]:
                own = sub.loc[sub["method"] == PBU, ["seed", "forget"]].drop_duplicates()
                models = (own["seed"].nunique(), len(own))
            out.append(
                Claim(
                    dataset, arch, cid, verdict, reason, text.strip("; "), parts, protocol, models
                )
            )
    return out
