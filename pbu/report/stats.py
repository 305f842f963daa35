"""Statistics and the ranking: per-method numbers pooled over forget classes × seeds, distances
to the oracle, and the rank by closeness to the oracle.

"mean ± std" uses the sample standard deviation (``ddof=1``), the spread one would report for a
handful of seeds; with a single value the std is undefined (NaN).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from pbu.report.vocab import (
    ACC_F,
    ACC_R,
    JS_COLUMNS,
    RUN_METRICS,
    SETTING,
    SUMMARY_METRICS,
    UNRANKED,
    order_methods,
)

log = logging.getLogger(__name__)

#: The report's ranking rule, in one sentence (method_summary's docstring has the details).
RANKING_RULE = (
    "Rank: unlearning methods (not the oracle, not the original model) ordered by "
    "their mean Jensen-Shannon divergence to the oracle on forget-test and "
    "retain-test outputs, lowest first, ties broken by the mean absolute accuracy gap "
    "to the oracle."
)


def sample_stats(values: pd.Series) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN for a single value) and count of the non-NaN values."""
    v = values.dropna().to_numpy(dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def _oracle_reference(runs: pd.DataFrame) -> pd.DataFrame:
    """The oracle's A_Df / A_Dr per (dataset, arch, forget), averaged over its seeds."""
    cols = [c for c in (ACC_F, ACC_R) if c in runs.columns]
    oracle = runs[runs["method"] == "oracle"]
    return (
        oracle.groupby(["dataset", "arch", "forget"])[cols]
        .mean()
        .rename(columns={c: f"oracle_{c}" for c in cols})
        .reset_index()
    )


def run_distances(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with each run's distance to the oracle added (same rows, same order):

    - ``gap_A_Df`` / ``gap_A_Dr``: |A − oracle A| in percentage points, the oracle averaged over
      its seeds for the same (dataset, arch, forget class); NaN without an oracle;
    - ``acc_gap_to_oracle``: the mean of the two gaps present;
    - ``js_to_oracle``: the mean of the run's JS divergences to the oracle (forget-test,
      retain-test) present; NaN without JS columns.
    """
    runs = runs.reset_index(drop=True)
    oracle = _oracle_reference(runs)
    if oracle.empty:
        log.warning("no oracle runs: distances to the oracle and the ranking are undefined")
    runs = runs.merge(oracle, on=["dataset", "arch", "forget"], how="left")
    for col, gap in ((ACC_F, "gap_A_Df"), (ACC_R, "gap_A_Dr")):
        ref = f"oracle_{col}"
        runs[gap] = (runs[col] - runs[ref]).abs() if ref in runs.columns else np.nan
    runs["acc_gap_to_oracle"] = runs[["gap_A_Df", "gap_A_Dr"]].mean(axis=1)
    js_present = [c for c in JS_COLUMNS if c in runs.columns]
    runs["js_to_oracle"] = runs[js_present].mean(axis=1) if js_present else np.nan
    return runs


def method_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, arch, method): numbers pooled over forget classes × seeds.

    Columns:

    - ``base_method`` (a config variant's registered method; a method's own name),
      ``data_access`` ("data needed"), ``protocol`` (what chose the hyperparameters: ``blind``,
      ``validation`` or ``config``; several joined by "; "), ``n_runs``, ``n_classes``,
      ``n_seeds``;
    - ``<metric>_mean`` / ``<metric>_std`` (ddof=1) for each metric of :data:`SUMMARY_METRICS`
      present in ``runs``;
    - the worst forget class: ``worst_forget_class_df`` (highest A_Df, averaged over seeds) with
      ``worst_A_Df``, and ``worst_forget_class_dr`` (lowest A_Dr) with ``worst_A_Dr``; ties go to
      the smaller class id;
    - distance to the oracle: ``js_to_oracle`` (mean of the run's JS divergence to the oracle on
      forget-test and retain-test, over the JS columns present), ``gap_A_Df`` / ``gap_A_Dr``
      (mean over runs of |A − oracle A|, the oracle averaged over its seeds for the same forget
      class, in percentage points), ``acc_gap_to_oracle`` = mean of the two gaps;
    - ``rank`` (1 = closest to the oracle) within (dataset, arch).

    Ranking rule: sort by ``js_to_oracle`` (lower first), ties broken by ``acc_gap_to_oracle``
    (lower first), then by method order. A method without JS values is ranked after every method
    that has them, by its accuracy gap; if no method has JS values the accuracy gap alone
    decides. Only unlearning methods are ranked: the oracle (the target) and the original model
    (the starting point, nothing forgotten) get no rank, nor does a method with neither number.
    """
    runs = run_distances(runs)
    metrics = [c for c in SUMMARY_METRICS if c in runs.columns]
    for col in ("data_access", "protocol"):  # absent from runs.csv files of older versions
        if col not in runs.columns:
            runs[col] = np.nan

    rows = []
    for (dataset, arch, method), grp in runs.groupby(["dataset", "arch", "method"], sort=True):
        access = sorted({str(a) for a in grp["data_access"].dropna()})
        protocols = sorted({str(a) for a in grp["protocol"].dropna()})
        bases = grp["base_method"].dropna() if "base_method" in grp.columns else ()
        row: dict[str, Any] = {
            "dataset": dataset,
            "arch": arch,
            "method": method,
            # a config variant's registered method (runs.csv base_method), else the method
            "base_method": str(bases.iloc[0]) if len(bases) else method,
            "data_access": "; ".join(access) if access else None,
            "protocol": "; ".join(protocols) if protocols else None,
            "n_runs": len(grp),
            "n_classes": grp["forget"].nunique(),
            "n_seeds": grp["seed"].nunique(),
        }
        for col in metrics:
            row[f"{col}_mean"], row[f"{col}_std"], _ = sample_stats(grp[col])
        for col, key, pick in ((ACC_F, "df", "idxmax"), (ACC_R, "dr", "idxmin")):
            label = RUN_METRICS[col][0]
            per_class = grp.groupby("forget")[col].mean().dropna() if col in grp else pd.Series()
            if per_class.empty:
                row[f"worst_forget_class_{key}"], row[f"worst_{label}"] = None, float("nan")
            else:
                cls = getattr(per_class.sort_index(), pick)()
                row[f"worst_forget_class_{key}"], row[f"worst_{label}"] = int(cls), per_class[cls]
        row["js_to_oracle"] = grp["js_to_oracle"].mean()
        row["gap_A_Df"], row["gap_A_Dr"] = grp["gap_A_Df"].mean(), grp["gap_A_Dr"].mean()
        gaps = [g for g in (row["gap_A_Df"], row["gap_A_Dr"]) if pd.notna(g)]
        row["acc_gap_to_oracle"] = float(np.mean(gaps)) if gaps else float("nan")
        if "relearn_reached" in grp.columns and grp["relearn_reached"].notna().any():
            # runs whose relearn count reached the Anamnesis target (the others are lower
            # bounds at relearn_max_steps + 1)
            row["n_relearned"] = int((grp["relearn_reached"] == 1).sum())
        rows.append(row)
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    summary["worst_forget_class_df"] = summary["worst_forget_class_df"].astype("Int64")
    summary["worst_forget_class_dr"] = summary["worst_forget_class_dr"].astype("Int64")
    summary["rank"] = pd.NA
    parts = []
    for _, grp in summary.groupby(SETTING, sort=True):
        grp = grp.copy()
        method_pos = {m: i for i, m in enumerate(order_methods(grp["method"]))}
        grp["_o"] = grp["method"].map(method_pos)
        rankable = grp[
            ~grp["method"].isin(UNRANKED)
            & (grp["js_to_oracle"].notna() | grp["acc_gap_to_oracle"].notna())
        ]
        ordered = rankable.assign(_nojs=rankable["js_to_oracle"].isna()).sort_values(
            ["_nojs", "js_to_oracle", "acc_gap_to_oracle", "_o"], na_position="last"
        )
        grp.loc[ordered.index, "rank"] = range(1, len(ordered) + 1)
        parts.append(grp.sort_values("_o").drop(columns="_o"))
    summary = pd.concat(parts, ignore_index=True)
    summary["rank"] = summary["rank"].astype("Int64")
    return summary
