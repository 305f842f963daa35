"""How every figure looks: 7 in wide (full text width), fonts of at least 8 pt, one fixed colour
per method, one legend below the panels, saved as PNG (dpi 200) and PDF. matplotlib and seaborn
are imported only when a figure is drawn."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pbu.report.render import write_file
from pbu.report.vocab import order_methods

FIG_WIDTH_IN = 7.0  # full text width; every figure uses it, so 8 pt stays 8 pt in print
MIN_FONT_PT = 8.0
DPI = 200
RC = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 9,
    "axes.titleweight": "normal",
    "savefig.dpi": DPI,
}


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
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


def save_figure(fig: Any, out_dir: Path, name: str) -> list[Path]:
    """Save a figure as PNG (dpi 200) and PDF, atomically, and close it."""
    import matplotlib.pyplot as plt

    _enforce_min_font(fig)
    paths = []
    for ext in ("png", "pdf"):
        paths.append(
            write_file(
                out_dir / f"{name}.{ext}", lambda p, e=ext: fig.savefig(p, format=e, dpi=DPI)
            )
        )
    plt.close(fig)
    return paths


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with the hue column the figures use: the method key."""
    return df.assign(label=df["method"])


def legend_below(fig: Any, axes: Iterable[Any], ncol: int = 6) -> None:
    """One legend for the figure (the first axes that has one), per-axes legends removed."""
    handles, labels = [], []
    for ax in axes:
        if not handles:
            handles, labels = ax.get_legend_handles_labels()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not handles:
        return
    renderer = fig.canvas.get_renderer()
    for n in range(min(ncol, len(labels)), 0, -1):  # as many columns as the width holds
        legend = fig.legend(
            handles, labels, loc="outside lower center", ncol=n, frameon=False, columnspacing=1.0
        )
        if n == 1 or legend.get_window_extent(renderer).width <= fig.bbox.width:
            return
        legend.remove()
