"""Tables, figures and the Markdown report, computed from the pipeline's result files only.

Inputs (written by the aggregate step; read with :func:`read_runs`, :func:`read_history`,
:func:`read_timings`):

- ``runs.csv``: one row per (dataset, arch, seed, forget, method) with the metric columns listed
  in :data:`RUN_METRICS` (accuracies in %, MIA as fractions, times in seconds). Any metric column
  may be absent or NaN; what is missing is logged and listed in the report, never a crash.
- ``history.csv``: the per-step trajectory of iterative methods (PBU first).
- ``timings.csv`` (optional): measured method / retrain / pretrain times per epoch.

Conventions used everywhere below:

- "mean ± std" uses the sample standard deviation (``ddof=1``), the spread one would report for
  a handful of seeds. With a single value the std is undefined and only the mean is printed.
- Methods are shown under our keys everywhere (``original`` is the model before unlearning,
  ``oracle`` the model retrained without the class); the paper's labels ("init", "retrain",
  "fastEffective", "badTeaching", ...) appear only in the report's "beside the paper" tables,
  next to ours. Method order: ``original``, ``oracle``, ``finetune``, ``pbu``,
  then every other method alphabetically.
- Nothing here queries MLflow or recomputes a metric from a model: numbers come from the files.

The public functions are :func:`paper_table`, :func:`paper_table_long`, :func:`method_summary`,
:func:`summary_display`, :func:`write_tables`, :func:`write_figures`, :func:`write_report`,
:func:`build_all`, plus the readers and :func:`parse_paper_table` / :func:`read_reference` for the
paper's reported numbers (``config/paper/reference.csv``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pbu.io import atomic_write

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

KEYS = ["dataset", "arch", "seed", "forget", "method"]
SETTING = ["dataset", "arch"]

#: Metric columns of runs.csv: column -> (display label, number format, unit).
RUN_METRICS: dict[str, tuple[str, str, str]] = {
    "acc_forget_test": ("A_Df", "{:.2f}", "% (forget class, test)"),
    "acc_retain_test": ("A_Dr", "{:.2f}", "% (retained classes, test)"),
    "acc_forget_train": ("A_Df train", "{:.2f}", "% (forget class, train)"),
    "acc_retain_train": ("A_Dr train", "{:.2f}", "% (retained classes, train)"),
    "mia_entropy_svc": ("MIA entropy-SVC", "{:.3f}",
                        "fraction of forget-train called member; non-members: test split "
                        "without the forget class"),
    "mia_entropy_svc_bad_teaching": ("MIA entropy-SVC (Bad Teaching's sets)", "{:.3f}",
                                     "fraction of forget-train called member; non-members: "
                                     "the whole test split"),
    "mia_efficacy_salun": ("MIA-efficacy (SalUn)", "{:.3f}", "fraction"),
    "mia_loss_acc": ("MIA loss (acc)", "{:.3f}", "fraction"),
    "mia_loss_auc": ("MIA loss (AUC)", "{:.3f}", "fraction"),
    "js_forget_test": ("JS forget", "{:.4f}", "JS divergence to the oracle, forget test"),
    "js_retain_test": ("JS retain", "{:.4f}", "JS divergence to the oracle, retain test"),
    "act_dist_forget_test": ("act. dist. forget", "{:.3f}", "activation distance to oracle"),
    "act_dist_retain_test": ("act. dist. retain", "{:.3f}", "activation distance to oracle"),
    "zrf_forget_test": ("ZRF", "{:.3f}", "zero-retrain forgetting score"),
    "zrf_forget_test_as_coded": ("ZRF (as coded)", "{:.3f}", "ZRF as the SSD code computes it"),
    "relearn_steps": ("relearn steps", "{:.1f}",
                      "steps until within alpha % of the original's forget accuracy"),
    "anamnesis_index": ("AIN", "{:.2f}", "Anamnesis Index: relearn steps / oracle's"),
    "relearn_steps_fixed": ("relearn steps (fixed)", "{:.1f}",
                            "steps until a fixed forget accuracy (relearn_threshold)"),
    "relearn_ratio_fixed": ("relearn ratio (fixed)", "{:.2f}",
                            "relearn steps (fixed) / oracle's"),
    "probe_auc": ("probe AUC", "{:.3f}", "fraction"),
    "probe_acc": ("probe bal. acc.", "{:.3f}", "fraction"),
    "total_time_s": ("time (s)", "{:.2f}", "s from θ*, prerequisites included (PBU: Fisher)"),
    "time_s": ("method time (s)", "{:.2f}", "s, the method alone"),
    "epochs": ("epochs", "{:.2f}", "epochs"),
    "time_per_epoch_s": ("time/epoch (s)", "{:.2f}", "s per epoch, the method alone"),
    "total_time_per_epoch_s": ("time/epoch (s)", "{:.2f}", "s per epoch, prerequisites included"),
    "peak_rss_mb": ("peak RSS (MB)", "{:.0f}", "MB"),
}

ACC_F, ACC_R = "acc_forget_test", "acc_retain_test"
MIA_COLUMNS = ["mia_entropy_svc", "mia_entropy_svc_bad_teaching", "mia_efficacy_salun",
               "mia_loss_acc", "mia_loss_auc"]
JS_COLUMNS = ["js_forget_test", "js_retain_test"]
DEPTH_COLUMNS = ["zrf_forget_test", "zrf_forget_test_as_coded", "act_dist_forget_test",
                 "act_dist_retain_test", "relearn_steps", "anamnesis_index",
                 "relearn_steps_fixed", "relearn_ratio_fixed", "probe_auc", "probe_acc"]
TIME_COLUMNS = ["total_time_s", "time_s"]
#: Metrics in the per-method summary (when present): every score the evaluation writes.
SUMMARY_METRICS = [ACC_F, ACC_R, *MIA_COLUMNS, *JS_COLUMNS, *DEPTH_COLUMNS, *TIME_COLUMNS]
#: The main table: accuracy, MIA, distance to the oracle, time.
MAIN_METRICS = [ACC_F, ACC_R, "mia_entropy_svc", "mia_entropy_svc_bad_teaching", *TIME_COLUMNS]
#: The "depth of forgetting" table.
DEPTH_METRICS = ["zrf_forget_test", "act_dist_forget_test", "act_dist_retain_test",
                 "relearn_steps", "anamnesis_index", "probe_auc"]

#: Our method key -> the paper's label (its column prefix in reference.csv). Used only where our
#: numbers stand beside the paper's; everywhere else a method is shown under our key.
PAPER_NAMES: dict[str, str] = {
    "original": "init",
    "oracle": "retrain",
    "finetune": "finetune",
    "unsir": "fastEffective",
    "bad_teaching": "badTeaching",
    "pbu": "PBU",
}
#: Methods every complete run set should hold (their absence is reported).
EXPECTED_METHODS = ["original", "oracle", "finetune", "pbu"]
_FIRST_METHODS = ["original", "oracle", "finetune", "pbu"]
_MISSING = "–"  # how an absent number is printed in Markdown
_UNRANKED = ("oracle", "original")  # the target and the starting point, not unlearning methods

# The paper's dataset and model names -> our keys (used to build reference.csv).
_PAPER_DATASET_KEYS = {"mnist": "mnist", "cifar100": "cifar100", "food101": "food101"}
_PAPER_ARCH_KEYS = {
    "resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
    "densenet121": "densenet121", "convnextl": "convnext_large", "convnextlarge": "convnext_large",
    "allcnn": "allcnn",
}
# Which paper dataset our dataset is a version of (for the "averages" comparison).
_DATASET_FAMILY = {"mnist": "mnist", "mnist5k": "mnist", "cifar100": "cifar100",
                   "food101": "food101"}
# The paper's setting, in words (PAPER.md; the authors' notebook for the recipe).
_PAPER_DATASETS = {
    "mnist": "MNIST, 60,000 train / 10,000 test images, 10 classes",
    "cifar100": "CIFAR-100, 50,000 train / 10,000 test images, 100 classes",
    "food101": "Food-101, 75,750 train / 25,250 test images, 101 classes",
}
_PAPER_PRETRAIN = (
    "known only for the authors' released code, one notebook (ResNet-18 on MNIST): ImageNet "
    "weights, Adam lr 1e-4, batch 48, 10 epochs, and a retrain baseline that also starts from "
    "ImageNet weights (lr 1e-3), i.e. not from scratch; for the other models and datasets no code "
    "was released"
)


def order_methods(methods: Iterable[str]) -> list[str]:
    """original, oracle, finetune, pbu first (those present), then the rest alphabetically."""
    present = list(dict.fromkeys(str(m) for m in methods))
    first = [m for m in _FIRST_METHODS if m in present]
    return first + sorted(m for m in present if m not in _FIRST_METHODS)


def format_mean_std(mean: float, std: float, fmt: str = "{:.2f}") -> str | None:
    """``"m ± s"`` with the given number format; only ``"m"`` if std is NaN (a single value);
    None if the mean itself is NaN."""
    if mean is None or pd.isna(mean):
        return None
    if std is None or pd.isna(std):
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------

def _coerce(df: pd.DataFrame, text_columns: Sequence[str],
            allow_na: Sequence[str] = ()) -> pd.DataFrame:
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


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks the key column(s) {missing}; it has {list(df.columns)}")


def read_runs(path: str | os.PathLike) -> pd.DataFrame:
    """Read runs.csv: the key columns are required, every metric column is optional."""
    df = pd.read_csv(path)
    _require(df, KEYS, f"runs file {path}")
    return _coerce(df, ["dataset", "arch", "method", "data_access"])


def read_history(path: str | os.PathLike | None) -> pd.DataFrame:
    """Read history.csv; an absent path or file gives an empty frame (and a warning)."""
    if path is None or not Path(path).is_file():
        log.warning("no history file at %s: the trajectory figure will be skipped", path)
        return pd.DataFrame(columns=[*KEYS, "step"])
    df = pd.read_csv(path)
    _require(df, [*KEYS, "step"], f"history file {path}")
    return _coerce(df, ["dataset", "arch", "method"])


def read_timings(path: str | os.PathLike | None) -> pd.DataFrame | None:
    """Read timings.csv if there is one (it is optional), else None."""
    if path is None or not Path(path).is_file():
        return None
    df = pd.read_csv(path)
    _require(df, ["dataset", "arch", "method"], f"timings file {path}")
    return _coerce(df, ["dataset", "arch", "method"], allow_na=("forget",))


def _present(df: pd.DataFrame | None, column: str) -> bool:
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
            no_value = [m for m in order_methods(methods)
                        if grp.loc[grp["method"] == m, col].isna().all()]
            if no_value:
                notes.append(f"{dataset}/{arch}: no {RUN_METRICS[col][0]} for: "
                             + ", ".join(no_value))
    for note in notes:
        log.warning("%s", note)
    return notes


# --------------------------------------------------------------------------------------------
# The paper's reported numbers
# --------------------------------------------------------------------------------------------

def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def dataset_key(name: str) -> str:
    """The paper's dataset name ("CIFAR-100") -> our key ("cifar100")."""
    key = _norm(name)
    return _PAPER_DATASET_KEYS.get(key, key)


