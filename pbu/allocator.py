"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

PyTorch on a CPU allocates and frees tensors of a few MB many times per step. glibc serves
blocks above its mmap threshold (128 KiB at start, raised adaptively up to 32 MiB) with fresh
``mmap`` calls and gives freed heap memory back once more than the trim threshold sits unused at
its top, so the next tensor of that size faults its pages in again, zero-filled by the kernel.
On the 2-core VM of benchmarks/README.md one minor page fault costs about 4 µs, and the exact
Fisher of the small CNN took ~40,000 of them per 400 images (~20 % of its CPU time); training and
evaluation pay the same tax. PyTorch's CPU performance guide suggests swapping in jemalloc or
tcmalloc for this; glibc's own ``mallopt`` does it with nothing to install:

- ``M_MMAP_MAX = 0``: no block is served by its own ``mmap``; all come from the heap;
- ``M_TRIM_THRESHOLD = 1 GiB``: freed heap memory stays mapped (and reused) unless more than
  1 GiB of it sits unused at the heap's top.

Peak memory is unchanged (the peak is the same live tensors); the resident size simply does not
shrink between steps. ``benchmarks/bench_malloc.py`` measures the effect side by side.

``pbu`` commands (``pbu.cli.main``, so pipeline jobs, fork-server workers and SLURM jobs alike)
call :func:`keep_freed_memory` first; ``PBU_MALLOC=default`` in the environment turns it off.
Importing ``pbu`` never changes the allocator: library users call it themselves if they want it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30
MODES = ("tuned", "default")

_applied = False


def mode_from_env() -> str:
    """The allocator mode asked for by ``PBU_MALLOC`` ("tuned" when unset)."""
    mode = os.environ.get("PBU_MALLOC", "tuned").strip().lower() or "tuned"
    if mode not in MODES:
        raise ValueError(f"PBU_MALLOC={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def keep_freed_memory() -> bool:
    """Apply the two ``mallopt`` settings above to this process (and the children it forks
    afterwards). Returns True when they were applied, False where that is not possible (not
    Linux/glibc) — then nothing changed. Safe to call more than once."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the allocator settings; keeping the defaults")
        return False
    _applied = True
    return True


def active() -> str:
    """The mode in effect in this process: "tuned" once :func:`keep_freed_memory` applied."""
    return "tuned" if _applied else "default"


def apply_from_env() -> str:
    """What ``pbu`` commands call: tune unless ``PBU_MALLOC=default``. Returns the mode in
    effect ("tuned" or "default"; "default" too where tuning is unavailable)."""
    if mode_from_env() == "default":
        return "default"
    return "tuned" if keep_freed_memory() else "default"
