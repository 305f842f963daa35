"""The real snakemake validates the config before it schedules anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_snakemake_stops_before_any_job_with_one_line(tmp_path):
    """The real snakemake refuses a bad config before it schedules anything."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pretrain": {"lr": -1.0}, "results": str(tmp_path / "r")}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config key pretrain.lr: -1.0 is less than or equal to the minimum of 0" in out
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.pt"))