def arch_key(name: str) -> str:
    """The paper's model name ("ConvNeXt-L") -> our arch key ("convnext_large")."""
    key = _norm(name)
    return _PAPER_ARCH_KEYS.get(key, key)


def _split_pm(cell: Any) -> tuple[float, float]:
    """ "99.65±0.11" -> (99.65, 0.11); a bare number gets std NaN."""
    text = str(cell).strip()
    if "±" in text:
        mean, std = text.split("±", 1)
        return float(mean), float(std)
    return float(text), float("nan")


def parse_paper_table(path: str | os.PathLike) -> pd.DataFrame:
    """Turn the paper's table as transcribed (comment lines starting with '#', cells
    "mean±std") into the clean reference frame: the original columns, the keys
    ``dataset_key``/``arch_key``/``forget``, and numeric ``<col>_mean``/``<col>_std`` for every
    "mean±std" column."""
    raw = pd.read_csv(path, comment="#", dtype=str, skipinitialspace=True)
    raw.columns = [c.strip() for c in raw.columns]
    _require(raw, ["dataset", "model", "forget_class"], f"paper table {path}")
    value_cols = [c for c in raw.columns if c not in ("dataset", "model", "forget_class")]
    out = raw[["dataset", "model", "forget_class"]].copy()
    out["dataset_key"] = out["dataset"].map(dataset_key)
    out["arch_key"] = out["model"].map(arch_key)
    out["forget"] = out["forget_class"].astype(int)
    for col in value_cols:
        pairs = raw[col].map(_split_pm)
        out[col] = raw[col].str.strip()
        out[f"{col}_mean"] = [p[0] for p in pairs]
        out[f"{col}_std"] = [p[1] for p in pairs]
    return out


