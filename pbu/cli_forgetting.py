"""The ``pbu`` commands of the forget-score run (config/forgetting.yaml), added to
:mod:`pbu.cli`'s parser by :func:`add_commands`; like the others, each only parses its arguments
and calls one job of :mod:`pbu.jobs`:

    pbu unlearn-batch --data ... --model original.pt --forget 2 --seed 0 --entries '[{...}, ...]'
    pbu confidences   --data ... --forget 2 --oracle 32=path.pt --oracle 33=... --out c.npz
    pbu forget-score  --out-dir results/aggregate results/**/confidences.npz --ceiling c.npz
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from pbu.errors import UsageError

Run = Callable[[argparse.Namespace], dict[str, Any]]


def cmd_unlearn_batch(args: argparse.Namespace, run: Run) -> None:
    from pbu.jobs.unlearn_batch import unlearn_batch

    try:
        entries = json.loads(args.entries)
    except json.JSONDecodeError as err:
        raise UsageError(f"--entries is not valid JSON ({err}): {args.entries[:80]!r}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError("--entries must be a JSON list of objects, one per method")
    unlearn_batch(
        args.data,
        model=args.model,
        forget=args.forget,
        seed=args.seed,
        entries=entries,
        memory_format=args.memory_format,
        **run(args),
    )


def cmd_confidences(args: argparse.Namespace, run: Run) -> None:
    from pbu.jobs.evaluate import confidences

    oracles = {}
    for item in args.oracle:
        seed, sep, path = item.partition("=")
        if not (sep and seed.isdigit()):
            raise UsageError(f"--oracle expects SEED=PATH, got {item!r}")
        oracles[int(seed)] = path
    if not oracles:
        raise UsageError("give at least one --oracle SEED=PATH")
    confidences(
        args.data,
        forget=args.forget,
        models=oracles,
        out=args.out,
        out_info=args.out_info,
        batch_size=args.batch_size,
        memory_format=args.memory_format,
        **run(args),
    )


def cmd_forget_score(args: argparse.Namespace, started: Callable[[], float | None]) -> None:
    from pbu.jobs.forget_score import forget_score

    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as err:
        raise UsageError(f"--settings is not valid JSON ({err})") from None
    try:
        forget_score(
            args.out_dir,
            confidences=args.confidences,
            ceiling=args.ceiling,
            settings=settings,
            started_at=started(),
        )
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None


def add_commands(
    sub: Any,
    common: Callable[..., None],
    run: Run,
    seed_type: Callable[[str], int],
    started: Callable[[], float | None],
) -> None:
    """Add the three commands to ``sub`` (the parser's subparsers); ``common`` adds the options
    every compute job takes, ``run`` gives a compute job its device and start time, ``started``
    the start time of the job (``pbu forget-score`` takes no device)."""
    sp = sub.add_parser(
        "unlearn-batch",
        help="apply several unlearning methods in one job, each with its own outputs",
    )
    common(sp)
    sp.add_argument("--model", required=True, help="the original model's checkpoint")
    sp.add_argument("--forget", type=int, required=True)
    sp.add_argument("--seed", type=seed_type, required=True)
    sp.add_argument(
        "--entries",
        required=True,
        help="JSON list, one object per method: the keyword arguments of pbu.jobs.unlearn."
        "unlearn that differ between methods (method, hparams, out_model, out_history, "
        "out_info, ...; pbu.jobs.unlearn_batch.ENTRY_KEYS)",
    )
    sp.set_defaults(fn=lambda args: cmd_unlearn_batch(args, run))

    sp = sub.add_parser(
        "confidences",
        help="per-example confidences of oracles of further seeds (the forget score's ceiling)",
    )
    common(sp)
    sp.add_argument("--forget", type=int, required=True)
    sp.add_argument("--oracle", action="append", default=[], metavar="SEED=PATH")
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--out", required=True, help="the confidences file (.npz)")
    sp.add_argument("--out-info", default=None, help="the job's record (JSON)")
    sp.set_defaults(fn=lambda args: cmd_confidences(args, run))

    sp = sub.add_parser(
        "forget-score",
        help="the per-example forget score of every method against the oracles (no models run)",
    )
    sp.add_argument("--out-dir", required=True, help="folder of the tables and the job's record")
    sp.add_argument(
        "--ceiling",
        action="append",
        default=[],
        help="a confidences file of further oracles (pbu confidences), repeatable",
    )
    sp.add_argument("--settings", default="{}", help="JSON of ForgetScoreSettings")
    sp.add_argument("confidences", nargs="+", help="the groups' confidences.npz files")
    sp.set_defaults(fn=lambda args: cmd_forget_score(args, started))
