"""The figures, drawn with seaborn/matplotlib from the result files alone.

Every figure is 7 in wide (full text width) with fonts of at least 8 pt, saved as PNG (dpi 200)
and PDF. A figure whose data is missing is skipped with a logged warning, never a crash.
matplotlib and seaborn are imported only when a figure is drawn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pbu.report.inputs import pbu_variants, present, setting_pairs
from pbu.report.paired import compare, paired_values
from pbu.report.style import (
    FIG_WIDTH_IN,
    RC,
    legend_below,
    method_colors,
    save_figure,
    with_labels,
)
from pbu.report.vocab import ACC_F, ACC_R, KEYS, MIA_COLUMNS, RUN_METRICS, order_methods

log = logging.getLogger(__name__)

FIGURE_NAMES = [
    "accuracy_per_class",
    "time_per_epoch",
    "pbu_trajectory",
    "mia_vs_oracle",
    "retain_gap_to_oracle",
    "ablation",
]


def _fig_accuracy(runs: pd.DataFrame) -> Any | None:
    """(1) A_Df and A_Dr per method and forget class, error bars = std over seeds."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = [c for c in (ACC_F, ACC_R) if present(runs, c)]
    if not metrics:
        log.warning("figure accuracy_per_class skipped: no %s / %s values", ACC_F, ACC_R)
        return None
    settings = setting_pairs(runs)
    methods = order_methods(runs["method"])
    colors = method_colors(methods)
    fig, axes = plt.subplots(
        len(settings),
        len(metrics),
        squeeze=False,
        layout="constrained",
        figsize=(FIG_WIDTH_IN, 2.3 * len(settings) + 0.7),
    )
    for r, (dataset, arch) in enumerate(settings):
        sub = with_labels(runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)])
        sub = sub.assign(forget_class=sub["forget"].astype(str))
        hue_order = [m for m in methods if m in set(sub["method"])]
        for c, col in enumerate(metrics):
            ax = axes[r, c]
            sns.barplot(
                data=sub,
                x="forget_class",
                y=col,
                hue="label",
                hue_order=hue_order,
                palette=colors,
                errorbar="sd",
                capsize=0.15,
                err_kws={"linewidth": 0.8},
                ax=ax,
            )
            ax.set_xlabel("forget class")
            ax.set_ylabel(f"{RUN_METRICS[col][0]} (%)")
            ax.set_ylim(0, 100)  # an accuracy: the sd bars stop where the scale does
            ax.set_title(f"{dataset} / {arch}: {RUN_METRICS[col][0]}")
    legend_below(fig, axes.flat)
    return fig