def read_reference(path: str | os.PathLike) -> pd.DataFrame:
    """Read config/paper/reference.csv (the output of :func:`parse_paper_table`)."""
    ref = pd.read_csv(path, dtype={"dataset_key": str, "arch_key": str})
    _require(ref, ["dataset_key", "arch_key", "forget"], f"reference {path}")
    ref["forget"] = ref["forget"].astype(int)
    return ref


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def _stats(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().to_numpy(dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def paper_table_long(runs: pd.DataFrame) -> pd.DataFrame:
    """Long form of :func:`paper_table`: one row per (dataset, arch, forget, method, metric) with
    numeric ``mean``, ``std`` (over seeds, ddof=1) and ``n`` (seeds with a value)."""
    rows = []
    metrics = [c for c in (ACC_F, ACC_R) if c in runs.columns]
    if not metrics:
        log.warning("runs has neither %s nor %s: the paper table is empty", ACC_F, ACC_R)
    for (dataset, arch, forget, method), grp in runs.groupby(
            ["dataset", "arch", "forget", "method"], sort=True):
        for col in metrics:
            mean, std, n = _stats(grp[col])
            rows.append(dict(dataset=dataset, arch=arch, forget=int(forget), method=method,
                             metric=RUN_METRICS[col][0],
                             column=col, mean=mean, std=std, n=n))
    cols = ["dataset", "arch", "forget", "method", "metric", "column", "mean",
            "std", "n"]
    long = pd.DataFrame(rows, columns=cols)
    if long.empty:
        return long
    rank = {m: i for i, m in enumerate(order_methods(long["method"]))}
    long = long.assign(_o=long["method"].map(rank)).sort_values(
        ["dataset", "arch", "forget", "_o", "metric"]).drop(columns="_o")
    return long.reset_index(drop=True)


def paper_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: one row per (dataset, arch, forget); for each method (original,
    oracle, finetune, pbu, then the others alphabetically) the columns ``"<method> A_Df"`` and
    ``"<name> A_Dr"`` holding "mean ± std" over seeds (accuracy on the test split, in %)."""
    long = paper_table_long(runs)
    keys = ["dataset", "arch", "forget"]
    if long.empty:
        return pd.DataFrame(columns=keys)
    long = long.assign(cell=[format_mean_std(m, s, RUN_METRICS[c][1])
                             for m, s, c in zip(long["mean"], long["std"], long["column"])])
    table = runs[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    table["forget"] = table["forget"].astype(int)
    for method in order_methods(long["method"]):
        for metric in ("A_Df", "A_Dr"):
            part = long[(long["method"] == method) & (long["metric"] == metric)]
            if part.empty:
                continue
            name = f"{method} {metric}"
            table = table.merge(part[keys + ["cell"]].rename(columns={"cell": name}),
                                on=keys, how="left")
    return table


def _oracle_reference(runs: pd.DataFrame) -> pd.DataFrame:
    """The oracle's A_Df / A_Dr per (dataset, arch, forget), averaged over its seeds."""
    cols = [c for c in (ACC_F, ACC_R) if c in runs.columns]
    oracle = runs[runs["method"] == "oracle"]
    return (oracle.groupby(["dataset", "arch", "forget"])[cols].mean()
            .rename(columns={c: f"oracle_{c}" for c in cols}).reset_index())


def method_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, arch, method): numbers pooled over forget classes × seeds.

    Columns:

    - ``data_access`` ("data needed"), ``n_runs``, ``n_classes``, ``n_seeds``;
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
    runs = runs.copy()
    metrics = [c for c in SUMMARY_METRICS if c in runs.columns]
    if "data_access" not in runs.columns:
        runs["data_access"] = np.nan
    oracle = _oracle_reference(runs)
    if oracle.empty:
        log.warning("no oracle runs: distances to the oracle and the ranking are undefined")
    runs = runs.merge(oracle, on=["dataset", "arch", "forget"], how="left")
    for col, gap in ((ACC_F, "gap_A_Df"), (ACC_R, "gap_A_Dr")):
        ref = f"oracle_{col}"
        runs[gap] = (runs[col] - runs[ref]).abs() if ref in runs.columns else np.nan
    js_present = [c for c in JS_COLUMNS if c in runs.columns]
    runs["js_to_oracle"] = runs[js_present].mean(axis=1) if js_present else np.nan

    rows = []
    for (dataset, arch, method), grp in runs.groupby(["dataset", "arch", "method"], sort=True):
        access = sorted({str(a) for a in grp["data_access"].dropna()})
        row: dict[str, Any] = dict(
            dataset=dataset, arch=arch, method=method,
            data_access="; ".join(access) if access else None, n_runs=len(grp),
            n_classes=grp["forget"].nunique(), n_seeds=grp["seed"].nunique())
        for col in metrics:
            row[f"{col}_mean"], row[f"{col}_std"], _ = _stats(grp[col])
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
        rankable = grp[~grp["method"].isin(_UNRANKED)
                       & (grp["js_to_oracle"].notna() | grp["acc_gap_to_oracle"].notna())]
        ordered = rankable.assign(_nojs=rankable["js_to_oracle"].isna()).sort_values(
            ["_nojs", "js_to_oracle", "acc_gap_to_oracle", "_o"], na_position="last")
        grp.loc[ordered.index, "rank"] = range(1, len(ordered) + 1)
        parts.append(grp.sort_values("_o").drop(columns="_o"))
    summary = pd.concat(parts, ignore_index=True)
    summary["rank"] = summary["rank"].astype("Int64")
    return summary


def _formatted(summary: pd.DataFrame, metrics: Sequence[str]) -> dict[str, list[str | None]]:
    """``label -> "mean ± std"`` cells for each metric of ``metrics`` present in ``summary``."""
    cols: dict[str, list[str | None]] = {}
    for col in metrics:
        if f"{col}_mean" in summary.columns:
            label, fmt, _ = RUN_METRICS[col]
            cols[label] = [format_mean_std(m, s, fmt)
                           for m, s in zip(summary[f"{col}_mean"], summary[f"{col}_std"])]
    return cols


def _fmt(series: pd.Series, fmt: str) -> list[str | None]:
    return [None if pd.isna(v) else fmt.format(v) for v in series]


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The human-readable form of :func:`method_summary`: "mean ± std" strings of every metric,
    the worst classes as "class (value)", distances to the oracle and the rank."""
    if summary.empty:
        return pd.DataFrame()
    out = pd.DataFrame({"dataset": summary["dataset"], "arch": summary["arch"],
                        "method": summary["method"],
                        "data needed": summary["data_access"].fillna(_MISSING)})
    for label, cells in _formatted(summary, SUMMARY_METRICS).items():
        out[label] = cells
    for key, label in (("df", "A_Df"), ("dr", "A_Dr")):
        out[f"worst class ({label})"] = [
            None if pd.isna(c) else f"{int(c)} ({v:.2f})"
            for c, v in zip(summary[f"worst_forget_class_{key}"], summary[f"worst_{label}"])]
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
            _o=grp["method"].map(pos))
        parts.append(key.sort_values(["_first", "_rank", "_o"], na_position="last")
                     .drop(columns=["_first", "_rank", "_o"]))
    return pd.concat(parts, ignore_index=True) if parts else summary


def main_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The main table: per (dataset, arch) and method, accuracy, both entropy-SVC MIAs,
    distance to the oracle, time (prerequisites included, then the method alone) and rank;
    mean ± std over forget classes × seeds. The original model's and the oracle's rows first."""
    if summary.empty:
        return pd.DataFrame()
    summary = _reading_order(summary)
    out = pd.DataFrame({"dataset": summary["dataset"], "arch": summary["arch"],
                        "method": summary["method"],
                        "data needed": summary["data_access"].fillna(_MISSING)})
    cells = _formatted(summary, MAIN_METRICS)
    for col in (ACC_F, ACC_R, "mia_entropy_svc", "mia_entropy_svc_bad_teaching"):
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
    out = pd.DataFrame({"dataset": summary["dataset"], "arch": summary["arch"],
                        "method": summary["method"]})
    for label, cells in _formatted(summary, DEPTH_METRICS).items():
        out[label] = cells
        if label == RUN_METRICS["relearn_steps"][0] and "n_relearned" in summary.columns:
            # how many runs relearned within the step budget: the rest count as lower bounds
            out["relearned"] = [None if pd.isna(k) else f"{int(k)}/{int(n)}"
                                for k, n in zip(summary["n_relearned"], summary["n_runs"])]
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Writers: atomic files, Markdown and LaTeX formatters (no tabulate / jinja2 dependency)
# --------------------------------------------------------------------------------------------

def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """:func:`pbu.io.atomic_write` for writers that take a Path; returns ``path``."""
    atomic_write(path, lambda tmp: write(Path(tmp)))
    return Path(path)


def _atomic_write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _cell_text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return _MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, NaN as "–", '|' escaped)."""
    cols = [str(c) for c in df.columns]
    align = ["---:" if _is_numeric(df[c]) else "---" for c in df.columns]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
             "| " + " | ".join(align) + " |"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell_text(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "|": r"$|$", "±": r"$\pm$", "Δ": r"$\Delta{}$",
                  "–": "--", "−": r"$-$", "×": r"$\times$"}


def _latex_escape(text: str) -> str:
    """Escape text for LaTeX; A_Df / A_Dr become math, and adjacent inline maths are merged
    (``$a$$b$`` would otherwise open display math)."""
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    out = out.replace("A\\_Df", "$A_{D_f}$").replace("A\\_Dr", "$A_{D_r}$")
    return re.sub(r"(?<!\\)\$\$", "", out)


def to_latex(df: pd.DataFrame, *, groups: Sequence[tuple[str, int]] | None = None,
             sub_headers: Sequence[str] | None = None) -> str:
    """A booktabs ``tabular`` (\\toprule, \\midrule, \\bottomrule). ``groups``: an optional top
    header row of (label, span) pairs, drawn with \\multicolumn and \\cmidrule; ``sub_headers``
    replaces the column names in the second row."""
    spec = "".join("r" if _is_numeric(df[c]) else "l" for c in df.columns)
    lines = ["% generated by pbu.report; needs \\usepackage{booktabs}",
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    if groups:
        cells, rules, col = [], [], 1
        for label, span in groups:
            cells.append(f"\\multicolumn{{{span}}}{{c}}{{{_latex_escape(label)}}}"
                         if label else " & ".join([""] * span))
            if label:
                rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines.append(" & ".join(cells) + r" \\")
        if rules:
            lines.append(" ".join(rules))
    names = sub_headers if sub_headers is not None else [str(c) for c in df.columns]
    lines.append(" & ".join(_latex_escape(n) for n in names) + r" \\")
    lines.append("\\midrule")
    for row in df.itertuples(index=False):
        lines.append(" & ".join(_latex_escape(_cell_text(v)) for v in row) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _paper_table_latex(table: pd.DataFrame) -> str:
    """The paper table with a method header row spanning its A_Df / A_Dr pair."""
    keys = ["dataset", "arch", "forget"]
    groups: list[tuple[str, int]] = [("", len(keys))]
    subs = list(keys)
    for col in table.columns[len(keys):]:
        name, metric = col.rsplit(" ", 1)
        if groups[-1][0] == name:
            groups[-1] = (name, groups[-1][1] + 1)
        else:
            groups.append((name, 1))
        subs.append(metric)
    return to_latex(table, groups=groups, sub_headers=subs)


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
    frames = {"main_table": main_table(summary), "depth_table": depth_table(summary),
              "paper_table": table, "method_summary": summary_display(summary)}
    latex = {"paper_table": _paper_table_latex}
    paths: list[Path] = []
    for name in TABLE_NAMES:
        frame = frames[name]
        paths += [
            _atomic_write(out / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False)),
            _atomic_write_text(out / f"{name}.md", to_markdown(frame)),
            _atomic_write_text(out / f"{name}.tex", latex.get(name, to_latex)(frame)),
        ]
    long = paper_table_long(runs)
    paths += [
        _atomic_write(out / "paper_table_long.csv", lambda p: long.to_csv(p, index=False)),
        _atomic_write(out / "method_summary_numeric.csv",
                      lambda p: summary.to_csv(p, index=False)),
    ]
    log.info("wrote %d table files to %s", len(paths), out)
    return paths


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

FIG_WIDTH_IN = 7.0  # full text width; every figure uses it, so 8 pt stays 8 pt in print
MIN_FONT_PT = 8.0
DPI = 200
FIGURE_NAMES = ["accuracy_per_class", "time_per_epoch", "pbu_trajectory", "mia_vs_oracle",
                "retain_gap_to_oracle"]
_RC = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 8,
       "ytick.labelsize": 8, "legend.fontsize": 8, "legend.title_fontsize": 8,
       "figure.titlesize": 9, "axes.titleweight": "normal", "savefig.dpi": DPI}


def _palette(methods: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per method (by display name), the same in every figure."""
    import seaborn as sns

    ordered = order_methods(methods)
    colors = sns.color_palette("tab20" if len(ordered) > 10 else "tab10", len(ordered))
    return dict(zip(ordered, colors))


