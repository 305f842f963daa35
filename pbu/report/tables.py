"""The tables: the paper's layout (per forget class), the main and depth-of-forgetting tables and
the full per-method summary, written as CSV, Markdown and LaTeX (booktabs).

Each cell holds "mean ± std" (sample std) in the metric's number format of
:data:`~pbu.report.vocab.RUN_METRICS`; the numeric forms are written beside them as CSV.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pbu.report.claims import Claim, protocol_of_method
from pbu.report.render import to_latex, to_markdown, write_file, write_text
from pbu.report.stats import method_summary, sample_stats
from pbu.report.vocab import (
    ACC_F,
    ACC_R,
    DEPTH_METRICS,
    MAIN_METRICS,
    MAIN_MIA,
    MISSING,
    RUN_METRICS,
    SETTING,
    SUMMARY_METRICS,
    TIME_COLUMNS,
    format_mean_std,
    order_methods,
)

log = logging.getLogger(__name__)


def paper_table_long(runs: pd.DataFrame) -> pd.DataFrame:
    """Long form of :func:`paper_table`: one row per (dataset, arch, forget, method, metric) with
    numeric ``mean``, ``std`` (over seeds, ddof=1) and ``n`` (seeds with a value)."""
    rows = []
    metrics = [c for c in (ACC_F, ACC_R) if c in runs.columns]
    if not metrics:
        log.warning("runs has neither %s nor %s: the paper table is empty", ACC_F, ACC_R)
    for (dataset, arch, forget, method), grp in runs.groupby(
        ["dataset", "arch", "forget", "method"], sort=True
    ):
        for col in metrics:
            mean, std, n = sample_stats(grp[col])
            rows.append(
                {
                    "dataset": dataset,
                    "arch": arch,
                    "forget": int(forget),
                    "method": method,
                    "metric": RUN_METRICS[col][0],
                    "column": col,
                    "mean": mean,
                    "std": std,
                    "n": n,
                }
            )
    cols = ["dataset", "arch", "forget", "method", "metric", "column", "mean", "std", "n"]
    long = pd.DataFrame(rows, columns=cols)
    if long.empty:
        return long
    rank = {m: i for i, m in enumerate(order_methods(long["method"]))}
    long = (
        long.assign(_o=long["method"].map(rank))
        .sort_values(["dataset", "arch", "forget", "_o", "metric"])
        .drop(columns="_o")
    )
    return long.reset_index(drop=True)


def paper_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: one row per (dataset, arch, forget); for each method (original,
    oracle, finetune, pbu, then the others alphabetically) the columns ``"<method> A_Df"`` and
    ``"<name> A_Dr"`` holding "mean ± std" over seeds (accuracy on the test split, in %)."""
    long = paper_table_long(runs)
    keys = ["dataset", "arch", "forget"]
    if long.empty:
        return pd.DataFrame(columns=keys)
    long = long.assign(
        cell=[
            format_mean_std(m, s, RUN_METRICS[c][1])
            for m, s, c in zip(long["mean"], long["std"], long["column"])
        ]
    )
    table = runs[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    table["forget"] = table["forget"].astype(int)
    for method in order_methods(long["method"]):
        for metric in ("A_Df", "A_Dr"):
            part = long[(long["method"] == method) & (long["metric"] == metric)]
            if part.empty:
                continue
            name = f"{method} {metric}"
            table = table.merge(
                part[keys + ["cell"]].rename(columns={"cell": name}), on=keys, how="left"
            )
    return table


def _formatted(summary: pd.DataFrame, metrics: Sequence[str]) -> dict[str, list[str | None]]:
    """``label -> "mean ± std"`` cells for each metric of ``metrics`` present in ``summary``."""
    cols: dict[str, list[str | None]] = {}
    for col in metrics:
        if f"{col}_mean" in summary.columns:
            label, fmt, _ = RUN_METRICS[col]
            cols[label] = [
                format_mean_std(m, s, fmt)
                for m, s in zip(summary[f"{col}_mean"], summary[f"{col}_std"])
            ]
    return cols


def _fmt(series: pd.Series, fmt: str) -> list[str | None]:
    return [None if pd.isna(v) else fmt.format(v) for v in series]


def _protocol(summary: pd.DataFrame) -> pd.Series:
    """The "protocol" column: what chose each row's hyperparameters (blind, validation, config)."""
    if "protocol" not in summary.columns:
        return pd.Series([MISSING] * len(summary), index=summary.index)
    return summary["protocol"].fillna(MISSING)


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The human-readable form of :func:`method_summary`: "mean ± std" strings of every metric,
    the worst classes as "class (value)", distances to the oracle and the rank."""
    if summary.empty:
        return pd.DataFrame()
    out = pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "arch": summary["arch"],
            "method": summary["method"],
            "base method": summary["base_method"],
            "data needed": summary["data_access"].fillna(MISSING),
            "protocol": _protocol(summary),
        }
    )
    for label, cells in _formatted(summary, SUMMARY_METRICS).items():
        out[label] = cells
    for key, label in (("df", "A_Df"), ("dr", "A_Dr")):
        out[f"worst class ({label})"] = [
            None if pd.isna(c) else f"{int(c)} ({v:.2f})"
            for c, v in zip(summary[f"worst_forget_class_{key}"], summary[f"worst_{label}"])
        ]
    out["JS to oracle"] = _fmt(summary["js_to_oracle"], "{:.4f}")
    out["|ΔA_Df|"] = _fmt(summary["gap_A_Df"], "{:.2f}")
    out["|ΔA_Dr|"] = _fmt(summary["gap_A_Dr"], "{:.2f}")
    out["rank"] = summary["rank"].map(lambda v: None if pd.isna(v) else str(int(v)))
    return out.reset_index(drop=True)


def _reading_order(summary: pd.DataFrame) -> pd.DataFrame:
    """The original model and the oracle first, then the methods by rank (unranked last, in
    method order), within each (dataset, arch)."""
    parts = []
    for _, grp in summary.groupby(SETTING, sort=True):
        pos = {m: i for i, m in enumerate(order_methods(grp["method"]))}
        key = grp.assign(
            _first=grp["method"].map({"original": 0, "oracle": 1}).fillna(2),
            _rank=pd.to_numeric(grp["rank"], errors="coerce").astype(float),
            _o=grp["method"].map(pos),
        )
        parts.append(
            key.sort_values(["_first", "_rank", "_o"], na_position="last").drop(
                columns=["_first", "_rank", "_o"]
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else summary


def main_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The main table: per (dataset, arch) and method, the data it needs and the protocol that
    chose its hyperparameters, accuracy, both entropy-SVC MIAs,
    distance to the oracle, time (prerequisites included, then the method alone) and rank;
    mean ± std over forget classes × seeds. The original model's and the oracle's rows first."""
    if summary.empty:
        return pd.DataFrame()
    summary = _reading_order(summary)
    out = pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "arch": summary["arch"],
            "method": summary["method"],
            "data needed": summary["data_access"].fillna(MISSING),
            "protocol": _protocol(summary),
        }
    )
    cells = _formatted(summary, MAIN_METRICS)
    for col in (ACC_F, ACC_R, *MAIN_MIA):
        if RUN_METRICS[col][0] in cells:
            out[RUN_METRICS[col][0]] = cells[RUN_METRICS[col][0]]
    out["JS to oracle"] = _fmt(summary["js_to_oracle"], "{:.4f}")
    out["|ΔA_Df|"] = _fmt(summary["gap_A_Df"], "{:.2f}")
    out["|ΔA_Dr|"] = _fmt(summary["gap_A_Dr"], "{:.2f}")
    for col in TIME_COLUMNS:
        if RUN_METRICS[col][0] in cells:
            out[RUN_METRICS[col][0]] = cells[RUN_METRICS[col][0]]
    out["rank"] = summary["rank"].map(lambda v: None if pd.isna(v) else str(int(v)))
    return out.reset_index(drop=True)


