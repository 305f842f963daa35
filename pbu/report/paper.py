"""The paper's reported numbers and ours beside them.

``config/paper/reference.csv`` is the paper's table as transcribed, parsed by
:func:`parse_paper_table` into numeric ``<col>_mean`` / ``<col>_std`` columns and matched to our
runs by (dataset, arch, forget class). :func:`comparison_section` writes the report's "Beside
the paper" section: our numbers next to the paper's where the setting matches, and plainly what
differs where it does not. The paper's method labels appear only here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pbu.report.inputs import require, setting_pairs
from pbu.report.render import flatten_settings, to_markdown
from pbu.report.stats import sample_stats
from pbu.report.vocab import ACC_F, ACC_R, MISSING, format_mean_std, order_methods

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


# The paper's dataset and model names -> our keys (used to build reference.csv).
_PAPER_DATASET_KEYS = {"mnist": "mnist", "cifar100": "cifar100", "food101": "food101"}
_PAPER_ARCH_KEYS = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "densenet121": "densenet121",
    "convnextl": "convnext_large",
    "convnextlarge": "convnext_large",
    "allcnn": "allcnn",
}
# Which paper dataset our dataset is a version of (for the "averages" comparison).
_DATASET_FAMILY = {
    "mnist": "mnist",
    "mnist5k": "mnist",
    "cifar100": "cifar100",
    "food101": "food101",
}
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
    require(raw, ["dataset", "model", "forget_class"], f"paper table {path}")
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
    require(ref, ["dataset_key", "arch_key", "forget"], f"reference {path}")
    ref["forget"] = ref["forget"].astype(int)
    return ref


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


def _paper_cell(row: pd.Series, prefix: str, metric: str) -> str:
    col = f"{prefix}_{metric}"
    if col not in row.index or pd.isna(row[col]):
        return MISSING
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
            mean, std, _ = sample_stats(mine[col]) if col in mine.columns else (np.nan, np.nan, 0)
            cells[f"ours {metric}"] = format_mean_std(mean, std) or MISSING
            cells[f"paper {metric}"] = _paper_cell(paper_row, prefix, metric)
        rows.append(
            {
                "method": method,
                "paper's label": prefix,
                "ours A_Df": cells["ours ADf"],
                "paper A_Df": cells["paper ADf"],
                "ours A_Dr": cells["ours ADr"],
                "paper A_Dr": cells["paper ADr"],
            }
        )
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
            mean, std, _ = sample_stats(mine[col]) if col in mine.columns else (np.nan, np.nan, 0)
            row[f"ours {label}"] = format_mean_std(mean, std) or MISSING
            ref = paper.get(f"{prefix}_{metric}_mean")
            row[f"paper avg {label}"] = (
                MISSING if ref is None or ref.dropna().empty else f"{ref.mean():.2f}"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_section(
    runs: pd.DataFrame, ref: pd.DataFrame, settings: Mapping[str, Any]
) -> list[str]:
    """The report's "Beside the paper" section, as Markdown lines."""
    lines = [
        "## Beside the paper",
        "",
        (
            "The paper's numbers come from `config/paper/reference.csv` (see "
            "`config/paper/reference.md`). A row is compared only where dataset, architecture "
            "and forget class all match; our methods without a paper column are left out here. "
            "Each row gives our method's key and, beside it, the label the paper's table uses "
            "for it."
        ),
        "",
    ]
    for dataset, arch in setting_pairs(runs):
        sub = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
        forgets = sorted(int(f) for f in sub["forget"].unique())
        lines += [f"### {dataset} / {arch}", ""]
        matched, unmatched = [], []
        for forget in forgets:
            hit = ref[
                (ref["dataset_key"] == dataset)
                & (ref["arch_key"] == arch)
                & (ref["forget"] == forget)
            ]
            (matched if not hit.empty else unmatched).append((forget, hit))
        for forget, hit in matched:
            paper_row = hit.iloc[0]
            lines += [
                (
                    f"Forget class {forget}: matches the paper's row {paper_row['dataset']} / "
                    f"{paper_row['model']} / class {forget} (accuracy in %, test split; ours "
                    f"mean ± std over seeds, the paper's as printed)."
                ),
                "",
                to_markdown(_ours_vs_paper_rows(sub[sub["forget"] == forget], paper_row)),
            ]
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
        lines += [
            (
                f"**The setting differs** for forget class(es) {classes}: our {dataset} / "
                f"{arch} run matches no row of the paper (it differs in: "
                f"{', '.join(what)})."
            ),
            "",
        ]
        if family_rows.empty:
            lines += [
                (
                    f"The paper reports nothing on a dataset like `{dataset}`, so there is "
                    "nothing to put beside these numbers."
                ),
                "",
            ]
            continue
        cmp_rows = same_arch if not same_arch.empty else family_rows
        where = f"{family} / {arch}" if not same_arch.empty else f"{family}, all its architectures"
        mask = sub["forget"].isin([f for f, _ in unmatched])
        lines += [
            (
                f"Our averages over forget classes {classes} × seeds beside the paper's "
                f"average over its {len(cmp_rows)} rows ({where}; mean of the printed "
                "means):"
            ),
            "",
            to_markdown(_averages_vs_paper(sub[mask], cmp_rows)),
        ]
        paper_archs = ", ".join(sorted(cmp_rows["model"].unique()))
        paper_classes = ", ".join(str(f) for f in sorted(cmp_rows["forget"].unique()))
        n_params = (
            sub["parameters"].dropna().iloc[0]
            if "parameters" in sub.columns and sub["parameters"].notna().any()
            else None
        )
        pretrain = settings.get("pretrain") or settings.get("pretraining")
        ours_pretrain = (
            ", ".join(f"{k}={v}" for k, v in flatten_settings(pretrain))
            if isinstance(pretrain, Mapping)
            else pretrain
        )
        lines += [
            "Differences between the two settings:",
            "",
            (
                f"- dataset: ours `{dataset}`: {_describe('dataset', dataset)}; the paper: "
                f"{_PAPER_DATASETS[family]}."
            ),
            (
                f"- architecture: ours `{arch}`: {_describe('arch', arch, n_params)}; the "
                f"paper: {paper_archs}."
            ),
            (
                f"- pretraining recipe: ours: {ours_pretrain or 'see Settings below'}; the "
                f"paper: {_PAPER_PRETRAIN}."
            ),
            f"- forget classes: ours {classes}; the paper: {paper_classes}.",
            "",
        ]
    return lines
