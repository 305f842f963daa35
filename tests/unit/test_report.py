"""Tests for pbu.report: numbers against independent numpy computations, hand-made rankings,
missing data, and the files (tables, figures, report) it writes."""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pbu import report
from pbu.report import figures as report_figures

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "config" / "paper" / "reference.csv"
FORGETS = [1, 7]
SEEDS = [0, 1, 2]
METHODS = ["original", "oracle", "finetune", "pbu", "neggrad", "unsir"]
ACCESS = {
    "original": "-",
    "oracle": "-",
    "finetune": "all retain",
    "pbu": "forget",
    "neggrad": "forget",
    "unsir": "forget + retain subset",
}
# What chose each method's hyperparameters (runs.csv's protocol column).
PROTOCOL = {
    "original": "config",
    "oracle": "config",
    "finetune": "validation",
    "pbu": "config",
    "neggrad": "blind",
    "unsir": "validation",
}
# Mean A_Df / A_Dr per (method, forget class); PBU's class 7 is its worst on both.
ACC_FORGET = {
    "original": (99.0, 98.0),
    "oracle": (0.0, 0.0),
    "finetune": (1.0, 2.0),
    "pbu": (0.5, 6.0),
    "neggrad": (3.0, 1.0),
    "unsir": (0.2, 0.4),
}
FISHER_S = 1.5  # seconds of PBU's Fisher job, part of its headline time
PARAMETERS = 105914  # what the small CNN's pretraining job counts
ACC_RETAIN = {
    "original": (98.5, 98.7),
    "oracle": (98.0, 97.8),
    "finetune": (97.0, 96.5),
    "pbu": (96.0, 90.0),
    "neggrad": (93.0, 94.0),
    "unsir": (91.0, 92.0),
}


