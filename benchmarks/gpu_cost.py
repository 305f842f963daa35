"""What replicating the paper costs: every paper config's jobs, measured on one GPU.

For each (paper config, architecture) pair, on stand-in data (``pbu.data.stand_in_dataset``) of
the config's dataset at its image size and class count, in one process, through the same
library calls as the ``pbu`` commands:

- ``pretrain``: one epoch of ``pbu.train.train_model`` with the config's recipe (batch size, bf16,
  channels_last), timed over ``--train-steps`` steps after ``--warmup-steps`` and extrapolated
  to the epoch's steps, plus the per-epoch test pass; the oracle is the same on
  (K-1)/K of the data;
- ``fisher``: ``pbu.fisher_diagonal`` with the config's kind, BatchNorm mode, batch and chunk
  size on the first forget class, timed over ``--fisher-images`` images (all of them with
  ``--fisher-full``) and scaled to the class's full size (Food-101: 750 images, K = 101).
  Out of GPU memory, the chunk is halved until it fits (recorded: ``fisher.chunk_size`` to use);
- ``unlearn``: PBU and each of the config's baselines through ``pbu.methods`` (the harness hands
  each its declared data), at two data scales r1 < r2 (images per class and retain subset scaled
  alike, the forget class at least 5), fitted t(r) = a + b·r and read at r = 1 (fixed costs such
  as UNSIR's noise stay in a). PBU runs without its stop rule: the upper bound, all epochs. The
  trajectory monitor the harness runs for ``monitor.methods`` is timed apart and scaled by its
  calls and images;
- ``evaluate``: ``pbu.evaluation.evaluate_models`` on the original, oracle and unlearned models at
  the same two scales, fitted the same way;
- per job, what a fresh ``pbu`` process pays besides the work: Python + torch start-up
  (measured once, as a subprocess), building the model, loading and saving checkpoints.

Peak GPU memory (``torch.cuda.max_memory_allocated``) is taken per stage, host memory as the
process's resident set after it. Each job's estimate is summed over the jobs a config plans
(the same counts as its ``snakemake -n``) into GPU-hours, and each rule's ``resources:`` is the
largest job of the config times ``--safety``.

    python benchmarks/gpu_cost.py measure --device cuda --out OUT/gpu_cost.json [--budget 420]
    python benchmarks/gpu_cost.py report OUT/gpu_cost.json [MORE.json] --safety 2 [--out ...]
    python benchmarks/gpu_cost.py apply OUT/resources.json        # rewrite config/paper/*.yaml
    bash benchmarks/gpu_cost.sh                                   # measure + report, one call

``measure --device cpu --tiny`` runs the same code at 16 px with config/smoke.yaml's method and
evaluation settings: the logic and the bookkeeping, not the numbers (tests/bench/test_gpu_cost.py).
Not measured: JPEG decoding of the real Food-101 files (stand-in images are drawn on the GPU),
ImageNet weights (the same architecture either way), and the CPU-side jobs (download,
aggregate, track, report). Needs torch, torchvision, scikit-learn, pyyaml, psutil; no
snakemake, mlflow or jsonschema (the configs are merged here, not validated).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the shared helpers
from common import ROOT, Clock, child_env, merge_config, read_config, write_json  # noqa: E402

PAPER = ROOT / "config" / "paper"
RULES = ("pretrain", "fisher", "unlearn", "evaluate", "tune")
# Most costly first, so a run cut short by its budget has measured the risky pairs.
ORDER = (
    "food101_convnext",
    "food101",
    "cifar100",
    "mnist",
    "cifar10",
    "cifar10_allcnn",
    "mnist_allcnn",
    "fashion_mnist",
)
MIN_FORGET = 5  # the evaluation's 5-fold loss attack needs 5 forget images per side


# ------------------------------------------------------------------------------------------
# configs: merged as snakemake merges them (nested), and the jobs each one plans
# ------------------------------------------------------------------------------------------


def load_config(name: str, *, tiny: bool = False) -> dict[str, Any]:
    """config/config.yaml with config/paper/<name>.yaml merged over it; ``tiny`` also takes
    config/smoke.yaml's method, monitor and evaluation settings (CPU mode)."""
    import yaml

    cfg = read_config(PAPER / f"{name}.yaml")
    if tiny:
        smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
        cfg = merge_config(
            cfg,
            {
                k: smoke[k]
                for k in ("hparams", "monitor", "evaluation", "retain_subset")
                if k in smoke
            },
        )
    return cfg


