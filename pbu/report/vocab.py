"""The report's vocabulary: the key and metric columns of runs.csv, their labels and number
formats, the method order, and how "mean ± std" is printed. Torch- and plotting-free."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

KEYS = ["dataset", "arch", "seed", "forget", "method"]
SETTING = ["dataset", "arch"]

#: Metric columns of runs.csv: column -> (display label, number format, unit).
RUN_METRICS: dict[str, tuple[str, str, str]] = {
    "acc_forget_test": ("A_Df", "{:.2f}", "% (forget class, test)"),
    "acc_retain_test": ("A_Dr", "{:.2f}", "% (retained classes, test)"),
    "acc_forget_train": ("A_Df train", "{:.2f}", "% (forget class, train)"),
    "acc_retain_train": ("A_Dr train", "{:.2f}", "% (retained classes, train)"),
    "mia_entropy_svc": (
        "MIA entropy-SVC",
        "{:.3f}",
        (
            "fraction of forget-train called member; non-members: test split "
            "without the forget class"
        ),
    ),
    "mia_entropy_svc_bad_teaching": (
        "MIA entropy-SVC (Bad Teaching's sets)",
        "{:.3f}",
        ("fraction of forget-train called member; non-members: the whole test split"),
    ),
    "mia_efficacy_salun": ("MIA-efficacy (SalUn)", "{:.3f}", "fraction"),
    "mia_loss_acc": ("MIA loss (acc)", "{:.3f}", "fraction"),
    "mia_loss_auc": ("MIA loss (AUC)", "{:.3f}", "fraction"),
    # each attack's validity: held out of its fit (docs/metrics.md, "Attack validity")
    **{
        f"{attack}_valid_{k}": (f"{label} validity ({what})", "{:.3f}", f"held-out {what}")
        for attack, label in (
            ("mia_entropy_svc", "MIA entropy-SVC"),
            ("mia_entropy_svc_bad_teaching", "MIA entropy-SVC (BT sets)"),
            ("mia_efficacy_salun", "MIA-efficacy"),
            ("mia_loss", "MIA loss"),
        )
        for k, what in (("bacc", "bal. acc."), ("auc", "AUC"))
    },
    "js_forget_test": ("JS forget", "{:.4f}", "JS divergence to the oracle, forget test"),
    "js_retain_test": ("JS retain", "{:.4f}", "JS divergence to the oracle, retain test"),
    "act_dist_forget_test": ("act. dist. forget", "{:.3f}", "activation distance to oracle"),
    "act_dist_retain_test": ("act. dist. retain", "{:.3f}", "activation distance to oracle"),
    "zrf_forget_test": ("ZRF", "{:.3f}", "zero-retrain forgetting score"),
    "zrf_forget_test_as_coded": ("ZRF (as coded)", "{:.3f}", "ZRF as the SSD code computes it"),
    "relearn_steps": (
        "relearn steps",
        "{:.1f}",
        "steps until within alpha % of the original's forget accuracy",
    ),
    "anamnesis_index": ("AIN", "{:.2f}", "Anamnesis Index: relearn steps / oracle's"),
    "relearn_steps_fixed": (
        "relearn steps (fixed)",
        "{:.1f}",
        "steps until a fixed forget accuracy (relearn_threshold)",
    ),
    "relearn_ratio_fixed": ("relearn ratio (fixed)", "{:.2f}", "relearn steps (fixed) / oracle's"),
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
MIA_COLUMNS = [
    "mia_entropy_svc",
    "mia_entropy_svc_bad_teaching",
    "mia_efficacy_salun",
    "mia_loss_acc",
    "mia_loss_auc",
]
#: Each attack's held-out balanced accuracy and AUC (0.5: at chance).
MIA_VALIDITY_COLUMNS = [
    f"{a}_valid_{k}"
    for a in ("mia_entropy_svc", "mia_entropy_svc_bad_teaching", "mia_efficacy_salun", "mia_loss")
    for k in ("bacc", "auc")
]
JS_COLUMNS = ["js_forget_test", "js_retain_test"]
DEPTH_COLUMNS = [
    "zrf_forget_test",
    "zrf_forget_test_as_coded",
    "act_dist_forget_test",
    "act_dist_retain_test",
    "relearn_steps",
    "anamnesis_index",
    "relearn_steps_fixed",
    "relearn_ratio_fixed",
    "probe_auc",
    "probe_acc",
]
TIME_COLUMNS = ["total_time_s", "time_s"]
#: Metrics in the per-method summary (when present): every score the evaluation writes.
SUMMARY_METRICS = [
    ACC_F, ACC_R, *MIA_COLUMNS, *MIA_VALIDITY_COLUMNS, *JS_COLUMNS, *DEPTH_COLUMNS, *TIME_COLUMNS
]  # fmt: skip
#: The main table: accuracy, MIA (each beside its held-out balanced accuracy), distance to the
#: oracle, time.
MAIN_MIA = [
    "mia_entropy_svc",
    "mia_entropy_svc_valid_bacc",
    "mia_entropy_svc_bad_teaching",
    "mia_entropy_svc_bad_teaching_valid_bacc",
]
MAIN_METRICS = [ACC_F, ACC_R, *MAIN_MIA, *TIME_COLUMNS]
#: The "depth of forgetting" table.
DEPTH_METRICS = [
    "zrf_forget_test",
    "act_dist_forget_test",
    "act_dist_retain_test",
    "relearn_steps",
    "anamnesis_index",
    "probe_auc",
]

#: Methods every complete run set should hold (their absence is reported).
EXPECTED_METHODS = ["original", "oracle", "finetune", "pbu"]
_FIRST_METHODS = ["original", "oracle", "finetune", "pbu"]
MISSING = "–"  # how an absent number is printed in the Markdown and LaTeX tables
UNRANKED = ("oracle", "original")
#: PBU's ablation variants of the default config (issue 14), in the order the figure shows them.
PBU_VARIANTS = [
    "pbu_no_fisher",
    "pbu_no_l2",
    "pbu_ascent",
    "pbu_fisher_unit",
]  # the target and the starting point, not unlearning methods


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
