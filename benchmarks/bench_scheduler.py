"""Snakemake's own CPU time under its job-rate limiter: the default ``100/1s`` against ours.

``pbu/scheduling.py`` explains the mechanism: with jobs waiting for a core, every finished job
adds a timer chain that wakes the scheduler once per ``--max-jobs-per-timespan`` timespan, and
each wake-up re-selects jobs. This runs one synthetic workflow shaped like the default run's
unlearn stage (``--jobs`` jobs on ``--cores`` cores, each with a shared input and one of its own,
each sleeping ``--job-seconds``, so the jobs themselves cost no CPU) once per arm, interleaved
over ``--repeats`` rounds, and reports per arm the median wall time and the CPU seconds of the
``snakemake`` process and its children (the job shells' ``sleep``; a few ms), from ``wait4``.
Every run uses the workflow's own ``onsuccess`` hook, which cancels the timers still pending and
prints how many it found. Ratios are to the first arm, from the same run.

    python benchmarks/bench_scheduler.py --out results/bench_scheduler.json      # ~10 min

An arm is ``default`` (Snakemake's own setting) or a ``--max-jobs-per-timespan`` value.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import child_env, machine, write_json

SNAKEFILE = """\
import threading

from pbu.scheduling import cancel_reevaluation_timers

rule all:
    input: expand("out/{{i}}.txt", i=range({jobs}))

rule own_input:
    output: "in/{{i}}.txt"
    shell: "touch {{output}}"

rule job:
    input: "shared.txt", "in/{{i}}.txt"
    output: "out/{{i}}.txt"
    shell: "sleep {seconds}; touch {{output}}"

def _timers_left():
    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    for t in timers:
        t.join(timeout=1.0)
    return sum(t.is_alive() for t in timers)

onsuccess:
    print(f"pending re-evaluation timers cancelled: {{cancel_reevaluation_timers()}}")
    print(f"timers still running: {{_timers_left()}}")
"""
CANCELLED = re.compile(r"pending re-evaluation timers cancelled: (\d+)")
LEFT = re.compile(r"timers still running: (\d+)")


def run_once(arm: str, jobs: int, seconds: float, cores: int) -> dict[str, Any]:
    """One snakemake run of the synthetic workflow: wall and CPU seconds, timers cancelled."""
    with tempfile.TemporaryDirectory(prefix="bench_scheduler_") as tmp:
        work = Path(tmp)
        (work / "Snakefile").write_text(SNAKEFILE.format(jobs=jobs, seconds=seconds))
        (work / "shared.txt").touch()
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            str(cores),
            "--workflow-profile",
            "none",
            "--quiet",
            "all",
        ]
        if arm != "default":
            cmd += ["--max-jobs-per-timespan", arm]
        log = work / "snakemake.log"
        t0 = time.perf_counter()
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, cwd=work, env=child_env(), stdout=out, stderr=subprocess.STDOUT
            )
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        text = log.read_text()
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake ({arm}) failed:\n{text[-3000:]}")
        made = sum(1 for _ in (work / "out").iterdir())
        if made != jobs:
            raise RuntimeError(f"snakemake ({arm}) made {made} of {jobs} outputs")
        found, left = CANCELLED.search(text), LEFT.search(text)
        return {
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "timers_cancelled": int(found.group(1)) if found else None,
            "timers_left": int(left.group(1)) if left else None,
        }


def measure(
    arms: list[str], jobs: int, seconds: float, cores: int, repeats: int
) -> list[dict[str, Any]]:
    """One row per arm: medians over the repeats, and ratios to the first arm."""
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for _ in range(repeats):
        for arm in arms:
            runs[arm].append(run_once(arm, jobs, seconds, cores))
    rows = [
        {
            "arm": arm,
            "runs": len(rs),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "timers_cancelled": [r["timers_cancelled"] for r in rs],
            "timers_left": [r["timers_left"] for r in rs],
        }
        for arm, rs in runs.items()
    ]
    for r in rows:
        r["cpu_vs_first"] = r["cpu_s"] / rows[0]["cpu_s"]
        r["wall_vs_first"] = r["wall_s"] / rows[0]["wall_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default="default,100000/10s", help="comma-separated arms")
    ap.add_argument("--jobs", type=int, default=135, help="jobs (the default run: 135 unlearn)")
    ap.add_argument("--job-seconds", type=float, default=2.0, help="each job's sleep")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    rows = measure(arms, args.jobs, args.job_seconds, args.cores, args.repeats)
    print(f"{args.jobs} jobs x {args.job_seconds} s on {args.cores} cores, {args.repeats} rounds")
    print(f"{'arm':>14} {'wall s':>8} {'CPU s':>8} {'CPU/first':>10} {'wall/first':>10}  cancelled")
    for r in rows:
        print(
            f"{r['arm']:>14} {r['wall_s']:8.1f} {r['cpu_s']:8.2f} {r['cpu_vs_first']:10.2f}"
            f" {r['wall_vs_first']:10.2f}  {r['timers_cancelled']}"
        )
    if args.out:
        write_json(
            args.out,
            {
                "jobs": args.jobs,
                "job_seconds": args.job_seconds,
                "cores": args.cores,
                "repeats": args.repeats,
                "machine": machine(),
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