def make_runs(
    dataset: str = "mnist5k", arch: str = "small_cnn", forgets=FORGETS, seed: int = 0
) -> pd.DataFrame:
    """Synthetic runs: known per-(method, class) means plus seeded noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for f_idx, forget in enumerate(forgets):
        for s in SEEDS:
            for m_idx, method in enumerate(METHODS):
                oracle = method == "oracle"
                rows.append(
                    dict(
                        dataset=dataset,
                        arch=arch,
                        seed=s,
                        forget=forget,
                        method=method,
                        data_access=ACCESS[method],
                        protocol=PROTOCOL[method],
                        acc_forget_test=ACC_FORGET[method][f_idx % 2]
                        + (0 if oracle else abs(rng.normal(0, 0.3))),
                        acc_retain_test=ACC_RETAIN[method][f_idx % 2] + rng.normal(0, 0.4),
                        mia_entropy_svc=0.2 + 0.1 * m_idx + rng.normal(0, 0.01),
                        mia_loss_auc=0.5 + 0.05 * m_idx + rng.normal(0, 0.01),
                        js_forget_test=0.0
                        if oracle
                        else 0.01 * (m_idx + 1) + abs(rng.normal(0, 1e-3)),
                        js_retain_test=0.0 if oracle else 0.002 * (m_idx + 1),
                        time_s=5.0 * (m_idx + 1),
                        epochs=2.0,
                        time_per_epoch_s=2.5 * (m_idx + 1) + rng.normal(0, 0.1),
                        # PBU's headline time includes its Fisher (FISHER_S); the others have none
                        total_time_s=5.0 * (m_idx + 1) + (FISHER_S if method == "pbu" else 0.0),
                        mia_entropy_svc_bad_teaching=0.5 + 0.05 * m_idx + rng.normal(0, 0.01),
                        zrf_forget_test=0.7 + 0.02 * m_idx + rng.normal(0, 0.005),
                        act_dist_forget_test=0.0 if oracle else 0.1 * (m_idx + 1),
                        act_dist_retain_test=0.0 if oracle else 0.01 * (m_idx + 1),
                        relearn_steps=float(3 * m_idx + s),
                        relearn_reached=0.0 if (method == "unsir" and s == 2) else 1.0,
                        anamnesis_index=float(3 * m_idx + s) / (3.0 + s),
                        probe_auc=0.6 + 0.05 * m_idx + rng.normal(0, 0.01),
                        parameters=PARAMETERS,
                    )
                )
    return pd.DataFrame(rows)


def make_history(dataset: str = "mnist5k", arch: str = "small_cnn") -> pd.DataFrame:
    rows = []
    for forget in FORGETS:
        for s in SEEDS:
            stop = 12 + s
            for step in range(stop + 1):
                ce = 0.1 * 1.3**step
                monitored = step % 3 == 0 or step == stop
                rows.append(
                    dict(
                        dataset=dataset,
                        arch=arch,
                        seed=s,
                        forget=forget,
                        method="pbu",
                        step=step,
                        epoch=step / 10,
                        ce_forget=ce,
                        term_forget=-631 * ce,
                        term_fisher=90 * 1e-4 * step**2,
                        term_l2=4001 * 1e-7 * step**2,
                        loss_total=-631 * ce + 90 * 1e-4 * step**2 + 4001 * 1e-7 * step**2,
                        acc_forget_batch=max(0.0, 100 - 8 * step),
                        acc_forget_test=max(0.0, 100 - 8 * step) if monitored else np.nan,
                        acc_retain_test=98 - 0.2 * step if monitored else np.nan,
                        stopped=int(step == stop),
                    )
                )
    return pd.DataFrame(rows)


def make_timings() -> pd.DataFrame:
    rows = []
    for s in SEEDS:
        for method, t in (
            ("pretrain", 40.0),
            ("oracle", 30.0),
            ("finetune", 20.0),
            ("pbu", 0.1),
            ("unsir", 1.0),
        ):
            rows.append(
                dict(
                    dataset="mnist5k",
                    arch="small_cnn",
                    seed=s,
                    forget=1,
                    method=method,
                    time_s=t * 3,
                    epochs=3.0,
                    time_per_epoch_s=t,
                )
            )
    return pd.DataFrame(rows)


def md_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (header included, the alignment row
    left out), with '|' unescaped: an independent reader of what a Markdown viewer shows."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line[1:-1])]
        if all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
            continue
        rows.append(cells)
    return rows


def md_alignment(text: str) -> list[str]:
    """The alignment row of the first Markdown table in ``text``: "right" / "left" per column."""
    line = next(ln for ln in text.splitlines() if re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", ln))
    return [
        "right" if c.strip().endswith(":") and not c.strip().startswith(":") else "left"
        for c in line.strip()[1:-1].split("|")
    ]


_TEX_MATH = [
    (r"A_{D_f}", "A_Df"),
    (r"A_{D_r}", "A_Dr"),
    (r"\pm", "±"),
    (r"\Delta{}", "Δ"),
    (r"\times", "×"),
    ("-", "−"),
]
_TEX_TEXT = [("--", "–"), (r"\_", "_"), (r"\%", "%"), (r"\&", "&"), (r"\#", "#"), (r"\$", "$")]


def tex_text(cell: str) -> str:
    """Undo the LaTeX escaping of one cell: an independent decoder, for round trips. Math
    segments ($...$) hold symbols; text segments hold escaped characters."""
    parts = re.split(r"(?<!\\)\$", cell)
    out = []
    for i, part in enumerate(parts):
        for tex, text in _TEX_MATH if i % 2 else _TEX_TEXT:
            part = part.replace(tex, text)
        out.append(part)
    return "".join(out)


def check_latex(tex: str, n_columns: int) -> list[list[str]]:
    """Assert that ``tex`` is a well-formed booktabs tabular with ``n_columns`` columns on every
    row, every special character escaped; return its rows' cells (header rows first)."""
    lines = tex.strip().splitlines()
    assert lines[0].startswith("% ") and "booktabs" in lines[0]
    body = lines[1:]
    begin = re.fullmatch(r"\\begin\{tabular\}\{([lrc]*)\}", body[0])
    assert begin and len(begin.group(1)) == n_columns, body[0]
    assert body[-1] == r"\end{tabular}"
    assert [ln for ln in body if ln in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
    ]
    assert "\n".join(body).count(r"\begin{") == 1 and "\n".join(body).count(r"\end{") == 1
    assert tex.isascii(), [ch for ch in tex if not ch.isascii()]  # ±, Δ, – ... all typeset
    rows = []
    for line in body[1:-1]:
        if re.fullmatch(r"\\(top|mid|bottom)rule|(\\cmidrule\(lr\)\{\d+-\d+\} ?)+", line):
            continue
        assert line.endswith(r" \\"), line
        text = line[: -len(r" \\")]
        unescaped = re.sub(r"\\[\\{}&%$#_]", "", text)  # drop escaped specials
        assert "%" not in unescaped and "#" not in unescaped, line
        assert unescaped.count("{") == unescaped.count("}"), line
        assert unescaped.count("$") % 2 == 0 and "$$" not in unescaped, line
        # outside math, no bare subscript
        assert all("_" not in part for part in unescaped.split("$")[::2]), line
        cells = [c.strip() for c in re.split(r"(?<!\\)&", text)]
        spans = [
            int(m.group(1)) if (m := re.match(r"\\multicolumn\{(\d+)\}", c)) else 1 for c in cells
        ]
        assert sum(spans) == n_columns, line
        rows.append(cells)
    return rows


