"""The rules of the whole suite: only ``slow`` tests start processes, and no ``slow`` test lives
in ``tests/unit`` (``pytest tests/unit`` is the fast suite). Fixtures live beside their users:
``tests/unit/conftest.py``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")

# Programs whose start makes a test slow: another Python (torch imports alone take seconds), the
# pbu CLI, snakemake, shell scripts, SLURM. Other tools a library may call (fc-list, git) pass.
_SLOW_PROGRAMS = {"pbu", "snakemake", "bash", "sh", "sbatch", "srun", "salloc"}


def _program(args) -> str:
    first = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")
    first = os.fsdecode(first)
    return Path(first.split()[0] if first.strip() else first).name


@contextlib.contextmanager
def _no_processes(item: pytest.Item):
    """Within: starting Python, the pbu CLI, snakemake or a shell script raises, naming the
    command and the test (unless the test is marked ``slow``)."""
    if item.get_closest_marker("slow"):
        yield
        return
    real_init = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        prog = _program(args)
        if prog.startswith("python") or prog in _SLOW_PROGRAMS or prog == Path(sys.executable).name:
            shown = args if isinstance(args, str) else " ".join(map(os.fsdecode, args))
            raise RuntimeError(
                f"{item.nodeid} starts a process ({shown[:200]}): mark the test "
                f"@pytest.mark.slow (the fast unit tests run in-process)"
            )
        real_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = guarded
    try:
        yield
    finally:
        subprocess.Popen.__init__ = real_init


# ``python -m pytest -m "not slow"`` is the fast unit suite: no Snakemake, no subprocess. The
# guard covers a test's fixtures too (a module fixture is set up with its first test).
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _no_processes(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _no_processes(item):
        yield


@pytest.fixture
def toy(tmp_path) -> Path:
    """A repository with one function and one test of it (tests of tests/mutations.py)."""
    root = tmp_path / "toy"
    (root / "tests").mkdir(parents=True)
    (root / "calc.py").write_text(
        "def double(x):\n    return 2 * x\n\n\ndef half(x):\n    return x / 2\n"
    )
    (root / "tests" / "test_calc.py").write_text(
        "from calc import double\n\n\ndef test_double():\n    assert double(3) == 6\n"
    )
    return root


UNIT = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(config, items):
    """A test under tests/unit marked ``slow`` is an error: it belongs in tests/e2e (or
    tests/bench), so that ``pytest tests/unit`` stays the fast suite."""
    misplaced = [
        i.nodeid
        for i in items
        if i.get_closest_marker("slow") and UNIT in Path(str(i.path)).parents
    ]
    if misplaced:
        raise pytest.UsageError(
            "slow tests under tests/unit (move them to tests/e2e): " + ", ".join(misplaced)
        )