def forget_classes(cfg: dict[str, Any]) -> list[int]:
    from pbu.registry import DATASETS

    k = DATASETS[cfg["dataset"]].num_classes
    return list(range(k)) if cfg["forget"] == "all" else list(cfg["forget"])


def job_counts(cfg: dict[str, Any]) -> dict[str, int]:
    """Compute jobs per rule that a config plans (one per arch x seed, or per arch x seed x forget
    class, times methods for unlearn); tune jobs only with tuning enabled."""
    from pbu.config import base_method

    archs, seeds, groups = len(cfg["archs"]), len(cfg["seeds"]), None
    groups = archs * seeds * len(forget_classes(cfg))
    counts = {
        "pretrain": archs * seeds,
        "oracle": groups,
        "evaluate": groups,
        "unlearn": groups * len(cfg["methods"]),
        # one Fisher per group for PBU and its config variants
        "fisher": groups if "pbu" in {base_method(cfg, m) for m in cfg["methods"]} else 0,
    }
    tuned = [m for m in cfg["tuning"]["methods"] if m in cfg["methods"]]
    counts["tune"] = groups * len(tuned) if cfg["tuning"]["enabled"] else 0
    return counts


# ------------------------------------------------------------------------------------------
# measuring
# ------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def linear_at_one(r1: float, t1: float, r2: float, t2: float) -> dict[str, float]:
    """t(r) = a + b·r through two measurements, read at r = 1 (the full data). The slope is
    never negative and the intercept never below zero (timing noise at small scales)."""
    b = max((t2 - t1) / (r2 - r1), 0.0)
    a = max(t1 - b * r1, 0.0)
    return {"fixed_s": a, "per_unit_scale_s": b, "full_s": a + b}


def startup_seconds(device: str) -> float:
    """A fresh process's Python + torch + pbu import and device start, as each job pays it."""
    code = (
        "import torch, pbu.cli, pbu.methods, pbu.evaluation, pbu.fisher; "
        f"torch.zeros(1, device={device!r}).sum().item()"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), cwd=ROOT)
    return time.perf_counter() - t0


def scaled_split(data, full_counts: list[int], r: float, keep: int, forget: int, seed: int):
    """A seeded subset with round(r · n_c) images of class c (at least 1), the forget class at
    least ``keep``; returns it and its size over the full split's."""
    import torch

    idx = []
    g = torch.Generator().manual_seed(seed)
    for c, n in enumerate(full_counts):
        want = max(1, round(r * n), keep if c == forget else 0)
        pool = torch.nonzero(data.labels == c).flatten()
        idx.append(pool[torch.randperm(len(pool), generator=g)[:want]])
    sub = data.subset(torch.sort(torch.cat(idx)).values)
    return sub, len(sub) / sum(full_counts)


