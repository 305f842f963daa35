"""Is the class gone? The report's answer: each membership attack's validity, and the per-example
forget score against retraining with its ceiling and floor (docs/forget-score.md).

- :func:`at_chance`: the rule for an attack that cannot tell members from non-members;
  :func:`validity_table` shows every attack's held-out balanced accuracy and AUC per setting;
  :func:`attack_check` is what C4 asks before it rests on an attack.
- :func:`read_forget_score` reads the forget-score stage's tables (``aggregate/``),
  :func:`forget_score_table` shows them, :func:`write_forget_score` writes
  ``tables/forget_score.{csv,md}`` and the figure ``figures/forget_score.{png,pdf}``.
- :func:`c4_on_forget_score`: C4 decided on the forget score, PBU against the ceiling.
- :func:`section`: the report's section, which says where the score comes from when a run
  has none (config/forgetting.yaml).

Torch-free: it reads the CSV files only.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pbu.report.render import to_markdown, write_file, write_text
from pbu.report.verdicts import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE
from pbu.report.vocab import order_methods

log = logging.getLogger(__name__)

#: Below this held-out balanced accuracy, or with its 95 % CI reaching 0.5, an attack is "at
#: chance": it cannot tell members from non-members it was not fitted on (docs/metrics.md).
AT_CHANCE_BACC = 0.55
Z95 = 1.959963984540054
#: Each attack of runs.csv and the prefix of its validity columns (``<prefix>_valid_bacc``, ...).
ATTACKS = {
    "mia_entropy_svc": "mia_entropy_svc",
    "mia_entropy_svc_bad_teaching": "mia_entropy_svc_bad_teaching",
    "mia_efficacy_salun": "mia_efficacy_salun",
    "mia_loss_acc": "mia_loss",
}
#: C4 on the forget score: PBU's score may fall this far below the ceiling's (score units, the
#: same 0.05 as C4's MIA tolerance).
C4_SCORE_TOLERANCE = 0.05
CEILING, FLOOR = "ceiling", "floor"
FORGETTING_CONFIG = "config/forgetting.yaml"


# ------------------------------------------------------------------------------ attack validity


def at_chance(bacc: float, se: float) -> bool:
    """``bacc`` below :data:`AT_CHANCE_BACC`, or its 95 % CI (``bacc ± 1.96 se``) reaching 0.5.
    Unknown (NaN) counts as at chance."""
    if not (np.isfinite(bacc) and np.isfinite(se)):
        return True
    return bool(bacc < AT_CHANCE_BACC or bacc - Z95 * se <= 0.5)


def pooled_validity(rows: pd.DataFrame, prefix: str) -> dict[str, float] | None:
    """An attack's validity over several runs: the mean held-out balanced accuracy, its
    standard error (the runs' own, combined: sqrt(sum se²) / n), its 95 % CI, the mean AUC and
    the number of runs; None when the runs have no validity columns."""
    cols = [f"{prefix}_valid_{k}" for k in ("bacc", "bacc_se", "auc")]
    if any(c not in rows.columns for c in cols):
        return None
    v = rows[cols].dropna()
    if v.empty:
        return None
    n = len(v)
    bacc = float(v[cols[0]].mean())
    se = float(np.sqrt((v[cols[1]] ** 2).sum()) / n)
    return {
        "bacc": bacc,
        "bacc_se": se,
        "ci_low": bacc - Z95 * se,
        "ci_high": bacc + Z95 * se,
        "auc": float(v[cols[2]].mean()),
        "n": n,
        "at_chance": at_chance(bacc, se),
    }


def describe_validity(v: Mapping[str, float], what: str) -> str:
    """``"held-out balanced accuracy 0.500 (95 % CI 0.498 to 0.502), AUC 0.51, 18 runs"``."""
    return (
        f"{what}: held-out balanced accuracy {v['bacc']:.3f} (95 % CI {v['ci_low']:.3f} to "
        f"{v['ci_high']:.3f}), AUC {v['auc']:.2f}, {int(v['n'])} runs"
    )


def attack_check(runs: pd.DataFrame, metric: str, methods: Sequence[str]) -> tuple[bool, str]:
    """Whether a claim may rest on ``metric``'s attack for ``methods``' runs: ``(at_chance,
    text)``. Runs without validity columns (results of an older version) pass, saying so."""
    v = pooled_validity(runs[runs["method"].isin(methods)], ATTACKS[metric])
    if v is None:
        return False, "the attack's validity was not measured in these runs"
    return bool(v["at_chance"]), describe_validity(v, f"the attack ({', '.join(methods)})")


def validity_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting and attack: its mean value over every model's runs and its validity pooled
    over them; empty when runs.csv has no validity columns."""
    rows = []
    for (dataset, arch), grp in runs.groupby(["dataset", "arch"], sort=True):
        for metric, prefix in ATTACKS.items():
            v = pooled_validity(grp, prefix)
            if v is None:
                continue
            rows.append(
                {
                    "dataset": dataset,
                    "arch": arch,
                    "attack": metric,
                    "value (mean)": grp[metric].mean() if metric in grp else math.nan,
                    "held-out balanced accuracy": v["bacc"],
                    "95 % CI": f"{v['ci_low']:.3f} to {v['ci_high']:.3f}",
                    "held-out AUC": v["auc"],
                    "runs": v["n"],
                    "at chance": "yes" if v["at_chance"] else "no",
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ the forget score


def read_forget_score(
    aggregate_dir: str | os.PathLike, settings: Mapping[str, Any] | None
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The forget-score table and its per-image rows from ``aggregate_dir`` when the run's
    settings turn the score on (``evaluation.forget_score.enabled``), else None (a table left
    from another run is never read)."""
    evaluation = (settings or {}).get("evaluation") or {}
    if not (evaluation.get("forget_score") or {}).get("enabled"):
        return None
    folder = Path(aggregate_dir)
    table, images = folder / "forget_score.csv", folder / "forget_score_images.csv"
    if not table.is_file():
        log.warning("the forget score is on but %s is missing", table)
        return None
    per_image = pd.read_csv(images) if images.is_file() else pd.DataFrame()
    return pd.read_csv(table, dtype={"forget": str}), per_image


def _order(methods: Sequence[str]) -> list[str]:
    rest = [m for m in order_methods(methods) if m not in (CEILING, FLOOR)]
    return [m for m in (CEILING, FLOOR) if m in methods] + rest


def forget_score_table(table: pd.DataFrame) -> pd.DataFrame:
    """The pooled rows (every forget class) per setting: the calibration rows first, then each
    method; the score with its 95 % CI over images, the utility-weighted score, the median ε,
    the shares of images at the cap and peaky, the standardised offset and its direction."""
    pooled = table[table["forget"] == "all"]
    if pooled.empty:  # a single forget class: its own rows
        pooled = table
    out = []
    for (dataset, arch), grp in pooled.groupby(["dataset", "arch"], sort=True):
        by = {r["method"]: r for _, r in grp.iterrows()}
        for m in _order(list(by)):
            r = by[m]
            out.append(
                {
                    "dataset": dataset,
                    "arch": arch,
                    "method": m,
                    "N": int(r["n_models"]),
                    "forget score": f"{r['score']:.3f}",
                    "95 % CI (images)": f"{r['score_ci_low']:.3f} to {r['score_ci_high']:.3f}",
                    "× A_Dr / oracle's": f"{r['utility_score']:.3f}",
                    "median ε": f"{r['eps_median']:.2f}",
                    "ε at cap": f"{100 * r['eps_cap_share']:.0f} %",
                    "peaky": f"{100 * r['peaky_share']:.0f} %",
                    "offset (oracle sd)": f"{r['offset_sd_signed_median']:+.1f}",
                    "direction": r["direction"],
                }
            )
    return pd.DataFrame(out)


def _fig_forget_score(table: pd.DataFrame, images: pd.DataFrame) -> Any | None:
    """Left: each method's forget score with its 95 % CI over images, the ceiling and the floor
    as lines. Right: per image, the standardised offset of the method's median confidence from
    the oracles' (box per method): the graded companion, which ranks methods that all score 0."""
    import matplotlib
    import matplotlib.pyplot as plt

    from pbu.report.style import FIG_WIDTH_IN

    pooled = table[table["forget"] == "all"]
    if pooled.empty:
        pooled = table
    settings = pooled[["dataset", "arch"]].drop_duplicates().to_numpy()
    if not len(settings):
        return None
    fig, axes = plt.subplots(
        len(settings), 2, figsize=(FIG_WIDTH_IN, 0.25 * FIG_WIDTH_IN + 0.18 * len(pooled)),
        squeeze=False, gridspec_kw={"width_ratios": [1, 1.3]},
    )  # fmt: skip
    for row, (dataset, arch) in enumerate(settings):
        here = pooled[(pooled["dataset"] == dataset) & (pooled["arch"] == arch)]
        methods = [m for m in _order(list(here["method"])) if m not in (CEILING, FLOOR)]
        by = here.set_index("method")
        ax = axes[row][0]
        y = np.arange(len(methods))
        score = by.loc[methods, "score"].to_numpy()
        err = np.vstack(
            [
                score - by.loc[methods, "score_ci_low"].to_numpy(),
                by.loc[methods, "score_ci_high"].to_numpy() - score,
            ]
        )
        ax.barh(y, score, xerr=np.clip(err, 0, None), color="0.55", capsize=2)
        for name, style in ((CEILING, "--"), (FLOOR, ":")):
            if name in by.index:
                ax.axvline(by.loc[name, "score"], ls=style, color="k", lw=1, label=name)
        ax.set_yticks(y, methods)
        ax.set_ylim(len(methods) - 0.5, -0.5)  # top to bottom, as the right panel
        ax.set_xlabel("forget score (95 % CI over images)")
        ax.set_title(f"{dataset} / {arch}")
        ax.legend(loc="lower right", frameon=False)
        ax = axes[row][1]
        im = images[(images["dataset"] == dataset) & (images["arch"] == arch)]
        data = [
            im.loc[im["method"] == m, "offset_sd"].replace([np.inf, -np.inf], np.nan).dropna()
            for m in methods
        ]
        # matplotlib 3.10 names the orientation; `vert` is deprecated from 3.11
        horizontal = (
            {"orientation": "horizontal"}
            if tuple(int(v) for v in matplotlib.__version__.split(".")[:2]) >= (3, 10)
            else {"vert": False}
        )
        ax.boxplot(data, positions=y, showfliers=False, **horizontal)
        ax.axvline(0.0, color="k", lw=1)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_yticks(y, [""] * len(methods))
        ax.set_ylim(len(methods) - 0.5, -0.5)
        ax.set_xlabel("per image: (median − oracles' median) / oracles' sd")
        ax.set_title("+: under-forgetting, −: over-forgetting")
    fig.tight_layout()
    return fig


def write_forget_score(
    forget_score: tuple[pd.DataFrame, pd.DataFrame] | None,
    tables_dir: str | os.PathLike,
    figures_dir: str | os.PathLike,
) -> tuple[list[Path], list[Path]]:
    """``tables/forget_score.{csv,md}`` (every row of the stage, and the pooled table) and
    ``figures/forget_score.{png,pdf}``; nothing without a forget score."""
    if forget_score is None:
        return [], []
    table, images = forget_score
    out = Path(tables_dir)
    tables = [
        write_file(out / "forget_score.csv", lambda p: table.to_csv(p, index=False)),
        write_text(out / "forget_score.md", to_markdown(forget_score_table(table))),
    ]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from pbu.report.style import RC, save_figure

    figures: list[Path] = []
    with sns.axes_style("whitegrid"), plt.rc_context(RC):
        fig = _fig_forget_score(table, images)
        if fig is not None:
            figures = save_figure(fig, Path(figures_dir), "forget_score")
    return tables, figures


# ------------------------------------------------------------------------------ C4


def c4_on_forget_score(
    forget_score: tuple[pd.DataFrame, pd.DataFrame] | None,
    dataset: str,
    arch: str,
    method: str = "pbu",
    bootstrap: int = 10_000,
    seed: int = 0,
) -> tuple[str, str, str] | None:
    """C4 decided on the forget score: ``(verdict, reason, numbers)``, None when the run has no
    forget score for this setting, PBU or a ceiling.

    d = PBU's score − the ceiling's (retraining against retraining), paired by image and pooled
    over forget classes, with a 95 % bootstrap CI over images (resampled within each class):
    *holds* when the CI lies above −:data:`C4_SCORE_TOLERANCE`, *does not hold* when d ≤
    −tolerance, *inconclusive* otherwise. The CI covers the images, not the draw of the models
    (each image's ε already summarises the N models a side): near the margin a verdict would
    need the models resampled too, which this interval does not do.
    """
    if forget_score is None:
        return None
    _, images = forget_score
    if images.empty:
        return None
    im = images[(images["dataset"] == dataset) & (images["arch"] == arch)]
    a = im[im["method"] == method].set_index(["forget", "image"])["points"]
    b = im[im["method"] == CEILING].set_index(["forget", "image"])["points"]
    common = a.index.intersection(b.index)
    if common.empty:
        return None
    d = (a.loc[common] - b.loc[common]).to_numpy(float)
    strata = np.array([f for f, _ in common])
    rng = np.random.default_rng(seed)
    means = np.zeros(bootstrap)
    for s in np.unique(strata):
        x = d[strata == s]
        means += x[rng.integers(0, len(x), (bootstrap, len(x)))].sum(axis=1)
    means /= len(d)
    lo, hi = np.percentile(means, [2.5, 97.5])
    t = C4_SCORE_TOLERANCE
    mean = float(d.mean())
    numbers = (
        f"forget score {method} {a.loc[common].mean():.3f} vs ceiling {b.loc[common].mean():.3f}"
        f": d = {mean:+.3f}, 95 % CI {lo:+.3f} to {hi:+.3f} over {len(d)} images"
    )
    if mean <= -t:
        return DOES_NOT_HOLD, f"d = {mean:+.3f}, not > −{t:g}", numbers
    if lo > -t:
        return HOLDS, "", numbers
    return INCONCLUSIVE, f"the CI reaches −{t:g}", numbers


# ------------------------------------------------------------------------------ the section


def section(
    runs: pd.DataFrame,
    forget_score: tuple[pd.DataFrame, pd.DataFrame] | None,
    base: Path,
    tables: Sequence[str | os.PathLike] = (),
) -> list[str]:
    """The report's section "Is the class gone?": attack validity, then the forget score (or
    where it comes from)."""
    lines = ["## Is the class gone? Attack validity and the per-example forget score", ""]
    valid = validity_table(runs)
    lines += [
        "Each membership attack is also scored on members and non-members held out of its fit "
        "(a seeded quarter of each side; the loss attack: the retained classes' train vs test, "
        "cross-validated). An attack whose held-out balanced accuracy is below "
        f"{AT_CHANCE_BACC:g}, or whose 95 % CI reaches 0.5, is at chance: its number says "
        "nothing about membership, and no claim rests on it (docs/metrics.md).",
        "",
    ]
    if valid.empty:
        lines += ["These runs carry no attack validity (an older version wrote them).", ""]
    else:
        lines += [to_markdown(valid), ""]
    if forget_score is None:
        lines += [
            "The per-example forget score (the NeurIPS 2023 unlearning challenge's test: per "
            "forget image, N unlearned models against N retrained ones) needs many seeds, so "
            "this run has none. It comes from `snakemake --cores all --configfile "
            f"{FORGETTING_CONFIG}` (32 seeds; docs/forget-score.md, docs/results.md).",
            "",
        ]
        return lines
    table, _ = forget_score
    lines += [
        "Per forget-class training image, ε is the strongest threshold test telling the N "
        "unlearned models' logit-scaled confidences from the N oracles' (δ = 1e-5, capped at "
        "50); the score is the mean over images of 1 for ε < 0.5, ½ below 1, ¼ below 1.5, … up "
        "to ceil(ln(N − 1)). The ceiling is N further oracles against the oracles (what a "
        "perfect method scores with N models), the floor the N original models. Offset: the "
        "median over images of (the method's median − the oracles' median) / the oracles' "
        "between-seed sd; + means the class is left more recognisable than retraining leaves it "
        "(under-forgetting), − less (over-forgetting). docs/forget-score.md.",
        "",
        to_markdown(forget_score_table(table)),
        "",
    ]
    shown = [Path(t) for t in tables if Path(t).name.startswith("forget_score")]
    if shown:
        lines += [
            "Per class: "
            + ", ".join(f"[{t.name}]({Path(os.path.relpath(t, base)).as_posix()})" for t in shown),
            "",
        ]
    return lines
