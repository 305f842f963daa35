"""What the forget-score run (config/forgetting.yaml) costs: run it from a fresh results folder
and report its wall time and the CPU of every rule; or estimate the full run from a smaller one.

Two modes, each printing a table and writing JSON with ``--out`` (and markdown with ``--out-md``):

1. Run (default): delete the config's results folder (``--keep`` leaves it), start
   ``snakemake --cores CORES --configfile config/forgetting.yaml [OVERLAY ...]`` as a child,
   and time it: wall seconds, the CPU of every process of the run (Snakemake and all it started,
   the fork server and its workers included, from ``wait4``), then the jobs' own CPU per rule
   from their records (``bench_pipeline.py --from-results``). The machine's load average before
   and after is printed: on a shared machine the wall time is not the idle one, the CPU seconds
   nearly are.

2. ``--estimate-from RESULTS``: the CPU per job of each rule in a finished smaller run (e.g.
   N = 4) times each rule's job count in the target config (a dry run; default the full
   N = 32), plus Snakemake's own CPU per job, over ``--cores`` cores at the smaller run's
   parallel efficiency; then the smaller run's tail (its last compute job to its end:
   aggregate, report, MLflow) scaled by the groups' ratio (:func:`estimate`).

    python benchmarks/bench_forgetting.py --out results/bench_forgetting.json          # N = 32
    python benchmarks/bench_forgetting.py --overlay .test/forgetting-n4.yaml           # N = 4
    python benchmarks/bench_forgetting.py --estimate-from results/forgetting-n4     # N = 32?
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_pipeline import print_results, read_results
from common import ROOT, machine, read_config, write_json  # before pbu (sys.path)

CONFIG = "config/forgetting.yaml"


def snakemake_cmd(cores: int, overlays: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(cores),
        "--configfile",
        CONFIG,
        *overlays,
        *extra,
    ]


def job_counts(overlays: list[str]) -> dict[str, int]:
    """Jobs per rule that a fresh run of the config would run (a dry run's "Job stats")."""
    proc = subprocess.run(
        snakemake_cmd(1, overlays, "-n", "--forceall", "--quiet", "rules"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    out = proc.stdout + proc.stderr
    counts = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) not in ("total", "all"):
            counts[m.group(1)] = int(m.group(2))
    if not counts:
        raise SystemExit(f"bench_forgetting: no job stats in the dry run's output:\n{out[-2000:]}")
    return counts


def run(cores: int, overlays: list[str], keep: bool) -> dict[str, Any]:
    """Run the config once from a fresh results folder (unless ``keep``) and time it."""
    results = ROOT / read_config(*[ROOT / CONFIG, *[ROOT / o for o in overlays]])["results"]
    if results.exists() and not keep:
        shutil.rmtree(results)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(snakemake_cmd(cores, overlays), cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_forgetting: snakemake failed ({status}); see its output above")
    rep = read_results(results)
    job_cpu = sum(a["total_cpu_s"] or 0.0 for a in rep["per_rule"].values())
    return {
        "results": str(results),
        "cores": cores,
        "overlays": overlays,
        "wall_s": wall,
        "snakemake_cpu_s": usage.ru_utime + usage.ru_stime,
        "job_cpu_s": job_cpu,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "jobs": rep["jobs"],
        "per_rule": rep["per_rule"],
    }


#: Snakemake's own CPU per job on the idle 2-core machine (12.3 s for the default run's 171
#: jobs with the workflow profile's rate limit; benchmarks/README.md, bench_scheduler.py).
SNAKEMAKE_CPU_PER_JOB = 12.3 / 171
#: The rules that run after every compute job, one after the other: their time is the tail.
TAIL_RULES = ("aggregate", "report", "track", "track_report")


def _tail(results: Path) -> tuple[float, float]:
    """(seconds from the last compute job's end to the run's end, the compute jobs' mean
    parallelism) of a finished run, from its files' times: the end is tracked_report.json."""
    from pbu import layout

    rep = read_results(results)
    compute = [j for j in rep["job_list"] if j["rule"] not in TAIL_RULES]
    last = max(j["end"] for j in compute)
    end = Path(layout.path("tracked_report", results)).stat().st_mtime
    span = last - min(j["end"] - j["s"] for j in compute)
    return end - last, sum(j["s"] for j in compute) / span


def estimate(results: Path, cores: int, target: list[str]) -> dict:
    """The full run's wall time from a smaller finished run, rule by rule.

    - compute: each rule's measured CPU per job x its job count in the target config (a dry
      run), plus Snakemake's own CPU per job; divided by ``cores`` and by the smaller run's
      parallel efficiency (its compute jobs' mean parallelism / ``cores``);
    - tail: the smaller run's time from its last compute job to its end (aggregate, report,
      MLflow), x the ratio of the groups' counts (MLflow's runs grow with the groups, and it
      dominates the tail).
    """
    rep = read_results(results)
    counts = job_counts(target)
    rows, total = {}, 0.0
    for rule, n in sorted(counts.items()):
        a = rep["per_rule"].get(rule)
        per_job = a["mean_cpu_s"] if a and a.get("mean_cpu_s") is not None else None
        rows[rule] = {"jobs": n, "cpu_per_job_s": per_job, "cpu_s": None}
        if per_job is not None:
            rows[rule]["cpu_s"] = per_job * n
            total += per_job * n
    missing = [r for r, v in rows.items() if v["cpu_s"] is None]
    jobs = sum(counts.values())
    tail, parallelism = _tail(results)
    groups = counts["evaluate"] / rep["per_rule"]["evaluate"]["jobs"]
    efficiency = min(1.0, parallelism / cores)
    compute_s = (total + SNAKEMAKE_CPU_PER_JOB * jobs) / cores / efficiency
    return {
        "from": str(results),
        "target": target or [CONFIG],
        "cores": cores,
        "per_rule": rows,
        "job_cpu_s": total,
        "snakemake_cpu_s": SNAKEMAKE_CPU_PER_JOB * jobs,
        "parallel_efficiency": efficiency,
        "compute_wall_s": compute_s,
        "tail_s_measured": tail,
        "tail_scale": groups,
        "tail_s": tail * groups,
        "lower_bound_wall_s": total / cores,
        "estimated_wall_s": compute_s + tail * groups,
        "rules_without_cpu": missing,  # local rules and the tail: in tail_s
    }


def print_run(r: dict[str, Any]) -> None:
    print(
        f"\n{CONFIG} {' '.join(r['overlays'])}: {r['wall_s']:.0f} s wall "
        f"({r['wall_s'] / 60:.1f} min) on {r['cores']} cores; jobs' own CPU "
        f"{r['job_cpu_s']:.0f} s, every process of the run {r['snakemake_cpu_s']:.0f} s; load "
        f"average "
        f"{r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after"
    )
    print_results({**read_results(Path(r["results"])), "results": r["results"]})


def print_estimate(e: dict[str, Any]) -> None:
    print(f"\nestimate for {' + '.join(e['target'])} from {e['from']} on {e['cores']} cores:")
    print(f"  {'rule':14s} {'jobs':>6s} {'CPU s/job':>10s} {'CPU s':>9s}")
    for rule, v in e["per_rule"].items():
        per, cpu = v["cpu_per_job_s"], v["cpu_s"]
        per_s = "-" if per is None else f"{per:.2f}"
        cpu_s = "-" if cpu is None else f"{cpu:.0f}"
        print(f"  {rule:14s} {v['jobs']:6d} {per_s:>10s} {cpu_s:>9s}")
    print(f"  {_summary_line(e)}")


def _summary_line(e: dict[str, Any]) -> str:
    return (
        f"jobs' CPU {e['job_cpu_s']:.0f} s + Snakemake's {e['snakemake_cpu_s']:.0f} s on "
        f"{e['cores']} cores at the measured parallel efficiency "
        f"{e['parallel_efficiency']:.2f}: {e['compute_wall_s'] / 60:.1f} min; then the tail "
        f"(aggregate, report, MLflow) {e['tail_s_measured']:.0f} s x {e['tail_scale']:.0f} = "
        f"{e['tail_s'] / 60:.1f} min; estimated wall {e['estimated_wall_s'] / 60:.1f} min "
        f"(no less than {e['lower_bound_wall_s'] / 60:.1f} min of job CPU per core)"
    )


def markdown(result: dict[str, Any]) -> str:
    lines = ["# bench_forgetting", ""]
    if "run" in result:
        r = result["run"]
        lines += [
            f"`snakemake --cores {r['cores']} --configfile {CONFIG} {' '.join(r['overlays'])}`: "
            f"**{r['wall_s']:.0f} s** wall, jobs' own CPU {r['job_cpu_s']:.0f} s, every process "
            f"of the run {r['snakemake_cpu_s']:.0f} s, load {r['load_before'][0]:.1f} → "
            f"{r['load_after'][0]:.1f}.",
            "",
            "| rule | jobs | wall s | CPU s | CPU s/job |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for rule, a in sorted(r["per_rule"].items(), key=lambda kv: -(kv[1]["total_cpu_s"] or 0)):
            cpu, n = a["total_cpu_s"], a["jobs"]
            lines.append(
                f"| {rule} | {n} | {a['total_s']:.0f} | "
                f"{'-' if cpu is None else f'{cpu:.0f}'} | "
                f"{'-' if cpu is None else f'{cpu / n:.2f}'} |"
            )
        lines.append("")
    if "estimate" in result:
        e = result["estimate"]
        lines += [
            f"Estimate for {' + '.join(e['target'])} from `{e['from']}`: {_summary_line(e)}.",
            "",
            "| rule | jobs | CPU s/job (measured) | CPU s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for rule, v in e["per_rule"].items():
            per, cpu = v["cpu_per_job_s"], v["cpu_s"]
            lines.append(
                f"| {rule} | {v['jobs']} | {'-' if per is None else f'{per:.2f}'} | "
                f"{'-' if cpu is None else f'{cpu:.0f}'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--overlay", action="append", default=[], help="config merged over the forgetting config"
    )
    p.add_argument("--keep", action="store_true", help="do not delete the results folder first")
    p.add_argument("--estimate-from", default=None, metavar="RESULTS", help="mode 2")
    p.add_argument("--out", default=None)
    p.add_argument("--out-md", default=None)
    args = p.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "bench_forgetting", "machine": machine()}
    if args.estimate_from:
        result["estimate"] = estimate(Path(args.estimate_from), args.cores, args.overlay)
        print_estimate(result["estimate"])
    else:
        result["run"] = run(args.cores, args.overlay, args.keep)
        print_run(result["run"])
    if args.out:
        print(f"wrote {write_json(args.out, result)}")
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(markdown(result))
        print(f"wrote {args.out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