def measure_pair(
    name: str, cfg: dict[str, Any], arch: str, args: argparse.Namespace, startup_s: float
) -> dict[str, Any]:
    """Every stage of one (config, arch) pair; a stage that fails is recorded, not raised."""
    import torch

    import pbu
    from pbu import methods
    from pbu.checkpoint import load_checkpoint, save_checkpoint
    from pbu.config import base_method, method_hparams
    from pbu.data import class_split, random_subset, stand_in_dataset
    from pbu.evaluation import EvalData, EvalSettings, evaluate_models
    from pbu.models import build_model
    from pbu.registry import SPLIT_COUNTS
    from pbu.train import TrainRecipe, evaluate_accuracy, seed_everything, train_model

    device = torch.device(args.device)
    dataset = cfg["dataset"]
    train_full, test_full = stand_in_dataset(dataset, max_image_size=args.max_image_size)
    spec = train_full.spec
    k = spec.num_classes
    train_counts, test_counts = (list(c) for c in SPLIT_COUNTS[dataset])
    forget = forget_classes(cfg)
    c0 = forget[0]
    model_args = {"num_classes": k, "in_channels": spec.channels, "image_size": spec.image_size}
    out: dict[str, Any] = {
        "config": name,
        "arch": arch,
        "dataset": dataset,
        "image_size": spec.image_size,
        "num_classes": k,
        "forget": c0,
        "train_images": len(train_full),
        "test_images": len(test_full),
        "stages": {},
        "errors": {},
    }
    stages = out["stages"]

    def to_device(model):
        model = model.to(device)
        if any(p.dim() == 4 for p in model.parameters()):
            model.to(memory_format=torch.channels_last)  # as the pbu commands load models
        return model

    # --- job overhead besides the work: build, save, load -------------------------------
    with tempfile.TemporaryDirectory(prefix="gpu_cost_") as tmp:
        seed_everything(0)
        t0 = time.perf_counter()
        model = to_device(build_model(arch, weights="none", **model_args))
        build_s = time.perf_counter() - t0
        ck = Path(tmp) / "model.pt"
        t0 = time.perf_counter()
        save_checkpoint(ck, model, arch=arch, model_args=model_args, seed=0)
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        to_device(load_checkpoint(ck, device=device))
        load_s = time.perf_counter() - t0
        size_mb = ck.stat().st_size / 2**20
    n_params = sum(p.numel() for p in model.parameters())
    stages["overhead"] = {
        "startup_s": startup_s,
        "build_s": build_s,
        "save_s": save_s,
        "load_s": load_s,
        "checkpoint_mb": size_mb,
        "params": n_params,
    }

    # --- pretraining: one epoch from timed steps ----------------------------------------
    # tiny (CPU) mode trains in fp32 as config/smoke.yaml does (bf16 on a CPU: ~20x slower)
    recipe = TrainRecipe.from_dict(
        dict(cfg["pretrain"], epochs=1, **({"amp": False} if args.tiny else {}))
    )
    bs = recipe.batch_size
    amp = recipe.amp and device.type == "cuda"
    try:

        def steps_of(n_steps: int, seed: int):
            idx = random_subset(len(train_full), n_steps * bs, seed)
            return train_full.subset(idx)

        train_model(
            model, steps_of(args.warmup_steps, 1), recipe, seed=0, device=device, progress=False
        )
        timed = steps_of(args.train_steps, 2)
        with Clock(device) as clk:
            train_model(model, timed, recipe, seed=0, device=device, progress=False)
        step_s = clk.seconds / (len(timed) // bs)
        ev_bs = min(recipe.eval_batch_size, 64) if args.tiny else recipe.eval_batch_size
        ev = test_full.subset(random_subset(len(test_full), ev_bs * (1 + args.eval_batches), 3))
        warm = ev.subset(torch.arange(ev_bs))
        evaluate_accuracy(model, warm.loader(ev_bs, device=device), amp=amp)
        rest = ev.subset(torch.arange(ev_bs, len(ev)))
        with Clock(device) as eclk:
            evaluate_accuracy(model, rest.loader(ev_bs, device=device), amp=amp)
        eval_img_s = eclk.seconds / len(rest)
        steps_per_epoch = len(train_full) // bs
        epoch_s = steps_per_epoch * step_s
        test_pass_s = len(test_full) * eval_img_s
        stages["pretrain"] = {
            "batch_size": bs,
            "amp": amp,
            "channels_last": recipe.channels_last,
            "timed_steps": len(timed) // bs,
            "step_s": step_s,
            "steps_per_epoch": steps_per_epoch,
            "epoch_s": epoch_s,
            "test_pass_s": test_pass_s,
            "eval_image_s": eval_img_s,
            "epochs": cfg["pretrain"]["epochs"],
            "peak_gpu_mb": max(x for x in (clk.peak_gpu_mb, eclk.peak_gpu_mb, 0.0) if x is not None)
            or None,
            "rss_mb": _rss_mb(),
            "how": "steps timed after warm-up, times steps per epoch",
        }
    except Exception as err:  # noqa: BLE001 - record and go on
        out["errors"]["pretrain"] = f"{type(err).__name__}: {err}"
    _free(device)

    # --- Fisher of the first forget class, scaled to its full size ----------------------
    fs = cfg["fisher"]
    forget_full = train_full.subset(class_split(train_full.labels, c0)[0])
    model.eval()
    fisher = None
    chunk = min(fs["chunk_size"], args.fisher_images) if args.tiny else fs["chunk_size"]
    while "fisher" not in stages and chunk >= 1:
        try:
            n = (
                len(forget_full)
                if args.fisher_full
                else min(len(forget_full), max(chunk, args.fisher_images))
            )
            part = forget_full.subset(torch.arange(n))
            warm = forget_full.subset(torch.arange(min(chunk, len(forget_full))))
            pbu.fisher_diagonal(
                model,
                warm.loader(fs["batch_size"], device=device),
                kind=fs["kind"],
                bn_mode=fs["bn_mode"],
                mc_samples=fs["mc_samples"],
                chunk_size=chunk,
            )
            with Clock(device) as clk:
                fisher = pbu.fisher_diagonal(
                    model,
                    part.loader(fs["batch_size"], device=device),
                    kind=fs["kind"],
                    bn_mode=fs["bn_mode"],
                    mc_samples=fs["mc_samples"],
                    chunk_size=chunk,
                )
            per_image = clk.seconds / n
            stages["fisher"] = {
                "kind": fs["kind"],
                "chunk_size": chunk,
                "config_chunk_size": fs["chunk_size"],
                "images_timed": n,
                "image_s": per_image,
                "class_images": {str(c): train_counts[c] for c in forget},
                "full_s": per_image * train_counts[c0],
                "peak_gpu_mb": clk.peak_gpu_mb,
                "rss_mb": _rss_mb(),
                "how": "per image (after a warm-up chunk), times the class's training images",
            }
        except Exception as err:  # noqa: BLE001
            if not _is_oom(err) or chunk == 1:
                out["errors"]["fisher"] = f"{type(err).__name__}: {err}"
                break
            out.setdefault("fisher_oom_chunk_sizes", []).append(chunk)
            chunk //= 2
            _free(device)
    if fisher is None:  # methods still need one: a cheap stand-in of the right shape
        fisher = {n_: torch.ones_like(p) for n_, p in model.named_parameters()}
    _free(device)

    # --- methods and the evaluation at two data scales ----------------------------------
    r1 = max(args.scale, 1.0 / min(train_counts))  # at least one image of every class
    scales = (r1, args.scale_ratio * r1)
    mon = cfg["monitor"]
    settings_keys = set(EvalSettings.__dataclass_fields__)
    settings = EvalSettings.from_dict(
        {k_: v for k_, v in cfg["evaluation"].items() if k_ in settings_keys}
    )
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in cfg["methods"]}
    runs["evaluate"] = []
    for si, r in enumerate(scales):
        train_r, frac_train = scaled_split(train_full, train_counts, r, MIN_FORGET, c0, 10 + si)
        test_r, _ = scaled_split(test_full, test_counts, r, MIN_FORGET, c0, 20 + si)
        retain_r = max(1, round(r * cfg["retain_subset"]))
        f_te, r_te = class_split(test_r.labels, c0)
        ft, rt_all = test_r.subset(f_te), test_r.subset(r_te)
        rt = (
            rt_all.subset(random_subset(len(rt_all), mon["retain_samples"], 0))
            if mon["retain_samples"]
            else rt_all
        )
        outputs = {}
        for meth in cfg["methods"]:  # a method or a config variant (its base, its hparams)
            spec_m = methods.get_method(base_method(cfg, meth))
            hp = method_hparams(cfg, meth)
            if spec_m.name == "pbu":
                hp["stop_rule"] = "none"  # the upper bound: every epoch
            monitored = meth in mon["methods"] and mon["every"] > 0
            calls = {"n": 0, "s": 0.0}

            def monitor(m, step, _ft=ft, _rt=rt, _on=monitored, _calls=calls) -> None:
                if _on and step % mon["every"] == 0:
                    t0 = time.perf_counter()
                    evaluate_accuracy(m, _ft.loader(1024, device=device))
                    evaluate_accuracy(m, _rt.loader(1024, device=device))
                    _calls["n"] += 1
                    _calls["s"] += time.perf_counter() - t0

            try:
                inputs = methods.build_inputs(
                    spec_m,
                    train_r,
                    c0,
                    k,
                    retain_subset=retain_r,
                    seed=0,
                    fisher=fisher if spec_m.needs_fisher else None,
                )
                seed_everything(0)
                with Clock(device) as clk:
                    result, elapsed = methods.run(
                        spec_m.name,
                        copy.deepcopy(model),
                        inputs,
                        hp,
                        device=device,
                        seed=0,
                        monitor=monitor,
                    )
                outputs[meth] = result.model
                runs[meth].append(
                    {
                        "r": frac_train,
                        "s": elapsed,
                        "monitor_calls": calls["n"],
                        "monitor_s": calls["s"],
                        "monitor_images": len(ft) + len(rt),
                        "peak_gpu_mb": clk.peak_gpu_mb,
                        "rss_mb": _rss_mb(),
                    }
                )
            except Exception as err:  # noqa: BLE001
                out["errors"][f"unlearn_{meth}"] = f"{type(err).__name__}: {err}"
            _free(device)
        try:
            models = {"original": model, **outputs}
            oracle = copy.deepcopy(model)
            seed_everything(7919)
            incompetent = to_device(build_model(arch, **model_args)).eval()
            data = EvalData.build(train_r, test_r, c0)
            with Clock(device) as clk:
                evaluate_models(
                    models, oracle, incompetent, data, c0, settings=settings, seed=0, device=device
                )
            runs["evaluate"].append(
                {
                    "r": frac_train,
                    "s": clk.seconds,
                    "peak_gpu_mb": clk.peak_gpu_mb,
                    "rss_mb": _rss_mb(),
                }
            )
            del oracle, incompetent, models, outputs
        except Exception as err:  # noqa: BLE001
            out["errors"]["evaluate"] = f"{type(err).__name__}: {err}"
        _free(device)

    retain_test_full = len(test_full) - test_counts[c0]
    for what, rs in runs.items():
        if len(rs) < 2:
            continue
        fit = linear_at_one(rs[0]["r"], rs[0]["s"], rs[1]["r"], rs[1]["s"])
        row = {
            "scales": rs,
            **fit,
            "peak_gpu_mb": max((x["peak_gpu_mb"] or 0.0) for x in rs) or None,
            "rss_mb": max(x["rss_mb"] for x in rs),
            "how": "fit a + b*r over two data scales, read at r = 1",
        }
        if what != "evaluate" and rs[1]["monitor_calls"]:
            calls = linear_at_one(
                rs[0]["r"], rs[0]["monitor_calls"], rs[1]["r"], rs[1]["monitor_calls"]
            )["full_s"]  # calls, not seconds
            per_image = rs[1]["monitor_s"] / (rs[1]["monitor_calls"] * rs[1]["monitor_images"])
            images = test_counts[c0] + (
                min(mon["retain_samples"], retain_test_full)
                if mon["retain_samples"]
                else retain_test_full
            )
            row.update(
                monitor_calls_full=calls,
                monitor_image_s=per_image,
                monitor_full_s=calls * images * per_image,
            )
        stages["evaluate" if what == "evaluate" else f"unlearn_{what}"] = row
    return out