def depth_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The "depth of forgetting" table: ZRF, activation distance to the oracle (forget and
    retain test), relearn steps with how many runs relearned within the budget (``k/n``; the
    others count ``max_steps + 1``, a lower bound) and the Anamnesis Index, the linear probe's
    AUC; mean ± std over forget classes × seeds, rows in the order of :func:`main_table`."""
    if summary.empty:
        return pd.DataFrame()
    summary = _reading_order(summary)
    out = pd.DataFrame(
        {"dataset": summary["dataset"], "arch": summary["arch"], "method": summary["method"]}
    )
    for label, cells in _formatted(summary, DEPTH_METRICS).items():
        out[label] = cells
        if label == RUN_METRICS["relearn_steps"][0] and "n_relearned" in summary.columns:
            # how many runs relearned within the step budget: the rest count as lower bounds
            out["relearned"] = [
                None if pd.isna(k) else f"{int(k)}/{int(n)}"
                for k, n in zip(summary["n_relearned"], summary["n_runs"])
            ]
    return out.reset_index(drop=True)


def paper_table_latex(table: pd.DataFrame) -> str:
    """The paper table in LaTeX, with a method header row spanning its A_Df / A_Dr pair."""
    keys = ["dataset", "arch", "forget"]
    columns = [("", c) for c in keys] + [
        tuple(c.rsplit(" ", 1)) for c in table.columns[len(keys) :]
    ]
    grouped = table.copy()
    grouped.columns = pd.MultiIndex.from_tuples(columns)
    return to_latex(grouped)


#: The tables :func:`write_tables` writes as CSV, Markdown and LaTeX, in the report's order.
TABLE_NAMES = ["main_table", "depth_table", "paper_table", "method_summary"]


def write_tables(runs: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Write the main table, the depth-of-forgetting table, the paper table and the full method
    summary as CSV, Markdown and LaTeX (booktabs), plus the numeric long forms as CSV, atomically
    into ``out_dir``. Returns the paths written: ``{main_table, depth_table, paper_table,
    method_summary}.{csv,md,tex}``, ``paper_table_long.csv``, ``method_summary_numeric.csv``."""
    out = Path(out_dir)
    summary = method_summary(runs)
    table = paper_table(runs)
    frames = {
        "main_table": main_table(summary),
        "depth_table": depth_table(summary),
        "paper_table": table,
        "method_summary": summary_display(summary),
    }
    latex = {"paper_table": paper_table_latex}
    paths: list[Path] = []
    for name in TABLE_NAMES:
        frame = frames[name]
        paths += [
            write_file(out / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False)),
            write_text(out / f"{name}.md", to_markdown(frame)),
            write_text(out / f"{name}.tex", latex.get(name, to_latex)(frame)),
        ]
    long = paper_table_long(runs)
    paths += [
        write_file(out / "paper_table_long.csv", lambda p: long.to_csv(p, index=False)),
        write_file(out / "method_summary_numeric.csv", lambda p: summary.to_csv(p, index=False)),
    ]
    log.info("wrote %d table files to %s", len(paths), out)
    return paths


