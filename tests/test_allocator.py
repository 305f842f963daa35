"""pbu.allocator: glibc keeps freed memory, so big tensors stop faulting their pages in again.

Each check runs in a fresh interpreter: an allocator setting cannot be undone in this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")

# Allocate and free a 64 MiB tensor ten times (after twenty, to reach a steady state): above glibc's
# largest adaptive mmap threshold (32 MiB), so by default every one is a fresh mmap whose 16,384
# pages fault in again; tuned, it comes from the heap, which keeps it.
_PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from pbu.allocator import apply_from_env
    mode = apply_from_env()
    for _ in range(20):  # first touch, and the heap's growth to its steady state (measured:
        # up to 8 rounds, while the freed block and the Python objects around it settle)
        torch.empty(16 << 20).fill_(1.0)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(16 << 20).fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
    print(json.dumps({"mode": mode, "faults": faults}))
""")


def _probe(env_value: str | None) -> dict[str, object]:
    env = dict(os.environ)
    env.pop("PBU_MALLOC", None)
    if env_value is not None:
        env["PBU_MALLOC"] = env_value
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_tuned_allocator_stops_the_page_faults_of_repeated_big_tensors() -> None:
    default, tuned = _probe("default"), _probe(None)  # unset means tuned
    assert default["mode"] == "default" and tuned["mode"] == "tuned"
    pages = 10 * (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert default["faults"] > pages // 2  # each 64 MiB tensor faulted in again
    assert tuned["faults"] < pages // 100  # reused from the heap


@pytest.mark.slow
def test_bad_pbu_malloc_is_a_clear_cli_error(tmp_path) -> None:
    env = {**os.environ, "PBU_MALLOC": "jemalloc", "PBU_SERVER": ""}
    res = subprocess.run([sys.executable, "-m", "pbu.cli", "methods"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2
    assert "PBU_MALLOC='jemalloc'" in res.stderr and "tuned, default" in res.stderr


def test_mode_from_env_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from pbu.allocator import mode_from_env

    monkeypatch.delenv("PBU_MALLOC", raising=False)
    assert mode_from_env() == "tuned"
    monkeypatch.setenv("PBU_MALLOC", " Default ")
    assert mode_from_env() == "default"
    monkeypatch.setenv("PBU_MALLOC", "off")
    with pytest.raises(ValueError, match="PBU_MALLOC='off'"):
        mode_from_env()