def measure(args: argparse.Namespace) -> int:
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_cost: --device cuda but no CUDA device here", file=sys.stderr)
        return 1
    names = [n for n in ORDER if (PAPER / f"{n}.yaml").exists()]
    if args.configs:
        names = [n for n in args.configs.split(",") if n]
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu_cost",
        "device": str(device),
        "tiny": args.tiny,
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k not in ("fn",)},
        "pairs": [],
        "not_measured": [],
        "units": {"*_s": "seconds", "*_mb": "MiB", "r": "share of the full training split"},
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        result["device_name"], result["device_memory_mb"] = p.name, p.total_memory / 2**20
    result["startup_s"] = startup_seconds(args.device)
    for name in names:
        cfg = load_config(name, tiny=args.tiny)
        if cfg.get("device") == "cpu" and device.type == "cuda":
            result["not_measured"].append({"config": name, "why": "a CPU config (device: cpu)"})
            continue
        for arch in cfg["archs"]:
            if args.archs and arch not in args.archs.split(","):
                continue
            left = args.budget - (time.perf_counter() - t_start)
            if left < args.min_left:
                result["not_measured"].append(
                    {"config": name, "arch": arch, "why": f"budget: {left:.0f} s left"}
                )
                continue
            t0 = time.perf_counter()
            print(f"== {name} / {arch} ({left:.0f} s of the budget left)", flush=True)
            pair = measure_pair(name, cfg, arch, args, result["startup_s"])
            pair["measure_s"] = time.perf_counter() - t0
            result["pairs"].append(pair)
            for stage, err in pair["errors"].items():
                print(f"   !! {stage}: {err[:300]}", flush=True)
            write_json(args.out, result)
            print(f"   measured in {pair['measure_s']:.0f} s", flush=True)
    result["total_s"] = time.perf_counter() - t_start
    write_json(args.out, result)
    return 0 if all(not p["errors"] for p in result["pairs"]) else 1


