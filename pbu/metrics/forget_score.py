"""The per-example forgetting score of the NeurIPS 2023 unlearning challenge (:mod:`pbu.metrics`).

Triantafillou et al., "Are we making progress in unlearning? Findings from the first NeurIPS
unlearning competition" (arXiv 2406.09073), define it from N unlearned and N retrained models:

1. **Confidence** (:func:`logit_confidence`): per model and forget example, the logit-scaled
   confidence of the true class, ``log(p_y + 1e-45) - log(sum_{k != y} p_k + 1e-45)``, from a
   float64 softmax of the logits minus their maximum (LiRA's numerically stable form).
2. **ε per example** (:func:`epsilon`): the strongest decision rule that tells the N unlearned
   values from the N retrained ones, read as a differential-privacy ε at δ = 1e-5:
   ``max(log(1 - δ - FPR) - log(FNR), log(1 - δ - FNR) - log(FPR))`` over the rules, clipped
   to [0, cap]. Rules: one threshold (the set with the larger median is "positive", predicted
   at or above it) and two thresholds (a window as wide as the smaller set's range, predicting
   that peakier set inside it), on a grid of ``thresholds_per_unit`` thresholds per unit of
   confidence. A rule that separates perfectly (FPR = FNR = 0) gives the cap; a rule with
   exactly one rate 0 is discarded (too few models to bound ε). "Peaky" examples, where one
   set's range is under 1 % of the other's, get the cap without a search (the reference's
   guard: one degenerate set against a spread one).
3. **Score** (:func:`bucket_points`, :func:`forgetting_score`): ε earns 1 point in [0, 0.5), ½ in
   [0.5, 1), ¼ in [1, 1.5), ... for every bucket of width 0.5 that ends at or below
   ``ceil(ln(N - 1))``; beyond, 0. The score is the mean of the points over examples.

This module computes the numbers from arrays; the pipeline's ``forget_score`` stage
(:mod:`pbu.forget_score`) gathers the saved confidences of every group and calls it. Whose
models are compared, the calibration rows (retrained against retrained: the ceiling; the
original models against retrained: the floor) and the graded companion (:func:`offsets`) are
described in ``docs/forget-score.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pbu.metrics.core import ArrayLike, _as_tensor, _check_pair

#: The challenge's values (reference ``metric.py``): δ of the (ε, δ) bound, the cap on ε, the
#: threshold grid's density, the double-threshold window's buffer and the peaky guard's ratio.
DELTA = 1e-5
EPS_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
WINDOW_BUFFER = 2.0
PEAKY_RATIO = 0.01
BUCKET_WIDTH = 0.5
LOG_FLOOR = 1e-45  # LiRA's floor inside both logarithms of the confidence


def logit_confidence(logits: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Per sample, ``log(p_y + 1e-45) - log(sum_{k != y} p_k + 1e-45)``: float64 ``[N]``.

    The softmax is taken in float64 after subtracting each row's largest logit, and the mass of
    the other classes is their sum, not ``1 - p_y`` (which rounds to 0 for a confident model),
    so the value stays finite and exact to about ±103 (the floor's log).
    """
    z, y = _as_tensor(logits), _as_tensor(labels).long()
    _check_pair(z, y, "logit_confidence")
    z = (z - z.max(dim=1, keepdim=True).values).numpy()
    y = y.numpy()
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    p_true = p[rows, y]
    p[rows, y] = 0.0  # the other classes' mass, summed (1 - p_y would round to 0)
    p_other = p.sum(axis=1)
    return np.log(p_true + LOG_FLOOR) - np.log(p_other + LOG_FLOOR)


def _rule_eps(fpr: np.ndarray, fnr: np.ndarray, delta: float, cap: float) -> float:
    """The largest ε of a family of rules (arrays of their FPR and FNR), 0 when none is kept."""
    perfect = (fpr == 0) & (fnr == 0)
    if perfect.any():
        return cap
    keep = (fpr > 0) & (fnr > 0)
    if not keep.any():
        return 0.0
    fpr, fnr = fpr[keep], fnr[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.clip(1.0 - delta - fpr, 0.0, None)) - np.log(fnr)
        b = np.log(np.clip(1.0 - delta - fnr, 0.0, None)) - np.log(fpr)
    eps = np.nanmax(np.maximum(a, b))
    return float(min(max(eps, 0.0), cap))


def _grid(lo: float, hi: float, per_unit: int) -> np.ndarray:
    """Thresholds from ``lo`` to ``hi`` (both included, rounded outwards), ``per_unit`` a unit."""
    start, stop = math.floor(lo * per_unit), math.ceil(hi * per_unit)
    return np.arange(start, stop + 1, dtype=np.float64) / per_unit