def pm(values) -> str:
    """The expected "mean ± std" string, computed independently (sample std)."""
    v = np.asarray(values, dtype=float)
    return f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}"


@pytest.fixture
def runs() -> pd.DataFrame:
    return make_runs()


# ---------------------------------------------------------------------------- reference.csv


def test_reference_csv_is_the_paper_table_parsed():
    ref = report.read_reference(REFERENCE)
    assert len(ref) == 27
    assert set(ref["dataset_key"]) == {"mnist", "cifar100", "food101"}
    assert set(ref["arch_key"]) == {"resnet34", "densenet121", "convnext_large", "resnet50"}
    row = ref[
        (ref["dataset_key"] == "mnist") & (ref["arch_key"] == "resnet34") & (ref["forget"] == 2)
    ].iloc[0]
    assert row["PBU_ADr"] == "98.73±0.57"
    assert (row["PBU_ADr_mean"], row["PBU_ADr_std"]) == (98.73, 0.57)
    odd = ref[
        (ref["dataset_key"] == "cifar100") & (ref["arch_key"] == "resnet50") & (ref["forget"] == 1)
    ].iloc[0]
    assert (odd["PBU_ADf"], odd["PBU_ADf_mean"], odd["PBU_ADf_std"]) == ("0±1.15", 0.0, 1.15)
    # Every "mean±std" column has both numeric columns; no comment line leaked into the data.
    for col in [c for c in ref.columns if re.fullmatch(r"[A-Za-z]+_AD[fr]", c)]:
        assert ref[f"{col}_mean"].notna().all() and ref[f"{col}_std"].notna().all()
    # The averages quoted in PAPER.md (MNIST A_Dr: PBU 97.3, retrain 99.2).
    mnist = ref[ref["dataset_key"] == "mnist"]
    assert round(mnist["PBU_ADr_mean"].mean(), 1) == 97.3
    assert round(mnist["retrain_ADr_mean"].mean(), 1) == 99.2


def test_parse_paper_table_splits_mean_std(tmp_path):
    raw = tmp_path / "raw.csv"
    raw.write_text(
        "# a comment, with commas\n"
        "dataset,model,forget_class,PBU_ADf,PBU_ADr\n"
        "CIFAR-100,ConvNeXt-L,3,1±1.15,72.51±0.91\n"
        "FOOD-101,DenseNet-121,10,0±0,64.97\n"
    )
    ref = report.parse_paper_table(raw)
    assert ref["dataset_key"].tolist() == ["cifar100", "food101"]
    assert ref["arch_key"].tolist() == ["convnext_large", "densenet121"]
    assert ref["forget"].tolist() == [3, 10]
    assert ref["PBU_ADr_mean"].tolist() == [72.51, 64.97]
    assert ref["PBU_ADr_std"].iloc[0] == 0.91 and np.isnan(ref["PBU_ADr_std"].iloc[1])


# ---------------------------------------------------------------------------- numbers


def test_paper_table_mean_std_matches_numpy(runs):
    table = report.paper_table(runs)
    assert len(table) == len(FORGETS)
    for _, row in table.iterrows():
        for method in METHODS:
            sel = runs[(runs["forget"] == row["forget"]) & (runs["method"] == method)]
            assert row[f"{method} A_Df"] == pm(sel["acc_forget_test"])
            assert row[f"{method} A_Dr"] == pm(sel["acc_retain_test"])


def test_paper_table_method_order(runs):
    cols = report.paper_table(runs).columns.tolist()
    names = list(dict.fromkeys(c.rsplit(" ", 1)[0] for c in cols[3:]))
    # original, oracle, finetune, pbu, then the rest alphabetically; our keys, never the
    # paper's labels (init, retrain, PBU, fastEffective)
    assert names == ["original", "oracle", "finetune", "pbu", "neggrad", "unsir"]


def test_paper_table_long_numbers(runs):
    long = report.paper_table_long(runs)
    row = long[(long["method"] == "pbu") & (long["forget"] == 7) & (long["metric"] == "A_Dr")]
    vals = runs[(runs["method"] == "pbu") & (runs["forget"] == 7)]["acc_retain_test"]
    assert row["mean"].item() == pytest.approx(np.mean(vals))
    assert row["std"].item() == pytest.approx(np.std(vals, ddof=1))
    assert row["n"].item() == 3


def test_single_seed_prints_mean_only():
    assert report.format_mean_std(1.234, float("nan")) == "1.23"
    assert report.format_mean_std(float("nan"), 1.0) is None
    assert report.format_mean_std(0.12345, 0.01, "{:.3f}") == "0.123 ± 0.010"


