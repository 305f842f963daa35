"""The tuning commands of ``pbu`` (:mod:`pbu.cli` adds them): ``pbu tune`` (one method, one
group, under the blind or validation protocol), ``pbu tune-dev`` (one method on the development
class over the tuning seeds) and ``pbu freeze`` (the frozen choice of a setting). Each parses its
arguments and calls its job in :mod:`pbu.jobs.tune`; torch-free to import."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pbu.errors import UsageError


def cmd_tune(args: argparse.Namespace) -> None:
    from pbu.jobs.tune import tune

    fisher_settings = (
        args.json_arg(args.fisher_settings, "fisher-settings") if args.fisher_settings else None
    )
    tune(
        args.data,
        model=args.model,
        forget=args.forget,
        method=args.method,
        hparams=args.json_arg(args.hparams, "hparams"),
        space=args.json_arg(args.space, "space"),
        budget=args.budget,
        val_fraction=args.val_fraction,
        threshold=args.threshold,
        seed=args.seed,
        out=args.out,
        retain_subset=args.retain_subset,
        fisher_settings=fisher_settings,
        protocol=args.protocol,
        memory_format=args.memory_format,
        progress=not args.quiet,
        **args.run(args),
    )


def _seed_paths(items: list[str], what: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for item in items:
        seed, sep, path = item.partition("=")
        if not sep or not seed.isdigit():
            raise UsageError(f"--{what} expects SEED=PATH, got {item!r}")
        out[int(seed)] = path
    return out


def cmd_tune_dev(args: argparse.Namespace) -> None:
    from pbu.jobs.tune import tune_dev

    tune_dev(
        args.data,
        models=_seed_paths(args.model, "model"),
        oracles=_seed_paths(args.oracle, "oracle"),
        forget=args.forget,
        method=args.method,
        hparams=args.json_arg(args.hparams, "hparams"),
        space=args.json_arg(args.space, "space"),
        budget=args.budget,
        sampler_seed=args.sampler_seed,
        val_fraction=args.val_fraction,
        out=args.out,
        storage=args.storage,
        variant=args.variant,
        overrides=args.json_arg(args.overrides, "overrides") if args.overrides else None,
        retain_subset=args.retain_subset,
        fisher_settings=(
            args.json_arg(args.fisher_settings, "fisher-settings") if args.fisher_settings else None
        ),
        memory_format=args.memory_format,
        progress=not args.quiet,
        **args.run(args),
    )


def cmd_freeze(args: argparse.Namespace) -> None:
    from pbu.jobs.tune import freeze

    freeze(args.record, out=args.out, training=args.training, command=args.command)


def add_tuning_parsers(
    sub: argparse._SubParsersAction,
    common: Callable[[argparse.ArgumentParser], None],
    int_nonneg: Callable[[str], int],
) -> None:
    """Add ``tune``, ``tune-dev`` and ``freeze`` to the ``pbu`` parser's subcommands (``common``
    adds the options every compute command shares; ``int_nonneg`` parses a count)."""
    _int_nonneg = int_nonneg

    sp = sub.add_parser(
        "tune",
        help="tune one method (pbu.tune): blind, on a validation split of the data it may see, "
        "or on the experimenter's held-out split of the training set",
    )
    common(sp)
    sp.add_argument("--model", required=True, help="the original model's checkpoint")
    sp.add_argument("--forget", type=int, required=True)
    sp.add_argument("--method", required=True)
    sp.add_argument(
        "--hparams",
        required=True,
        help="JSON object of the method's base hyperparameters (the space overrides)",
    )
    sp.add_argument("--retain-subset", type=_int_nonneg, default=0)
    sp.add_argument("--seed", type=_int_nonneg, required=True)
    sp.add_argument(
        "--space",
        required=True,
        help='JSON search space: a list of values or a range per name, e.g. \'{"lr": '
        '{"low": 1e-4, "high": 1e-2, "log": true}, "epochs": [1, 2]}\'',
    )
    sp.add_argument(
        "--budget",
        type=int,
        required=True,
        help="trials (the same for every method); the space needs >= this many points",
    )
    sp.add_argument(
        "--val-fraction",
        type=float,
        required=True,
        help="share of each part of the method's data held out for validation",
    )
    sp.add_argument(
        "--threshold",
        type=float,
        required=True,
        help="forget-val accuracy (%%) at or below which a trial counts as forgotten",
    )
    sp.add_argument(
        "--fisher-settings",
        default=None,
        help="JSON: kind, bn_mode, mc_samples, chunk_size, batch_size (methods that "
        "need the Fisher; computed on the fit part of the forget data)",
    )
    sp.add_argument(
        "--protocol",
        default="blind",
        choices=("blind", "validation"),
        help="blind: validate on a share of the data the method may see; validation: on a "
        "share (--val-fraction) of every class of the training set, held out from the method",
    )
    sp.add_argument("--out", required=True, help="the tuning record (JSON)")
    sp.set_defaults(fn=cmd_tune)

    sp = sub.add_parser(
        "tune-dev",
        help="tune one method on the development class over the tuning seeds (pbu.tune, "
        "dev_class: distance to each seed's oracle on held-out images, Optuna TPE)",
    )
    common(sp)
    sp.add_argument("--model", action="append", default=[], metavar="SEED=PATH", required=True)
    sp.add_argument("--oracle", action="append", default=[], metavar="SEED=PATH", required=True)
    sp.add_argument("--forget", type=int, required=True, help="the development class")
    sp.add_argument("--method", required=True)
    sp.add_argument("--variant", default=None, metavar="NAME", help="a config variant of --method")
    sp.add_argument("--overrides", default=None, metavar="JSON", help="the variant's overrides")
    sp.add_argument("--hparams", required=True, help="JSON: the method's base hyperparameters")
    sp.add_argument("--space", required=True, help="JSON search space (as pbu tune's)")
    sp.add_argument("--budget", type=int, required=True, help="trials, the same for every method")
    sp.add_argument("--sampler-seed", type=_int_nonneg, default=0)
    sp.add_argument(
        "--val-fraction",
        type=float,
        required=True,
        help="the held-out share of every class (as the models' pbu pretrain --holdout)",
    )
    sp.add_argument("--retain-subset", type=_int_nonneg, default=0)
    sp.add_argument("--fisher-settings", default=None, help="JSON (methods that need the Fisher)")
    sp.add_argument("--storage", default=None, help="the Optuna study's SQLite file (made afresh)")
    sp.add_argument("--out", required=True, help="the tuning record (JSON)")
    sp.set_defaults(fn=cmd_tune_dev)

    sp = sub.add_parser(
        "freeze", help="freeze the development-class choices of a setting into a config file"
    )
    sp.add_argument("--record", action="append", required=True, help="pbu tune-dev records")
    sp.add_argument(
        "--training", action="append", default=[], help="the tuning seeds' model info.json"
    )
    sp.add_argument("--command", default=None, help="the command that regenerates the file")
    sp.add_argument("--out", required=True, help="the frozen config (YAML)")
    sp.set_defaults(fn=cmd_freeze)
