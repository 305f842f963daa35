"""Inference batch size on the CPU: what an accuracy check costs at batch 256 against 1024.

The harness's monitor (``pbu.jobs.unlearn.AccuracyMonitor``, every step of PBU), neggrad's stop
check and pretraining's per-epoch test accuracy all call ``pbu.train.evaluate_accuracy`` over a
loader. This times exactly that call on the small CNN (the default arch, random init) over
``--images`` MNIST-shaped images, for each batch size in ``--batch-sizes`` and each memory format
(contiguous, channels_last), interleaved over ``--repeats`` rounds so that load on a shared
machine hits every variant alike. Reported per variant: the median wall and process-CPU seconds
per 1,000 images, and each batch size's CPU time relative to the first one in the same run.

    python benchmarks/bench_eval_batch.py --out results/bench_eval_batch.json   # ~20 s
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from typing import Any

import torch
from common import Clock, machine, write_json  # before pbu (sys.path)

from pbu.images import TensorImages
from pbu.models import build_model
from pbu.registry import get_spec
from pbu.train import evaluate_accuracy

FORMATS = ("contiguous", "channels_last")


def measure(
    batch_sizes: list[int], images: int, repeats: int, calls: int, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per (batch size, memory format): median seconds per 1,000 images."""
    torch.manual_seed(seed)
    spec = get_spec("mnist")
    x = torch.randint(0, 256, (images, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, spec.num_classes, (images,))
    data = TensorImages(spec, x, y)
    base = build_model("small_cnn", num_classes=10, in_channels=1, image_size=28).eval()
    models = {"contiguous": base, "channels_last": copy.deepcopy(base)}
    models["channels_last"].to(memory_format=torch.channels_last)
    loaders = {b: list(data.loader(b)) for b in batch_sizes}
    times: dict[tuple[int, str], list[tuple[float, float]]] = {}
    accuracy: dict[tuple[int, str], float] = {}
    for fmt in FORMATS:  # warm-up: first-call allocations
        evaluate_accuracy(models[fmt], loaders[batch_sizes[0]])
    for _ in range(repeats):
        for b in batch_sizes:
            for fmt in FORMATS:
                with Clock() as clock:
                    for _ in range(calls):
                        accuracy[b, fmt] = evaluate_accuracy(models[fmt], loaders[b])
                times.setdefault((b, fmt), []).append((clock.wall, clock.cpu))
    rows = []
    for (b, fmt), ts in times.items():
        per = 1000.0 / (images * calls)
        rows.append(
            {
                "batch_size": b,
                "memory_format": fmt,
                "wall_s_per_1000": statistics.median(t[0] for t in ts) * per,
                "cpu_s_per_1000": statistics.median(t[1] for t in ts) * per,
                "accuracy": accuracy[b, fmt],
            }
        )
    for r in rows:  # relative to the first batch size, same memory format, same run
        ref = next(
            q
            for q in rows
            if q["batch_size"] == batch_sizes[0] and q["memory_format"] == r["memory_format"]
        )
        r["cpu_vs_first_batch_size"] = r["cpu_s_per_1000"] / ref["cpu_s_per_1000"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="256,1024", help="comma-separated; first = reference")
    ap.add_argument("--images", type=int, default=1000, help="images per check (the monitor's)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds; median reported")
    ap.add_argument("--calls", type=int, default=5, help="checks per timed span")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a pipeline job's)")
    ap.add_argument("--out", help="write the rows and the machine as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = measure(sizes, args.images, args.repeats, args.calls)
    print("batch  format          wall s/1000  CPU s/1000  CPU vs batch", sizes[0])
    for r in rows:
        print(
            f"{r['batch_size']:>5}  {r['memory_format']:<14}  {r['wall_s_per_1000']:>11.3f}  "
            f"{r['cpu_s_per_1000']:>10.3f}  {r['cpu_vs_first_batch_size']:>6.2f}x"
        )
    if args.out:
        write_json(args.out, {"machine": machine(), "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
