"""Are two pipeline runs the same run, timing apart? For a change meant to leave behaviour alone
(a refactor, a formatter): run the default config before and after on one machine, then give
the two ``results/aggregate/runs.csv``:

    python benchmarks/same_results.py BEFORE/runs.csv AFTER/runs.csv

It prints every cell that differs outside the timing and memory columns and exits 1 if any
does, 0 if the two tables agree exactly (same rows, same columns, same values; NaN == NaN).
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

#: what a machine's load changes from run to run: wall/CPU seconds and peak memory
TIMING = {
    "time_s",
    "time_per_epoch_s",
    "total_time_s",
    "total_time_per_epoch_s",
    "fisher_time_s",
    "eval_time_s",
    "peak_rss_mb",
    "peak_gpu_mb",
    "cpu_s",
    "started_at",
    "ended_at",
}
KEYS = ["dataset", "arch", "seed", "forget", "method"]


def _plain(v):
    """A numpy scalar as the Python number it holds (for readable messages)."""
    return v.item() if hasattr(v, "item") else v


def _key(keys: list[str], values) -> dict:
    return {k: _plain(v) for k, v in zip(keys, values)}


def differences(before: pd.DataFrame, after: pd.DataFrame) -> list[str]:
    """One line per difference: a column or row present on one side only, or a changed cell."""
    out = [
        f"column only in {side}: {c}"
        for side, cols in (
            ("before", set(before) - set(after)),
            ("after", set(after) - set(before)),
        )
        for c in sorted(cols)
    ]
    cols = [c for c in before.columns if c in after.columns and c not in TIMING]
    keys = [k for k in KEYS if k in cols]
    a = before[cols].set_index(keys).sort_index()
    b = after[cols].set_index(keys).sort_index()
    for side, idx in (
        ("before", a.index.difference(b.index)),
        ("after", b.index.difference(a.index)),
    ):
        out += [f"row only in {side}: {_key(keys, i)}" for i in idx]
    both = a.index.intersection(b.index)
    a, b = a.loc[both], b.loc[both]
    changed = (a != b) & ~(a.isna() & b.isna())
    for row, col in zip(*changed.values.nonzero()):
        key = _key(keys, both[row])
        out.append(
            f"{key} {a.columns[col]}: {_plain(a.iat[row, col])!r} -> {_plain(b.iat[row, col])!r}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    args = p.parse_args(argv)
    before, after = pd.read_csv(args.before), pd.read_csv(args.after)
    diffs = differences(before, after)
    for line in diffs:
        print(line)
    ignored = sorted(TIMING & set(before.columns))
    print(
        f"{len(before)} x {len(before.columns)} before, {len(after)} x {len(after.columns)} "
        f"after; ignored: {', '.join(ignored)}; {len(diffs)} difference(s)"
    )
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
