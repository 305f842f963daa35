"""glibc's default allocator vs ``pbu.allocator.keep_freed_memory``, side by side.

Every ``pbu`` command tunes the allocator first (``pbu/allocator.py``; ``PBU_MALLOC=default``
turns that off). This script measures what that buys on the default pipeline's own work, with the
default config (``config/config.yaml``: mnist5k, small CNN, channels_last, one thread per job):

- ``train``: ``train_model`` with the ``pretrain`` recipe (what the pretrain and retrain-oracle
  jobs do);
- ``fisher``: the exact ``true`` Fisher on one forget class's training images, the ``fisher``
  job's call, on the model trained once per process beforehand (not timed);
- ``pbu``: PBU's unlearning through the method harness, the ``unlearn`` job's call (not timed:
  loading, the Fisher);
- ``evaluate``: test accuracy of the model on the whole test split, the ``evaluate`` job's pass.

One process first trains θ* (seed 0) and computes its Fisher, saved as the pipeline saves them.
Then every (workload, mode, repeat) is a fresh process that loads what the job loads and does
the job's work once, cold, as a job does (an allocator is set up front, and a warmed-up process
would have adapted glibc's thresholds already); modes alternate ABAB so drifting machine load
hits both alike. It prints the median CPU time, wall time and minor page faults of each
workload's span per mode, and the ratios default / tuned.

    python benchmarks/bench_malloc.py --repeats 3 --out results/bench_malloc.json   # ~3 min
    python benchmarks/bench_malloc.py --jobs in-process --repeats 3   # as SLURM jobs run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

WORKLOADS = ("train", "fisher", "pbu", "evaluate")
MODES = ("default", "tuned")


def _span(fn: Any) -> dict[str, float]:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "minor_faults": r1.ru_minflt - r0.ru_minflt}


def _setup_context(work: Path, forget: int, epochs: int | None) -> dict[str, Any]:
    """The config, data and recipe every process uses; writes nothing."""
    import torch

    from bench_pipeline import load_config
    from pbu.data import load_dataset
    from pbu.train import TrainRecipe

    torch.set_num_threads(1)  # as every pipeline job on the 2-core default (resources.threads)
    cfg, _ = load_config([], None)
    train, test = load_dataset(cfg["dataset"], cfg["data"]["root"], source=cfg["data"]["source"],
                               download=cfg["data"]["download"])
    recipe_dict = dict(cfg["pretrain"])
    if epochs is not None:
        recipe_dict["epochs"] = epochs
    spec = train.spec
    return {"cfg": cfg, "train": train, "test": test, "recipe": TrainRecipe.from_dict(recipe_dict),
            "arch": cfg["archs"][0], "forget": forget, "work": work,
            "model_args": {"num_classes": spec.num_classes, "in_channels": spec.channels,
                           "image_size": spec.image_size}}


def _fisher(ctx: dict[str, Any], model: Any) -> dict[str, Any]:
    from pbu.data import class_split
    from pbu.fisher import fisher_diagonal

    fcfg, train = ctx["cfg"]["fisher"], ctx["train"]
    forget_train = train.subset(class_split(train.labels, ctx["forget"])[0])
    return fisher_diagonal(model, forget_train.loader(fcfg["batch_size"]), fcfg["kind"],
                           bn_mode=fcfg["bn_mode"], mc_samples=fcfg["mc_samples"],
                           chunk_size=fcfg["chunk_size"], seed=0)


def prepare(work: Path, forget: int, epochs: int | None) -> None:
    """Once, before any timed process: θ* (the pretrain recipe, seed 0) and its forget-class
    Fisher, saved as the pipeline saves them, so each timed process loads them as a job does."""
    from pbu.checkpoint import load_checkpoint, save_checkpoint, save_tensors
    from pbu.models import build_model
    from pbu.train import seed_everything, train_model

    ctx = _setup_context(work, forget, epochs)
    seed_everything(0)
    model = build_model(ctx["arch"], weights=ctx["cfg"]["model"]["weights"], **ctx["model_args"])
    train_model(model, ctx["train"], ctx["recipe"], seed=0, progress=False)
    save_checkpoint(work / "original.pt", model, arch=ctx["arch"], model_args=ctx["model_args"])
    save_tensors(work / "fisher.pt", _fisher(ctx, _as_job_loads(load_checkpoint(
        work / "original.pt"))))


def _as_job_loads(model: Any) -> Any:
    """The layout the fisher/unlearn/evaluate jobs load a model in (their default
    ``--memory-format channels_last``, through the CLI's own helper)."""
    from pbu.cli import _memory_format

    return _memory_format(model, "channels_last").eval()


def child(mode: str, workload: str, work: Path, forget: int, epochs: int | None,
          preload: bool = True) -> dict[str, Any]:
    """One fresh process doing one job's work once, cold, as a pipeline job does: set the
    allocator, load what the job loads, time the work."""
    from pbu.allocator import keep_freed_memory

    applied = keep_freed_memory() if mode == "tuned" else False
    if mode == "tuned" and not applied:
        raise SystemExit("mallopt is unavailable here (not glibc): nothing to compare")

    import importlib

    from pbu.forkserver import PRELOAD

    if preload:  # what a fork-server worker has imported already (torch's lazy imports,
        for name in PRELOAD:  # e.g. sympy on the first backward, 0.6 s); a SLURM job has not
            importlib.import_module(name)

    from pbu import methods
    from pbu.checkpoint import load_checkpoint, load_tensors
    from pbu.models import build_model
    from pbu.train import evaluate_accuracy, seed_everything, train_model

    ctx = _setup_context(work, forget, epochs)
    cfg, train = ctx["cfg"], ctx["train"]
    if workload == "train":  # the pretrain / retrain-oracle job
        seed_everything(1)
        model = build_model(ctx["arch"], weights=cfg["model"]["weights"], **ctx["model_args"])

        def fn() -> None:
            train_model(model, train, ctx["recipe"], seed=1, progress=False)
    else:
        model = _as_job_loads(load_checkpoint(work / "original.pt"))
        if workload == "fisher":
            def fn() -> None:
                _fisher(ctx, model)
        elif workload == "pbu":
            mspec = methods.get_method("pbu")
            inputs = methods.build_inputs(mspec, train, forget, train.spec.num_classes,
                                          retain_subset=cfg["retain_subset"], seed=0,
                                          fisher=load_tensors(work / "fisher.pt"))
            seed_everything(0)

            def fn() -> None:
                methods.run("pbu", model, inputs, cfg["hparams"]["pbu"], seed=0)
        else:  # evaluate: accuracy over the whole test split
            def fn() -> None:
                evaluate_accuracy(model, ctx["test"].loader(cfg["evaluation"]["batch_size"]))
    return {"mode": mode, "workload": workload, "applied": applied, **_span(fn)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="child processes per mode")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--forget", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None,
                    help="pretrain epochs for the train workload (default: the config's)")
    ap.add_argument("--jobs", choices=("fork-server", "in-process"), default="fork-server",
                    help="fork-server: each process first imports what the fork server "
                         "preloads (the local pipeline); in-process: it does not (SLURM jobs)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    bad = sorted(set(args.workloads) - set(WORKLOADS))
    if bad:
        ap.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    return args


def summarise(runs: list[dict[str, Any]], workloads: list[str]) -> dict[str, Any]:
    """Median CPU s, wall s and minor faults per workload and mode; ratios default / tuned."""
    out: dict[str, Any] = {}
    for w in workloads:
        row: dict[str, Any] = {}
        for mode in MODES:
            spans = [r for r in runs if r["mode"] == mode and r["workload"] == w]
            row[mode] = {k: statistics.median(s[k] for s in spans)
                         for k in ("cpu_s", "wall_s", "minor_faults")}
        row["cpu_ratio"] = row["default"]["cpu_s"] / row["tuned"]["cpu_s"]
        row["wall_ratio"] = row["default"]["wall_s"] / row["tuned"]["wall_s"]
        out[w] = row
    return out


def _run(cmd: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"{' '.join(cmd[2:])} failed with status {res.returncode}")
    return res.stdout


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare:
        prepare(args.work, args.forget, args.epochs)
        return 0
    if args.child:
        run = child(args.child, args.workloads[0], args.work, args.forget, args.epochs,
                    preload=args.jobs == "fork-server")
        print(json.dumps(run))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("PBU_MALLOC", None)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_malloc_") as tmp:
        base = [sys.executable, str(Path(__file__).resolve()), "--forget", str(args.forget),
                "--work", tmp, "--jobs", args.jobs]
        if args.epochs is not None:
            base += ["--epochs", str(args.epochs)]
        t0 = time.perf_counter()
        _run([*base, "--prepare"], env)
        print(f"prepared θ* and its Fisher in {time.perf_counter() - t0:.0f} s", flush=True)
        for rep in range(args.repeats):
            for w in args.workloads:
                for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
                    out = _run([*base, "--workloads", w, "--child", mode], env)
                    run = json.loads(out.strip().splitlines()[-1])
                    runs.append(run)
                    print(f"repeat {rep + 1}, {w:8s} {mode:7s}: {run['cpu_s']:.3f} s CPU, "
                          f"{run['wall_s']:.3f} s wall, {run['minor_faults']} minor faults",
                          flush=True)
    summary = summarise(runs, args.workloads)
    print(f"\nmedian of {args.repeats} fresh processes per mode and workload (one thread; "
          f"each workload's span, cold, as in a pipeline job; jobs {args.jobs}):")
    print(f"{'workload':10s} {'default CPU s':>14s} {'tuned CPU s':>12s} {'default/tuned':>14s} "
          f"{'(wall)':>7s} {'faults default':>15s} {'faults tuned':>13s}")
    for w, row in summary.items():
        print(f"{w:10s} {row['default']['cpu_s']:14.3f} {row['tuned']['cpu_s']:12.3f} "
              f"{row['cpu_ratio']:13.2f}x {row['wall_ratio']:6.2f}x "
              f"{row['default']['minor_faults']:15.0f} {row['tuned']['minor_faults']:13.0f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": runs, "summary": summary, "jobs": args.jobs,
                                        "repeats": args.repeats}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