def test_method_summary_pooled_stats_and_worst_class(runs):
    summary = report.method_summary(runs)
    shown = report.summary_display(summary)
    pbu = summary[summary["method"] == "pbu"].iloc[0]
    pbu_runs = runs[runs["method"] == "pbu"]
    assert pbu["n_runs"] == 6 and pbu["n_classes"] == 2 and pbu["n_seeds"] == 3
    assert pbu["data_access"] == "forget"
    shown_pbu = shown[shown["method"] == "pbu"].iloc[0]
    assert shown_pbu["A_Df"] == pm(pbu_runs["acc_forget_test"])
    assert shown_pbu["A_Dr"] == pm(pbu_runs["acc_retain_test"])
    assert shown_pbu["MIA entropy-SVC"] == (
        f"{pbu_runs['mia_entropy_svc'].mean():.3f} ± {pbu_runs['mia_entropy_svc'].std():.3f}"
    )
    # Worst class: highest A_Df and lowest A_Dr (mean over seeds): class 7 for PBU on both,
    # class 1 for neggrad on both (see ACC_FORGET / ACC_RETAIN).
    assert pbu["worst_forget_class_df"] == 7 and pbu["worst_forget_class_dr"] == 7
    c7 = pbu_runs[pbu_runs["forget"] == 7]
    assert pbu["worst_A_Df"] == pytest.approx(c7["acc_forget_test"].mean())
    assert pbu["worst_A_Dr"] == pytest.approx(c7["acc_retain_test"].mean())
    neggrad = summary[summary["method"] == "neggrad"].iloc[0]
    assert neggrad["worst_forget_class_df"] == 1 and neggrad["worst_forget_class_dr"] == 1
    assert shown_pbu["worst class (A_Df)"] == f"7 ({c7['acc_forget_test'].mean():.2f})"


def _ranking_runs() -> pd.DataFrame:
    """Hand-made: one class, one seed; oracle A_Df 0 / A_Dr 90."""

    def row(method, js_f, js_r, a_f, a_r):
        return dict(
            dataset="d",
            arch="a",
            seed=0,
            forget=0,
            method=method,
            acc_forget_test=a_f,
            acc_retain_test=a_r,
            js_forget_test=js_f,
            js_retain_test=js_r,
        )

    return pd.DataFrame(
        [
            row("oracle", 0.0, 0.0, 0.0, 90.0),
            row("original", 0.001, 0.001, 99.0, 90.0),  # the starting point: never ranked
            row("m_a", 0.01, 0.03, 0.0, 89.0),  # JS 0.02, gap 0.5
            row("m_b", 0.03, 0.01, 2.0, 88.0),  # JS 0.02 (tie), gap 2.0 -> after m_a
            row("m_c", 0.005, 0.005, 10.0, 10.0),  # smallest JS wins despite a huge gap
            row("m_d", np.nan, np.nan, 0.0, 89.8),  # no JS: after all with JS, despite gap 0.1
            row("m_e", 0.5, 0.5, 0.0, 90.0),  # large JS
        ]
    )


def test_ranking_by_distance_to_oracle():
    summary = report.method_summary(_ranking_runs())
    ranked = summary.dropna(subset=["rank"]).sort_values("rank")
    assert ranked["method"].tolist() == ["m_c", "m_a", "m_b", "m_e", "m_d"]
    assert pd.isna(summary.loc[summary["method"] == "oracle", "rank"].item())
    assert pd.isna(summary.loc[summary["method"] == "original", "rank"].item())
    m_b = summary[summary["method"] == "m_b"].iloc[0]
    assert (m_b["js_to_oracle"], m_b["gap_A_Df"], m_b["gap_A_Dr"]) == pytest.approx((0.02, 2, 2))
    assert m_b["acc_gap_to_oracle"] == pytest.approx(2.0)


def test_ranking_falls_back_to_accuracy_gap_without_js():
    runs = _ranking_runs().drop(columns=["js_forget_test", "js_retain_test"])
    ranked = report.method_summary(runs).dropna(subset=["rank"]).sort_values("rank")
    # gaps: m_e 0, m_d 0.1, m_a 0.5, m_b 2, m_c 45
    assert ranked["method"].tolist() == ["m_e", "m_d", "m_a", "m_b", "m_c"]


# ---------------------------------------------------------------------------- missing data