def _enforce_min_font(fig: Any, min_pt: float = MIN_FONT_PT) -> None:
    """Raise any text that ended up below ``min_pt`` (e.g. a library default) to ``min_pt``."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < min_pt:
            text.set_fontsize(min_pt)


def _save(fig: Any, out_dir: Path, name: str) -> list[Path]:
    """Save a figure as PNG (dpi 200) and PDF, atomically, and close it."""
    import matplotlib.pyplot as plt

    _enforce_min_font(fig)
    paths = []
    for ext in ("png", "pdf"):
        paths.append(_atomic_write(out_dir / f"{name}.{ext}",
                                   lambda p, e=ext: fig.savefig(p, format=e, dpi=DPI)))
    plt.close(fig)
    return paths


def _settings(df: pd.DataFrame) -> list[tuple[str, str]]:
    return [tuple(k) for k in df[SETTING].drop_duplicates().sort_values(SETTING).to_numpy()]


def _with_labels(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(label=df["method"])


def _legend_below(fig: Any, axes: Iterable[Any], ncol: int = 6) -> None:
    """One legend for the figure (the first axes that has one), per-axes legends removed."""
    handles, labels = [], []
    for ax in axes:
        if not handles:
            handles, labels = ax.get_legend_handles_labels()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(ncol, len(labels)),
                   frameon=False)


def _fig_accuracy(runs: pd.DataFrame) -> Any | None:
    """(1) A_Df and A_Dr per method and forget class, error bars = std over seeds."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = [c for c in (ACC_F, ACC_R) if _present(runs, c)]
    if not metrics:
        log.warning("figure accuracy_per_class skipped: no %s / %s values", ACC_F, ACC_R)
        return None
    settings = _settings(runs)
    methods = order_methods(runs["method"])
    palette = _palette(methods)
    fig, axes = plt.subplots(len(settings), len(metrics), squeeze=False, layout="constrained",
                             figsize=(FIG_WIDTH_IN, 2.3 * len(settings) + 0.7))
    for r, (dataset, arch) in enumerate(settings):
        sub = _with_labels(runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)])
        sub = sub.assign(forget_class=sub["forget"].astype(str))
        hue_order = [m for m in methods if m in set(sub["method"])]
        for c, col in enumerate(metrics):
            ax = axes[r, c]
            sns.barplot(data=sub, x="forget_class", y=col, hue="label", hue_order=hue_order,
                        palette=palette, errorbar="sd", capsize=0.15,
                        err_kws={"linewidth": 0.8}, ax=ax)
            ax.set_xlabel("forget class")
            ax.set_ylabel(f"{RUN_METRICS[col][0]} (%)")
            ax.set_title(f"{dataset} / {arch}: {RUN_METRICS[col][0]}")
    _legend_below(fig, axes.flat)
    return fig