def _at_or_above(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Share of ``sorted_values`` that are >= each threshold."""
    n = len(sorted_values)
    return (n - np.searchsorted(sorted_values, thresholds, side="left")) / n


def _single_threshold(pos: np.ndarray, neg: np.ndarray, per_unit: int) -> tuple:
    """FPR and FNR of "positive at or above t" for every t of the grid over both sets."""
    t = _grid(min(pos[0], neg[0]), max(pos[-1], neg[-1]) + 1.0 / per_unit, per_unit)
    return _at_or_above(neg, t), 1.0 - _at_or_above(pos, t)


def _double_threshold(peaky: np.ndarray, other: np.ndarray, per_unit: int, buffer: float) -> tuple:
    """FPR and FNR of "the peakier set inside [l, l + w]", w = its range, l on the grid from
    ``buffer`` below the lowest value to ``buffer`` above the highest."""
    width = peaky[-1] - peaky[0]
    lo = _grid(min(peaky[0], other[0]) - buffer, max(peaky[-1], other[-1]) + buffer, per_unit)
    hi = lo + width
    inside_other = _at_or_above(other, lo) - _at_or_above(other, np.nextafter(hi, np.inf))
    inside_peaky = _at_or_above(peaky, lo) - _at_or_above(peaky, np.nextafter(hi, np.inf))
    return inside_other, 1.0 - inside_peaky


@dataclass(frozen=True)
class EpsilonResult:
    """ε of one example, and whether the peaky guard decided it."""

    eps: float
    peaky: bool


def epsilon_one(
    a: ArrayLike,
    b: ArrayLike,
    *,
    delta: float = DELTA,
    cap: float = EPS_CAP,
    thresholds_per_unit: int = THRESHOLDS_PER_UNIT,
    double_threshold: bool = True,
    buffer: float = WINDOW_BUFFER,
    peaky_ratio: float = PEAKY_RATIO,
) -> EpsilonResult:
    """ε telling the values ``a`` (one example under N models) from ``b`` (under N others).

    Symmetric in ``a`` and ``b``: the positive set is the one with the larger median (on a tie
    both directions are tried). Two constant sets give 0 when equal and the cap when not.
    """
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"epsilon needs values in both sets, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("epsilon: confidences must be finite")
    range_a, range_b = a[-1] - a[0], b[-1] - b[0]
    small, large = sorted((range_a, range_b))
    if large == 0:  # both constant
        return EpsilonResult(0.0 if a[0] == b[0] else cap, False)
    if small / large < peaky_ratio:
        return EpsilonResult(cap, True)
    med_a, med_b = np.median(a), np.median(b)
    pairs = [(a, b)] if med_a > med_b else [(b, a)] if med_b > med_a else [(a, b), (b, a)]
    eps = 0.0
    for pos, neg in pairs:
        eps = max(eps, _rule_eps(*_single_threshold(pos, neg, thresholds_per_unit), delta, cap))
    if double_threshold:
        peaky, other = (a, b) if range_a <= range_b else (b, a)
        fpr, fnr = _double_threshold(peaky, other, thresholds_per_unit, buffer)
        eps = max(eps, _rule_eps(fpr, fnr, delta, cap))
    return EpsilonResult(eps, False)


def epsilon(
    a: ArrayLike,
    b: ArrayLike,
    **kwargs: float | int | bool,
) -> tuple[np.ndarray, np.ndarray]:
    """ε of every example: ``a`` ``[N_a, n]`` and ``b`` ``[N_b, n]`` hold the confidences of n
    examples under each set's models. Returns (ε ``[n]``, peaky ``[n]`` bool); keyword
    arguments as :func:`epsilon_one`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"epsilon: expected [models, examples] arrays of the same examples, got "
            f"{a.shape} and {b.shape}"
        )
    out = [epsilon_one(a[:, i], b[:, i], **kwargs) for i in range(a.shape[1])]  # type: ignore[arg-type]
    return np.array([r.eps for r in out]), np.array([r.peaky for r in out], dtype=bool)


def max_epsilon(n_models: int) -> int:
    """The end of the last bucket that earns points: ``ceil(ln(N - 1))`` for N models a set."""
    if n_models < 2:
        raise ValueError(f"the forget score needs at least 2 models per set, got {n_models}")
    return math.ceil(math.log(n_models - 1))


def bucket_points(eps: ArrayLike, n_models: int, width: float = BUCKET_WIDTH) -> np.ndarray:
    """Points per example: ``2**-k`` for ε in ``[k * width, (k + 1) * width)`` when that bucket
    ends at or below :func:`max_epsilon`, else 0."""
    eps = np.asarray(eps, dtype=np.float64)
    k = np.floor(eps / width)
    earns = (k + 1) * width <= max_epsilon(n_models) + 1e-12
    return np.where(earns & (eps >= 0), 2.0**-k, 0.0)


def forgetting_score(eps: ArrayLike, n_models: int) -> float:
    """The forgetting score: mean over examples of :func:`bucket_points`."""
    points = bucket_points(eps, n_models)
    if points.size == 0:
        raise ValueError("forget_score of no examples is undefined")
    return float(points.mean())


def offsets(unlearned: ArrayLike, retrained: ArrayLike) -> np.ndarray:
    """Per example, ``(median of unlearned - median of retrained) / sd of retrained``: how far,
    in the retrained models' between-model spread (sample sd), an unlearning method leaves the
    example. Positive: more confident than retraining (under-forgetting); negative: less
    (over-forgetting). An example whose retrained values are all equal gives ±inf (0 when the
    medians agree too)."""
    u, r = np.asarray(unlearned, dtype=np.float64), np.asarray(retrained, dtype=np.float64)
    diff = np.median(u, axis=0) - np.median(r, axis=0)
    sd = r.std(axis=0, ddof=1) if len(r) > 1 else np.zeros(r.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = diff / sd
    return np.where(diff == 0, 0.0, out)
