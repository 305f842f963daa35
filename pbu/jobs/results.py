"""The jobs that read result files: the aggregated tables, the MLflow mirror, the report.

Torch-free: these run on the submitting node after every compute job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pbu.errors import UsageError

PathLike = str | os.PathLike


def aggregate(
    out_dir: PathLike, *, results: PathLike | None = None, metrics_files: Sequence[PathLike] = ()
) -> dict[str, Path]:
    """Collect ``metrics_files`` (default: every metrics.json under ``results``) with their jobs'
    records into ``out_dir``/runs.csv, history.csv and timings.csv; returns their paths."""
    from pbu.aggregate import aggregate as collect

    return collect(results, out_dir, [str(f) for f in metrics_files] or None)


def track(
    *,
    tracking_uri: str,
    experiment: str,
    out: PathLike,
    results: PathLike | None = None,
    metrics_files: Sequence[PathLike] = (),
    report_paths: Sequence[PathLike] = (),
    forget_score: PathLike | None = None,
    tune_records: Sequence[PathLike] = (),
) -> dict[str, Any]:
    """Mirror every job's result files into MLflow (idempotent: a re-run updates, never
    duplicates), plus ``report_paths`` as artifacts of the ``report`` run, ``tune_records``
    (development-class tuning records) with their trials, and with ``forget_score`` (the folder
    of the forget-score tables) each model's per-image summary. Writes the summary ``out``
    (returned). An unreachable or unusable tracking server is a :class:`UsageError`."""
    from pbu.tracking import TrackingError, track_results

    try:
        return track_results(
            results,
            tracking_uri=tracking_uri,
            experiment=experiment,
            out=out,
            report_paths=[str(p) for p in report_paths],
            metrics_files=[str(f) for f in metrics_files] or None,
            forget_score=forget_score,
            tune_records=[str(r) for r in tune_records] or None,
        )
    except TrackingError as err:
        raise UsageError(str(err)) from None


def report(
    aggregate_dir: PathLike,
    *,
    reference: PathLike,
    out_dir: PathLike,
    settings: Mapping[str, Any] | PathLike | None = None,
) -> dict[str, list[Path]]:
    """Tables, figures and report.md in ``out_dir`` from the aggregated tables in
    ``aggregate_dir`` (timings.csv when present) and the paper's numbers ``reference``.
    ``settings`` (a mapping, or a JSON file) are listed in the report."""
    from pbu.report import build_all

    if settings is None:
        settings = {}
    elif not isinstance(settings, Mapping):
        try:
            settings = json.loads(Path(settings).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(
                f"settings (--settings) {settings}: not a JSON file ({type(err).__name__}: {err})"
            ) from None
        if not isinstance(settings, dict):
            raise UsageError("settings (--settings): the JSON file must hold an object")
    agg = Path(aggregate_dir)
    timings = agg / "timings.csv"
    return build_all(
        agg / "runs.csv",
        agg / "history.csv",
        timings if timings.exists() else None,
        reference,
        out_dir,
        settings,
    )
