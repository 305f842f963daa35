"""Reading the aggregate step's files (runs.csv, history.csv, timings.csv) and saying what is
missing from them. A missing metric column is logged and listed in the report, never a crash."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pbu.report.vocab import (
    ACC_F,
    ACC_R,
    EXPECTED_METHODS,
    KEYS,
    PBU_VARIANTS,
    RUN_METRICS,
    SETTING,
    order_methods,
)

log = logging.getLogger(__name__)


def _coerce(
    df: pd.DataFrame, text_columns: Sequence[str], allow_na: Sequence[str] = ()
) -> pd.DataFrame:
    """Key columns to their types (forget/seed as int), every other column to numbers.

    Columns in ``allow_na`` may be empty (e.g. ``forget`` of a pretraining timing).
    """
    df = df.copy()
    for col in df.columns:
        if col in text_columns:
            df[col] = df[col].astype("string").str.strip().astype(object)
        elif col in allow_na:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
        elif col in ("seed", "forget"):
            num = pd.to_numeric(df[col], errors="coerce")
            if num.isna().any():
                raise ValueError(f"column {col!r} has {int(num.isna().sum())} non-integer values")
            df[col] = num.astype("int64")
        else:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise a ValueError naming ``what`` and the key columns it lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks the key column(s) {missing}; it has {list(df.columns)}")


def read_runs(path: str | os.PathLike) -> pd.DataFrame:
    """Read runs.csv: the key columns are required, every metric column is optional."""
    df = pd.read_csv(path)
    require(df, KEYS, f"runs file {path}")
    return _coerce(df, ["dataset", "arch", "method", "base_method", "data_access", "protocol"])


def read_history(path: str | os.PathLike | None) -> pd.DataFrame:
    """Read history.csv; an absent path or file gives an empty frame (and a warning)."""
    if path is None or not Path(path).is_file():
        log.warning("no history file at %s: the trajectory figure will be skipped", path)
        return pd.DataFrame(columns=[*KEYS, "step"])
    df = pd.read_csv(path)
    require(df, [*KEYS, "step"], f"history file {path}")
    return _coerce(df, ["dataset", "arch", "method"])


def read_timings(path: str | os.PathLike | None) -> pd.DataFrame | None:
    """Read timings.csv if there is one (it is optional), else None."""
    if path is None or not Path(path).is_file():
        return None
    df = pd.read_csv(path)
    require(df, ["dataset", "arch", "method"], f"timings file {path}")
    return _coerce(df, ["dataset", "arch", "method"], allow_na=("forget",))


def present(df: pd.DataFrame | None, column: str) -> bool:
    """The column exists and holds at least one number."""
    return df is not None and column in df.columns and bool(df[column].notna().any())


def data_gaps(runs: pd.DataFrame) -> list[str]:
    """Human-readable notes on what is missing from runs: metric columns that are absent or
    all-NaN, expected methods that are absent, and methods without a value for A_Df / A_Dr.
    Each note is also logged as a warning."""
    notes: list[str] = []
    absent = [c for c in RUN_METRICS if c not in runs.columns]
    empty = [c for c in RUN_METRICS if c in runs.columns and runs[c].isna().all()]
    if absent:
        notes.append("columns absent from runs: " + ", ".join(absent))
    if empty:
        notes.append("columns present but empty (all NaN): " + ", ".join(empty))
    for (dataset, arch), grp in runs.groupby(SETTING, sort=True):
        methods = set(grp["method"])
        lost = [m for m in EXPECTED_METHODS if m not in methods]
        if lost:
            notes.append(f"{dataset}/{arch}: methods absent: " + ", ".join(lost))
        for col in (ACC_F, ACC_R):
            if col not in grp.columns:
                continue
            no_value = [
                m for m in order_methods(methods) if grp.loc[grp["method"] == m, col].isna().all()
            ]
            if no_value:
                notes.append(
                    f"{dataset}/{arch}: no {RUN_METRICS[col][0]} for: " + ", ".join(no_value)
                )
    for note in notes:
        log.warning("%s", note)
    return notes


def setting_pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, arch) pairs present in ``df``, sorted."""
    return [tuple(k) for k in df[SETTING].drop_duplicates().sort_values(SETTING).to_numpy()]


def pbu_variants(runs: pd.DataFrame) -> list[str]:
    """The methods of ``runs`` that are variants of PBU: the names of
    :data:`~pbu.report.vocab.PBU_VARIANTS`, any other ``pbu_*`` method, and any method whose
    ``base_method`` column (if there is one) says ``pbu``. Known names first, then the rest
    alphabetically."""
    methods = {str(m) for m in runs["method"].dropna()} - {"pbu"}
    found = {m for m in methods if m in PBU_VARIANTS or m.startswith("pbu_")}
    if "base_method" in runs.columns:
        base = runs.loc[runs["base_method"].astype("string").str.strip() == "pbu", "method"]
        found |= {str(m) for m in base} - {"pbu"}
    return [m for m in PBU_VARIANTS if m in found] + sorted(found - set(PBU_VARIANTS))
