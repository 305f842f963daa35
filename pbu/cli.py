"""The ``pbu`` command: one subcommand per pipeline stage, each usable on its own.

    pbu download  --dataset mnist5k --out data/prepared/mnist5k.pt
    pbu pretrain  --data data/prepared/mnist5k.pt --arch small_cnn --seed 0 --recipe '{...}' ...
    pbu pretrain  ... --forget 2          # the retrain oracle: fresh model, retain data only
    pbu fisher    --data ... --model original.pt --forget 2 --kind true --out fisher.pt
    pbu unlearn   --data ... --model original.pt --forget 2 --method pbu --hparams '{...}' ...
    pbu tune      --data ... --model original.pt --forget 0 --method neggrad --hparams '{...}' \
                  --space '{"lr": [...]}' --budget 6 --val-fraction 0.2 --threshold 5 --out t.json
    pbu evaluate  --data ... --forget 2 --original ... --oracle ... --model pbu=path.pt ...
    pbu aggregate --out-dir results/aggregate results/**/metrics.json
    pbu track / pbu report / pbu methods

Every output is written atomically (temporary name, then rename). Errors in arguments or inputs
end with one line ``pbu: error: ...`` naming the problem, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("pbu")


class UsageError(Exception):
    """Bad arguments or inputs: reported as one line, exit status 2."""


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _json_arg(text: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--{what} is not valid JSON ({err}): {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"--{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here")
    return torch.device(name)


def _setup(args: argparse.Namespace) -> None:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


#: Wall-clock time (Unix seconds) when :func:`main` began this job; None outside ``main``.
_JOB_STARTED: float | None = None


def _resources(device) -> dict[str, float]:
    """Peak RSS (MB) and CPU seconds (user + system) of this process and, on a GPU, peak
    allocated GPU memory (MB). Measured inside the job's own process, so they stay right when it
    is a fork-server worker that Snakemake's benchmark cannot see (``pbu.forkserver``). Also the
    job's own span, ``started_at`` / ``ended_at`` (Unix seconds): MLflow shows them as the run's
    start and duration."""
    import torch

    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
           "minor_faults": usage.ru_minflt,
           # glibc allocator settings from the environment (the SLURM profile sets two)
           "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
           "fork_server": os.environ.get("PBU_FORK_WORKER") == "1",
           "started_at": _JOB_STARTED, "ended_at": time.time()}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _load_data(path: str, forget: int | None = None):
    from pbu.data import check_class, load_prepared

    train, test = load_prepared(path)
    if forget is not None:
        try:
            check_class(train.spec, forget)
        except ValueError as err:
            raise UsageError(str(err)) from None
    return train, test


def _memory_format(model, fmt: str):
    """channels_last speeds small convnets up on CPU (measured ~3x for inference, ~1.6x for
    training of the default CNN) and on GPU with bf16; numerics stay deterministic."""
    import torch

    if fmt == "channels_last" and any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


def _load_model(path: str, device, fmt: str = "contiguous"):
    from pbu.checkpoint import load_checkpoint

    model, info = load_checkpoint(path, device=device, with_info=True)
    return _memory_format(model, fmt), info


# ------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------


def cmd_download(args: argparse.Namespace) -> None:
    from pbu.data import load_dataset, save_prepared, stratified_subset

    train, test = load_dataset(args.dataset, args.root, source=args.source,
                               download=not args.no_download)
    # A class-stratified, seeded subset (CI-sized runs of large datasets).
    if args.max_train_per_class:
        train = train.subset(stratified_subset(train.labels, args.max_train_per_class, 0))
    if args.max_test_per_class:
        test = test.subset(stratified_subset(test.labels, args.max_test_per_class, 1))
    save_prepared(args.out, train, test)
    log.info("%s: %d train / %d test samples -> %s", args.dataset, len(train), len(test),
             args.out)


def cmd_download_weights(args: argparse.Namespace) -> None:
    from pbu.models import build_model

    build_model(args.arch, num_classes=1000, in_channels=3, image_size=224, weights="imagenet")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"{args.arch} ImageNet weights are in the torch hub cache\n")


def cmd_pretrain(args: argparse.Namespace) -> None:
    """Pretrain on the full training split, or (with --forget) train the retrain oracle."""
    import torch

    from pbu.checkpoint import save_checkpoint, write_json
    from pbu.data import class_split
    from pbu.models import build_model
    from pbu.models import model_args as build_args
    from pbu.train import TrainRecipe, seed_everything, train_model

    device = _device(args.device)
    train, test = _load_data(args.data, args.forget)
    try:
        recipe = TrainRecipe.from_dict(_json_arg(args.recipe, "recipe"))
    except (TypeError, ValueError) as err:
        raise UsageError(f"--recipe: {err}") from None
    spec = train.spec
    if args.forget is not None:  # the oracle never sees the forget class, train or test
        train = train.subset(class_split(train.labels, args.forget)[1])
        test = test.subset(class_split(test.labels, args.forget)[1])
    seed_everything(args.seed)
    try:  # a stem for an arch without one, or one too big for the images: a usage error
        model_args = build_args(args.arch, spec, args.stem)
        model = build_model(args.arch, weights=args.weights, **model_args)
    except ValueError as err:
        raise UsageError(f"--arch {args.arch}: {err}") from None
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    history = train_model(model, train, recipe, seed=args.seed, test=test, device=device,
                          progress=not args.quiet, timings=timings)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # Training alone, like every method's time: the per-epoch test pass is timed apart.
    eval_s = timings.get("eval_time_s", 0.0)
    elapsed = time.perf_counter() - t0 - eval_s
    role = "oracle" if args.forget is not None else "original"
    save_checkpoint(args.out_model, model, arch=args.arch, model_args=model_args,
                    hparams={"recipe": recipe.to_dict(), "weights": args.weights}, seed=args.seed,
                    meta={"role": role, "forget": args.forget, "dataset": spec.name})
    write_json(args.out_info, {
        "role": role, "dataset": spec.name, "arch": args.arch, "seed": args.seed,
        "forget": args.forget, "recipe": recipe.to_dict(), "weights": args.weights,
        "history": history, "time_s": elapsed, "eval_time_s": eval_s, "epochs": recipe.epochs,
        "time_per_epoch_s": elapsed / max(recipe.epochs, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_test_acc": history[-1]["test_acc"] if history else None,
        "train_samples": len(train), "device": str(device), **_resources(device),
        "units": {"time_s": "s (training alone; the per-epoch test pass is eval_time_s)",
                  "test_acc": "%", "peak_rss_mb": "MB", "started_at": "Unix s"},
    })


def cmd_fisher(args: argparse.Namespace) -> None:
    """Diagonal Fisher at θ* on the forget-class TRAINING samples only."""
    import torch

    from pbu.checkpoint import save_tensors, write_json
    from pbu.data import class_split
    from pbu.fisher import fisher_diagonal

    device = _device(args.device)
    train, _ = _load_data(args.data, args.forget)
    model, _info = _load_model(args.model, device, args.memory_format)
    forget = train.subset(class_split(train.labels, args.forget)[0])
    loader = forget.loader(args.batch_size, device=device)
    t0 = time.perf_counter()
    fisher = fisher_diagonal(model, loader, kind=args.kind, bn_mode=args.bn_mode,
                             mc_samples=args.mc_samples, chunk_size=args.chunk_size,
                             seed=args.seed, progress=not args.quiet)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    save_tensors(args.out, {"fisher": {k: v.cpu() for k, v in fisher.items()},
                            "kind": args.kind, "bn_mode": args.bn_mode,
                            "samples": len(forget), "forget": args.forget})
    total = sum(float(v.sum()) for v in fisher.values())
    write_json(args.out_info, {
        "kind": args.kind, "bn_mode": args.bn_mode, "samples": len(forget),
        "forget": args.forget, "time_s": elapsed, "images_per_s": len(forget) / elapsed,
        "trace": total, "device": str(device), **_resources(device),
        "units": {"time_s": "s", "trace": "sum of the diagonal"},
    })


def _load_fisher(path: str, model) -> dict:
    """The Fisher diagonal at ``path``, checked against ``model`` before any training starts."""
    import torch

    from pbu.checkpoint import CheckpointError, load_tensors

    obj = load_tensors(path)
    if "fisher" not in obj or not isinstance(obj["fisher"], dict):
        raise CheckpointError(f"{path}: not a Fisher file (no 'fisher' dict)")
    fisher = obj["fisher"]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        f = fisher.get(name)
        if not isinstance(f, torch.Tensor) or f.shape != p.shape:
            found = tuple(f.shape) if isinstance(f, torch.Tensor) else "nothing"
            raise CheckpointError(f"{path}: does not fit the model ({name}: expected "
                                  f"{tuple(p.shape)}, found {found}); was it computed for "
                                  f"another checkpoint?")
        if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
            raise CheckpointError(f"{path}: {name} holds negative or non-finite values; "
                                  f"not a Fisher diagonal")
    return fisher


def _tuned_hparams(args: argparse.Namespace, spec, base: dict[str, Any]):
    """``base`` overridden by the hyperparameters a ``pbu tune`` record chose, and what to
    record about it in info.json."""
    from pbu import methods

    try:
        record = json.loads(Path(args.hparams_from).read_text())
        chosen = record["chosen"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"--hparams-from {args.hparams_from}: not a pbu tune record "
                         f"({type(err).__name__}: {err})") from None
    for key, want in (("method", args.method), ("forget", args.forget), ("seed", args.seed)):
        if record.get(key) != want:
            raise UsageError(f"--hparams-from {args.hparams_from}: tuned for {key} "
                             f"{record.get(key)!r}, not {want!r}")
    try:
        hp = methods.check_hparams(spec, dict(base, **chosen["hparams"]))
    except ValueError as err:
        raise UsageError(f"--hparams-from {args.hparams_from}: {err}") from None
    return hp, {"file": str(args.hparams_from), "trial": chosen.get("trial"),
                "varied": chosen.get("varied"), "base_hparams": base}


def cmd_tune(args: argparse.Namespace) -> None:
    """Tune one method blind: validation carved from the data it may see (see pbu.tune)."""
    from pbu import methods
    from pbu.checkpoint import write_json
    from pbu.train import seed_everything
    from pbu.tune import check_space, tune_method

    device = _device(args.device)
    try:
        spec = methods.get_method(args.method)
        hp = methods.check_hparams(spec, _json_arg(args.hparams, "hparams"))
        space = _json_arg(args.space, "space")
        check_space(args.method, spec.hparams, space, args.budget)
    except (KeyError, ValueError) as err:
        raise UsageError(str(err).strip("'\"")) from None
    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    fisher_settings = None
    if spec.needs_fisher:
        if not args.fisher_settings:
            raise UsageError(f"method {args.method!r} needs the Fisher: give --fisher-settings "
                             f"(JSON: kind, bn_mode, mc_samples, chunk_size, batch_size)")
        fisher_settings = _json_arg(args.fisher_settings, "fisher-settings")
        missing = {"kind", "bn_mode", "mc_samples", "chunk_size", "batch_size"} - set(
            fisher_settings)
        if missing:
            raise UsageError(f"--fisher-settings lacks {', '.join(sorted(missing))}")
    train, _test = _load_data(args.data, args.forget)  # the test split is never used
    model, _info = _load_model(args.model, device, args.memory_format)
    seed_everything(args.seed)
    record = tune_method(args.method, model, train, args.forget, train.spec.num_classes,
                         base_hparams=hp, space=space, budget=args.budget,
                         val_fraction=args.val_fraction, threshold=args.threshold,
                         retain_subset=args.retain_subset, seed=args.seed,
                         fisher_settings=fisher_settings, device=device,
                         progress=not args.quiet)
    record.update(model=str(args.model), data=str(args.data), device=str(device),
                  **_resources(device))
    write_json(args.out, record)
    log.info("%s: chose trial %d of %d %s -> %s", args.method, record["chosen"]["trial"],
             len(record["trials"]), record["chosen"]["varied"], args.out)


def cmd_unlearn(args: argparse.Namespace) -> None:
    """Run one unlearning method with exactly the data it declares (see pbu.methods)."""
    from pbu import methods
    from pbu.checkpoint import save_checkpoint, write_json
    from pbu.data import class_split, stratified_subset
    from pbu.train import evaluate_accuracy, seed_everything

    device = _device(args.device)
    try:
        spec = methods.get_method(args.method)
        hp = methods.check_hparams(spec, _json_arg(args.hparams, "hparams"))
    except (KeyError, ValueError) as err:
        raise UsageError(str(err).strip("'\"")) from None
    tuned = None
    if args.hparams_from:
        hp, tuned = _tuned_hparams(args, spec, hp)
    train, test = _load_data(args.data, args.forget)
    model, info = _load_model(args.model, device, args.memory_format)
    fisher = None
    if spec.needs_fisher:
        if not args.fisher:
            raise UsageError(f"method {args.method!r} needs --fisher")
        fisher = _load_fisher(args.fisher, model)
    inputs = methods.build_inputs(spec, train, args.forget, train.spec.num_classes,
                                  retain_subset=args.retain_subset, seed=args.seed,
                                  fisher=fisher)
    # The trajectory monitor lives here, in the harness: the method never sees these splits.
    # Only the test split is needed, and only when monitoring is on.
    trajectory: list[dict[str, float]] = []
    if args.monitor_every:
        f_te, r_te = class_split(test.labels, args.forget)
        ft = test.subset(f_te).loader(1024, device=device)
        retain_test = test.subset(r_te)
        if args.monitor_retain and args.monitor_retain < len(retain_test):
            per_class = -(-args.monitor_retain // (train.spec.num_classes - 1))
            retain_test = retain_test.subset(stratified_subset(retain_test.labels.cpu(),
                                                               per_class, 0))
        rt = retain_test.loader(1024, device=device)

    def monitor(m, step: int) -> None:
        if args.monitor_every and step % args.monitor_every == 0:
            trajectory.append({"step": step, "acc_forget_test": evaluate_accuracy(m, ft),
                               "acc_retain_test": evaluate_accuracy(m, rt)})

    seed_everything(args.seed)
    result, elapsed = methods.run(args.method, model, inputs, hp, device=device, seed=args.seed,
                                  monitor=monitor)
    # Merge the monitored accuracies into the per-step history.
    by_step = {r["step"]: r for r in trajectory}
    history = [dict(r, **by_step.pop(r.get("step"), {})) for r in result.history]
    history += list(by_step.values())
    history.sort(key=lambda r: r.get("step", 0))
    epochs = float(result.info.get("epochs") or 0.0)
    save_checkpoint(args.out_model, result.model, arch=info["arch"],
                    model_args=info["model_args"], hparams=hp, seed=args.seed,
                    meta={"method": args.method, "forget": args.forget})
    write_json(args.out_history, {"method": args.method, "history": history})
    write_json(args.out_info, {
        "method": args.method, "forget": args.forget, "seed": args.seed, "hparams": hp,
        "hparams_from": tuned, "fisher": args.fisher if spec.needs_fisher else None,
        "data_access": spec.access.label, "time_s": elapsed, "epochs": epochs,
        "time_per_epoch_s": elapsed / epochs if epochs > 0 else None,
        "info": result.info, "device": str(device), **_resources(device),
        "units": {"time_s": "s (method alone, evaluation excluded)", "epochs":
                  "passes over the data the method iterates (fractional)"},
    })


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pbu.checkpoint import write_json
    from pbu.evaluate import UNITS, EvalData, EvalSettings, data_record, evaluate_models
    from pbu.models import build_model
    from pbu.train import seed_everything

    device = _device(args.device)
    train, test = _load_data(args.data, args.forget)
    try:
        settings = EvalSettings.from_dict(_json_arg(args.settings, "settings"))
    except (TypeError, ValueError) as err:
        raise UsageError(f"--settings: {err}") from None
    models = {"original": _load_model(args.original, device, args.memory_format)[0]}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep:
            raise UsageError(f"--model expects NAME=PATH, got {item!r}")
        models[name] = _load_model(path, device, args.memory_format)[0]
    oracle, oinfo = _load_model(args.oracle, device, args.memory_format)
    seed_everything(args.seed + 7919)  # the incompetent model: a fixed, seed-dependent init
    incompetent = _memory_format(build_model(oinfo["arch"], **oinfo["model_args"]).to(device),
                                 args.memory_format).eval()
    data = EvalData.build(train, test, args.forget)
    t0 = time.perf_counter()
    rows = evaluate_models(models, oracle, incompetent, data, args.forget, settings=settings,
                           seed=args.seed, device=device)
    write_json(args.out, {"forget": args.forget, "seed": args.seed, "settings":
                          settings.__dict__, "metrics": rows, "units": UNITS,
                          "data": data_record(args.data, train, test, args.forget),
                          "time_s": time.perf_counter() - t0, **_resources(device)})


def cmd_aggregate(args: argparse.Namespace) -> None:
    from pbu.aggregate import aggregate

    aggregate(args.results, args.out_dir, args.metrics or None)


def cmd_track(args: argparse.Namespace) -> None:
    from pbu.tracking import track_results

    from pbu.tracking import TrackingError

    try:
        track_results(args.results, tracking_uri=args.tracking_uri, experiment=args.experiment,
                      out=args.out, report_paths=args.report, metrics_files=args.metrics or None)
    except TrackingError as err:
        raise UsageError(str(err)) from None


def cmd_report(args: argparse.Namespace) -> None:
    from pbu.report import build_all

    if not args.settings:
        settings = {}
    elif args.settings.lstrip().startswith("{"):
        settings = _json_arg(args.settings, "settings")
    else:
        settings = json.loads(Path(args.settings).read_text())
    agg = Path(args.aggregate)
    timings = agg / "timings.csv"
    build_all(agg / "runs.csv", agg / "history.csv", timings if timings.exists() else None,
              args.reference, args.out_dir, settings)


def cmd_methods(args: argparse.Namespace) -> None:
    from pbu import methods

    for name in methods.available():
        spec = methods.get_method(name)
        print(f"{name:16s} {spec.access.label:28s} {', '.join(spec.hparams)}")


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
        sp.add_argument("--memory-format", default="channels_last",
                        choices=("channels_last", "contiguous"),
                        help="layout of loaded convnets (fisher, unlearn, evaluate)")

    from pbu.registry import ARCHS, DATASETS, STEMS, WEIGHTS

    sp = sub.add_parser("download", help="fetch a dataset and write the prepared file")
    sp.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    sp.add_argument("--root", default="data", help="torchvision data root")
    sp.add_argument("--source", default=None, help="folder already holding the original files")
    sp.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    sp.add_argument("--max-train-per-class", type=int, default=None,
                    help="keep at most N training images per class (seeded)")
    sp.add_argument("--max-test-per-class", type=int, default=None,
                    help="keep at most N test images per class (seeded)")
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_download)

    sp = sub.add_parser("download-weights", help="fetch ImageNet weights into the torch cache")
    sp.add_argument("--arch", required=True, choices=[a for a in ARCHS if a not in
                                                      ("small_cnn", "allcnn")])
    sp.add_argument("--out", required=True, help="marker file written when done")
    sp.set_defaults(fn=cmd_download_weights)

    sp = sub.add_parser("pretrain", help="train the original model, or the oracle (--forget)")
    common(sp)
    sp.add_argument("--arch", required=True, choices=sorted(ARCHS))
    sp.add_argument("--weights", default="none", choices=WEIGHTS)
    sp.add_argument("--stem", default=None, choices=STEMS, help="torchvision archs only")
    sp.add_argument("--seed", type=_int_nonneg, required=True)
    sp.add_argument("--recipe", required=True, help="JSON training recipe (pbu.train.TrainRecipe)")
    sp.add_argument("--forget", type=int, default=None, help="train the oracle without this class")
    sp.add_argument("--out-model", required=True)
    sp.add_argument("--out-info", required=True)
    sp.set_defaults(fn=cmd_pretrain)

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
    sp.add_argument("--out", required=True)
    sp.add_argument("--out-info", required=True)
    sp.set_defaults(fn=cmd_fisher)

    sp = sub.add_parser("unlearn", help="apply one unlearning method")
    common(sp)
    sp.add_argument("--model", required=True, help="the original model's checkpoint")
    sp.add_argument("--forget", type=int, required=True)
    sp.add_argument("--method", required=True)
    sp.add_argument("--hparams", required=True, help="JSON object of the method's hyperparameters")
    sp.add_argument("--retain-subset", type=_int_nonneg, default=0)
    sp.add_argument("--fisher", default=None)
    sp.add_argument("--seed", type=_int_nonneg, required=True)
    sp.add_argument("--monitor-every", type=_int_nonneg, default=1,
                    help="record forget/retain test accuracy every N steps (0: never)")
    sp.add_argument("--monitor-retain", type=_int_nonneg, default=0,
                    help="monitor on this many retain-test samples (0: all)")
    sp.add_argument("--out-model", required=True)
    sp.add_argument("--out-history", required=True)
    sp.add_argument("--out-info", required=True)
    sp.add_argument("--hparams-from", default=None, metavar="TUNE.json",
                    help="override --hparams with the choice of a pbu tune record")
    sp.set_defaults(fn=cmd_unlearn)

    sp = sub.add_parser("tune", help="tune one method blind, on a validation split of the data "
                                     "it may see (pbu.tune)")
    common(sp)
    sp.add_argument("--model", required=True, help="the original model's checkpoint")
    sp.add_argument("--forget", type=int, required=True)
    sp.add_argument("--method", required=True)
    sp.add_argument("--hparams", required=True,
                    help="JSON object of the method's base hyperparameters (the space overrides)")
    sp.add_argument("--retain-subset", type=_int_nonneg, default=0)
    sp.add_argument("--seed", type=_int_nonneg, required=True)
    sp.add_argument("--space", required=True,
                    help='JSON search space, e.g. \'{"lr": [1e-3, 1e-2], "epochs": [1, 2]}\'')
    sp.add_argument("--budget", type=int, required=True,
                    help="trials (the same for every method); the space needs >= this many points")
    sp.add_argument("--val-fraction", type=float, required=True,
                    help="share of each part of the method's data held out for validation")
    sp.add_argument("--threshold", type=float, required=True,
                    help="forget-val accuracy (%%) at or below which a trial counts as forgotten")
    sp.add_argument("--fisher-settings", default=None,
                    help="JSON: kind, bn_mode, mc_samples, chunk_size, batch_size (methods that "
                         "need the Fisher; computed on the fit part of the forget data)")
    sp.add_argument("--out", required=True, help="the tuning record (JSON)")
    sp.set_defaults(fn=cmd_tune)

    sp = sub.add_parser("evaluate", help="metrics of every model against the oracle")
    common(sp)
    sp.add_argument("--forget", type=int, required=True)
    sp.add_argument("--seed", type=_int_nonneg, required=True)
    sp.add_argument("--original", required=True)
    sp.add_argument("--oracle", required=True)
    sp.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    sp.add_argument("--settings", default="{}", help="JSON of pbu.evaluate.EvalSettings")
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("aggregate", help="collect every result file into CSV tables")
    sp.add_argument("--results", default=None, help="results folder (when no files are given)")
    sp.add_argument("--out-dir", required=True)
    sp.add_argument("metrics", nargs="*", help="metrics.json files (default: all under --results)")
    sp.set_defaults(fn=cmd_aggregate)

    sp = sub.add_parser("track", help="mirror result files into MLflow (idempotent)")
    sp.add_argument("--results", default=None, help="results folder (when no files are given)")
    sp.add_argument("--tracking-uri", required=True)
    sp.add_argument("--experiment", required=True)
    sp.add_argument("--report", action="append", default=[],
                    help="file or folder to log as artifacts of the 'report' run (repeatable)")
    sp.add_argument("--out", required=True, help="JSON summary of what was logged")
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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from pbu.errors import CheckpointError, DataUnavailableError

    try:
        _setup(args)
        args.fn(args)
    except (UsageError, CheckpointError, DataUnavailableError) as err:
        print(f"pbu: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