def test_missing_columns_and_methods_are_reported(runs, tmp_path, caplog):
    thin = runs[runs["method"] != "oracle"].drop(
        columns=[
            "mia_entropy_svc",
            "mia_entropy_svc_bad_teaching",
            "mia_loss_auc",
            "js_forget_test",
            "js_retain_test",
            "time_s",
            "total_time_s",
            "epochs",
            "time_per_epoch_s",
            "data_access",
        ]
    )
    with caplog.at_level(logging.WARNING, logger="pbu.report"):
        summary = report.method_summary(thin)
        notes = report.data_gaps(thin)
        figures = report.write_figures(thin, None, None, tmp_path / "fig")
        tables = report.write_tables(thin, tmp_path / "tab")
        out = report.write_report(
            thin, REFERENCE, tmp_path / "report.md", figures=figures, tables=tables, settings={}
        )
    assert summary["rank"].isna().all() and summary["gap_A_Dr"].isna().all()
    assert "mia_entropy_svc_mean" not in summary.columns
    assert any("mia_entropy_svc" in n and "absent" in n for n in notes)
    assert any("methods absent: oracle" in n for n in notes)
    # Only the accuracy figure can be drawn; each skipped one says why.
    assert sorted(p.name for p in figures) == ["accuracy_per_class.pdf", "accuracy_per_class.png"]
    for name in ("time_per_epoch", "pbu_trajectory", "mia_vs_oracle", "retain_gap_to_oracle"):
        assert any(f"{name} skipped" in r.getMessage() for r in caplog.records), name
    text = out.read_text()
    assert "methods absent: oracle" in text and "js_forget_test" in text


def test_history_without_pbu_and_empty_metric_column(runs, tmp_path, caplog):
    history = make_history().assign(method="neggrad")
    runs = runs.assign(mia_loss_auc=np.nan)
    with caplog.at_level(logging.WARNING, logger="pbu.report"):
        figures = report.write_figures(runs, history, None, tmp_path)
    names = {p.stem for p in figures}
    assert "pbu_trajectory" not in names and "mia_vs_oracle" in names
    assert any("no pbu rows" in r.getMessage() for r in caplog.records)
    assert any("present but empty" in n and "mia_loss_auc" in n for n in report.data_gaps(runs))


def test_time_per_epoch_one_source_per_method(runs):
    frame = report_figures.time_per_epoch_frame(runs, make_timings())
    assert "pretrain" not in set(frame["method"]) and "original" not in set(frame["method"])
    by_source = frame.groupby("method")["source"].unique().map(list).to_dict()
    # timings.csv has oracle, finetune, pbu, unsir: used alone for those; runs.csv for neggrad
    assert by_source == {
        "oracle": ["timings"],
        "finetune": ["timings"],
        "pbu": ["timings"],
        "unsir": ["timings"],
        "neggrad": ["runs"],
    }
    assert frame.loc[frame["method"] == "pbu", "time_per_epoch_s"].tolist() == [0.1] * 3
    # From runs.csv the bars are the headline time per epoch: PBU's includes its Fisher
    derived = report_figures.time_per_epoch_frame(runs.drop(columns="time_per_epoch_s"), None)
    pbu = derived[derived["method"] == "pbu"]
    assert np.allclose(pbu["time_per_epoch_s"], (20.0 + FISHER_S) / 2.0)
    # files without the totals fall back to the method's own time
    legacy = report_figures.time_per_epoch_frame(
        runs.drop(columns=["time_per_epoch_s", "total_time_s"]), None
    )
    assert np.allclose(legacy.loc[legacy["method"] == "pbu", "time_per_epoch_s"], 20.0 / 2.0)