def _time_per_epoch_frame(runs: pd.DataFrame, timings: pd.DataFrame | None) -> pd.DataFrame:
    """Measured seconds per epoch per run, prerequisites included (PBU: its Fisher), as the
    tables' headline time. For each (dataset, arch, method) one source is used, never a mix:
    timings.csv where it has that method, else runs.csv. Per row the first available of
    ``total_time_per_epoch_s``, ``total_time_s / epochs``, ``time_per_epoch_s`` and
    ``time_s / epochs`` (files without the totals). Pretraining and the untouched original model
    are not unlearning methods and are left out."""
    keys = [k for k in KEYS]
    frames = []
    for src, df in (("timings", timings), ("runs", runs)):
        if df is None or df.empty:
            continue
        df = df.copy()
        for k in ("seed", "forget"):
            if k not in df.columns:
                df[k] = -1
        tpe = pd.Series(np.nan, index=df.index)
        epochs = (df["epochs"].where(df["epochs"] > 0) if "epochs" in df.columns
                  else pd.Series(np.nan, index=df.index))
        for per_epoch, total in (("total_time_per_epoch_s", "total_time_s"),
                                 ("time_per_epoch_s", "time_s")):
            if per_epoch in df.columns:
                tpe = tpe.fillna(df[per_epoch])
            if total in df.columns:
                tpe = tpe.fillna(df[total] / epochs)
        frames.append(df[keys].assign(time_per_epoch_s=tpe, source=src))
    if not frames:
        return pd.DataFrame(columns=[*keys, "time_per_epoch_s"])
    both = pd.concat(frames, ignore_index=True).dropna(subset=["time_per_epoch_s"])
    first = both.groupby(["dataset", "arch", "method"])["source"].transform("first")
    both = both[both["source"] == first]  # timings.csv (listed first) wins per method
    return both[~both["method"].isin(["pretrain", "original"])].reset_index(drop=True)


def _fig_time_per_epoch(runs: pd.DataFrame, timings: pd.DataFrame | None) -> Any | None:
    """(2) The paper's "computational time per epoch": grouped bars per model and method."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = _time_per_epoch_frame(runs, timings)
    data = data[data["time_per_epoch_s"] > 0]
    if data.empty:
        log.warning("figure time_per_epoch skipped: no time_per_epoch_s (or time_s and epochs)")
        return None
    datasets = sorted(data["dataset"].unique())
    methods = order_methods(data["method"])
    palette = _palette(order_methods(runs["method"]) + methods)
    fig, axes = plt.subplots(1, len(datasets), squeeze=False, layout="constrained",
                             figsize=(FIG_WIDTH_IN, 3.0))
    for ax, dataset in zip(axes[0], datasets):
        sub = _with_labels(data[data["dataset"] == dataset])
        hue_order = [m for m in methods if m in set(sub["method"])]
        means = sub.groupby(["arch", "method"])["time_per_epoch_s"].mean()
        log_y = bool(means.max() / means.min() > 100)  # more than two decades: log axis
        sns.barplot(data=sub, x="arch", y="time_per_epoch_s", hue="label", hue_order=hue_order,
                    palette=palette, errorbar="sd", capsize=0.15, err_kws={"linewidth": 0.8},
                    ax=ax)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("model")
        ax.set_ylabel("time per epoch (s), prerequisites incl." + (", log" if log_y else ""))
        ax.set_title(dataset)
    _legend_below(fig, axes.flat)
    return fig


def _fig_pbu_trajectory(history: pd.DataFrame | None) -> Any | None:
    """(3) PBU per step: test accuracies (forget, retain) and the three loss terms, mean ± std
    over (seed, forget class), with the step where the stopping rule fired."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if history is None or history.empty or "method" not in history.columns:
        log.warning("figure pbu_trajectory skipped: no history")
        return None
    hist = history[history["method"] == "pbu"]
    if hist.empty:
        log.warning("figure pbu_trajectory skipped: history has no pbu rows")
        return None
    acc_cols = {c: n for c, n in (("acc_forget_test", "forget (test)"),
                                  ("acc_retain_test", "retain (test)"),
                                  ("acc_forget_batch", "forget (batch)")) if _present(hist, c)}
    loss_cols = {c: n for c, n in (("term_forget", "|α·(−CE)| forget"),
                                   ("term_fisher", "β·Fisher"),
                                   ("term_l2", "γ·l2")) if _present(hist, c)}
    panels = [p for p, cols in (("acc", acc_cols), ("loss", loss_cols)) if cols]
    for p, cols in (("accuracy", acc_cols), ("loss-term", loss_cols)):
        if not cols:
            log.warning("pbu_trajectory: %s panel skipped (no columns with values)", p)
    if not panels:
        return None
    settings = _settings(hist)
    fig, axes = plt.subplots(len(settings), len(panels), squeeze=False, layout="constrained",
                             figsize=(FIG_WIDTH_IN, 2.4 * len(settings) + 0.6))
    for r, (dataset, arch) in enumerate(settings):
        sub = hist[(hist["dataset"] == dataset) & (hist["arch"] == arch)]
        stops = (sub.loc[sub["stopped"] == 1, "step"].to_numpy()
                 if "stopped" in sub.columns else np.array([]))
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            cols = acc_cols if panel == "acc" else loss_cols
            long = sub.melt(id_vars=["seed", "forget", "step"], value_vars=list(cols),
                            var_name="quantity", value_name="value").dropna(subset=["value"])
            long["quantity"] = long["quantity"].map(cols)
            log_y = False
            if panel == "loss":
                # The forget term is negative and orders of magnitude larger than the stability
                # terms: plot magnitudes, on a log axis when they span more than two decades.
                long["value"] = long["value"].abs()
                positive = long.loc[long["value"] > 0, "value"]
                log_y = not positive.empty and positive.max() / positive.min() > 100
                if log_y:
                    long = long[long["value"] > 0]
            sns.lineplot(data=long, x="step", y="value", hue="quantity",
                         hue_order=[n for n in cols.values() if n in set(long["quantity"])],
                         errorbar="sd", estimator="mean", linewidth=1.0, ax=ax)
            for i, s in enumerate(sorted(set(stops.tolist()))):
                ax.axvline(s, color="black", linestyle=":", linewidth=0.9, alpha=0.7,
                           label="stopping rule fired" if i == 0 else None)
            if panel == "acc":
                ax.set_ylabel("accuracy (%)")
                ax.set_title(f"{dataset} / {arch}: PBU accuracy")
            else:
                if log_y:
                    ax.set_yscale("log")
                ax.set_ylabel("|loss term|" + (", log scale" if log_y else ""))
                ax.set_title(f"{dataset} / {arch}: PBU loss terms")
            ax.legend(frameon=False, loc="best")
    return fig


