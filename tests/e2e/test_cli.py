"""The `pbu` command as a process: argparse's own errors (exit status 2, usage on stderr)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_negative_seed_rejected_by_parser():
    proc = subprocess.run([sys.executable, "-m", "pbu.cli", "pretrain", "--data", "x",
                           "--arch", "small_cnn", "--seed", "-1", "--recipe", "{}",
                           "--out-model", "m", "--out-info", "i"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--seed: must be >= 0" in proc.stderr