# ------------------------------------------------------------------- the claims' tables


def claims_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per (setting, claim): the statement, the verdict (with its reason), n_seeds and
    n_pairs, the verdict line naming the setting, and the numbers in words; a ``protocol``
    column (PBU's) when runs.csv has one."""
    rows = []
    for c in claims:
        n_seeds, n_pairs = c.units
        rows.append(
            {
                "dataset": c.dataset,
                "arch": c.arch,
                **({"protocol": c.protocol} if c.protocol is not None else {}),
                "claim": c.claim,
                "statement": c.statement,
                "verdict": c.verdict,
                "reason": c.reason,
                "n_seeds": n_seeds,
                "n_pairs": n_pairs,
                "line": c.line,
                "numbers": c.summary,
            }
        )
    return pd.DataFrame(rows)


def comparisons_table(claims: Sequence[Claim], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per comparison: the claim, the part, the paired statistics (numbers, n_seeds and
    n_pairs among them) and the part's verdict (an equivalence's reading under ``outcome``);
    ``protocol_a`` / ``protocol_b`` when ``runs`` has a protocol column."""
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
                    row["protocol_a"] = protocol_of_method(here, p.stat.a)
                    row["protocol_b"] = protocol_of_method(here, p.stat.b) if p.stat.b else None
            row["verdict"] = "(context)" if p.context else p.verdict
            row["outcome"] = p.outcome
            row["reason"] = p.reason
            rows.append(row)
    return pd.DataFrame(rows)


def tradeoff_table(claim: Claim) -> pd.DataFrame:
    """C1's trade-off: per stop threshold present, PBU's A_Df and A_Dr (mean over seeds, 95 %
    CI) with n_seeds and n_pairs."""
    rows: dict[str, dict[str, Any]] = {}
    for p in claim.parts:
        match = re.match(r"^stop (\S+) % \((\w+)\): (A_Df|A_Dr)$", p.label)
        if not (p.context and match and p.stat is not None):
            continue
        thr, method, what = match.groups()
        row = rows.setdefault(method, {"stop threshold (%)": thr, "method": method})
        ci = f"{p.stat.ci_low:.2f} to {p.stat.ci_high:.2f}" if pd.notna(p.stat.ci_low) else "–"
        row[f"{what} (%)"] = f"{p.stat.mean_diff:.2f} [{ci}]"
        row["n_seeds"], row["n_pairs"] = p.stat.n_seeds, p.stat.n_pairs
    columns = ["stop threshold (%)", "method", "A_Df (%)", "A_Dr (%)", "n_seeds", "n_pairs"]
    return pd.DataFrame(list(rows.values())).reindex(columns=columns) if rows else pd.DataFrame()


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
