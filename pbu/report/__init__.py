"""Tables, figures and the Markdown report, computed from the pipeline's result files only.

Inputs (written by the aggregate step; read with :func:`read_runs`, :func:`read_history`,
:func:`read_timings`):

- ``runs.csv``: one row per (dataset, arch, seed, forget, method) with the metric columns listed
  in :data:`RUN_METRICS` (accuracies in %, MIA as fractions, times in seconds). Any metric column
  may be absent or NaN; what is missing is logged and listed in the report, never a crash.
- ``history.csv``: the per-step trajectory of iterative methods (PBU first).
- ``timings.csv`` (optional): measured method / oracle / pretrain times per epoch.

Conventions used everywhere below:

- "mean ± std" uses the sample standard deviation (``ddof=1``), the spread one would report for
  a handful of seeds. With a single value the std is undefined and only the mean is printed.
- Methods are shown under our keys everywhere (``original`` is the model before unlearning,
  ``oracle`` the model retrained without the class); the paper's labels ("init", "retrain",
  "fastEffective", "badTeaching", ...) appear only in the report's "beside the paper" tables,
  next to ours. Method order: ``original``, ``oracle``, ``finetune``, ``pbu``,
  then every other method alphabetically.
- Nothing here queries MLflow or recomputes a metric from a model: numbers come from the files.

One module per concern, imported in this order (each imports only those above it):

- :mod:`~pbu.report.vocab`: column names, labels, number formats, method order;
- :mod:`~pbu.report.inputs`: reading the result files, what is missing from them;
- :mod:`~pbu.report.render`: atomic files; Markdown and LaTeX through pandas' writers;
- :mod:`~pbu.report.stats`: per-method statistics, distances to the oracle, the ranking;
- :mod:`~pbu.report.paired`: paired differences over (forget class, seed) pairs with the seed
  as the unit: a hierarchical bootstrap CI, an exact sign-flip test, the TOST;
- :mod:`~pbu.report.verdicts`: how a comparison, or a claim's comparisons, become a verdict;
- :mod:`~pbu.report.forget_score`: attack validity and the per-example forget score (its
  table, figure and section; C4 rests on them);
- :mod:`~pbu.report.claims`: the paper's claims C1–C7, a verdict each per setting;
- :mod:`~pbu.report.tables`: the tables, :func:`write_tables` and the claims' tables
  (:func:`write_claims`);
- :mod:`~pbu.report.style`: how every figure looks (size, fonts, colours, saving);
- :mod:`~pbu.report.figures`: the figures and :func:`write_figures`;
- :mod:`~pbu.report.paper`: the paper's reported numbers (``config/paper/reference.csv``) and
  the "Beside the paper" section;
- :mod:`~pbu.report.markdown`: ``report.md``, one function per section, :func:`write_report`.

This package re-exports the public names and holds :func:`build_all`, the entry point of
``pbu report``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pbu.report.claims import RULES, evaluate_claims
from pbu.report.figures import FIGURE_NAMES, write_figures
from pbu.report.forget_score import read_forget_score, write_forget_score
from pbu.report.inputs import data_gaps, read_history, read_runs, read_timings
from pbu.report.markdown import write_report
from pbu.report.paired import Paired, compare, equivalence
from pbu.report.paper import PAPER_NAMES, arch_key, dataset_key, parse_paper_table, read_reference
from pbu.report.render import to_latex, to_markdown
from pbu.report.stats import RANKING_RULE, method_summary
from pbu.report.style import DPI, FIG_WIDTH_IN
from pbu.report.tables import (
    TABLE_NAMES,
    depth_table,
    main_table,
    paper_table,
    paper_table_long,
    summary_display,
    write_claims,
    write_tables,
)
from pbu.report.vocab import RUN_METRICS, format_mean_std, order_methods


def build_all(
    runs_csv: str | os.PathLike,
    history_csv: str | os.PathLike | None,
    timings_csv: str | os.PathLike | None,
    reference_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: Mapping[str, Any],
) -> dict[str, list[Path]]:
    """Read the result files and write ``out_dir/tables/*`` (the claims' verdicts among them),
    ``out_dir/figures/*`` and ``out_dir/report.md``. Returns ``{"tables": [...], "figures":
    [...], "report": [path]}``."""
    out = Path(out_dir)
    runs = read_runs(runs_csv)
    history = read_history(history_csv)
    timings = read_timings(timings_csv)
    # the forget-score stage's tables beside runs.csv, when the run's settings turn it on
    forget_score = read_forget_score(Path(runs_csv).parent, settings)
    claims = evaluate_claims(runs, settings, forget_score)
    tables = write_tables(runs, out / "tables") + write_claims(claims, out / "tables", runs)
    figures = write_figures(runs, history, timings, out / "figures")
    fs_tables, fs_figures = write_forget_score(forget_score, out / "tables", out / "figures")
    tables, figures = tables + fs_tables, figures + fs_figures
    report = write_report(
        runs,
        reference_csv,
        out / "report.md",
        figures=figures,
        tables=tables,
        settings=settings,
        claims=claims,
        forget_score=forget_score,
    )
    return {"tables": tables, "figures": figures, "report": [report]}


__all__ = [
    "DPI",
    "FIGURE_NAMES",
    "FIG_WIDTH_IN",
    "PAPER_NAMES",
    "Paired",
    "RANKING_RULE",
    "RULES",
    "RUN_METRICS",
    "TABLE_NAMES",
    "arch_key",
    "build_all",
    "compare",
    "data_gaps",
    "dataset_key",
    "depth_table",
    "equivalence",
    "evaluate_claims",
    "format_mean_std",
    "main_table",
    "method_summary",
    "order_methods",
    "paper_table",
    "paper_table_long",
    "parse_paper_table",
    "read_history",
    "read_reference",
    "read_runs",
    "read_timings",
    "summary_display",
    "to_latex",
    "to_markdown",
    "write_claims",
    "write_figures",
    "write_report",
    "write_tables",
]