def _fig_mia(runs: pd.DataFrame) -> Any | None:
    """(4) Each MIA variant per method (bars, std over runs) beside the oracle's mean (line)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    variants = [c for c in MIA_COLUMNS if _present(runs, c)]
    if not variants:
        log.warning("figure mia_vs_oracle skipped: no MIA column has values")
        return None
    settings = _settings(runs)
    methods = order_methods(runs["method"])
    palette = _palette(methods)
    n_bars = max(1, len([m for m in methods if m != "oracle"]))
    oracle_line = None
    fig, axes = plt.subplots(len(settings), len(variants), squeeze=False, layout="constrained",
                             sharey="row", figsize=(FIG_WIDTH_IN,
                                                    len(settings) * (0.22 * n_bars + 0.8) + 0.3))
    for r, (dataset, arch) in enumerate(settings):
        sub = _with_labels(runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)])
        bars = sub[sub["method"] != "oracle"]
        order = [m for m in methods if m != "oracle"]
        for c, col in enumerate(variants):
            ax = axes[r, c]
            sns.barplot(data=bars, y="label", x=col, order=order, hue="label",
                        hue_order=order, palette=palette, errorbar="sd", capsize=0.2,
                        err_kws={"linewidth": 0.8}, legend=False, ax=ax)
            oracle_vals = sub.loc[sub["method"] == "oracle", col].dropna()
            if oracle_vals.empty:
                log.warning("mia_vs_oracle: no oracle value for %s on %s/%s", col, dataset, arch)
            else:
                oracle_line = ax.axvline(oracle_vals.mean(), color="black", linestyle="--",
                                         linewidth=1.0)
            ax.set_xlabel(RUN_METRICS[col][0].replace(" (", "\n("))  # narrow panels
            ax.set_ylabel("" if c else f"{dataset} / {arch}")
    if oracle_line is not None:
        fig.legend([oracle_line], ["oracle (retrained without the class), mean over runs"],
                   loc="outside lower center", frameon=False)
    return fig


def _fig_retain_gap(runs: pd.DataFrame) -> Any | None:
    """(5) A_Dr(method) − A_Dr(oracle) in percentage points, per method and forget class."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not _present(runs, ACC_R):
        log.warning("figure retain_gap_to_oracle skipped: no %s values", ACC_R)
        return None
    mean = runs.groupby(["dataset", "arch", "forget", "method"])[ACC_R].mean().reset_index()
    oracle = mean[mean["method"] == "oracle"].rename(columns={ACC_R: "oracle"})
    if oracle["oracle"].dropna().empty:
        log.warning("figure retain_gap_to_oracle skipped: no oracle %s", ACC_R)
        return None
    gap = mean[mean["method"] != "oracle"].merge(
        oracle[["dataset", "arch", "forget", "oracle"]], on=["dataset", "arch", "forget"])
    gap["gap"] = gap[ACC_R] - gap["oracle"]
    gap = gap.dropna(subset=["gap"])
    if gap.empty:
        log.warning("figure retain_gap_to_oracle skipped: no method shares a class with the oracle")
        return None
    settings = _settings(gap)
    lim = float(max(gap["gap"].abs().max(), 0.5))
    heights = [0.25 * gap[(gap["dataset"] == d) & (gap["arch"] == a)]["method"].nunique() + 0.9
               for d, a in settings]
    fig, axes = plt.subplots(len(settings), 1, squeeze=False, layout="constrained",
                             figsize=(FIG_WIDTH_IN, sum(heights) + 0.3),
                             gridspec_kw={"height_ratios": heights})
    for ax, (dataset, arch) in zip(axes[:, 0], settings):
        sub = gap[(gap["dataset"] == dataset) & (gap["arch"] == arch)]
        grid = sub.pivot(index="method", columns="forget", values="gap")
        grid = grid.loc[[m for m in order_methods(grid.index)]]
        sns.heatmap(grid, annot=True, fmt=".2f", cmap="vlag_r", center=0, vmin=-lim, vmax=lim,
                    annot_kws={"fontsize": 8}, cbar_kws={"label": "A_Dr − oracle A_Dr (pp)"},
                    linewidths=0.5, ax=ax)
        ax.set_xlabel("forget class")
        ax.set_ylabel("")
        ax.set_title(f"{dataset} / {arch}: retain-accuracy gap to the oracle")
    return fig


