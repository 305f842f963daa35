"""benchmarks/same_results.py: the check behind issue 16's "same results before and after"."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import same_results  # noqa: E402


def _runs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["d"] * 3,
            "arch": ["a"] * 3,
            "seed": [0, 0, 1],
            "forget": [2, 2, 2],
            "method": ["pbu", "ssd", "pbu"],
            "acc_retain_test": [91.5, 96.0, 90.0],
            "stop_step": [12.0, float("nan"), 9.0],
            "time_s": [0.5, 0.3, 0.6],
        }
    )


def test_timing_alone_and_row_order_are_no_difference(tmp_path):
    a, b = _runs(), _runs().iloc[::-1].copy()
    b["time_s"] *= 3  # a busier machine
    assert same_results.differences(a, b) == []
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    assert same_results.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0


def test_a_changed_cell_a_missing_row_and_a_new_column_are_named(tmp_path):
    a, b = _runs(), _runs()
    b.loc[1, "acc_retain_test"] = 95.9
    b.loc[0, "stop_step"] = float("nan")  # NaN on one side only
    b["extra"] = 1
    diffs = same_results.differences(a, b.drop(index=2))
    assert "column only in after: extra" in diffs
    assert any(d.startswith("row only in before:") and "'seed': 1" in d for d in diffs)
    assert any("'method': 'ssd'" in d and "acc_retain_test: 96.0 -> 95.9" in d for d in diffs)
    assert any("'method': 'pbu'" in d and "stop_step: 12.0 -> nan" in d for d in diffs)
    assert len(diffs) == 4
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    assert same_results.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 1
