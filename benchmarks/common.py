"""What the benchmark scripts share: the repository root, configs merged as Snakemake merges
them, a clock (wall, CPU and peak GPU memory of a block), the machine's description and JSON
files. Imports torch only when a device is involved, so the bookkeeping stays light.

Scripts run from a checkout (``python benchmarks/bench_fisher.py``), so this file is beside
them on ``sys.path``; the scripts under ``benchmarks/`` add this folder first.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `import pbu` from this checkout, installed or not


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``, nested keys key by key (as
    ``snakemake --configfile`` merges a second config file)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            merge_config(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict)
            else copy.deepcopy(v)
        )
    return out


def read_config(*files: str | os.PathLike) -> dict[str, Any]:
    """config/config.yaml with ``files`` merged over it, in order (not validated)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for f in files:
        cfg = merge_config(cfg, yaml.safe_load(Path(f).read_text()) or {})
    return cfg


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


class Clock:
    """Wall time (perf_counter) and this process's CPU time (process_time) of a block,
    synchronised with the device at both ends; on CUDA also its peak GPU memory (MiB,
    ``torch.cuda.max_memory_allocated``, reset at the start).

    On a shared CPU other jobs stretch wall time but hardly the CPU time single-threaded work
    needs, so ratios of CPU times are the steadier ones there; on a GPU only wall time counts.
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.wall = self.cpu = 0.0
        self.peak_gpu_mb: float | None = None

    @property
    def seconds(self) -> float:
        return self.wall

    def __enter__(self) -> Clock:
        sync(self.device)
        if getattr(self.device, "type", None) == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        if getattr(self.device, "type", None) == "cuda":
            import torch

            self.peak_gpu_mb = torch.cuda.max_memory_allocated(self.device) / 2**20


def median_rate(n: float, seconds: Iterable[float]) -> float:
    """The median of ``n / t`` over the timed repeats (items per second)."""
    return statistics.median(n / max(t, 1e-9) for t in seconds)


def machine(device: Any = None) -> dict[str, Any]:
    """Where a number was measured: Python, platform, CPUs and load; with a device, torch's
    version, its threads and the GPU's name."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_1min"] = os.getloadavg()[0]
    if device is not None:
        import torch

        info.update(
            torch=torch.__version__, torch_threads=torch.get_num_threads(), device=str(device)
        )
        if getattr(device, "type", None) == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON at ``path`` (folders made; what JSON lacks, as text)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content, or None when it is missing or not JSON (a step that failed)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a fresh Python process that imports this checkout's ``pbu``."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env
