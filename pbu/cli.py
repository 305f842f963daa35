"""The ``pbu`` command: one subcommand per pipeline stage, each usable on its own.

    pbu download  --dataset mnist5k --out data/prepared/mnist5k.pt
    pbu pretrain  --data data/prepared/mnist5k.pt --arch small_cnn --seed 0 --recipe '{...}' ...
    pbu oracle    ... --forget 2          # the oracle: fresh model, same recipe, retain data only
    pbu fisher    --data ... --model original.pt --forget 2 --kind true --out fisher.pt
    pbu unlearn   --data ... --model original.pt --forget 2 --method pbu --hparams '{...}' ...
    pbu tune      --data ... --model original.pt --forget 0 --method neggrad --hparams '{...}' \
                  --space '{"lr": [...]}' --budget 6 --val-fraction 0.2 --threshold 5 --out t.json
    pbu tune-dev  --data ... --model 100=m.pt --oracle 100=o.pt --forget 0 --method pbu ... \
                  --storage study.db --out t.json        # the development-class protocol
    pbu freeze    --record t.json ... --out config/tuned/mnist5k_small_cnn.yaml
    pbu evaluate  --data ... --forget 2 --original ... --oracle ... --model pbu=path.pt ...
    pbu aggregate --out-dir results/aggregate results/**/metrics.json
    pbu unlearn-batch / confidences / forget-score    the forget-score run (pbu.cli_forgetting)
    pbu track / pbu report / pbu methods

This module only parses arguments and calls the stage's job, a function of :mod:`pbu.jobs`
with the same arguments (``--out-info`` is ``out_info=``), which Python code can call directly.
Importing it stays cheap (no torch): the jobs are imported by the command that runs them.

Every output is written atomically (temporary name, then rename). Errors in arguments or inputs
end with one line ``pbu: error: ...`` naming the problem, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from pbu.cli_forgetting import add_commands as add_forgetting_commands
from pbu.cli_tune import add_tuning_parsers
from pbu.errors import CheckpointError, DataUnavailableError, UsageError

__all__ = ["UsageError", "build_parser", "main"]

log = logging.getLogger("pbu")


# ------------------------------------------------------------------------------------------
# argument conversion (the jobs take typed values; JSON and NAME=PATH syntax is the CLI's)
# ------------------------------------------------------------------------------------------


def _json_arg(text: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--{what} is not valid JSON ({err}): {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"--{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _setup(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


#: Wall-clock time (Unix seconds) when :func:`main` began this job; None outside ``main``.
_JOB_STARTED: float | None = None


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """What every compute job takes from the common options."""
    return {"device": args.device, "started_at": _JOB_STARTED}


def _recipe(args: argparse.Namespace):
    from pbu.jobs.common import as_typed
    from pbu.train import TrainRecipe

    return as_typed(
        TrainRecipe.from_dict, _json_arg(args.recipe, "recipe"), TrainRecipe, "--recipe"
    )


# ------------------------------------------------------------------------------------------
# commands: each calls one job of pbu.jobs (imported here, so `pbu --help` stays torch-free)
# ------------------------------------------------------------------------------------------


def cmd_download(args: argparse.Namespace) -> None:
    from pbu.jobs.data import download

    download(
        args.dataset,
        args.out,
        root=args.root,
        source=args.source,
        allow_download=not args.no_download,
        max_train_per_class=args.max_train_per_class,
        max_test_per_class=args.max_test_per_class,
        keep_classes=args.keep_classes,
        keep_per_class=args.keep_per_class,
        stand_in=args.stand_in,
        stand_in_seed=args.stand_in_seed,
        max_image_size=args.max_image_size,
    )


def cmd_download_weights(args: argparse.Namespace) -> None:
    from pbu.jobs.data import download_weights

    download_weights(args.arch, args.out)


def _training(args: argparse.Namespace) -> dict[str, Any]:
    """What the pretrain and oracle jobs take from their shared options."""
    return {
        "arch": args.arch,
        "seed": args.seed,
        "recipe": _recipe(args),
        "weights": args.weights,
        "stem": args.stem,
        "out_model": args.out_model,
        "out_info": args.out_info,
        "holdout": args.holdout,
        "progress": not args.quiet,
        **_run(args),
    }


def cmd_pretrain(args: argparse.Namespace) -> None:
    if args.forget is not None:  # the old spelling of `pbu oracle`
        log.warning("pbu pretrain --forget is deprecated: use pbu oracle --forget")
        return cmd_oracle(args)
    from pbu.jobs.train import pretrain

    pretrain(args.data, **_training(args))


def cmd_oracle(args: argparse.Namespace) -> None:
    from pbu.jobs.train import oracle

    oracle(args.data, forget=args.forget, **_training(args))


def cmd_fisher(args: argparse.Namespace) -> None:
    from pbu.jobs.fisher import fisher

    fisher(
        args.data,
        model=args.model,
        forget=args.forget,
        out=args.out,
        out_info=args.out_info,
        kind=args.kind,
        bn_mode=args.bn_mode,
        mc_samples=args.mc_samples,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        seed=args.seed,
        holdout=args.holdout,
        memory_format=args.memory_format,
        progress=not args.quiet,
        **_run(args),
    )


def cmd_unlearn(args: argparse.Namespace) -> None:
    from pbu.jobs.unlearn import unlearn

    unlearn(
        args.data,
        model=args.model,
        forget=args.forget,
        method=args.method,
        hparams=_json_arg(args.hparams, "hparams"),
        seed=args.seed,
        out_model=args.out_model,
        out_history=args.out_history,
        out_info=args.out_info,
        retain_subset=args.retain_subset,
        fisher=args.fisher,
        hparams_from=args.hparams_from,
        tuned=_json_arg(args.tuned, "tuned") if args.tuned else None,
        holdout=args.holdout,
        variant=args.variant,
        overrides=_json_arg(args.overrides, "overrides") if args.overrides else None,
        monitor_every=args.monitor_every,
        monitor_retain=args.monitor_retain,
        memory_format=args.memory_format,
        **_run(args),
    )


def _name_path(items: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise UsageError(f"{option} expects NAME=PATH, got {item!r}")
        out[name] = path
    return out


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pbu.evaluation import EvalSettings
    from pbu.jobs.common import as_typed
    from pbu.jobs.evaluate import evaluate

    settings = as_typed(
        EvalSettings.from_dict, _json_arg(args.settings, "settings"), EvalSettings, "--settings"
    )
    models = _name_path(args.model, "--model")
    evaluate(
        args.data,
        forget=args.forget,
        seed=args.seed,
        original=args.original,
        oracle=args.oracle,
        out=args.out,
        out_confidences=args.out_confidences,
        models=models,
        settings=settings,
        memory_format=args.memory_format,
        **_run(args),
    )


def cmd_aggregate(args: argparse.Namespace) -> None:
    from pbu.jobs.results import aggregate

    aggregate(args.out_dir, results=args.results, metrics_files=args.metrics)


def cmd_track(args: argparse.Namespace) -> None:
    from pbu.jobs.results import track

    track(
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        out=args.out,
        results=args.results,
        metrics_files=args.metrics,
        report_paths=args.report,
        forget_score=args.forget_score,
        tune_records=args.tune_record,
    )


def cmd_report(args: argparse.Namespace) -> None:
    from pbu.jobs.results import report

    settings: dict[str, Any] | str | None = args.settings or None
    if settings and settings.lstrip().startswith("{"):
        settings = _json_arg(settings, "settings")
    report(args.aggregate, reference=args.reference, out_dir=args.out_dir, settings=settings)


def cmd_methods(args: argparse.Namespace) -> None:
    from pbu.jobs.unlearn import list_methods

    for row in list_methods():
        print(f"{row['name']:16s} {row['access']:28s} {', '.join(row['hparams'])}")


# ------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------


def _int_nonneg(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pbu", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, *, data: bool = True) -> None:
        if data:
            sp.add_argument("--data", required=True, help="prepared dataset file (pbu download)")
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
        sp.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        sp.add_argument(
            "--memory-format",
            default="channels_last",
            choices=("channels_last", "contiguous"),
            help="layout of loaded convnets (fisher, unlearn, evaluate)",
        )

    from pbu.registry import ARCHS, DATASETS, STEMS, WEIGHTS

    sp = sub.add_parser("download", help="fetch a dataset and write the prepared file")
    sp.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    sp.add_argument("--root", default="data", help="torchvision data root")
    sp.add_argument("--source", default=None, help="folder already holding the original files")
    sp.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    sp.add_argument(
        "--max-train-per-class",
        type=int,
        default=None,
        help="keep at most N training images per class (seeded)",
    )
    sp.add_argument(
        "--max-test-per-class",
        type=int,
        default=None,
        help="keep at most N test images per class (seeded)",
    )
    sp.add_argument(
        "--keep-classes",
        type=lambda t: [int(c) for c in t.split(",") if c],
        default=[],
        metavar="C,C,...",
        help="classes that keep up to --keep-per-class images under the caps",
    )
    sp.add_argument("--keep-per-class", type=int, default=0)
    sp.add_argument(
        "--stand-in",
        action="store_true",
        help="generated stand-in images of the dataset's shape and sizes (no download)",
    )
    sp.add_argument("--stand-in-seed", type=_int_nonneg, default=0, help="seed of --stand-in")
    sp.add_argument(
        "--max-image-size",
        type=int,
        default=None,
        help="--stand-in: images at most N pixels a side",
    )
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_download)

    sp = sub.add_parser("download-weights", help="fetch ImageNet weights into the torch cache")
    sp.add_argument(
        "--arch", required=True, choices=[a for a in ARCHS if a not in ("small_cnn", "allcnn")]
    )
    sp.add_argument("--out", required=True, help="marker file written when done")
    sp.set_defaults(fn=cmd_download_weights)

    def training(sp: argparse.ArgumentParser) -> None:
        common(sp)
        sp.add_argument("--arch", required=True, choices=sorted(ARCHS))
        sp.add_argument("--weights", default="none", choices=WEIGHTS)
        sp.add_argument(
            "--stem",
            default=None,
            choices=STEMS,
            help="first layers of a torchvision arch (imagenet | cifar)",
        )
        sp.add_argument("--seed", type=_int_nonneg, required=True)
        sp.add_argument(
            "--recipe", required=True, help="JSON training recipe (pbu.train.TrainRecipe)"
        )
        sp.add_argument("--out-model", required=True)
        sp.add_argument("--out-info", required=True)
        sp.add_argument(
            "--holdout",
            type=float,
            default=None,
            metavar="FRACTION",
            help="train without a seeded, class-stratified share of every class of the training "
            "set (the development-class tuning's models: pbu tune-dev)",
        )

    sp = sub.add_parser("pretrain", help="train the original model on the full training split")
    training(sp)
    # deprecated spelling of `pbu oracle` (before issue 16), hidden from the help
    sp.add_argument("--forget", type=int, default=None, help=argparse.SUPPRESS)
    sp.set_defaults(fn=cmd_pretrain)

    sp = sub.add_parser(
        "oracle",
        help="train the oracle: a fresh model, the same recipe, on the retained classes only",
    )
    training(sp)
    sp.add_argument("--forget", type=int, required=True, help="the class the oracle never sees")
    sp.set_defaults(fn=cmd_oracle)

    holdout_help = (
        "the validation protocol's share of every class of the training set, held out "
        "(seeded by --seed) so that the method never sees it (pbu tune --protocol validation)"
    )

    sp = sub.add_parser("fisher", help="diagonal Fisher on the forget class's training samples")
    common(sp)
    sp.add_argument("--model", required=True)
    sp.add_argument("--forget", type=int, required=True)
    sp.add_argument("--kind", default="true", choices=("true", "empirical", "mc"))
    sp.add_argument("--bn-mode", default="eval", choices=("eval", "train"))
    sp.add_argument("--mc-samples", type=int, default=1)
    sp.add_argument("--chunk-size", type=int, default=64)
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--seed", type=_int_nonneg, default=0)
    sp.add_argument("--holdout", type=float, default=None, metavar="FRACTION", help=holdout_help)
    sp.add_argument("--out", required=True)
    sp.add_argument("--out-info", required=True)
    sp.set_defaults(fn=cmd_fisher)

    sp = sub.add_parser("unlearn", help="apply one unlearning method")
    common(sp)
    sp.add_argument("--model", required=True, help="the original model's checkpoint")
    sp.add_argument("--forget", type=int, required=True)
    sp.add_argument("--method", required=True)
    sp.add_argument("--hparams", required=True, help="JSON object of the method's hyperparameters")
    sp.add_argument(
        "--variant",
        default=None,
        metavar="NAME",
        help="record the model as this variant of --method (config variants:); default: --method",
    )
    sp.add_argument(
        "--overrides",
        default=None,
        metavar="JSON",
        help="the variant's hyperparameter overrides, merged over --hparams (recorded)",
    )
    sp.add_argument("--retain-subset", type=_int_nonneg, default=0)
    sp.add_argument("--fisher", default=None)
    sp.add_argument("--seed", type=_int_nonneg, required=True)
    sp.add_argument(
        "--monitor-every",
        type=_int_nonneg,
        default=1,
        help="record forget/retain test accuracy every N steps (0: never)",
    )
    sp.add_argument(
        "--monitor-retain",
        type=_int_nonneg,
        default=0,
        help="monitor on this many retain-test samples (0: all)",
    )
    sp.add_argument("--out-model", required=True)
    sp.add_argument("--out-history", required=True)
    sp.add_argument("--out-info", required=True)
    sp.add_argument(
        "--hparams-from",
        default=None,
        metavar="TUNE.json",
        help="override --hparams with the choice of a pbu tune record",
    )
    sp.add_argument(
        "--tuned",
        default=None,
        metavar="JSON",
        help='the frozen development-class choice: {"hparams": {...}, "source": {...}} '
        "(tuning.frozen; applied over --hparams, a variant's overrides last; recorded)",
    )
    sp.add_argument("--holdout", type=float, default=None, metavar="FRACTION", help=holdout_help)
    sp.set_defaults(fn=cmd_unlearn)

    add_tuning_parsers(sub, common, _int_nonneg)
    # the tuning commands (pbu/cli_tune.py) parse JSON and take the common options through these
    p.set_defaults(json_arg=_json_arg, run=_run)

    sp = sub.add_parser("evaluate", help="metrics of every model against the oracle")
    common(sp)
    sp.add_argument("--forget", type=int, required=True)
    sp.add_argument("--seed", type=_int_nonneg, required=True)
    sp.add_argument("--original", required=True)
    sp.add_argument("--oracle", required=True)
    sp.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    sp.add_argument("--settings", default="{}", help="JSON of pbu.evaluation.EvalSettings")
    sp.add_argument("--out", required=True)
    sp.add_argument("--out-confidences", default=None, help="per-example confidences (.npz)")
    sp.set_defaults(fn=cmd_evaluate)

    # the forget-score run's commands: unlearn-batch, confidences, forget-score
    add_forgetting_commands(sub, common, _run, _int_nonneg, lambda: _JOB_STARTED)

    sp = sub.add_parser("aggregate", help="collect every result file into CSV tables")
    sp.add_argument("--results", default=None, help="results folder (when no files are given)")
    sp.add_argument("--out-dir", required=True)
    sp.add_argument("metrics", nargs="*", help="metrics.json files (default: all under --results)")
    sp.set_defaults(fn=cmd_aggregate)

    sp = sub.add_parser("track", help="mirror result files into MLflow (idempotent)")
    sp.add_argument("--results", default=None, help="results folder (when no files are given)")
    sp.add_argument("--tracking-uri", required=True)
    sp.add_argument("--experiment", required=True)
    sp.add_argument(
        "--report",
        action="append",
        default=[],
        help="file or folder to log as artifacts of the 'report' run (repeatable)",
    )
    sp.add_argument(
        "--tune-record",
        action="append",
        default=[],
        help="a development-class tuning record (pbu tune-dev) to log, its trials as child "
        "runs (repeatable)",
    )
    sp.add_argument("--out", required=True, help="JSON summary of what was logged")
    sp.add_argument("--forget-score", default=None, metavar="DIR", help="forget-score tables")
    sp.add_argument("metrics", nargs="*", help="metrics.json files (default: all under --results)")
    sp.set_defaults(fn=cmd_track)

    sp = sub.add_parser("report", help="tables, figures and report.md from aggregated results")
    sp.add_argument("--aggregate", required=True, help="folder with runs.csv, history.csv")
    sp.add_argument("--reference", required=True, help="the paper's numbers (reference.csv)")
    sp.add_argument("--settings", default=None, help="settings to list: JSON, or a JSON file")
    sp.add_argument("--out-dir", required=True)
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("methods", help="list unlearning methods, their data access and hparams")
    sp.set_defaults(fn=cmd_methods)
    return p


def main(argv: list[str] | None = None) -> int:
    global _JOB_STARTED
    _JOB_STARTED = time.time()  # the job's own start, recorded with its results
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        _setup(args)
        args.fn(args)
    except (UsageError, CheckpointError, DataUnavailableError) as err:
        print(f"pbu: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