# ------------------------------------------------------------------------------------------
# bookkeeping: job estimates, GPU-hours per config, resources
# ------------------------------------------------------------------------------------------


def job_seconds(pair: dict[str, Any], cfg: dict[str, Any]) -> dict[str, float | None]:
    """One job of each kind for this arch, as a fresh process runs it: start-up, model
    build/load/save and the work. None where a stage was not measured."""
    st = pair["stages"]
    oh = st["overhead"]
    start, build, load, save = oh["startup_s"], oh["build_s"], oh["load_s"], oh["save_s"]
    k = pair["num_classes"]
    out: dict[str, float | None] = {}
    pre = st.get("pretrain")
    if pre:
        per_epoch = pre["epoch_s"] + pre["test_pass_s"]
        out["pretrain"] = start + build + pre["epochs"] * per_epoch + save
        out["oracle"] = start + build + pre["epochs"] * per_epoch * (k - 1) / k + save
    else:
        out["pretrain"] = out["oracle"] = None
    fis = st.get("fisher")
    out["fisher"] = start + load + fis["full_s"] + save if fis else None  # save: same size
    for meth in cfg["methods"]:
        row = st.get(f"unlearn_{meth}")
        extra = load if meth == "pbu" else 0.0  # pbu loads the Fisher (a model-sized file)
        out[f"unlearn_{meth}"] = (
            (start + load + extra + row["full_s"] + row.get("monitor_full_s", 0.0) + save)
            if row
            else None
        )
    ev = st.get("evaluate")
    n_models = 2 + len(cfg["methods"])  # original, oracle, every method; + the incompetent
    out["evaluate"] = start + n_models * load + build + ev["full_s"] if ev else None
    return out