# ---------------------------------------------------------------------------- files


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def with_variants(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` plus PBU's ablation variants: copies of PBU's rows with A_Dr moved."""
    pbu = runs[runs["method"] == "pbu"]
    variants = [
        pbu.assign(method=name, acc_retain_test=pbu["acc_retain_test"] + shift)
        for name, shift in (("pbu_no_fisher", 0.1), ("pbu_ascent", -2.0))
    ]
    return pd.concat([runs, *variants], ignore_index=True)


def test_write_figures_files(runs, tmp_path):
    paths = report.write_figures(with_variants(runs), make_history(), make_timings(), tmp_path)
    expected = {f"{n}.{e}" for n in report.FIGURE_NAMES for e in ("png", "pdf")}
    assert {p.name for p in paths} == expected
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temp files left behind
    for p in paths:
        assert p.stat().st_size > 1000
        if p.suffix == ".pdf":
            assert p.read_bytes()[:5] == b"%PDF-"
        else:  # 7 in at 200 dpi: printed at text width, the 8 pt fonts stay 8 pt
            width, height = _png_size(p)
            assert width == int(report.FIG_WIDTH_IN * report.DPI) and height > 300


PAPER_LABELS_ONLY = ("init", "fastEffective", "badTeaching", "retrain", "PBU")


def test_write_tables_markdown_and_latex(runs, tmp_path):
    paths = report.write_tables(runs, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        [
            f"{name}.{ext}"
            for name in ("main_table", "depth_table", "paper_table", "method_summary")
            for ext in ("csv", "md", "tex")
        ]
        + ["paper_table_long.csv", "method_summary_numeric.csv"]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    md_text = (tmp_path / "paper_table.md").read_text()
    md = md_rows(md_text)
    header = ["dataset", "arch", "forget"] + [
        f"{n} {m}"
        for n in ("original", "oracle", "finetune", "pbu", "neggrad", "unsir")
        for m in ("A_Df", "A_Dr")
    ]
    assert md[0] == header
    assert len(md) == 1 + len(FORGETS) and [r[2] for r in md[1:]] == ["1", "7"]
    # the class ids are numbers (right-aligned), the "mean ± std" cells text
    assert md_alignment(md_text) == ["left", "left", "right"] + ["left"] * (len(header) - 3)
    pbu7 = runs[(runs["method"] == "pbu") & (runs["forget"] == 7)]["acc_retain_test"]
    assert md[2][header.index("pbu A_Dr")] == pm(pbu7)
    assert len(md_rows((tmp_path / "method_summary.md").read_text())) == 1 + len(METHODS)
    tex = (tmp_path / "paper_table.tex").read_text()
    for token in (
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
        r"\multicolumn{2}{c}{pbu}",
        r"$\pm$",
        r"\cmidrule(lr){4-5}",
    ):
        assert token in tex
    rows = check_latex(tex, len(header))
    assert len(rows) == 2 + len(FORGETS)  # two header rows + data rows
    # the method row spans each A_Df / A_Dr pair; the second header row names the metric
    assert [tex_text(c) for c in rows[1]] == ["dataset", "arch", "forget"] + ["A_Df", "A_Dr"] * 6
    assert tex_text(rows[3][header.index("pbu A_Dr")]) == pm(pbu7)
    for name in ("method_summary", "main_table", "depth_table"):
        assert r"\toprule" in (tmp_path / f"{name}.tex").read_text(), name
    back = pd.read_csv(tmp_path / "paper_table.csv")
    assert back["pbu A_Dr"].tolist() == report.paper_table(runs)["pbu A_Dr"].tolist()
    # One name per method: no table file shows a paper label as a method or column name.
    for path in paths:
        text = path.read_text()
        for label in ("init", "fastEffective", "badTeaching"):
            assert not re.search(rf"\b{label}\b", text), (path.name, label)


def test_tables_markdown_and_latex_hold_the_csv_cells(runs, tmp_path):
    """Every table's Markdown parses back to the CSV's cells, and its LaTeX is a well-formed
    tabular whose cells, unescaped, are the CSV's cells too (underscores, '|', '&', '%', '±',
    'Δ' and absent values included)."""
    runs = runs.replace(
        {
            "method": {"neggrad": "neg_grad"},
            "data_access": {"forget + retain subset": "50% & more | all_retain"},
        }
    )
    runs.loc[runs["method"] == "unsir", "mia_entropy_svc"] = np.nan  # an absent number
    report.write_tables(runs, tmp_path)
    for name in report.TABLE_NAMES:
        csv = pd.read_csv(tmp_path / f"{name}.csv", dtype=str, keep_default_na=False)
        cells = [[c if c != "" else "–" for c in row] for row in csv.itertuples(index=False)]
        assert cells and all(len(r) == csv.shape[1] for r in cells)
        assert md_rows((tmp_path / f"{name}.md").read_text()) == [list(csv.columns), *cells]
        rows = check_latex((tmp_path / f"{name}.tex").read_text(), csv.shape[1])
        assert [[tex_text(c) for c in r] for r in rows[-len(cells) :]] == cells, name
        if name != "paper_table":  # its header is grouped (checked above)
            assert [tex_text(c) for c in rows[0]] == list(csv.columns), name
    shown = pd.read_csv(tmp_path / "main_table.csv", dtype=str, keep_default_na=False)
    assert "neg_grad" in set(shown["method"]) and "|ΔA_Df|" in shown.columns
    assert shown.loc[shown["method"] == "unsir", "MIA entropy-SVC"].item() == ""
    assert "50% & more | all_retain" in set(shown["data needed"])


def test_method_summary_csv_has_every_depth_metric(runs, tmp_path):
    report.write_tables(runs, tmp_path)
    summary = pd.read_csv(tmp_path / "method_summary.csv")
    for label in (
        "ZRF",
        "act. dist. forget",
        "act. dist. retain",
        "relearn steps",
        "AIN",
        "probe AUC",
        "MIA entropy-SVC (Bad Teaching's sets)",
        "time (s)",
        "method time (s)",
    ):
        assert label in summary.columns, label
    pbu = summary[summary["method"] == "pbu"].iloc[0]
    pbu_runs = runs[runs["method"] == "pbu"]
    assert pbu["AIN"] == (
        f"{pbu_runs['anamnesis_index'].mean():.2f} ± {pbu_runs['anamnesis_index'].std():.2f}"
    )
    assert pbu["ZRF"] == (
        f"{pbu_runs['zrf_forget_test'].mean():.3f} ± {pbu_runs['zrf_forget_test'].std():.3f}"
    )


def test_main_and_depth_tables(runs):
    summary = report.method_summary(runs)
    main, depth = report.main_table(summary), report.depth_table(summary)
    # The original model and the oracle first, then the unlearning methods by rank.
    ranked = summary.dropna(subset=["rank"]).sort_values("rank")["method"].tolist()
    assert main["method"].tolist() == ["original", "oracle", *ranked]
    assert depth["method"].tolist() == main["method"].tolist()
    # every row says which protocol chose its hyperparameters, in both tables
    display = report.summary_display(summary)
    for table in (main, display):
        assert dict(zip(table["method"], table["protocol"])) == PROTOCOL
    mixed = runs.copy()
    mixed.loc[(mixed["method"] == "pbu") & (mixed["seed"] == 0), "protocol"] = "blind"
    mixed_main = report.main_table(report.method_summary(mixed))
    assert mixed_main.loc[mixed_main["method"] == "pbu", "protocol"].item() == "blind; config"
    old = report.main_table(report.method_summary(runs.drop(columns="protocol")))
    assert set(old["protocol"]) == {"–"}  # a runs.csv from before the column
    assert list(main.columns) == [
        "dataset",
        "arch",
        "method",
        "data needed",
        "protocol",
        "A_Df",
        "A_Dr",
        "MIA entropy-SVC",
        "MIA entropy-SVC (Bad Teaching's sets)",
        "JS to oracle",
        "|ΔA_Df|",
        "|ΔA_Dr|",
        "time (s)",
        "method time (s)",
        "rank",
    ]
    assert list(depth.columns) == [
        "dataset",
        "arch",
        "method",
        "ZRF",
        "act. dist. forget",
        "act. dist. retain",
        "relearn steps",
        "relearned",
        "AIN",
        "probe AUC",
    ]
    # runs whose relearn count is only a lower bound are counted out: unsir's seed 2, 2 classes
    assert depth.loc[depth["method"] == "unsir", "relearned"].item() == "4/6"
    assert depth.loc[depth["method"] == "pbu", "relearned"].item() == "6/6"
    pbu = main[main["method"] == "pbu"].iloc[0]
    pbu_runs = runs[runs["method"] == "pbu"]
    # The headline time is the total (Fisher included); the method alone has its own column.
    assert pbu["time (s)"] == pm(pbu_runs["total_time_s"])
    assert pbu["method time (s)"] == pm(pbu_runs["time_s"])
    assert pbu["time (s)"] != pbu["method time (s)"]
    assert pbu["MIA entropy-SVC (Bad Teaching's sets)"] == (
        f"{pbu_runs['mia_entropy_svc_bad_teaching'].mean():.3f} ± "
        f"{pbu_runs['mia_entropy_svc_bad_teaching'].std():.3f}"
    )
    oracle = depth[depth["method"] == "oracle"].iloc[0]
    o_runs = runs[runs["method"] == "oracle"]
    assert oracle["relearn steps"] == (
        f"{o_runs['relearn_steps'].mean():.1f} ± {o_runs['relearn_steps'].std():.1f}"
    )
    assert oracle["act. dist. forget"] == "0.000 ± 0.000"


def test_protocol_column_survives_runs_csv(runs, tmp_path):
    runs.to_csv(tmp_path / "runs.csv", index=False)
    main = report.main_table(report.method_summary(report.read_runs(tmp_path / "runs.csv")))
    assert dict(zip(main["method"], main["protocol"])) == PROTOCOL


def test_markdown_and_latex_escaping():
    df = pd.DataFrame({"name": ["a|b", "x_y & 5%"], "value": [1.5, np.nan]})
    md_text = report.to_markdown(df)
    assert md_alignment(md_text) == ["left", "right"]
    assert md_rows(md_text) == [["name", "value"], ["a|b", "1.5"], ["x_y & 5%", "–"]]
    assert "a\\|b" in md_text  # the cell's '|' is escaped, not a column break
    tex = report.to_latex(df)
    assert r"x\_y \& 5\%" in tex and r"\toprule" in tex
    assert check_latex(tex, 2)[1:] == [[r"a$|$b", "1.5"], [r"x\_y \& 5\%", "--"]]
    # Adjacent inline maths are merged: "$a$$b$" would open display math in LaTeX.
    head = report.to_latex(pd.DataFrame({"|ΔA_Df|": ["1.00 ± 0.50"]}))
    assert r"$|\Delta{}A_{D_f}|$" in head and "$$" not in head
    assert r"1.00 $\pm$ 0.50" in head
    assert check_latex(head, 1) == [[r"$|\Delta{}A_{D_f}|$"], [r"1.00 $\pm$ 0.50"]]


# ---------------------------------------------------------------------------- report


def test_report_beside_paper_and_differs(tmp_path):
    matching = make_runs("mnist", "resnet34", forgets=[2], seed=1)
    ours_default = make_runs("mnist5k", "small_cnn", forgets=FORGETS, seed=2)
    runs = pd.concat([matching, ours_default], ignore_index=True)
    fig = tmp_path / "figures" / "accuracy_per_class.png"
    fig.parent.mkdir()
    fig.write_bytes(b"png")
    out = report.write_report(
        runs,
        REFERENCE,
        tmp_path / "report.md",
        figures=[fig],
        tables=[],
        settings={
            "dataset": "mnist5k",
            "arch": "small_cnn",
            "seeds": [0, 1, 2],
            "pbu": {"alpha": 631, "beta": 90, "gamma": 4001},
        },
    )
    text = out.read_text()
    # Matching row: the paper's PBU numbers on the same line as ours; our key first, the
    # paper's label beside it (the only place the paper's labels appear).
    pbu = matching[matching["method"] == "pbu"]
    ours_dr = pm(pbu["acc_retain_test"])
    rows = md_rows(text)
    # columns: method, paper's label, ours A_Df, paper A_Df, ours A_Dr, paper A_Dr
    line = next(r for r in rows if r[:2] == ["pbu", "PBU"] and r[5] == "98.73 ± 0.57")
    assert line[4] == ours_dr and line[3] == "0.03 ± 0.06"
    assert line[2] == pm(pbu["acc_forget_test"])
    oracle_line = next(r for r in rows if r[:2] == ["oracle", "retrain"] and "99.33" in r[5])
    assert oracle_line[4] == pm(matching[matching["method"] == "oracle"]["acc_retain_test"])
    assert any(r[:2] == ["unsir", "fastEffective"] for r in rows)
    # Outside "Beside the paper", no paper label names a method.
    ours_part = text.split("## Beside the paper")[0]
    for label in ("init", "fastEffective", "badTeaching", "retrain"):
        assert not any(label in r for r in md_rows(ours_part)), label
    # Non-matching setting: said plainly, with the paper's MNIST averages beside ours.
    assert re.search(r"setting differs.*mnist5k / small_cnn", text, re.IGNORECASE)
    # columns: method, paper's label, ours A_Df, paper avg A_Df, ours A_Dr, paper avg A_Dr
    avg_line = next(r for r in rows if r[:2] == ["pbu", "PBU"] and r[5] == "97.34")
    ours5k = ours_default[ours_default["method"] == "pbu"]["acc_retain_test"]
    assert avg_line[4] == pm(ours5k)
    assert "ResNet-34" in text and "ImageNet" in text  # the named differences
    # Facts computed, not typed: the parameter count the pretraining job counted; the paper's
    # ImageNet-started retrain baseline stated only for the authors' ResNet-18 notebook.
    assert f"{PARAMETERS:,} parameters" in text and "~30k" not in text
    assert re.search(
        r"only for the authors' released code, one notebook \(ResNet-18 on MNIST\)"
        r".*retrain baseline that also starts from ImageNet weights",
        text,
    )
    # The ranking rule is one sentence.
    assert report.RANKING_RULE in text
    assert report.RANKING_RULE.count(". ") == 0 and report.RANKING_RULE.endswith(".")
    # Figures by relative link, settings listed.
    assert "](figures/accuracy_per_class.png)" in text
    settings = md_rows(text.split("## Settings")[1])
    assert settings[0] == ["setting", "value"]
    assert ["pbu.alpha", "631"] in settings and ["seeds", "0, 1, 2"] in settings


def test_build_all_end_to_end(tmp_path):
    runs = pd.concat([make_runs(), make_runs("mnist", "resnet34", [2, 6])], ignore_index=True)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    make_history().to_csv(tmp_path / "history.csv", index=False)
    make_timings().to_csv(tmp_path / "timings.csv", index=False)
    out = report.build_all(
        tmp_path / "runs.csv",
        tmp_path / "history.csv",
        tmp_path / "timings.csv",
        REFERENCE,
        tmp_path / "out",
        {"dataset": "mnist5k"},
    )
    assert set(out) == {"tables", "figures", "report"}
    # no PBU variant in these runs: the ablation figure is skipped; claims.{csv,md} and
    # claims_comparisons.{csv,md} join the 14 table files
    assert len(out["figures"]) == 10 and len(out["tables"]) == 18
    text = out["report"][0].read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) == 10 + 18
    for link in links:
        assert (tmp_path / "out" / link).is_file(), link