def time_per_epoch_frame(runs: pd.DataFrame, timings: pd.DataFrame | None) -> pd.DataFrame:
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
        epochs = (
            df["epochs"].where(df["epochs"] > 0)
            if "epochs" in df.columns
            else pd.Series(np.nan, index=df.index)
        )
        for per_epoch, total in (
            ("total_time_per_epoch_s", "total_time_s"),
            ("time_per_epoch_s", "time_s"),
        ):
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

    data = time_per_epoch_frame(runs, timings)
    data = data[data["time_per_epoch_s"] > 0]
    if data.empty:
        log.warning("figure time_per_epoch skipped: no time_per_epoch_s (or time_s and epochs)")
        return None
    datasets = sorted(data["dataset"].unique())
    methods = order_methods(data["method"])
    colors = method_colors(order_methods(runs["method"]) + methods)
    fig, axes = plt.subplots(
        1, len(datasets), squeeze=False, layout="constrained", figsize=(FIG_WIDTH_IN, 3.0)
    )
    for ax, dataset in zip(axes[0], datasets):
        sub = with_labels(data[data["dataset"] == dataset])
        hue_order = [m for m in methods if m in set(sub["method"])]
        means = sub.groupby(["arch", "method"])["time_per_epoch_s"].mean()
        log_y = bool(means.max() / means.min() > 100)  # more than two decades: log axis
        sns.barplot(
            data=sub,
            x="arch",
            y="time_per_epoch_s",
            hue="label",
            hue_order=hue_order,
            palette=colors,
            errorbar="sd",
            capsize=0.15,
            err_kws={"linewidth": 0.8},
            ax=ax,
        )
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("model")
        ax.set_ylabel("time per epoch (s), prerequisites incl." + (", log" if log_y else ""))
        ax.set_title(dataset)
    legend_below(fig, axes.flat)
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
    acc_cols = {
        c: n
        for c, n in (
            ("acc_forget_test", "forget (test)"),
            ("acc_retain_test", "retain (test)"),
            ("acc_forget_batch", "forget (batch)"),
        )
        if present(hist, c)
    }
    loss_cols = {
        c: n
        for c, n in (
            ("term_forget", "|α·(−CE)| forget"),
            ("term_fisher", "β·Fisher"),
            ("term_l2", "γ·l2"),
        )
        if present(hist, c)
    }
    panels = [p for p, cols in (("acc", acc_cols), ("loss", loss_cols)) if cols]
    for p, cols in (("accuracy", acc_cols), ("loss-term", loss_cols)):
        if not cols:
            log.warning("pbu_trajectory: %s panel skipped (no columns with values)", p)
    if not panels:
        return None
    settings = setting_pairs(hist)
    fig, axes = plt.subplots(
        len(settings),
        len(panels),
        squeeze=False,
        layout="constrained",
        figsize=(FIG_WIDTH_IN, 2.4 * len(settings) + 0.6),
    )
    for r, (dataset, arch) in enumerate(settings):
        sub = hist[(hist["dataset"] == dataset) & (hist["arch"] == arch)]
        stops = (
            sub.loc[sub["stopped"] == 1, "step"].to_numpy()
            if "stopped" in sub.columns
            else np.array([])
        )
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            cols = acc_cols if panel == "acc" else loss_cols
            long = sub.melt(
                id_vars=["seed", "forget", "step"],
                value_vars=list(cols),
                var_name="quantity",
                value_name="value",
            ).dropna(subset=["value"])
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
            sns.lineplot(
                data=long,
                x="step",
                y="value",
                hue="quantity",
                hue_order=[n for n in cols.values() if n in set(long["quantity"])],
                errorbar="sd",
                estimator="mean",
                linewidth=1.0,
                ax=ax,
            )
            for i, s in enumerate(sorted(set(stops.tolist()))):
                ax.axvline(
                    s,
                    color="black",
                    linestyle=":",
                    linewidth=0.9,
                    alpha=0.7,
                    label="stopping rule fired" if i == 0 else None,
                )
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

    variants = [c for c in MIA_COLUMNS if present(runs, c)]
    if not variants:
        log.warning("figure mia_vs_oracle skipped: no MIA column has values")
        return None
    settings = setting_pairs(runs)
    methods = order_methods(runs["method"])
    colors = method_colors(methods)
    n_bars = max(1, len([m for m in methods if m != "oracle"]))
    oracle_line = None
    fig, axes = plt.subplots(
        len(settings),
        len(variants),
        squeeze=False,
        layout="constrained",
        sharey="row",
        figsize=(FIG_WIDTH_IN, len(settings) * (0.22 * n_bars + 0.8) + 0.3),
    )
    for r, (dataset, arch) in enumerate(settings):
        sub = with_labels(runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)])
        bars = sub[sub["method"] != "oracle"]
        order = [m for m in methods if m != "oracle"]
        for c, col in enumerate(variants):
            ax = axes[r, c]
            sns.barplot(
                data=bars,
                y="label",
                x=col,
                order=order,
                hue="label",
                hue_order=order,
                palette=colors,
                errorbar="sd",
                capsize=0.2,
                err_kws={"linewidth": 0.8},
                legend=False,
                ax=ax,
            )
            oracle_vals = sub.loc[sub["method"] == "oracle", col].dropna()
            if oracle_vals.empty:
                log.warning("mia_vs_oracle: no oracle value for %s on %s/%s", col, dataset, arch)
            else:
                oracle_line = ax.axvline(
                    oracle_vals.mean(), color="black", linestyle="--", linewidth=1.0
                )
            ax.set_xlabel(RUN_METRICS[col][0].replace(" (", "\n("))  # narrow panels
            ax.set_ylabel("" if c else f"{dataset} / {arch}")
    if oracle_line is not None:
        fig.legend(
            [oracle_line],
            ["oracle (retrained without the class), mean over runs"],
            loc="outside lower center",
            frameon=False,
        )
    return fig