def config_cost(cfg: dict[str, Any], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """GPU-hours of one config from its measured pairs: each planned job's estimate, summed.
    The Fisher job of each forget class is scaled to that class's own size (MNIST's differ)."""
    counts = job_counts(cfg)
    seeds, classes = len(cfg["seeds"]), forget_classes(cfg)
    by_arch = {p["arch"]: p for p in pairs}
    missing = [a for a in cfg["archs"] if a not in by_arch]
    seconds = startup = 0.0
    jobs = 0
    longest: dict[str, float] = {}
    incomplete = []
    for arch, pair in by_arch.items():
        est = job_seconds(pair, cfg)
        fis = pair["stages"].get("fisher")
        per_job: dict[str, list[float | None]] = {
            "pretrain": [est["pretrain"]] * seeds,
            "oracle": [est["oracle"]] * (seeds * len(classes)),
            "evaluate": [est["evaluate"]] * (seeds * len(classes)),
            "unlearn": [est[f"unlearn_{m}"] for m in cfg["methods"]] * (seeds * len(classes)),
        }
        if counts["fisher"]:
            per_job["fisher"] = [
                (est["fisher"] - fis["full_s"] + fis["image_s"] * fis["class_images"][str(c)])
                if fis
                else None
                for c in classes
            ] * seeds
        for rule, values in per_job.items():
            if any(v is None for v in values):
                incomplete.append(f"{arch}:{rule}")
                values = [v for v in values if v is not None]
            seconds += sum(values)
            jobs += len(values)
            startup += pair["stages"]["overhead"]["startup_s"] * len(values)
            key = "pretrain" if rule == "oracle" else rule  # the oracle uses pretrain's resources
            if values:
                longest[key] = max(longest.get(key, 0.0), max(values))
    return {
        "compute_jobs": sum(counts.values()),
        "jobs_estimated": jobs,
        "gpu_hours": seconds / 3600.0,
        "longest_job_s": longest,
        "missing_archs": missing,
        "incomplete": incomplete,
        # process start-up's share: where it dominates, per-job overhead is the cost
        "startup_share": startup / seconds if seconds else 0.0,
    }


def derive_resources(
    cfg: dict[str, Any],
    pairs: list[dict[str, Any]],
    safety: float,
    *,
    min_runtime: int = 30,
    min_mem_mb: int = 4000,
) -> dict[str, Any]:
    """Per rule: runtime (minutes) = longest job x safety, rounded up, at least ``min_runtime``
    (queue granularity); mem_mb = the largest host memory x safety, rounded up to 1000, at least
    ``min_mem_mb``; gpu_mem_gb = the largest peak GPU memory x safety (a GPU must have this
    much; SLURM places by GPU type, so it is a note, not a key). tune = tuning.budget x unlearn."""
    cost = config_cost(cfg, pairs)
    stage_of = {
        "pretrain": ("pretrain",),
        "fisher": ("fisher",),
        "unlearn": tuple(f"unlearn_{m}" for m in cfg["methods"]),
        "evaluate": ("evaluate",),
    }
    out: dict[str, Any] = {}
    for rule, stages in stage_of.items():
        rss = [p["stages"][s]["rss_mb"] for p in pairs for s in stages if s in p["stages"]]
        gpu = [
            p["stages"][s].get("peak_gpu_mb") or 0.0
            for p in pairs
            for s in stages
            if s in p["stages"]
        ]
        longest = cost["longest_job_s"].get(rule)
        if longest is None or not rss:
            continue
        out[rule] = {
            "runtime": max(min_runtime, math.ceil(longest * safety / 60.0)),
            "mem_mb": max(min_mem_mb, math.ceil(max(rss) * safety / 1000.0) * 1000),
            "gpu_mem_gb": math.ceil(max(gpu) * safety / 1024.0) if max(gpu) > 0 else 0,
            "longest_job_s": longest,
        }
    if "unlearn" in out:
        t = copy.deepcopy(out["unlearn"])
        t["runtime"] = out["unlearn"]["runtime"] * cfg["tuning"]["budget"]
        t["longest_job_s"] = out["unlearn"]["longest_job_s"] * cfg["tuning"]["budget"]
        out["tune"] = t
    return out


def report(args: argparse.Namespace) -> int:
    recs = [json.loads(Path(f).read_text()) for f in args.measured]
    rec = dict(recs[0])  # several runs (e.g. a second call for the configs the first had no
    rec["pairs"] = []  # time for) merge; a later measurement of a pair replaces an earlier
    rec["not_measured"] = []
    seen: dict[tuple[str, str], int] = {}
    for r in recs:
        if r.get("tiny") != rec.get("tiny"):
            raise SystemExit("gpu_cost report: cannot merge tiny (CPU) and full measurements")
        for p in r["pairs"]:
            key = (p["config"], p["arch"])
            if key in seen:
                rec["pairs"][seen[key]] = p
            else:
                seen[key] = len(rec["pairs"])
                rec["pairs"].append(p)
    for r in recs:
        rec["not_measured"] += [
            n for n in r.get("not_measured", []) if (n.get("config"), n.get("arch")) not in seen
        ]
    by_config: dict[str, list[dict[str, Any]]] = {}
    for p in rec["pairs"]:
        by_config.setdefault(p["config"], []).append(p)
    rows, resources = [], {}
    for name, pairs in by_config.items():
        cfg = load_config(name, tiny=rec.get("tiny", False))
        cost = config_cost(cfg, pairs)
        res = derive_resources(cfg, pairs, args.safety)
        resources[name] = res
        peak = (
            max(
                (p["stages"][s].get("peak_gpu_mb") or 0.0)
                for p in pairs
                for s in p["stages"]
                if isinstance(p["stages"][s], dict)
            )
            / 1024.0
        )
        rows.append(
            {
                "config": name,
                "compute_jobs": cost["compute_jobs"],
                "gpu_hours": cost["gpu_hours"],
                "gpu_hours_with_safety": cost["gpu_hours"] * args.safety,
                "longest_job_min": max(cost["longest_job_s"].values(), default=0.0) / 60.0,
                "peak_gpu_gib": peak,
                "startup_share": cost["startup_share"],
                "missing_archs": cost["missing_archs"],
                "incomplete": cost["incomplete"],
            }
        )
    out = {
        "source": ", ".join(args.measured),
        "device": rec.get("device_name", rec.get("device")),
        "date": rec.get("date"),
        "safety": args.safety,
        "tiny": rec.get("tiny", False),
        "configs": rows,
        "resources": resources,
        "not_measured": rec.get("not_measured", []),
    }
    if args.out:
        write_json(args.out, out)
    dev = out["device"]
    print(
        f"What replicating the paper costs, measured on {dev} ({out['date']}; stand-in data; "
        f"resources = measured x {args.safety}):\n"
    )
    print(
        "| config | compute jobs | GPU-hours | x safety | longest job (min) | peak GPU GiB | "
        "start-up share |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        note = ""
        if r["missing_archs"] or r["incomplete"]:
            note = f" (partial: missing {r['missing_archs'] + r['incomplete']})"
        print(
            f"| {r['config']}{note} | {r['compute_jobs']} | {r['gpu_hours']:.2f} | "
            f"{r['gpu_hours_with_safety']:.2f} | {r['longest_job_min']:.1f} | "
            f"{r['peak_gpu_gib']:.1f} | {100 * r['startup_share']:.0f} % |"
        )
    for nm in out["not_measured"]:
        print(f"not measured: {nm}")
    print("\nresources per config (runtime min, mem_mb, GPU memory GiB):")
    for name, res in resources.items():
        print(
            f"  {name}: "
            + ", ".join(
                f"{rule} {v['runtime']} min / {v['mem_mb']} MB / {v['gpu_mem_gb']} GiB"
                for rule, v in res.items()
            )
        )
    return 0


# ------------------------------------------------------------------------------------------
# apply: the derived resources into config/paper/*.yaml
# ------------------------------------------------------------------------------------------

_RULE_LINE = re.compile(
    r"^(?P<indent>\s+)(?P<rule>pretrain|fisher|unlearn|evaluate|tune):\s*"
    r"\{(?P<body>[^}]*)\}(?P<rest>.*)$"
)


def apply_to_text(text: str, res: dict[str, dict[str, Any]], note: str) -> str:
    """The config's text with each rule's runtime and mem_mb replaced (threads, gpu and every
    other line kept) and the comment block right above ``resources:`` replaced by ``note``."""
    lines = text.splitlines()
    try:
        at = next(i for i, ln in enumerate(lines) if ln.startswith("resources:"))
    except StopIteration:
        raise ValueError("no top-level 'resources:' block") from None
    start = at
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    new_head = [f"# {ln}".rstrip() for ln in note.splitlines()]
    body = lines[at + 1 :]
    seen = set()
    for i, ln in enumerate(body):
        if ln and not ln[0].isspace():
            break
        m = _RULE_LINE.match(ln)
        if not m or m["rule"] not in res:
            continue
        items = dict(kv.split(":", 1) for kv in m["body"].split(","))
        items = {k.strip(): v.strip() for k, v in items.items()}
        items["runtime"] = str(res[m["rule"]]["runtime"])
        items["mem_mb"] = str(res[m["rule"]]["mem_mb"])
        inner = ", ".join(f"{k}: {v}" for k, v in items.items())
        gib = res[m["rule"]].get("gpu_mem_gb")
        rest = f"   # GPU memory >= {gib} GiB" if gib else m["rest"]
        body[i] = f"{m['indent']}{m['rule']}: {{{inner}}}{rest}"
        seen.add(m["rule"])
    if not seen:
        raise ValueError("no rule lines ('  pretrain: {...}') under resources:")
    return "\n".join(lines[:start] + new_head + [lines[at]] + body) + "\n"


def apply(args: argparse.Namespace) -> int:
    rec = json.loads(Path(args.resources).read_text())
    if rec.get("tiny"):
        print("gpu_cost apply: refusing CPU tiny-mode numbers", file=sys.stderr)
        return 1
    folder = Path(args.paper_dir)
    for name, res in rec["resources"].items():
        path = folder / f"{name}.yaml"
        note = (
            f"Per job, one GPU. Measured by benchmarks/gpu_cost.py on {rec['device']} "
            f"({rec['date']}, stand-in data,\n{rec['source']}) times a safety factor of "
            f"{rec['safety']}; the GPU memory a job\nneeds is noted per rule. Raise them "
            f"on slower GPUs."
        )
        path.write_text(apply_to_text(path.read_text(), res, note))
        print(f"updated {path}")
    return 0


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("measure", help="measure every paper config's jobs on this device")
    s.add_argument("--device", default="cuda")
    s.add_argument("--out", required=True)
    s.add_argument("--configs", default="", help="comma-separated config names (default: all)")
    s.add_argument("--archs", default="", help="only these archs (comma-separated)")
    s.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds; pairs that would start later are listed as not measured",
    )
    s.add_argument(
        "--min-left",
        type=float,
        default=20.0,
        help="start a pair only with this many seconds of the budget left",
    )
    s.add_argument(
        "--tiny",
        action="store_true",
        help="CPU mode: 16 px, few steps and images, "
        "config/smoke.yaml's method and evaluation settings",
    )
    s.add_argument("--warmup-steps", type=int, default=3)
    s.add_argument("--train-steps", type=int, default=10)
    s.add_argument("--eval-batches", type=int, default=3)
    s.add_argument("--fisher-images", type=int, default=32)
    s.add_argument(
        "--fisher-full",
        action="store_true",
        help="the Fisher of the whole forget class, not a timed part of it",
    )
    s.add_argument(
        "--scale",
        type=float,
        default=0.002,
        help="smaller data scale of the method/evaluation fit (share of the split)",
    )
    s.add_argument("--scale-ratio", type=float, default=3.0, help="larger scale / smaller")
    s.add_argument("--max-image-size", type=int, default=None)
    s = sub.add_parser("report", help="GPU-hours per config and resources from a measurement")
    s.add_argument("measured", nargs="+", help="gpu_cost.json file(s) from measure")
    s.add_argument("--safety", type=float, default=2.0)
    s.add_argument("--out", default=None)
    s = sub.add_parser("apply", help="write derived resources into config/paper/*.yaml")
    s.add_argument("resources")
    s.add_argument("--paper-dir", default=str(PAPER))
    args = p.parse_args(argv)
    if args.cmd == "measure" and args.tiny:
        args.max_image_size = args.max_image_size or 16
        args.warmup_steps, args.train_steps = min(args.warmup_steps, 1), min(args.train_steps, 2)
        args.eval_batches, args.fisher_images = 1, min(args.fisher_images, 2)
        args.scale = 0.0  # one image per class (the forget class five)
    return {"measure": measure, "report": report, "apply": apply}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
