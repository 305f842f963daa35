"""The `pbu` command as a process: argparse's own errors (exit status 2, usage on stderr)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_negative_seed_rejected_by_parser():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pbu.cli",
            "pretrain",
            "--data",
            "x",
            "--arch",
            "small_cnn",
            "--seed",
            "-1",
            "--recipe",
            "{}",
            "--out-model",
            "m",
            "--out-info",
            "i",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--seed: must be >= 0" in proc.stderr


@pytest.mark.slow
def test_import_and_help_stay_torch_free():
    """The fork server's client and `pbu --help` rely on it: the jobs import torch, the CLI
    imports a job only when its command runs."""
    code = (
        "import sys, pbu.cli; pbu.cli.build_parser(); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert not any(m.startswith('pbu.jobs.') for m in sys.modules), 'jobs imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