def _fig_retain_gap(runs: pd.DataFrame) -> Any | None:
    """(5) A_Dr(method) − A_Dr(oracle) in percentage points, per method and forget class."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not present(runs, ACC_R):
        log.warning("figure retain_gap_to_oracle skipped: no %s values", ACC_R)
        return None
    mean = runs.groupby(["dataset", "arch", "forget", "method"])[ACC_R].mean().reset_index()
    oracle = mean[mean["method"] == "oracle"].rename(columns={ACC_R: "oracle"})
    if oracle["oracle"].dropna().empty:
        log.warning("figure retain_gap_to_oracle skipped: no oracle %s", ACC_R)
        return None
    gap = mean[mean["method"] != "oracle"].merge(
        oracle[["dataset", "arch", "forget", "oracle"]], on=["dataset", "arch", "forget"]
    )
    gap["gap"] = gap[ACC_R] - gap["oracle"]
    gap = gap.dropna(subset=["gap"])
    if gap.empty:
        log.warning("figure retain_gap_to_oracle skipped: no method shares a class with the oracle")
        return None
    settings = setting_pairs(gap)
    lim = float(max(gap["gap"].abs().max(), 0.5))
    heights = [
        0.25 * gap[(gap["dataset"] == d) & (gap["arch"] == a)]["method"].nunique() + 0.9
        for d, a in settings
    ]
    fig, axes = plt.subplots(
        len(settings),
        1,
        squeeze=False,
        layout="constrained",
        figsize=(FIG_WIDTH_IN, sum(heights) + 0.3),
        gridspec_kw={"height_ratios": heights},
    )
    for ax, (dataset, arch) in zip(axes[:, 0], settings):
        sub = gap[(gap["dataset"] == dataset) & (gap["arch"] == arch)]
        grid = sub.pivot(index="method", columns="forget", values="gap")
        grid = grid.loc[[m for m in order_methods(grid.index)]]
        sns.heatmap(
            grid,
            annot=True,
            fmt=".2f",
            cmap="vlag_r",
            center=0,
            vmin=-lim,
            vmax=lim,
            annot_kws={"fontsize": 8},
            cbar_kws={"label": "A_Dr − oracle A_Dr (pp)"},
            linewidths=0.5,
            ax=ax,
        )
        ax.set_xlabel("forget class")
        ax.set_ylabel("")
        ax.set_title(f"{dataset} / {arch}: retain-accuracy gap to the oracle")
    return fig


def ablation_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting and PBU variant: the paired A_Dr difference variant − PBU over the
    (forget class, seed) pairs, the seed the unit (``mean_diff`` over seeds, hierarchical
    bootstrap ``ci_low`` / ``ci_high``, two-sided sign-flip ``p_value`` on the per-seed means,
    ``n_seeds``, ``n_pairs``), one row each; empty without variants."""
    rows = []
    if not present(runs, ACC_R):
        return pd.DataFrame()
    for dataset, arch in setting_pairs(runs):
        sub = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
        if "pbu" not in set(sub["method"]):
            continue
        for variant in pbu_variants(sub):
            stat = compare(sub, variant, "pbu", ACC_R, alternative="two-sided")
            if stat.n_pairs:
                rows.append({"dataset": dataset, "arch": arch, **stat.as_dict()})
    return pd.DataFrame(rows)


