"""Training throughput (images/s) of the project's own training loop, per speed-up variant.

What is timed is ``pbu.train.train_model`` itself, with the project's tensor loader
(``pbu.data.TensorImages``: uint8 images resident on the device, random crop/flip on the device),
so a number here is what a ``pretrain``/``oracle`` job gets, not what a hand-written loop could
get. The data are random uint8 images shaped like the dataset the model is for (nothing to
download): ResNet-18 on CIFAR-10-shaped 3x32x32 images with crop+flip, the small CNN on
MNIST-shaped 1x28x28 images with crop.

Each variant gets its own fresh model and one call of ``train_model`` with ``1 + repeats``
epochs of ``steps`` batches each. Epoch 1 is the warm-up (first-call allocations, cuDNN set-up,
``torch.compile``); every later epoch is timed between two ``on_epoch`` callbacks, which follow a
host read of the epoch's loss (a device sync) and an explicit ``torch.cuda.synchronize``. The
reported figure is the median epoch. Two diagnostics for the first variant of each model:
``loader_only`` (the loader alone: gather, crop/flip, normalise) and ``fixed_batch`` (the same
training step on one pre-made batch, no loader), which bound how much of a step the loader
costs.

On a CPU every figure is also given per process-CPU-second (``images_per_cpu_s``): on a shared
machine other jobs stretch wall time but hardly the CPU time the work needs, so with
``--threads 1`` the CPU-time ratios are the steadier ones (with more threads they count every
thread's time, so they measure work, not speed). On CUDA only wall time means anything.

Variants (``--variants``, comma-separated; default: ``fp32,cl`` on CPU, the whole grid on CUDA)::

    fp32        the pipeline's default recipe (amp, channels_last and compile off)
    cl          channels_last
    bf16        bf16 autocast
    cl_bf16     channels_last + bf16 autocast
    cl_bf16_compile   ... + torch.compile
    cl_bf16_nondet    channels_last + bf16 with deterministic algorithms off and
                      cudnn.benchmark on (train_model always asks for deterministic kernels;
                      this variant measures what that costs)

``--amp``, ``--channels-last`` and ``--compile`` instead select the single variant they spell.

    python benchmarks/bench_train.py --threads 1                     # CPU, about a minute
    python benchmarks/bench_train.py --device cuda --out results/bench_train.json   # GPU grid
    python benchmarks/bench_train.py --device cuda --models resnet18 --amp --channels-last

On CUDA the script prints whether ResNet-18 reaches the target (``--target``, 25,000 images/s)
and, per variant, its speed relative to ``fp32`` measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from common import Clock, machine, median_rate, sync, write_json  # before pbu (sys.path)

import pbu.train
from pbu.data import DATASETS, TensorImages
from pbu.models import build_model, count_parameters
from pbu.train import TrainRecipe, make_optimizer, train_model

log = logging.getLogger("bench_train")

# model -> (dataset spec it is paired with, build_model kwargs)
MODELS: dict[str, tuple[str, dict[str, int | str]]] = {
    # the CIFAR stem (3x3 stride 1, no pool), as every ResNet-18 number in benchmarks/ was measured
    "resnet18": ("cifar10", dict(num_classes=10, in_channels=3, image_size=32, stem="cifar")),
    "small_cnn": ("mnist5k", dict(num_classes=10, in_channels=1, image_size=28)),
}

# variant -> (amp, channels_last, compile, deterministic)
VARIANTS: dict[str, tuple[bool, bool, bool, bool]] = {
    "fp32": (False, False, False, True),
    "cl": (False, True, False, True),
    "bf16": (True, False, False, True),
    "cl_bf16": (True, True, False, True),
    "cl_bf16_compile": (True, True, True, True),
    "cl_bf16_nondet": (True, True, False, False),
    # spelled by the single-variant flags only
    "compile": (False, False, True, True),
    "cl_compile": (False, True, True, True),
    "bf16_compile": (True, False, True, True),
}
CPU_DEFAULT = ("fp32", "cl")  # cl: the default config's pretrain.channels_last
CPU_SIZES = {"resnet18": (32, 2), "small_cnn": (64, 20)}  # (batch, steps): ~a minute on 2 cores
CUDA_DEFAULT = ("fp32", "cl", "bf16", "cl_bf16", "cl_bf16_compile", "cl_bf16_nondet")


def variant_from_flags(amp: bool, channels_last: bool, compile_: bool) -> str:
    """The variant name the three single-variant flags spell."""
    parts = [p for p, on in (("cl", channels_last), ("bf16", amp), ("compile", compile_)) if on]
    return "_".join(parts) or "fp32"


def random_images(model: str, n: int, seed: int) -> TensorImages:
    """``n`` random uint8 images shaped like the model's dataset, 10 balanced classes.

    The spec is the real one (CIFAR-10 for ResNet-18, with its crop+flip augmentation and its
    normalisation; MNIST for the small CNN, with crop), renamed so it is never mistaken for data.
    """
    spec_name, kw = MODELS[model]
    spec = dataclasses.replace(
        DATASETS[spec_name],
        name=f"random_{spec_name}",
        description=f"random uint8 images shaped like {spec_name}",
    )
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0,
        256,
        (n, kw["in_channels"], kw["image_size"], kw["image_size"]),
        generator=g,
        dtype=torch.uint8,
    )
    return TensorImages(spec, images, torch.arange(n) % spec.num_classes)


@contextlib.contextmanager
def nondeterministic() -> Any:
    """Make ``train_model``'s ``seed_everything`` leave deterministic kernels off and turn
    cudnn.benchmark on, for the duration (restored afterwards)."""
    original = pbu.train.seed_everything

    def seed_nondet(seed: int, *, deterministic: bool = True) -> None:
        original(seed, deterministic=False)
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True

    pbu.train.seed_everything = seed_nondet
    try:
        yield
    finally:
        pbu.train.seed_everything = original
        torch.backends.cudnn.benchmark = False


def recipe_for(
    variant: str, batch_size: int, epochs: int, optimizer: str, lr: float, augment: bool
) -> TrainRecipe:
    amp, cl, comp, _ = VARIANTS[variant]
    return TrainRecipe(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=0.0,
        augment=augment,
        amp=amp,
        channels_last=cl,
        compile=comp,
    )


def time_train_model(
    model_name: str,
    variant: str,
    data: TensorImages,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """One ``train_model`` call: epoch 1 warm-up, epochs 2.. timed. Images/s per timed epoch."""
    recipe = recipe_for(
        variant, args.batch_size, 1 + args.repeats, args.optimizer, args.lr, not args.no_augment
    )
    stamps: list[float] = []
    cpu_stamps: list[float] = []

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        sync(device)  # row["loss"] already came from a host read; be explicit anyway
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())

    pbu.train.seed_everything(args.seed)
    model = build_model(model_name, **MODELS[model_name][1])
    deterministic = VARIANTS[variant][3]
    ctx = contextlib.nullcontext() if deterministic else nondeterministic()
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with ctx:
        history = train_model(
            model, data, recipe, seed=args.seed, device=device, progress=False, on_epoch=on_epoch
        )
    per_epoch = [b - a for a, b in zip([t0, *stamps[:-1]], stamps)]
    cpu_per_epoch = [b - a for a, b in zip([c0, *cpu_stamps[:-1]], cpu_stamps)]
    imgs = args.steps * args.batch_size
    timed = per_epoch[1:]
    ips = [imgs / t for t in timed]
    out = {
        "model": model_name,
        "variant": variant,
        "what": "train_model",
        "amp": recipe.amp,
        "channels_last": recipe.channels_last,
        "compile": recipe.compile,
        "deterministic": deterministic,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "timed_epochs": len(timed),
        "images_per_s": statistics.median(ips),
        "images_per_s_all": ips,
        "step_ms": 1000 * statistics.median(timed) / args.steps,
        "warmup_s": per_epoch[0],
        "final_loss": history[-1]["loss"],
        # process CPU seconds: on a shared CPU the steadier measure (see the module docstring)
        "images_per_cpu_s": median_rate(imgs, cpu_per_epoch[1:]),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    del model
    return out


def time_loader_only(
    model_name: str, data: TensorImages, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """The loader alone: batches of augmented, normalised images per second."""
    loader = data.loader(
        args.batch_size,
        shuffle=True,
        seed=args.seed,
        augment=not args.no_augment,
        device=device,
        drop_last=True,
    )
    for _ in loader:  # warm-up epoch
        pass
    clocks = []
    for _ in range(args.repeats):
        with Clock(device) as clk:
            for _batch in loader:
                pass
        clocks.append(clk)
    n = len(loader) * args.batch_size
    return {
        "model": model_name,
        "variant": "loader_only",
        "what": "loader",
        "batch_size": args.batch_size,
        "steps": len(loader),
        "images_per_s": median_rate(n, (c.wall for c in clocks)),
        "images_per_cpu_s": median_rate(n, (c.cpu for c in clocks)),
    }


def time_fixed_batch(
    model_name: str,
    variant: str,
    data: TensorImages,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """The same step as train_model's loop, on one pre-made batch (no loader), for comparison."""
    amp, cl, comp, _ = VARIANTS[variant]
    recipe = recipe_for(variant, args.batch_size, 1, args.optimizer, args.lr, False)
    pbu.train.seed_everything(args.seed)
    model = build_model(model_name, **MODELS[model_name][1]).to(device)
    if cl:
        model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if comp else model
    opt = make_optimizer(model, recipe)
    x, y = next(iter(data.loader(args.batch_size, device=device)))
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(min(args.steps, 3)):  # warm-up
        step()
    clocks = []
    for _ in range(args.repeats):
        with Clock(device) as clk:
            for _ in range(args.steps):
                step()
        clocks.append(clk)
    n = args.steps * args.batch_size
    return {
        "model": model_name,
        "variant": f"{variant}_fixed_batch",
        "what": "fixed_batch",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "images_per_s": median_rate(n, (c.wall for c in clocks)),
        "images_per_cpu_s": median_rate(n, (c.cpu for c in clocks)),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    p.add_argument(
        "--models", default="resnet18,small_cnn", help=f"comma-separated, of {', '.join(MODELS)}"
    )
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: "
        f"{','.join(CPU_DEFAULT)} on CPU, {','.join(CUDA_DEFAULT)} on CUDA)",
    )
    p.add_argument("--amp", action="store_true", help="single variant: bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="single variant: channels_last")
    p.add_argument("--compile", action="store_true", help="single variant: torch.compile")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="default: 512 on CUDA; on CPU 32 for resnet18, 64 for small_cnn",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per epoch, i.e. per timed repeat (default: 50 on CUDA; on CPU "
        "2 for resnet18, 20 for small_cnn)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed epochs after the warm-up epoch; the median is reported "
        "(default: 3 CUDA, 2 CPU)",
    )
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--no-augment", action="store_true", help="skip the loader's crop/flip")
    p.add_argument(
        "--no-diagnostics", action="store_true", help="skip the loader_only and fixed_batch rows"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument(
        "--target", type=float, default=25000.0, help="ResNet-18 images/s to report against on CUDA"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.repeats is None:
        args.repeats = 3 if cuda else 2
    if min(args.batch_size or 1, args.steps or 1, args.repeats) < 1:
        p.error("--batch-size, --steps and --repeats must be >= 1")
    args.models = [m for m in args.models.split(",") if m]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; known: {', '.join(MODELS)}")
    if args.amp or args.channels_last or args.compile:
        if args.variants:
            p.error("give either --variants or the single-variant flags, not both")
        args.variants = [variant_from_flags(args.amp, args.channels_last, args.compile)]
    elif args.variants:
        args.variants = [v for v in args.variants.split(",") if v]
    else:
        args.variants = list(CUDA_DEFAULT if cuda else CPU_DEFAULT)
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train: --device cuda but no CUDA device is available")
    rows: list[dict[str, Any]] = []
    user_args = args
    for model_name in args.models:
        args = argparse.Namespace(**vars(user_args))  # per-model defaults filled in below
        default_batch, default_steps = (512, 50) if device.type == "cuda" else CPU_SIZES[model_name]
        args.batch_size = args.batch_size or default_batch
        args.steps = args.steps or default_steps
        data = random_images(model_name, args.batch_size * args.steps, args.seed)
        if device.type == "cuda":
            data = data.to(device)  # resident once; every variant's loader reuses it
        params = count_parameters(build_model(model_name, **MODELS[model_name][1]))
        for variant in args.variants:
            row = time_train_model(model_name, variant, data, args, device)
            row["parameters"] = params
            rows.append(row)
            cpu = f", {row['images_per_cpu_s']:.1f} img/CPU-s" if device.type == "cpu" else ""
            print(
                f"{model_name:10s} {variant:18s} {row['images_per_s']:11.1f} img/s "
                f"({row['step_ms']:.1f} ms/step, warm-up epoch {row['warmup_s']:.1f} s{cpu})",
                flush=True,
            )
        if not args.no_diagnostics:
            for diag in (
                time_loader_only(model_name, data, args, device),
                time_fixed_batch(model_name, args.variants[0], data, args, device),
            ):
                rows.append(diag)
                print(
                    f"{model_name:10s} {diag['variant']:18s} {diag['images_per_s']:11.1f} "
                    f"img/s (diagnostic)",
                    flush=True,
                )

    # Ratios, side by side in this run: each variant vs fp32 (when run), and the loop vs the
    # same step on a fixed batch.
    summary: dict[str, Any] = {}
    for model_name in args.models:
        mine = {r["variant"]: r for r in rows if r["model"] == model_name}
        s: dict[str, Any] = {"images_per_s": {v: mine[v]["images_per_s"] for v in args.variants}}
        best = max(args.variants, key=lambda v: mine[v]["images_per_s"])
        s["best_variant"], s["best_images_per_s"] = best, mine[best]["images_per_s"]
        clocks = [("", "images_per_s")]
        if device.type == "cpu":
            clocks.append(("_cpu", "images_per_cpu_s"))
            s["images_per_cpu_s"] = {v: mine[v]["images_per_cpu_s"] for v in args.variants}
        first = args.variants[0]
        for suffix, key in clocks:
            if "fp32" in mine:
                s[f"speedup_vs_fp32{suffix}"] = {
                    v: mine[v][key] / mine["fp32"][key] for v in args.variants
                }
            if f"{first}_fixed_batch" in mine:
                s[f"loop_vs_fixed_batch{suffix}"] = (
                    mine[first][key] / mine[f"{first}_fixed_batch"][key]
                )
                s[f"loader_only_{key}"] = mine["loader_only"][key]
        if model_name == "resnet18" and device.type == "cuda":
            s["target_images_per_s"] = args.target
            s["target_met"] = s["best_images_per_s"] >= args.target
        summary[model_name] = s
    result = {
        "benchmark": "bench_train",
        "machine": machine(device),
        "settings": {k: v for k, v in vars(user_args).items() if k != "out"},
        "rows": rows,
        "summary": summary,
    }

    print("\nside by side (same run):")
    for model_name, s in summary.items():
        for suffix, clock in (("", "wall"), ("_cpu", "CPU time")):
            if f"speedup_vs_fp32{suffix}" in s:
                print(
                    f"  {model_name} ({clock}): "
                    + ", ".join(f"{v} x{r:.2f}" for v, r in s[f"speedup_vs_fp32{suffix}"].items())
                    + " vs fp32"
                )
            if f"loop_vs_fixed_batch{suffix}" in s:
                print(
                    f"  {model_name} ({clock}): train_model loop = "
                    f"{s[f'loop_vs_fixed_batch{suffix}']:.2f} x the same step on a fixed "
                    f"batch"
                )
        if "loader_only_images_per_s" in s:
            print(f"  {model_name}: loader alone {s['loader_only_images_per_s']:.0f} img/s")
        if "target_met" in s:
            print(
                f"  {model_name}: best {s['best_variant']} {s['best_images_per_s']:.0f} img/s; "
                f"target {args.target:.0f}: {'MET' if s['target_met'] else 'NOT met'}"
            )
    if args.out:
        print(f"wrote {write_json(args.out, result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
