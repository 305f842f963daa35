"""What unlearning costs next to retraining, and where a pipeline run spends its time.

Three modes, each printing a table and optionally writing JSON (``--out``) / markdown
(``--out-md``):

1. Side by side (default). In ONE process, on one device, with the config's hyperparameters:
   train the original model (the config's ``pretrain`` recipe), then per forget class time

   - the oracle: ``train_model`` on the retained classes, same recipe, from scratch;
   - PBU end to end: ``pbu.fisher.fisher_diagonal`` on the forget class + ``pbu.methods.run``;
   - every other selected method through the same harness (``build_inputs`` + ``run``),

   and print each method's time / the oracle's time, per class and the mean ("method time /
   oracle time per model"). Each time is taken twice: wall clock and this process's CPU time. On
   a shared machine the CPU-time ratio is the steadier of the two (other people's jobs stretch
   wall clock, not the CPU seconds a single-threaded job needs); the two agree on an idle one.
   Evaluation is never inside a timed span (no monitor; accuracies are measured afterwards, as
   a sanity check that each model did what its method is for).

2. ``--from-results RESULTS``: the per-rule breakdown of a finished pipeline run, from Snakemake's
   benchmark files (``RESULTS/benchmarks/**.tsv``: s, h:m:s, max_rss, ..., cpu_time) and each
   job's own ``info.json`` / ``fisher.json`` / ``metrics.json`` (``time_s``, ``peak_rss_mb``):
   jobs, total and mean seconds, max RSS per rule; how much of each job is outside its own timed
   work (start-up, loading, saving, monitoring); the span of the run vs the sum of job times.

3. ``--startup``: the fixed cost every job pays before it works: ``python -c pass``,
   ``import torch``, ``import pbu.cli``, ``pbu --help`` and the imports of each ``pbu`` command,
   median of ``--startup-repeats`` fresh interpreters each, plus a ``python -X importtime``
   breakdown by top-level package (which heavy packages each command pulls in).

    python benchmarks/bench_pipeline.py --out results/bench_pipeline.json
    python benchmarks/bench_pipeline.py --dataset fashion_mnist \
        --source /usr/share/datasets/fashion-mnist --subset 2000 --out results/bench_fmnist.json
    python benchmarks/bench_pipeline.py --from-results results --out-md results/benchmarks.md
    python benchmarks/bench_pipeline.py --startup --from-results results   # both, one page
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, Clock, machine, read_config, write_json  # before pbu (sys.path)

from pbu import layout

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
BASE_CONFIG = ROOT / "config" / "config.yaml"
PBU_TARGET = 0.05  # the issue's target: PBU end to end <= 5 % of retraining


# ------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------


def load_config(configfiles: list[str], dataset: str | None) -> tuple[dict[str, Any], list[str]]:
    """config/config.yaml with ``configfiles`` merged over it, validated by the project's schema.

    ``--dataset X`` without a config file merges ``config/paper/X.yaml`` when there is one (its
    recipe and hyperparameters are the ones the pipeline would use for X)."""
    from pbu.config import check_config

    if not configfiles and dataset:
        paper = ROOT / "config" / "paper" / f"{dataset}.yaml"
        if paper.exists():
            configfiles = [str(paper)]
    files = [str(BASE_CONFIG), *configfiles]
    cfg = read_config(*configfiles)
    if dataset:
        cfg["dataset"] = dataset
    return check_config(cfg, SCHEMA, check_results=False), files


# ------------------------------------------------------------------------------------------
# mode 1: side by side
# ------------------------------------------------------------------------------------------


def side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pbu import methods
    from pbu.config import base_method, method_hparams
    from pbu.data import class_split, load_dataset, stratified_subset
    from pbu.evaluation import EvalData
    from pbu.fisher import fisher_diagonal
    from pbu.models import build_model
    from pbu.models import model_args as build_args
    from pbu.registry import resolve_stem
    from pbu.train import TrainRecipe, evaluate_accuracy, seed_everything, train_model

    cfg, files = load_config(args.configfile, args.dataset)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    source = args.source or cfg["data"]["source"]
    train, test = load_dataset(
        cfg["dataset"],
        args.root or cfg["data"]["root"],
        source=source,
        download=cfg["data"]["download"],
    )
    notes = [f"config: {' + '.join(os.path.relpath(f, ROOT) for f in files)}"]
    full_train = len(train)
    if args.subset:
        train = train.subset(stratified_subset(train.labels, args.subset, seed=12345))
        notes.append(
            f"--subset {args.subset}: {len(train)} of {full_train} training images "
            f"(class-stratified); every method and the oracle see the same subset"
        )
    recipe_dict = dict(cfg["pretrain"])
    if args.epochs is not None:
        notes.append(
            f"--epochs {args.epochs}: pretrain/oracle epochs changed from "
            f"{recipe_dict['epochs']} (the oracle's time scales with them)"
        )
        recipe_dict["epochs"] = args.epochs
    recipe = TrainRecipe.from_dict(recipe_dict)
    spec = train.spec
    arch = args.arch or cfg["archs"][0]
    model_args = build_args(arch, spec, resolve_stem(arch, cfg["model"]["stem"]))  # as pretrain
    forget = [int(c) for c in args.forget.split(",")] if args.forget else cfg["forget"]
    selected = args.methods.split(",") if args.methods else list(cfg["methods"])
    if args.methods == "all":
        selected = [*sorted(cfg["hparams"]), *(cfg.get("variants") or {})]
    if "pbu" not in selected:
        selected = ["pbu", *selected]
    seeds = [int(s) for s in args.seeds.split(",")]
    fisher_cfg = cfg["fisher"]
    for n in notes:
        print(n)
    print(
        f"{cfg['dataset']} ({len(train)} train), {arch}, seeds {seeds}, forget {forget}, "
        f"device {device}, torch threads {torch.get_num_threads()}; recipe "
        f"{recipe.epochs} epochs x batch {recipe.batch_size}, channels_last "
        f"{recipe.channels_last}; methods and Fisher get the model as {args.memory_format}",
        flush=True,
    )

    def fresh_model() -> torch.nn.Module:
        return build_model(arch, weights=cfg["model"]["weights"], **model_args)

    def as_loaded(model: torch.nn.Module) -> torch.nn.Module:
        """A copy of the original in the layout the fisher/unlearn jobs load it in
        (``pbu ... --memory-format``, channels_last by default, convnets only)."""
        from pbu.jobs.common import to_memory_format

        return to_memory_format(copy.deepcopy(model), args.memory_format)

    runs: list[dict[str, Any]] = []
    originals: list[dict[str, Any]] = []
    for seed in seeds:
        seed_everything(seed)
        original = fresh_model()
        with Clock(device) as t:
            train_model(original, train, recipe, seed=seed, device=device, progress=False)
        acc = evaluate_accuracy(original, test.loader(1024, device=device))
        originals.append({"seed": seed, "wall_s": t.wall, "cpu_s": t.cpu, "test_acc": acc})
        print(
            f"seed {seed}: original trained in {t.wall:.1f} s wall / {t.cpu:.1f} s CPU, "
            f"test accuracy {acc:.1f} %",
            flush=True,
        )
        for c in forget:
            split = EvalData.build(train, test, c)
            ft = split.forget_test.loader(1024, device=device)
            rt = split.retain_test.loader(1024, device=device)

            def scores(m: torch.nn.Module, ft=ft, rt=rt) -> dict[str, float]:
                return {
                    "acc_forget_test": evaluate_accuracy(m, ft),
                    "acc_retain_test": evaluate_accuracy(m, rt),
                }

            row: dict[str, Any] = {"seed": seed, "forget": c, "methods": {}}
            # the oracle, exactly as `pbu oracle` builds it
            retain = train.subset(class_split(train.labels, c)[1])
            seed_everything(seed)
            oracle = fresh_model()
            with Clock(device) as t:
                train_model(oracle, retain, recipe, seed=seed, device=device, progress=False)
            row["oracle"] = {"wall_s": t.wall, "cpu_s": t.cpu, **scores(oracle)}
            del oracle
            # the forget-set Fisher, exactly as `pbu fisher` computes it
            forget_data = train.subset(class_split(train.labels, c)[0])
            loader = forget_data.loader(fisher_cfg["batch_size"], device=device)
            fmodel = as_loaded(original)
            with Clock(device) as t:
                fisher = fisher_diagonal(
                    fmodel,
                    loader,
                    kind=fisher_cfg["kind"],
                    bn_mode=fisher_cfg["bn_mode"],
                    mc_samples=fisher_cfg["mc_samples"],
                    chunk_size=fisher_cfg["chunk_size"],
                    seed=seed,
                )
            row["fisher"] = {"wall_s": t.wall, "cpu_s": t.cpu, "samples": len(forget_data)}
            del fmodel
            for name in selected:  # a method or a config variant (its base, its hparams)
                mspec = methods.get_method(base_method(cfg, name))
                inputs = methods.build_inputs(
                    mspec,
                    train,
                    c,
                    spec.num_classes,
                    retain_subset=cfg["retain_subset"],
                    seed=seed,
                    fisher=fisher if mspec.needs_fisher else None,
                )
                model = as_loaded(original)
                seed_everything(seed)
                with Clock(device) as t:
                    result, elapsed = methods.run(
                        mspec.name,
                        model,
                        inputs,
                        method_hparams(cfg, name),
                        device=device,
                        seed=seed,
                    )
                info = {
                    k: v
                    for k, v in result.info.items()
                    if isinstance(v, (int, float, str)) or v is None
                }
                entry = {
                    "wall_s": elapsed,
                    "cpu_s": t.cpu,
                    "needs_fisher": mspec.needs_fisher,
                    "data_access": mspec.access.label,
                    "info": info,
                    **scores(result.model),
                }
                if mspec.needs_fisher:  # end to end: the Fisher is part of the method's cost
                    entry["end_to_end_wall_s"] = elapsed + row["fisher"]["wall_s"]
                    entry["end_to_end_cpu_s"] = t.cpu + row["fisher"]["cpu_s"]
                else:
                    entry["end_to_end_wall_s"], entry["end_to_end_cpu_s"] = elapsed, t.cpu
                for clock in ("wall", "cpu"):
                    entry[f"ratio_{clock}"] = (
                        entry[f"end_to_end_{clock}_s"] / row["oracle"][f"{clock}_s"]
                    )
                row["methods"][name] = entry
                del model, result
            pbu_row = row["methods"]["pbu"]
            print(
                f"  forget {c}: oracle {row['oracle']['wall_s']:.2f} s | fisher "
                f"{row['fisher']['wall_s']:.2f} s + pbu {pbu_row['wall_s']:.2f} s "
                f"(stop at step {pbu_row['info'].get('stop_step')}) -> pbu/oracle "
                f"{100 * pbu_row['ratio_wall']:.2f} % wall, {100 * pbu_row['ratio_cpu']:.2f} % "
                f"CPU",
                flush=True,
            )
            runs.append(row)

    summary = summarise(runs, selected)
    result = {
        "benchmark": "bench_pipeline",
        "mode": "side_by_side",
        "machine": machine(device),
        "notes": notes,
        "settings": {
            "dataset": cfg["dataset"],
            "arch": arch,
            "train_samples": len(train),
            "full_train_samples": full_train,
            "seeds": seeds,
            "forget": forget,
            "methods": selected,
            "recipe": recipe.to_dict(),
            "fisher": fisher_cfg,
            "retain_subset": cfg["retain_subset"],
            "device": str(device),
            "memory_format": args.memory_format,
            "threads": torch.get_num_threads(),
            "hparams": {m: method_hparams(cfg, m) for m in selected},
        },
        "original": originals,
        "runs": runs,
        "summary": summary,
    }
    print_summary(summary)
    return result


def summarise(runs: list[dict[str, Any]], selected: list[str]) -> dict[str, Any]:
    """Per method: ratio per (seed, class), the mean over them, and the mean seconds."""
    out: dict[str, Any] = {"methods": {}}
    for name in selected:
        per = {
            f"seed{r['seed']}/forget{r['forget']}": {
                "ratio_wall": r["methods"][name]["ratio_wall"],
                "ratio_cpu": r["methods"][name]["ratio_cpu"],
            }
            for r in runs
        }
        ms = [r["methods"][name] for r in runs]
        out["methods"][name] = {
            "per_class": per,
            "mean_ratio_wall": statistics.fmean(v["ratio_wall"] for v in per.values()),
            "mean_ratio_cpu": statistics.fmean(v["ratio_cpu"] for v in per.values()),
            "mean_end_to_end_wall_s": statistics.fmean(m["end_to_end_wall_s"] for m in ms),
            "mean_end_to_end_cpu_s": statistics.fmean(m["end_to_end_cpu_s"] for m in ms),
            "mean_acc_forget_test": statistics.fmean(m["acc_forget_test"] for m in ms),
            "mean_acc_retain_test": statistics.fmean(m["acc_retain_test"] for m in ms),
            "data_access": ms[0]["data_access"],
        }
    out["oracle_mean_wall_s"] = statistics.fmean(r["oracle"]["wall_s"] for r in runs)
    out["oracle_mean_cpu_s"] = statistics.fmean(r["oracle"]["cpu_s"] for r in runs)
    out["fisher_mean_wall_s"] = statistics.fmean(r["fisher"]["wall_s"] for r in runs)
    out["fisher_mean_cpu_s"] = statistics.fmean(r["fisher"]["cpu_s"] for r in runs)
    out["oracle_acc_forget_test"] = statistics.fmean(r["oracle"]["acc_forget_test"] for r in runs)
    out["oracle_acc_retain_test"] = statistics.fmean(r["oracle"]["acc_retain_test"] for r in runs)
    for clock in ("wall", "cpu"):  # PBU's two parts, each over the oracle
        out[f"fisher_over_oracle_{clock}"] = statistics.fmean(
            r["fisher"][f"{clock}_s"] / r["oracle"][f"{clock}_s"] for r in runs
        )
        out[f"pbu_unlearn_over_oracle_{clock}"] = statistics.fmean(
            r["methods"]["pbu"][f"{clock}_s"] / r["oracle"][f"{clock}_s"] for r in runs
        )
    pbu = out["methods"]["pbu"]
    out["pbu_over_oracle_wall"] = pbu["mean_ratio_wall"]
    out["pbu_over_oracle_cpu"] = pbu["mean_ratio_cpu"]
    out["pbu_target"] = PBU_TARGET
    out["pbu_target_met"] = max(pbu["mean_ratio_wall"], pbu["mean_ratio_cpu"]) <= PBU_TARGET
    return out


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"\nmethod time / oracle time (oracle: {summary['oracle_mean_wall_s']:.2f} s wall, "
        f"{summary['oracle_mean_cpu_s']:.2f} s CPU, mean; PBU includes the Fisher, "
        f"{summary['fisher_mean_wall_s']:.2f} s):"
    )
    classes = list(next(iter(summary["methods"].values()))["per_class"])
    print(
        f"  {'method':16s} "
        + " ".join(f"{c:>20s}" for c in classes)
        + f" {'mean wall':>10s} {'mean CPU':>9s} {'A_Df':>6s} {'A_Dr':>6s}"
    )
    for name, m in sorted(summary["methods"].items(), key=lambda kv: kv[1]["mean_ratio_cpu"]):
        cells = " ".join(
            f"{100 * v['ratio_wall']:9.2f}/{100 * v['ratio_cpu']:.2f} %".rjust(20)
            for v in m["per_class"].values()
        )
        print(
            f"  {name:16s} {cells} {100 * m['mean_ratio_wall']:9.2f}% "
            f"{100 * m['mean_ratio_cpu']:8.2f}% {m['mean_acc_forget_test']:6.1f} "
            f"{m['mean_acc_retain_test']:6.1f}"
        )
    print(
        f"  {'oracle':16s} " + " " * (21 * len(classes)) + f"{100:9.2f}% {100:8.2f}% "
        f"{summary['oracle_acc_forget_test']:6.1f} {summary['oracle_acc_retain_test']:6.1f}"
    )
    print(
        "  (cells: wall / CPU ratio; A_Df / A_Dr: mean test accuracy on the forgotten / "
        "retained classes, %)"
    )
    print(
        f"PBU end to end / oracle: {100 * summary['pbu_over_oracle_wall']:.2f} % wall, "
        f"{100 * summary['pbu_over_oracle_cpu']:.2f} % CPU (target <= "
        f"{100 * PBU_TARGET:.0f} %: {'met' if summary['pbu_target_met'] else 'NOT met'}); "
        f"of which the Fisher {100 * summary['fisher_over_oracle_wall']:.2f} % / "
        f"{100 * summary['fisher_over_oracle_cpu']:.2f} % and the unlearning "
        f"{100 * summary['pbu_unlearn_over_oracle_wall']:.2f} % / "
        f"{100 * summary['pbu_unlearn_over_oracle_cpu']:.2f} %"
    )


# ------------------------------------------------------------------------------------------
# mode 2: a finished pipeline run
# ------------------------------------------------------------------------------------------

# job (pbu/layout.py; each job is named as its rule) -> the file in which it recorded its own
# time_s
RECORDS = {
    "pretrain": ("pretrain_info", {}),
    "oracle": ("info", {"method": layout.ORACLE}),
    "fisher": ("fisher_info", {}),
    "unlearn": ("info", {}),
    "tune": ("tune", {}),
    "evaluate": ("metrics", {}),
    "ceiling": ("ceiling_info", {}),
    "forget_score": ("forget_score_info", {}),
}


def _batch_records(tsv: Path) -> list[dict[str, Any]]:
    """The records of the methods an ``unlearn_batch`` job ran (config unlearn_batch): its
    group's ``<method>/info.json`` files that say ``batch``; each holds that method's own CPU
    seconds and time."""
    found = layout.parse_job(tsv)
    group = Path(layout.path("group_dir", found.root, **found.wildcards))
    out = []
    for info in sorted(group.glob("*/info.json")):
        try:
            rec = json.loads(info.read_text())
        except json.JSONDecodeError:
            continue
        if rec.get("batch"):
            out.append(rec)
    return out


def _num(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _job_of(tsv: Path) -> tuple[str, str, Path | None]:
    """(rule, job name, the file holding the job's own record) of a benchmark file: its place
    in the results layout; an unlearn job is named by its method."""
    try:
        found = layout.parse_job(tsv)
    except layout.LayoutError:  # not a file the pipeline writes: named by its stem, no record
        return tsv.stem, tsv.stem, None
    rule = found.name
    name = found.wildcards["method"] if found.name == "unlearn" else rule
    record = RECORDS.get(found.name)
    return rule, name, found.file(record[0], **record[1]) if record else None


def read_results(results: Path) -> dict[str, Any]:
    """Every benchmark file of a run, joined with the job's own record."""
    bench = results / layout.BENCHMARKS
    if not bench.is_dir():
        raise SystemExit(f"bench_pipeline: {bench} does not exist (no finished pipeline run)")
    server = fork_server_startup(results)
    jobs = []
    for tsv in sorted(bench.rglob("*.tsv")):
        rel = tsv.relative_to(bench)
        with open(tsv, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue
        last = rows[-1]  # snakemake --benchmark-repeats writes one row per repeat
        rule, name, own = _job_of(tsv)
        job: dict[str, Any] = {
            "rule": rule,
            "name": name,
            "path": str(rel),
            "s": _num(last.get("s")),
            "cpu_time": _num(last.get("cpu_time")),
            "max_rss_mb": _num(last.get("max_rss")),
            "mean_load": _num(last.get("mean_load")),
            "end": tsv.stat().st_mtime,
        }
        if rule == "unlearn_batch":  # one job, one record per method it ran: their sum
            recs = _batch_records(tsv)
            if recs and all(_num(r.get("cpu_s")) is not None for r in recs):
                job["time_s"] = sum(_num(r.get("time_s")) or 0.0 for r in recs)
                if all(r.get("fork_server") for r in recs):
                    job["cpu_time"] = (job["cpu_time"] or 0.0) + sum(r["cpu_s"] for r in recs)
                    job["fork_server"] = True
                job["peak_rss_mb"] = max(_num(r.get("peak_rss_mb")) or 0.0 for r in recs)
                job["methods"] = len(recs)
            elif server:
                job["cpu_time"] = job["max_rss_mb"] = None
            jobs.append(job)
            continue
        if server and not (own and own.exists()):
            # served by a worker Snakemake cannot see, and no own record of CPU or memory
            job["cpu_time"] = job["max_rss_mb"] = None
        if own and own.exists():
            try:
                rec = json.loads(own.read_text())
            except json.JSONDecodeError:
                rec = {}
            job["time_s"] = _num(rec.get("time_s", rec.get("total_time_s")))  # tune: total
            job["base_method"] = rec.get("base_method")  # a config variant's method
            if rec.get("fork_server") and _num(rec.get("cpu_s")) is not None:
                # A fork-server worker is not the benchmarked process's child: Snakemake saw
                # only the thin `pbu` client, so add the CPU the worker measured itself.
                job["cpu_time"] = (job["cpu_time"] or 0.0) + _num(rec["cpu_s"])
                job["fork_server"] = True
            job["peak_rss_mb"] = _num(rec.get("peak_rss_mb"))
            job["peak_gpu_mb"] = _num(rec.get("peak_gpu_mb"))
        jobs.append(job)
    if not jobs:
        raise SystemExit(f"bench_pipeline: no benchmark files under {bench}")

    def agg(group: list[dict[str, Any]]) -> dict[str, Any]:
        s = [j["s"] for j in group if j["s"] is not None]
        own = [
            (j["s"], j["time_s"])
            for j in group
            if j.get("time_s") is not None and j["s"] is not None
        ]
        cpu = [j["cpu_time"] for j in group if j["cpu_time"] is not None]
        rss = [j[k] for j in group for k in ("max_rss_mb", "peak_rss_mb") if j.get(k)]
        out = {
            "jobs": len(group),
            "total_s": sum(s),
            "mean_s": statistics.fmean(s) if s else None,
            "max_s": max(s) if s else None,
            "max_rss_mb": max(rss) if rss else None,
            "total_cpu_s": sum(cpu) if cpu else None,
            "mean_cpu_s": statistics.fmean(cpu) if cpu else None,
        }
        if own:
            work = sum(t for _, t in own)
            job_s = sum(s_ for s_, _ in own)
            out["own_time_s"] = work
            out["outside_own_time_frac"] = 1 - work / job_s if job_s > 0 else None
            out["mean_outside_own_time_s"] = (job_s - work) / len(own)
        gpu = [j["peak_gpu_mb"] for j in group if j.get("peak_gpu_mb")]
        if gpu:
            out["max_gpu_mb"] = max(gpu)
        return out

    rules: dict[str, list[dict[str, Any]]] = {}
    for j in jobs:
        rules.setdefault(j["rule"], []).append(j)
    per_rule = {r: agg(g) for r, g in rules.items()}
    unlearn = [j for j in jobs if j["rule"] == "unlearn"]
    per_method = {}
    for j in unlearn:
        per_method.setdefault(j["name"], []).append(j)
    per_method_agg = {m: agg(g) for m, g in per_method.items()}
    ratios = ratios_vs_oracle(jobs)
    starts = [j["end"] - j["s"] for j in jobs if j["s"] is not None]
    span = max(j["end"] for j in jobs) - min(starts)
    total = sum(j["s"] for j in jobs if j["s"] is not None)
    return {
        "results": str(results),
        "jobs": len(jobs),
        "per_rule": per_rule,
        "fork_server": server,
        "per_method": per_method_agg,
        "sum_job_s": total,
        "span_s": span,
        "parallelism": total / span if span > 0 else None,
        "ratios_vs_oracle": ratios,
        "job_list": jobs,
    }


def fork_server_startup(results: Path) -> dict[str, Any] | None:
    """The fork server's one-time start-up (wall, CPU) and how many jobs it served, from its
    log (``results/logs/pbu-server.log``); None when the run did not use one."""
    import re

    log = Path(layout.log("server", results))
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    starts = re.findall(r"preloaded \d+ modules in ([\d.]+) s \(([\d.]+) s CPU\)", text)
    if not starts:
        return None
    wall, cpu = (float(v) for v in starts[-1])
    return {
        "startup_s": wall,
        "startup_cpu_s": cpu,
        "starts": len(starts),
        "jobs_served": len(re.findall(r"worker \d+: pbu ", text)),
    }


def ratios_vs_oracle(jobs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method, the mean over forget groups of (its job [+ the fisher job for methods that
    need the Fisher]) / the group's oracle job: by job wall time, job CPU time and the jobs' own
    ``time_s``."""
    from pbu.registry import METHODS_NEEDING_FISHER  # torch-free

    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for j in jobs:
        if j["rule"] in ("unlearn", "oracle", "fisher"):
            groups.setdefault(str(Path(j["path"]).parent), {})[j["name"]] = j
    per: dict[str, dict[str, list[float]]] = {}
    for g in groups.values():
        oracle = g.get("oracle")
        if oracle is None:
            continue
        for name, j in g.items():
            if name in ("oracle", "fisher") or j["rule"] != "unlearn":
                continue
            parts = [j] + (
                [g["fisher"]]
                if (j.get("base_method") or name) in METHODS_NEEDING_FISHER and "fisher" in g
                else []
            )
            for key, field in (("job_wall", "s"), ("job_cpu", "cpu_time"), ("own", "time_s")):
                vals = [p.get(field) for p in parts]
                if all(v is not None for v in vals) and oracle.get(field):
                    per.setdefault(name, {}).setdefault(key, []).append(sum(vals) / oracle[field])
    return {
        m: {k: statistics.fmean(v) for k, v in d.items()} | {"groups": len(d["job_wall"])}
        for m, d in per.items()
        if "job_wall" in d
    }


def read_snakemake_log(path: Path) -> dict[str, Any]:
    """Total elapsed time and finished jobs from a Snakemake log (.snakemake/log/*.log)."""
    import re

    text = path.read_text(errors="replace")
    out: dict[str, Any] = {"log": str(path), "finished_jobs": text.count("Finished job")}
    m = re.search(r"Elapsed time: (?:(\d+) days?, )?(\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if m:
        days, h, mi, sec = m.groups()
        out["elapsed_s"] = int(days or 0) * 86400 + int(h) * 3600 + int(mi) * 60 + float(sec)
    return out


def print_results(rep: dict[str, Any]) -> None:
    print(
        f"\n{rep['results']}: {rep['jobs']} benchmarked jobs; sum of job times "
        f"{rep['sum_job_s']:.1f} s; span first start -> last end {rep['span_s']:.1f} s "
        f"(from file times; local rules download/track are not benchmarked); mean jobs in "
        f"parallel {rep['parallelism'] or float('nan'):.2f}"
    )
    if "snakemake_log" in rep and "elapsed_s" in rep["snakemake_log"]:
        sl = rep["snakemake_log"]
        print(
            f"  snakemake log: {sl['finished_jobs']} finished jobs, elapsed "
            f"{sl['elapsed_s']:.1f} s; sum of benchmarked job times / elapsed = "
            f"{rep['sum_job_s'] / sl['elapsed_s']:.2f}"
        )
    if rep.get("fork_server"):
        fs = rep["fork_server"]
        print(
            f"  fork server: started {fs['starts']}x, {fs['startup_s']:.1f} s "
            f"({fs['startup_cpu_s']:.1f} s CPU) to preload, then served {fs['jobs_served']} "
            f"jobs; their CPU seconds are the workers' own (cpu_s in the job records)"
        )
    print(
        f"  {'rule':12s} {'jobs':>5s} {'total s':>9s} {'mean s':>8s} {'max s':>7s} "
        f"{'CPU s':>8s} {'mean CPU':>8s} {'max RSS MB':>10s} {'outside own time_s':>19s}"
    )
    nan = float("nan")
    for rule, a in sorted(rep["per_rule"].items(), key=lambda kv: -kv[1]["total_s"]):
        frac = a.get("outside_own_time_frac")
        print(
            f"  {rule:12s} {a['jobs']:5d} {a['total_s']:9.1f} {a['mean_s']:8.2f} "
            f"{a['max_s']:7.2f} {_or(a['total_cpu_s'], nan):8.1f} "
            f"{_or(a['mean_cpu_s'], nan):8.2f} {_or(a['max_rss_mb'], nan):10.0f} "
            + (
                f"{100 * frac:8.1f} % ({a['mean_outside_own_time_s']:.2f} s/job)"
                if frac is not None
                else f"{'-':>19s}"
            )
        )
    if rep["ratios_vs_oracle"]:
        print(
            "  method / oracle job (PBU + its fisher job), mean over groups: "
            "job wall, job CPU, own time_s"
        )
        for m, r in sorted(rep["ratios_vs_oracle"].items(), key=lambda kv: kv[1]["job_wall"]):
            print(
                f"    {m:16s} {100 * r['job_wall']:7.1f} % "
                f"{100 * r.get('job_cpu', math.nan):7.1f} % "
                f"{100 * r.get('own', math.nan):7.1f} %   ({r['groups']} groups)"
            )


def _or(v: float | None, default: float) -> float:
    return default if v is None else v


def results_markdown(
    rep: dict[str, Any] | None,
    startup: dict[str, Any] | None,
    share: dict[str, float] | None = None,
) -> str:
    lines = [
        "# Where the pipeline spends its time",
        "",
        "Generated by `python benchmarks/bench_pipeline.py` (see benchmarks/README.md).",
        "",
    ]
    if rep is not None:
        lines += [
            f"## Per rule ({rep['results']})",
            "",
            f"{rep['jobs']} benchmarked jobs. Sum of job times {rep['sum_job_s']:.1f} s; span from "
            f"the first job's start to the last job's end {rep['span_s']:.1f} s (from the "
            f"benchmark files' times; the local rules download and track are not benchmarked), "
            f"so on average {rep['parallelism'] or float('nan'):.2f} jobs ran at once."
            + (
                f" Snakemake's log: {rep['snakemake_log']['finished_jobs']} finished jobs, "
                f"elapsed {rep['snakemake_log']['elapsed_s']:.1f} s (sum of job times / elapsed "
                f"= {rep['sum_job_s'] / rep['snakemake_log']['elapsed_s']:.2f})."
                if "elapsed_s" in rep.get("snakemake_log", {})
                else ""
            ),
            "",
            "\"Outside own time\" is the part of a job's wall time (Snakemake's `s`) not in the "
            "`time_s` the job recorded for its own work: interpreter and import start-up, loading "
            "data and checkpoints, saving, and for `unlearn` the harness's monitoring.",
            "",
            "Wall seconds are Snakemake's `s`; CPU seconds its `cpu_time` (user + system of the "
            "job's processes), which other jobs on a shared machine do not stretch.",
            "",
            *(
                [
                    f"Fork server (pbu/forkserver.py): started {rep['fork_server']['starts']}x, "
                    f"{rep['fork_server']['startup_s']:.1f} s "
                    f"({rep['fork_server']['startup_cpu_s']:.1f} s CPU) to preload torch and pbu "
                    "once, then served "
                    f"{rep['fork_server']['jobs_served']} jobs. A served job's CPU seconds are "
                    "Snakemake's `cpu_time` of the thin `pbu` client plus the `cpu_s` its worker "
                    "measured itself (the worker is the server's child, which Snakemake's "
                    "benchmark does not see); its wall time is Snakemake's, unchanged.",
                    "",
                ]
                if rep.get("fork_server")
                else []
            ),
            "| rule | jobs | total s | mean s | max s | total CPU s | mean CPU s | max RSS MB "
            "| outside own time |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for rule, a in sorted(rep["per_rule"].items(), key=lambda kv: -kv[1]["total_s"]):
            frac = a.get("outside_own_time_frac")
            lines.append(
                f"| {rule} | {a['jobs']} | {a['total_s']:.1f} | {a['mean_s']:.2f} | "
                f"{a['max_s']:.2f} | {_or(a['total_cpu_s'], math.nan):.1f} | "
                f"{_or(a['mean_cpu_s'], math.nan):.2f} | {_or(a['max_rss_mb'], math.nan):.0f} | "
                + (
                    f"{100 * frac:.0f} % ({a['mean_outside_own_time_s']:.2f} s/job) |"
                    if frac is not None
                    else "- |"
                )
            )
        if rep["ratios_vs_oracle"]:
            lines += [
                "",
                "### Method / oracle, from the jobs of this run",
                "",
                "Per forget group, the method's job (PBU: plus its fisher job) divided by "
                'the group\'s oracle job; mean over groups. "Own" uses the `time_s` each '
                "job records for its work alone (start-up, I/O and monitoring excluded; the "
                "oracle's includes its per-epoch test evaluation).",
                "",
                "| method | groups | job wall | job CPU | own time_s |",
                "| --- | ---: | ---: | ---: | ---: |",
            ]
            for m, r in sorted(rep["ratios_vs_oracle"].items(), key=lambda kv: kv[1]["job_wall"]):
                lines.append(
                    f"| {m} | {r['groups']} | {100 * r['job_wall']:.1f} % | "
                    f"{100 * r.get('job_cpu', math.nan):.1f} % | "
                    f"{100 * r.get('own', math.nan):.1f} % |"
                )
        if rep["per_method"]:
            lines += [
                "",
                "### unlearn, per method",
                "",
                "| method | jobs | mean s (job) | mean CPU s (job) | mean own time_s "
                "| max RSS MB |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            for m, a in sorted(rep["per_method"].items(), key=lambda kv: kv[1]["mean_s"]):
                own = a.get("own_time_s")
                lines.append(
                    f"| {m} | {a['jobs']} | {a['mean_s']:.2f} | "
                    f"{_or(a['mean_cpu_s'], math.nan):.2f} | "
                    f"{own / a['jobs'] if own is not None else math.nan:.2f} | "
                    f"{_or(a['max_rss_mb'], math.nan):.0f} |"
                )
        lines.append("")
    if startup is not None:
        lines += startup_markdown(startup)
    if share:
        lines += [
            "Start-up (a fresh interpreter plus the command's imports) as a share of the "
            "rule's mean job time in the run above:",
            "",
            "| rule | start-up / mean job (wall) | start-up / mean job (CPU) |",
            "| --- | ---: | ---: |",
        ]
        lines += [
            f"| {r} | {100 * v['wall']:.0f} % | {100 * v.get('cpu', math.nan):.0f} % |"
            for r, v in share.items()
        ]
        lines.append("")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# mode 3: start-up cost
# ------------------------------------------------------------------------------------------

# What each pbu command imports before it works (its job module of pbu.jobs, plus what main()
# and build_parser() import for every command).
_CLI = "import pbu.cli as c; c.build_parser(); from pbu.checkpoint import CheckpointError; "
COMMAND_IMPORTS = {
    "pretrain": _CLI + "import pbu.jobs.train",
    "oracle": _CLI + "import pbu.jobs.train",
    "fisher": _CLI + "import pbu.jobs.fisher",
    "unlearn": _CLI + "import pbu.jobs.unlearn; pbu.jobs.unlearn.methods.get_method('pbu')",
    "evaluate": _CLI + "import pbu.jobs.evaluate",
    "aggregate": _CLI + "import pbu.jobs.results, pbu.aggregate",
    "report": _CLI + "import pbu.jobs.results, pbu.report",
}
HEAVY = (
    "torch",
    "torchvision",
    "sklearn",
    "scipy",
    "pandas",
    "numpy",
    "mlflow",
    "matplotlib",
    "seaborn",
    "mlxtend",
    "PIL",
    "yaml",
    "jsonschema",
    "tqdm",
)


def _median_run(cmd: list[str], repeats: int) -> tuple[float, float]:
    """Median wall and median CPU (user + system) seconds of ``cmd`` in a fresh process."""
    import resource

    walls, cpus = [], []
    for _ in range(repeats):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(
            cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
        )
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def importtime(code: str) -> dict[str, Any]:
    """Which heavy packages a snippet imports, each with its cumulative import time (s).

    A package's time includes what it imports itself (torch includes numpy), so the figures
    overlap; ``total_s`` is the whole snippet's import time."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, float] = {}
    total = 0.0
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3:
            continue
        try:
            cumulative = int(parts[1]) / 1e6
        except ValueError:  # the header line
            continue
        name = parts[2][1:]  # after "| "; nesting is 2 spaces per level
        if not name.startswith(" "):
            total += cumulative
        name = name.strip()
        if name in HEAVY and name not in found:
            found[name] = cumulative
    heavy = {k: round(v, 3) for k, v in sorted(found.items(), key=lambda kv: -kv[1])}
    return {"total_s": round(total, 3), "top_level_s": heavy}


def startup(repeats: int, commands: list[str] | None = None) -> dict[str, Any]:
    py = sys.executable
    pbu_script = Path(py).with_name("pbu")
    help_cmd = (
        [str(pbu_script), "--help"]
        if pbu_script.exists()
        else [py, "-c", "import sys; from pbu.cli import main; sys.exit(main(['--help']))"]
    )
    measures = {
        "python -c pass": [py, "-c", "pass"],
        "import torch": [py, "-c", "import torch"],
        "import pbu.cli": [py, "-c", "import pbu.cli"],
        "pbu --help": help_cmd,
    }
    commands = list(COMMAND_IMPORTS) if commands is None else commands
    for name in commands:
        measures[f"pbu {name} imports"] = [py, "-c", COMMAND_IMPORTS[name]]
    times, cpu = {}, {}
    for name, cmd in measures.items():
        times[name], cpu[name] = _median_run(cmd, repeats)
        print(f"  {name:24s} {times[name]:6.2f} s wall {cpu[name]:6.2f} s CPU", flush=True)
    imports = {name: importtime(COMMAND_IMPORTS[name]) for name in commands}
    imports["pbu.cli"] = importtime("import pbu.cli")
    imports["pbu --help"] = importtime(_CLI.rstrip("; "))
    for name, rec in imports.items():
        print(
            f"  imports of {name:10s}: "
            + (", ".join(f"{k} {v:.2f} s" for k, v in rec["top_level_s"].items()) or "-")
        )
    return {
        "repeats": repeats,
        "median_s": times,
        "median_cpu_s": cpu,
        "importtime": imports,
        "torch_share_of_help": times["import torch"] / times["pbu --help"],
    }


def startup_markdown(st: dict[str, Any]) -> list[str]:
    lines = [
        "## Start-up cost per job",
        "",
        f"Median of {st['repeats']} fresh interpreters each, same machine, same run.",
        "",
        "| what | wall s | CPU s |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| `{k}` | {v:.2f} | {st['median_cpu_s'][k]:.2f} |" for k, v in st["median_s"].items()
    ]
    lines += [
        "",
        "Heavy packages each command imports (cumulative import time, "
        "`python -X importtime`, one run):",
        "",
        "| command | imports |",
        "| --- | --- |",
    ]
    for name, rec in st["importtime"].items():
        lines.append(
            f"| {name} | "
            + (
                ", ".join(f"{k} {v:.2f} s" for k, v in rec["top_level_s"].items())
                or "none of " + ", ".join(HEAVY)
            )
            + " |"
        )
    lines.append("")
    return lines


def startup_vs_jobs(st: dict[str, Any], rep: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Start-up (a fresh interpreter + the command's imports) as a fraction of the rule's mean
    job, in wall time and in CPU time."""
    out: dict[str, dict[str, float]] = {}
    cmd_of_rule = {
        "pretrain": "pretrain",
        "oracle": "oracle",
        "fisher": "fisher",
        "unlearn": "unlearn",
        "evaluate": "evaluate",
        "aggregate": "aggregate",
        "report": "report",
    }
    for rule, a in rep["per_rule"].items():
        key = f"pbu {cmd_of_rule.get(rule, '')} imports"
        if key in st["median_s"] and a["mean_s"]:
            out[rule] = {"wall": st["median_s"][key] / a["mean_s"]}
            if a.get("mean_cpu_s"):
                out[rule]["cpu"] = st["median_cpu_s"][key] / a["mean_cpu_s"]
    return out


# ------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--configfile",
        action="append",
        default=[],
        help="merged over config/config.yaml (repeatable), as snakemake --configfile",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="override the config's dataset; merges config/paper/DATASET.yaml when "
        "it exists and no --configfile is given",
    )
    p.add_argument(
        "--source",
        default=None,
        help="folder holding the original files (e.g. /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--root", default=None, help="torchvision data root (default: data.root)")
    p.add_argument("--arch", default=None, help="default: the config's first arch")
    p.add_argument("--seeds", default="0", help="comma-separated (default 0)")
    p.add_argument("--forget", default=None, help="comma-separated classes (default: config)")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated, or 'all' (default: the config's methods; pbu always)",
    )
    p.add_argument(
        "--subset", type=int, default=0, help="train on at most this many images per class (0: all)"
    )
    p.add_argument("--epochs", type=int, default=None, help="override pretrain/oracle epochs")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument(
        "--memory-format",
        default="channels_last",
        choices=("channels_last", "contiguous"),
        help="layout of the original model handed to the Fisher and the methods, as "
        "the pbu CLI's --memory-format (default channels_last, as there); the "
        "oracle follows the recipe's channels_last",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1, as each pipeline job; 0: torch's default)",
    )
    p.add_argument(
        "--from-results",
        default=None,
        metavar="RESULTS",
        help="report a finished run's per-rule breakdown instead of mode 1",
    )
    p.add_argument(
        "--snakemake-log",
        default=None,
        help="with --from-results: that run's .snakemake/log/*.log (total elapsed)",
    )
    p.add_argument("--startup", action="store_true", help="measure per-job start-up cost")
    p.add_argument("--startup-repeats", type=int, default=3)
    p.add_argument(
        "--startup-commands",
        default=",".join(COMMAND_IMPORTS),
        help="pbu commands whose imports to time (comma-separated)",
    )
    p.add_argument("--out", default=None, help="write JSON here")
    p.add_argument("--out-md", default=None, help="write a markdown page here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result: dict[str, Any] = {"benchmark": "bench_pipeline"}
    if args.from_results or args.startup:
        rep = st = share = None
        if args.from_results:
            rep = read_results(Path(args.from_results))
            if args.snakemake_log:
                rep["snakemake_log"] = read_snakemake_log(Path(args.snakemake_log))
            print_results(rep)
            result["pipeline"] = {k: v for k, v in rep.items() if k != "job_list"}
            result["pipeline"]["job_list"] = rep["job_list"]
        if args.startup:
            print("\nstart-up cost (median of fresh interpreters):")
            commands = [c for c in args.startup_commands.split(",") if c]
            unknown = sorted(set(commands) - set(COMMAND_IMPORTS))
            if unknown:
                raise SystemExit(
                    f"bench_pipeline: unknown --startup-commands {unknown}; "
                    f"known: {', '.join(COMMAND_IMPORTS)}"
                )
            st = startup(args.startup_repeats, commands)
            result["startup"] = st
            if rep is not None:
                share = startup_vs_jobs(st, rep)
                result["startup_share_of_mean_job"] = share
                print(
                    "  start-up / mean job (wall, CPU): "
                    + ", ".join(
                        f"{r} {100 * v['wall']:.0f} %, {100 * v.get('cpu', math.nan):.0f} %"
                        for r, v in share.items()
                    )
                )
        result["machine"] = machine()
        if args.out_md:
            Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out_md).write_text(results_markdown(rep, st, share))
            print(f"wrote {args.out_md}")
    else:
        result = side_by_side(args)
        if args.out_md:
            Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out_md).write_text(side_by_side_markdown(result))
            print(f"wrote {args.out_md}")
    if args.out:
        print(f"wrote {write_json(args.out, result)}")
    return 0


def side_by_side_markdown(res: dict[str, Any]) -> str:
    s, st = res["summary"], res["settings"]
    lines = [
        "# Method time / oracle time",
        "",
        f"{st['dataset']} ({st['train_samples']} training images), {st['arch']}, seeds "
        f"{st['seeds']}, forget classes {st['forget']}, {st['device']}, {st['threads']} "
        f"thread(s); measured side by side in one process. Oracle: "
        f"{s['oracle_mean_wall_s']:.2f} s wall / {s['oracle_mean_cpu_s']:.2f} s CPU (mean).",
        *[f"- {n}" for n in res["notes"]],
        "",
        "| method | data needed | time / oracle (wall) | time / oracle (CPU) | A_Df % | A_Dr % |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in sorted(s["methods"].items(), key=lambda kv: kv[1]["mean_ratio_cpu"]):
        lines.append(
            f"| {name}{' (incl. Fisher)' if name == 'pbu' else ''} | "
            f"{m['data_access']} | {100 * m['mean_ratio_wall']:.2f} % | "
            f"{100 * m['mean_ratio_cpu']:.2f} % | {m['mean_acc_forget_test']:.1f} | "
            f"{m['mean_acc_retain_test']:.1f} |"
        )
    lines.append(
        f"| oracle | all retain | 100 % | 100 % | {s['oracle_acc_forget_test']:.1f} | "
        f"{s['oracle_acc_retain_test']:.1f} |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