def _fig_ablation(runs: pd.DataFrame) -> Any | None:
    """(6) PBU's ablation: per variant, the paired A_Dr difference to PBU (variant − PBU, in
    points) over (forget class, seed) pairs: each pair (dots), the mean over seeds and its
    hierarchical bootstrap 95 % CI (bar), n_seeds, n_pairs and the sign-flip p on the per-seed
    means; one panel per setting."""
    import matplotlib.pyplot as plt

    table = ablation_frame(runs)
    if table.empty:
        log.warning("figure ablation skipped: no PBU variant shares a pair with pbu")
        return None
    settings = setting_pairs(table)
    heights = [
        0.35 * int(((table["dataset"] == d) & (table["arch"] == a)).sum()) + 0.9
        for d, a in settings
    ]
    fig, axes = plt.subplots(
        len(settings),
        1,
        squeeze=False,
        layout="constrained",
        figsize=(FIG_WIDTH_IN, sum(heights) + 0.5),
        gridspec_kw={"height_ratios": heights},
    )
    for ax, (dataset, arch) in zip(axes[:, 0], settings):
        here = table[(table["dataset"] == dataset) & (table["arch"] == arch)]
        sub = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
        variants = list(here["a"])
        # n_seeds and n_pairs: in the title when every row shares them, else on each row
        units = {(r.n_seeds, r.n_pairs) for r in here.itertuples()}
        shared = next(iter(units)) if len(units) == 1 else None
        for y, row in enumerate(here.itertuples()):
            pairs = paired_values(sub, row.a, "pbu", ACC_R)
            jitter = np.linspace(-0.15, 0.15, len(pairs)) if len(pairs) > 1 else [0.0]
            ax.scatter(pairs["diff"], y + np.asarray(jitter), s=10, color="0.6", zorder=2)
            if not np.isnan(row.ci_low):
                ax.errorbar(
                    row.mean_diff,
                    y,
                    xerr=[[row.mean_diff - row.ci_low], [row.ci_high - row.mean_diff]],
                    fmt="o",
                    color="C0",
                    capsize=3,
                    zorder=3,
                )
            else:
                ax.plot(row.mean_diff, y, "o", color="C0", zorder=3)
            p = "–" if np.isnan(row.p_value) else f"{row.p_value:.2g}"
            ax.annotate(
                f"p = {p}" if shared else f"p = {p}\n{row.n_seeds} seeds, {row.n_pairs} pairs",
                xy=(1.0, y),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_yticks(range(len(variants)), variants)
        ax.set_ylim(len(variants) - 0.5, -0.5)
        ax.set_xlabel(
            "A_Dr of the variant − A_Dr of PBU (points): mean over seeds, hierarchical bootstrap "
            "95 % CI,\ndots: pairs; p: exact sign-flip test on the per-seed means, two-sided"
        )
        units_text = f" (n_seeds = {shared[0]}, n_pairs = {shared[1]})" if shared else ""
        ax.set_title(f"{dataset} / {arch}: PBU's ablation{units_text}")
    return fig


def write_figures(
    runs: pd.DataFrame,
    history: pd.DataFrame | None,
    timings: pd.DataFrame | None,
    out_dir: str | os.PathLike,
) -> list[Path]:
    """Draw the figures as ``<name>.png`` (dpi 200) and ``<name>.pdf`` in ``out_dir``, 7 in
    wide with fonts of at least 8 pt; names from :data:`FIGURE_NAMES`. A figure whose data is
    missing (the ablation without PBU variants) is skipped with a logged warning."""
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
        "ablation": lambda: _fig_ablation(runs),
    }
    paths: list[Path] = []
    with sns.axes_style("whitegrid"), plt.rc_context(RC):
        for name, build in builders.items():
            fig = build()
            if fig is not None:
                paths += save_figure(fig, out, name)
    log.info("wrote %d figure files to %s", len(paths), out)
    return paths