def write_figures(runs: pd.DataFrame, history: pd.DataFrame | None,
                  timings: pd.DataFrame | None, out_dir: str | os.PathLike) -> list[Path]:
    """Draw the five figures as ``<name>.png`` (dpi 200) and ``<name>.pdf`` in ``out_dir``,
    7 in wide with fonts of at least 8 pt; names from :data:`FIGURE_NAMES`. A figure whose data
    is missing is skipped with a logged warning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    out = Path(out_dir)
    builders: dict[str, Callable[[], Any]] = {
        "accuracy_per_class": lambda: _fig_accuracy(runs),
        "time_per_epoch": lambda: _fig_time_per_epoch(runs, timings),
        "pbu_trajectory": lambda: _fig_pbu_trajectory(history),
        "mia_vs_oracle": lambda: _fig_mia(runs),
        "retain_gap_to_oracle": lambda: _fig_retain_gap(runs),
    }
    paths: list[Path] = []
    with sns.axes_style("whitegrid"), plt.rc_context(_RC):
        for name, build in builders.items():
            fig = build()
            if fig is not None:
                paths += _save(fig, out, name)
    log.info("wrote %d figure files to %s", len(paths), out)
    return paths


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

def _describe(kind: str, name: str, parameters: float | None = None) -> str:
    """Our dataset / arch description from the (torch-free) registry; for an arch, with the
    parameter count its pretraining job counted on the model itself, when known."""
    from pbu.registry import ARCHS, DATASETS

    if kind == "dataset":
        spec = DATASETS.get(name)
        return spec.description.rstrip(". ") if spec else name
    text = ARCHS.get(name, name).rstrip(". ")
    if parameters is not None and pd.notna(parameters):
        text += f"; {int(parameters):,} parameters (counted on the trained model)"
    return text


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(str(v) for v in value)))
        else:
            rows.append((name, str(value)))
    return rows


def _paper_cell(row: pd.Series, prefix: str, metric: str) -> str:
    col = f"{prefix}_{metric}"
    if col not in row.index or pd.isna(row[col]):
        return _MISSING
    return str(row[col]).replace("±", " ± ")


def _ours_vs_paper_rows(ours: pd.DataFrame, paper_row: pd.Series) -> pd.DataFrame:
    """Side-by-side rows for one matching (dataset, arch, forget): ours and the paper's cells."""
    rows = []
    for method in order_methods(ours["method"]):
        if method not in PAPER_NAMES:
            continue
        mine = ours[ours["method"] == method]
        prefix = PAPER_NAMES[method]
        cells = {}
        for col, metric in ((ACC_F, "ADf"), (ACC_R, "ADr")):
            mean, std, _ = _stats(mine[col]) if col in mine.columns else (np.nan, np.nan, 0)
            cells[f"ours {metric}"] = format_mean_std(mean, std) or _MISSING
            cells[f"paper {metric}"] = _paper_cell(paper_row, prefix, metric)
        rows.append({"method": method, "paper's label": prefix, "ours A_Df": cells["ours ADf"],
                     "paper A_Df": cells["paper ADf"], "ours A_Dr": cells["ours ADr"],
                     "paper A_Dr": cells["paper ADr"]})
    return pd.DataFrame(rows)


def _averages_vs_paper(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our mean over classes × seeds beside the paper's mean of its per-row means."""
    rows = []
    for method in order_methods(ours["method"]):
        if method not in PAPER_NAMES:
            continue
        prefix = PAPER_NAMES[method]
        mine = ours[ours["method"] == method]
        row = {"method": method, "paper's label": prefix}
        for col, metric, label in ((ACC_F, "ADf", "A_Df"), (ACC_R, "ADr", "A_Dr")):
            mean, std, _ = _stats(mine[col]) if col in mine.columns else (np.nan, np.nan, 0)
            row[f"ours {label}"] = format_mean_std(mean, std) or _MISSING
            ref = paper.get(f"{prefix}_{metric}_mean")
            row[f"paper avg {label}"] = (_MISSING if ref is None or ref.dropna().empty
                                         else f"{ref.mean():.2f}")
        rows.append(row)
    return pd.DataFrame(rows)


def _comparison_section(runs: pd.DataFrame, ref: pd.DataFrame,
                        settings: Mapping[str, Any]) -> list[str]:
    lines = ["## Beside the paper", "",
             "The paper's numbers come from `config/paper/reference.csv` (see "
             "`config/paper/reference.md`). A row is compared only where dataset, architecture "
             "and forget class all match; our methods without a paper column are left out here. "
             "Each row gives our method's key and, beside it, the label the paper's table uses "
             "for it.", ""]
    for dataset, arch in _settings(runs):
        sub = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
        forgets = sorted(int(f) for f in sub["forget"].unique())
        lines += [f"### {dataset} / {arch}", ""]
        matched, unmatched = [], []
        for forget in forgets:
            hit = ref[(ref["dataset_key"] == dataset) & (ref["arch_key"] == arch)
                      & (ref["forget"] == forget)]
            (matched if not hit.empty else unmatched).append((forget, hit))
        for forget, hit in matched:
            paper_row = hit.iloc[0]
            lines += [f"Forget class {forget}: matches the paper's row {paper_row['dataset']} / "
                      f"{paper_row['model']} / class {forget} (accuracy in %, test split; ours "
                      f"mean ± std over seeds, the paper's as printed).", "",
                      to_markdown(_ours_vs_paper_rows(sub[sub["forget"] == forget], paper_row))]
        if not unmatched:
            continue
        classes = ", ".join(str(f) for f, _ in unmatched)
        family = _DATASET_FAMILY.get(dataset)
        family_rows = ref[ref["dataset_key"] == family] if family else ref.iloc[0:0]
        same_arch = family_rows[family_rows["arch_key"] == arch]
        what = []
        if family_rows.empty or family != dataset:
            what.append("dataset")
        if same_arch.empty:
            what.append("architecture")
        if not what:
            what.append("forget class")
        lines += [f"**The setting differs** for forget class(es) {classes}: our {dataset} / "
                  f"{arch} run matches no row of the paper (it differs in: "
                  f"{', '.join(what)}).", ""]
        if family_rows.empty:
            lines += [f"The paper reports nothing on a dataset like `{dataset}`, so there is "
                      "nothing to put beside these numbers.", ""]
            continue
        cmp_rows = same_arch if not same_arch.empty else family_rows
        where = (f"{family} / {arch}" if not same_arch.empty
                 else f"{family}, all its architectures")
        mask = sub["forget"].isin([f for f, _ in unmatched])
        lines += [f"Our averages over forget classes {classes} × seeds beside the paper's "
                  f"average over its {len(cmp_rows)} rows ({where}; mean of the printed "
                  "means):", "", to_markdown(_averages_vs_paper(sub[mask], cmp_rows))]
        paper_archs = ", ".join(sorted(cmp_rows["model"].unique()))
        paper_classes = ", ".join(str(f) for f in sorted(cmp_rows["forget"].unique()))
        n_params = (sub["parameters"].dropna().iloc[0] if "parameters" in sub.columns
                    and sub["parameters"].notna().any() else None)
        pretrain = settings.get("pretrain") or settings.get("pretraining")
        ours_pretrain = (", ".join(f"{k}={v}" for k, v in _flatten(pretrain))
                         if isinstance(pretrain, Mapping) else pretrain)
        lines += ["Differences between the two settings:", "",
                  f"- dataset: ours `{dataset}`: {_describe('dataset', dataset)}; the paper: "
                  f"{_PAPER_DATASETS[family]}.",
                  f"- architecture: ours `{arch}`: {_describe('arch', arch, n_params)}; the "
                  f"paper: {paper_archs}.",
                  f"- pretraining recipe: ours: {ours_pretrain or 'see Settings below'}; the "
                  f"paper: {_PAPER_PRETRAIN}.",
                  f"- forget classes: ours {classes}; the paper: {paper_classes}.", ""]
    return lines


#: The report's ranking rule, in one sentence (method_summary's docstring has the details).
RANKING_RULE = ("Rank: unlearning methods (not the oracle, not the original model) ordered by "
                "their mean Jensen-Shannon divergence to the oracle on forget-test and "
                "retain-test outputs, lowest first, ties broken by the mean absolute accuracy gap "
                "to the oracle.")


def _summary_section(runs: pd.DataFrame, settings: Mapping[str, Any]) -> list[str]:
    summary = method_summary(runs)
    evaluation = settings.get("evaluation")
    alpha = evaluation.get("anamnesis_alpha") if isinstance(evaluation, Mapping) else None
    within = f"within α = {alpha:g} %" if isinstance(alpha, (int, float)) else "within α %"
    lines = ["## Our numbers", ""]
    if summary.empty:
        return lines + ["No runs.", ""]
    main, depth = main_table(summary), depth_table(summary)
    for (dataset, arch), grp in summary.groupby(SETTING, sort=True):
        n_cls, n_seeds = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)][
            ["forget", "seed"]].nunique()
        lines += [f"### {dataset} / {arch} ({n_cls} forget classes × {n_seeds} seeds)", ""]
        facts = []
        for method in ("pbu", "oracle", "original"):
            row = grp[grp["method"] == method]
            if row.empty:
                continue
            row = row.iloc[0]
            df_ = format_mean_std(row.get(f"{ACC_F}_mean"), row.get(f"{ACC_F}_std"))
            dr_ = format_mean_std(row.get(f"{ACC_R}_mean"), row.get(f"{ACC_R}_std"))
            text = f"{method}: A_Df {df_ or _MISSING} %, A_Dr {dr_ or _MISSING} %"
            if method == "pbu" and pd.notna(row["rank"]):
                n_ranked = int(grp["rank"].notna().sum())
                text += f"; rank {int(row['rank'])} of {n_ranked} by distance to the oracle"
            facts.append(f"- {text}.")
        best = grp[grp["rank"] == 1]
        if not best.empty:
            facts.append(f"- Closest to the oracle: {best.iloc[0]['method']}.")
        here = (main["dataset"] == dataset) & (main["arch"] == arch)
        lines += facts + ["", "Main table:", "",
                          to_markdown(main[here].drop(columns=["dataset", "arch"])),
                          "Depth of forgetting:", "",
                          to_markdown(depth[(depth["dataset"] == dataset)
                                            & (depth["arch"] == arch)]
                                      .drop(columns=["dataset", "arch"]))]
    lines += [RANKING_RULE, "",
              "Mean ± std over forget classes × seeds (sample std). A_Df / A_Dr: accuracy (%) on "
              "the forgotten / retained classes, test split. MIA entropy-SVC: the share of the "
              "forget class's training images an entropy attack calls \"member\" when fitted on "
              "retained training images against the test split without the forgotten class; "
              "with Bad Teaching's sets, against the whole test split. time (s): everything the "
              "model needs from θ*, prerequisites included (PBU: its Fisher; the oracle and the "
              "original model: their training, without evaluation); method time: the method "
              "alone. ZRF: 1 − JS divergence to a randomly initialised model on forget-test "
              "(1 = behaves like it); act. dist.: L2 distance between its softmax outputs and "
              "the oracle's; relearn steps: Adam steps on forget-class images until the "
              f"forget-test accuracy is back {within} of the original model's, and AIN "
              "(Anamnesis Index) those steps over the oracle's (about 1 = forgotten as deeply as "
              "retraining; relearned: runs that got there within the step budget, the others "
              "count as the budget + 1, a lower bound); probe AUC: a linear probe on frozen penultimate features telling the "
              "forget class from the rest. `tables/method_summary.*` has every metric, "
              "`README.md` (Metrics) their sources.", ""]
    return lines


