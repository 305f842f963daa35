"""The Markdown report, ``report.md``: our numbers (summary and ranking), a verdict for each of
the paper's claims, the paper's numbers beside ours, the figures and table files linked relative
to the report, what data is missing, and the settings used.

The report is a list of sections, each a function returning Markdown lines; a new section is one
more function and one more entry in :func:`write_report`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pbu.report.claims import RULES, Claim, evaluate_claims, fisher_margin, matched_threshold
from pbu.report.forget_score import section as forget_score_section
from pbu.report.inputs import data_gaps
from pbu.report.paper import comparison_section, read_reference
from pbu.report.render import flatten_settings, to_markdown, write_text
from pbu.report.stats import RANKING_RULE, method_summary
from pbu.report.tables import comparisons_table, depth_table, main_table, tradeoff_table
from pbu.report.verdicts import _label
from pbu.report.vocab import ACC_F, ACC_R, MISSING, SETTING, format_mean_std

log = logging.getLogger(__name__)


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
            ["forget", "seed"]
        ].nunique()
        lines += [f"### {dataset} / {arch} ({n_cls} forget classes × {n_seeds} seeds)", ""]
        facts = []
        for method in ("pbu", "oracle", "original"):
            row = grp[grp["method"] == method]
            if row.empty:
                continue
            row = row.iloc[0]
            df_ = format_mean_std(row.get(f"{ACC_F}_mean"), row.get(f"{ACC_F}_std"))
            dr_ = format_mean_std(row.get(f"{ACC_R}_mean"), row.get(f"{ACC_R}_std"))
            text = f"{method}: A_Df {df_ or MISSING} %, A_Dr {dr_ or MISSING} %"
            if method == "pbu" and pd.notna(row["rank"]):
                n_ranked = int(grp["rank"].notna().sum())
                text += f"; rank {int(row['rank'])} of {n_ranked} by distance to the oracle"
            facts.append(f"- {text}.")
        best = grp[grp["rank"] == 1]
        if not best.empty:
            facts.append(f"- Closest to the oracle: {best.iloc[0]['method']}.")
        here = (main["dataset"] == dataset) & (main["arch"] == arch)
        lines += facts + [
            "",
            "Main table:",
            "",
            to_markdown(main[here].drop(columns=["dataset", "arch"])),
            "Depth of forgetting:",
            "",
            to_markdown(
                depth[(depth["dataset"] == dataset) & (depth["arch"] == arch)].drop(
                    columns=["dataset", "arch"]
                )
            ),
        ]
    lines += [
        RANKING_RULE,
        "",
        (
            "Mean ± std over forget classes × seeds (sample std). protocol: what chose the "
            "row's hyperparameters (dev_class: the frozen choice of the development-class run, "
            "every method tuned alike on a class the report never shows; blind: tuned on data "
            "the method may see; validation: tuned on the experimenter's held-out split of the "
            "training set; config: the config file's values, untuned; see docs/tuning.md). "
            "A_Df / A_Dr: accuracy (%) on "
            "the forgotten / retained classes, test split. MIA entropy-SVC: the share of the "
            'forget class\'s training images an entropy attack calls "member" when fitted on '
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
            "count as the budget + 1, a lower bound); probe AUC: a linear probe on frozen "
            "penultimate features telling the forget class from the rest. "
            "`tables/method_summary.*` has every metric, "
            "`docs/metrics.md` their sources."
        ),
        "",
    ]
    return lines


def claims_section(claims: Sequence[Claim], settings: Mapping[str, Any] | None = None) -> list[str]:
    """The report's "Claims" section: the rules, then per setting a verdict line per claim
    (naming the setting, with n_seeds and n_pairs), C1's trade-off and the table of its paired
    comparisons."""
    threshold, source = matched_threshold(settings)
    lines = ["## Claims", ""]
    lines += [
        "Each of the paper's claims gets a verdict per setting, computed from the runs "
        f"(`pbu/report/claims.py`). A verdict is about the setting that ran, not about the "
        f"paper's own settings. Matched forgetting threshold: {threshold:g} % ({source}); C5's "
        f"equivalence margin: ±{fisher_margin(settings):g} A_Dr points (claims.fisher_margin).",
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
        n_seeds = max(c.units[0] for c in here)
        n_pairs = max(c.units[1] for c in here)
        head = f"### {dataset} / {arch} (n_seeds = {n_seeds}, n_pairs = {n_pairs}"
        if here[0].protocol:
            head += f"; PBU's hyperparameters: {here[0].protocol} protocol"
        lines += [head + ")", ""]
        for c in here:
            s, n = c.units
            line = f"- **{c.claim}** {c.statement}: **{c.verdict} on {c.setting}**"
            line += f" ({c.reason})" if c.reason else ""
            line += f" [n_seeds = {s}, n_pairs = {n}]."
            if c.summary:
                line += f" {c.summary}."
            lines.append(line)
        c1 = next((c for c in here if c.claim == "C1"), None)
        trade = tradeoff_table(c1) if c1 is not None else pd.DataFrame()
        if not trade.empty:
            lines += ["", "C1's trade-off: PBU's test accuracies at each stop threshold run:", ""]
            lines.append(to_markdown(trade))
        table = comparisons_table(here)
        if not table.empty and "mean_diff" in table.columns:
            # C1's trade-off rows are in the table above (a one-sample "≠ 0" test is no claim)
            table = table[~(table["claim"].eq("C1") & table["verdict"].eq("(context)"))]
            shown = table.dropna(subset=["mean_diff"])[
                ["claim", "part", "a", "b", "metric", "n_seeds", "n_pairs", "mean_diff"]
                + ["ci_low", "ci_high", "alternative", "shift", "p_value", "verdict"]
            ]
            shown = shown.assign(metric=shown["metric"].map(_label))
            lines += [
                "",
                "Paired comparisons (d = a − b; mean over seeds, the seed the unit):",
                "",
            ]
            lines.append(to_markdown(shown))
        lines.append("")
    return lines


def _figures_section(figures: Sequence[str | os.PathLike], base: Path) -> list[str]:
    """Each PNG inline (linked relative to the report), its PDF linked below it."""
    lines = ["## Figures", ""]
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
    return lines


def _tables_section(tables: Sequence[str | os.PathLike], base: Path) -> list[str]:
    lines = ["## Tables", ""]
    lines += [f"- [{Path(t).name}]({Path(os.path.relpath(t, base)).as_posix()})" for t in tables]
    return [*lines, ""]


def _missing_section(gaps: Sequence[str]) -> list[str]:
    lines = ["## Missing data", ""]
    lines += [f"- {g}" for g in gaps] if gaps else ["Nothing expected is missing."]
    return [*lines, ""]


def _settings_section(settings: Mapping[str, Any]) -> list[str]:
    flat = flatten_settings(settings)
    if not flat:
        return ["## Settings", "", "No settings were passed.", ""]
    return ["## Settings", "", to_markdown(pd.DataFrame(flat, columns=["setting", "value"]))]


def write_report(
    runs: pd.DataFrame,
    reference_csv: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    figures: Sequence[str | os.PathLike],
    tables: Sequence[str | os.PathLike],
    settings: Mapping[str, Any],
    claims: Sequence[Claim] | None = None,
    forget_score: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> Path:
    """Write ``report.md``: our numbers (summary and ranking), the claims' verdicts (``claims``,
    computed from ``runs`` when not given), the paper's numbers beside ours wherever
    the setting matches (and plainly where it differs), the figures linked relative to the
    report, the table files, what data is missing, and the settings used."""
    out_path = Path(out_path)
    base = out_path.parent
    ref = read_reference(reference_csv)
    gaps = data_gaps(runs)
    lines = [
        "# PBU replication: results",
        "",
        (
            "Partially Blinded Unlearning (Panda, Sourav, Prathosh, AAAI 2025), class "
            "unlearning. Everything below is computed from the pipeline's result files."
        ),
        "",
    ]
    lines += _summary_section(runs, settings)
    lines += forget_score_section(runs, forget_score, base, tables)
    lines += claims_section(evaluate_claims(runs, settings) if claims is None else claims, settings)
    lines += comparison_section(runs, ref, settings)
    lines += _figures_section(figures, base)
    lines += _tables_section(tables, base)
    lines += _missing_section(gaps)
    lines += _settings_section(settings)
    write_text(out_path, "\n".join(lines).rstrip() + "\n")
    log.info("wrote %s", out_path)
    return out_path