def write_report(runs: pd.DataFrame, reference_csv: str | os.PathLike,
                 out_path: str | os.PathLike, *, figures: Sequence[str | os.PathLike],
                 tables: Sequence[str | os.PathLike], settings: Mapping[str, Any]) -> Path:
    """Write ``report.md``: our numbers (summary and ranking), the paper's beside them wherever
    the setting matches (and plainly where it differs), the figures linked relative to the
    report, the table files, what data is missing, and the settings used."""
    out_path = Path(out_path)
    base = out_path.parent
    ref = read_reference(reference_csv)
    gaps = data_gaps(runs)
    lines = ["# PBU replication: results", "",
             "Partially Blinded Unlearning (Panda, Sourav, Prathosh, AAAI 2025), class "
             "unlearning. Everything below is computed from the pipeline's result files.", ""]
    lines += _summary_section(runs, settings)
    lines += _comparison_section(runs, ref, settings)
    lines += ["## Figures", ""]
    pngs = [Path(f) for f in figures if Path(f).suffix == ".png"]
    if not pngs:
        lines += ["No figures were drawn.", ""]
    for png in pngs:
        rel = Path(os.path.relpath(png, base)).as_posix()
        pdf = png.with_suffix(".pdf")
        title = png.stem.replace("_", " ")
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]
        if pdf in {Path(f) for f in figures}:
            lines += [f"[PDF]({Path(os.path.relpath(pdf, base)).as_posix()})", ""]
    lines += ["## Tables", ""]
    lines += [f"- [{Path(t).name}]({Path(os.path.relpath(t, base)).as_posix()})" for t in tables]
    lines += ["", "## Missing data", ""]
    lines += [f"- {g}" for g in gaps] if gaps else ["Nothing expected is missing."]
    lines += ["", "## Settings", ""]
    flat = _flatten(settings)
    lines += [to_markdown(pd.DataFrame(flat, columns=["setting", "value"]))] if flat else [
        "No settings were passed.", ""]
    _atomic_write_text(out_path, "\n".join(lines).rstrip() + "\n")
    log.info("wrote %s", out_path)
    return out_path


def build_all(runs_csv: str | os.PathLike, history_csv: str | os.PathLike | None,
              timings_csv: str | os.PathLike | None, reference_csv: str | os.PathLike,
              out_dir: str | os.PathLike, settings: Mapping[str, Any]) -> dict[str, list[Path]]:
    """Read the result files and write ``out_dir/tables/*``, ``out_dir/figures/*`` and
    ``out_dir/report.md``. Returns ``{"tables": [...], "figures": [...], "report": [path]}``."""
    out = Path(out_dir)
    runs = read_runs(runs_csv)
    history = read_history(history_csv)
    timings = read_timings(timings_csv)
    tables = write_tables(runs, out / "tables")
    figures = write_figures(runs, history, timings, out / "figures")
    report = write_report(runs, reference_csv, out / "report.md", figures=figures,
                          tables=tables, settings=settings)
    return {"tables": tables, "figures": figures, "report": [report]}


__all__ = [
    "RUN_METRICS", "PAPER_NAMES", "FIGURE_NAMES", "order_methods",
    "format_mean_std", "read_runs", "read_history", "read_timings", "data_gaps",
    "dataset_key", "arch_key", "parse_paper_table", "read_reference", "paper_table_long",
    "paper_table", "method_summary", "summary_display", "to_markdown", "to_latex",
    "write_tables", "write_figures", "write_report", "build_all",
]
