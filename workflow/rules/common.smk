# Helpers: config validation, wildcard constraints, paths and input functions.
import json
import os
import shlex

from pbu import layout
from pbu.forkserver import MALLOC_ENV
from pbu.config import (
    base_method,
    check_config,
    forget_score_config,
    load_tuned,
    method_hparams,
    overrides,
    tuning_space,
    tuned_choice,
)
from pbu.registry import METHODS_NEEDING_FISHER, resolve_stem
from pbu.scheduling import cancel_reevaluation_timers

CONFIG = check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
# The frozen development-class choice of each setting this run loads (tuning.frozen; none in
# the development-class run, which writes it): arch -> (file, content).
TUNED = load_tuned(CONFIG)
DEVELOP = CONFIG["tuning"]["develop"]

# glibc's allocator for every job this Snakemake starts (local jobs, the fork server and its
# workers; SLURM jobs inherit it through sbatch, and the SLURM profile's precommand sets the same):
# keep freed memory mapped and reuse it instead of faulting fresh pages in for every tensor.
# Measured on the default run: job CPU 541 -> 450 s, minor page faults 38.9M -> 4.0M, peak RSS
# unchanged (benchmarks/README.md, "glibc's allocator"). A value already in the environment wins.
for _name, _value in MALLOC_ENV.items():
    os.environ.setdefault(_name, _value)
R = CONFIG["results"]
CONDA_ENV = "../../envs/pbu.yaml"


# Every path comes from pbu/layout.py (the one description of the results folder, read by
# aggregate and tracking too); a wildcard not given stays a Snakemake wildcard.
def path(name, **wildcards):
    """A file of the results layout under config results, e.g. path("model", method="oracle")."""
    return layout.path(name, R, **wildcards)


def log_path(job):
    """A job's log: results/logs/ mirrors the results paths."""
    return layout.log(job, R)


def bench_path(job):
    """A job's Snakemake benchmark: results/benchmarks/ mirrors the results paths."""
    return layout.benchmark(job, R)


wildcard_constraints:
    dataset=layout.WILDCARDS["dataset"],
    arch=layout.WILDCARDS["arch"],
    seed=layout.WILDCARDS["seed"],
    forget=layout.WILDCARDS["forget"],
    method="|".join(sorted([*CONFIG["hparams"], *CONFIG["variants"]])),


def res(rule_name, key):
    """A resource of a rule from config.resources."""
    return CONFIG["resources"][rule_name][key]


def as_json(obj):
    """Stable JSON for rule params (a changed value reruns exactly the dependent jobs)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def base_of(method):
    """The registered method a methods entry runs: a variant's base method, else itself."""
    return base_method(CONFIG, method)


def hparams_of(method):
    """The hyperparameters a methods entry runs with: hparams.<base method>, with a variant's
    overrides merged (the jobs' params, so changing one override reruns only that variant)."""
    return method_hparams(CONFIG, method)


def needs_fisher(method):
    """Whether a methods entry (a variant: its base method) takes the forget-set Fisher."""
    return base_of(method) in METHODS_NEEDING_FISHER


def variant_arg(wildcards):
    """`--variant NAME --overrides JSON` for a variant's unlearn job, else nothing."""
    if wildcards.method not in CONFIG["variants"]:
        return ""
    return (
        f"--variant {wildcards.method} "
        f"--overrides {shlex.quote(as_json(overrides(CONFIG, wildcards.method)))}"
    )


def metrics_files():
    """The metrics.json of every (dataset, arch, seed, forget) group of this config."""
    return expand(
        path("metrics"),
        dataset=CONFIG["dataset"],
        arch=CONFIG["archs"],
        seed=CONFIG["seeds"],
        forget=CONFIG["forget"],
    )


def confidences_files():
    """The per-example confidences every group's evaluation writes (the forget score's input)."""
    return expand(
        path("confidences"),
        dataset=CONFIG["dataset"],
        arch=CONFIG["archs"],
        seed=CONFIG["seeds"],
        forget=CONFIG["forget"],
    )


FORGET_SCORE = forget_score_config(CONFIG)


def forget_score_tables():
    """The forget-score stage's tables when config evaluation.forget_score is on, else none."""
    if not FORGET_SCORE["enabled"]:
        return []
    return [
        path(f) for f in ("forget_score_csv", "forget_score_images_csv", "forget_score_runs_csv")
    ]


def ceiling_files():
    """The ceiling's confidences files, one per (dataset, arch, forget class), when the forget
    score is on and has ceiling seeds."""
    if not (FORGET_SCORE["enabled"] and FORGET_SCORE["ceiling_seeds"]):
        return []
    return expand(
        path("ceiling_confidences"),
        dataset=CONFIG["dataset"],
        arch=CONFIG["archs"],
        forget=CONFIG["forget"],
    )


def ceiling_oracles(wildcards):
    """The oracles of the ceiling seeds for one (dataset, arch, forget class), by seed."""
    return {
        f"seed{s}": path("model", **wildcards, seed=s, method=layout.ORACLE)
        for s in FORGET_SCORE["ceiling_seeds"]
    }


def ceiling_oracle_args(wildcards, input):
    return " ".join(f"--oracle {s}={input[f'seed{s}']}" for s in FORGET_SCORE["ceiling_seeds"])


def forget_score_arg(wildcards):
    """``--forget-score DIR`` for ``pbu track`` (the folder of the forget-score tables) when the
    forget score is on: each unlearn run gets its per-image summary."""
    if not FORGET_SCORE["enabled"]:
        return ""
    return f"--forget-score {os.path.dirname(path('forget_score_csv'))}"


def forget_score_settings():
    """The score's own parameters (enabled and the ceiling seeds are the workflow's)."""
    return {k: v for k, v in FORGET_SCORE.items() if k not in ("enabled", "ceiling_seeds")}


def evaluation_settings():
    """config evaluation without forget_score: a changed forget-score setting reruns the
    forget-score stage, never the evaluations."""
    return {k: v for k, v in CONFIG["evaluation"].items() if k != "forget_score"}


def unlearn_inputs(wildcards):
    inputs = {
        "data": path("data", **wildcards),
        "model": path("pretrain_model", **wildcards),
    }
    if needs_fisher(wildcards.method):  # one Fisher file per group, shared by PBU's variants
        inputs["fisher"] = path("fisher", **wildcards)
    if is_tuned(wildcards.method):
        inputs["tune"] = path("tune", **wildcards)
    return inputs


def fisher_arg(wildcards, input):
    return f"--fisher {input.fisher}" if "fisher" in input.keys() else ""


class _Wildcards(dict):
    """Wildcards as a rule's input function sees them (``w.method`` and ``**w``), for calling
    one with a method of our choosing."""

    __getattr__ = dict.__getitem__


def unlearn_batch_inputs(wildcards):
    """Every method's inputs of one group (config unlearn_batch): data, θ*, the Fisher if any
    method needs it, and each tuned method's tuning record (``tune_<method>``)."""
    inputs = {}
    for m in CONFIG["methods"]:
        for key, file in unlearn_inputs(_Wildcards(wildcards.items(), method=m)).items():
            inputs[f"tune_{m}" if key == "tune" else key] = file
    return inputs


def unlearn_batch_outputs(kind):
    """One output kind (model, history, info) of every method of a group."""
    return expand(path(kind), method=CONFIG["methods"], allow_missing=True)


def unlearn_batch_entries(wildcards, input, output):
    """``pbu unlearn-batch --entries``: per method what its own unlearn job would get."""
    holdout = CONFIG["tuning"]["val_fraction"] if holdout_arg() else None
    entries = []
    for i, m in enumerate(CONFIG["methods"]):
        entry = {
            "method": base_of(m),
            "hparams": hparams_of(m),
            "out_model": output.model[i],
            "out_history": output.history[i],
            "out_info": output.info[i],
            "retain_subset": CONFIG["retain_subset"],
            "monitor_every": (
                CONFIG["monitor"]["every"] if m in CONFIG["monitor"]["methods"] else 0
            ),
            "monitor_retain": CONFIG["monitor"]["retain_samples"],
        }
        if m in CONFIG["variants"]:
            entry.update(variant=m, overrides=overrides(CONFIG, m))
        if needs_fisher(m):
            entry["fisher"] = input.fisher
        if is_tuned(m):
            entry["hparams_from"] = input[f"tune_{m}"]
        else:  # the frozen development-class choice, as tuned_arg gives an unlearn job
            tuned = tuned_choice(CONFIG, TUNED, wildcards.arch, m)
            if tuned:
                entry["tuned"] = tuned
        if holdout is not None:
            entry["holdout"] = holdout
        entries.append(entry)
    return shlex.quote(json.dumps(entries, sort_keys=True, separators=(",", ":")))


def is_tuned(method):
    """Whether tuning (config tuning:, either protocol) chooses this method's hyperparameters."""
    return CONFIG["tuning"]["enabled"] and method in CONFIG["tuning"]["methods"]


def holdout_arg():
    """``--holdout FRACTION`` under the validation protocol (tuning enabled): every unlearn job
    and the Fisher then leave the experimenter's validation split out of the training set, tuned
    method or not, so every row of the run had the same data; else nothing."""
    tuning = CONFIG["tuning"]
    if tuning["enabled"] and tuning["protocol"] == "validation":
        return f"--holdout {tuning['val_fraction']}"
    return ""


def tuned_arg(wildcards, input):
    """Where a job's hyperparameters come from besides hparams: its group's tune record
    (per-group tuning), else the frozen development-class choice (``--tuned`` with the tuned
    values inline, so a new frozen file reruns exactly the jobs whose values changed), else
    nothing (protocol config)."""
    if "tune" in input.keys():
        return f"--hparams-from {input.tune}"
    tuned = tuned_choice(CONFIG, TUNED, wildcards.arch, wildcards.method)
    return f"--tuned {shlex.quote(as_json(tuned))}" if tuned else ""


def training_holdout_arg():
    """``--holdout FRACTION`` for pretraining and the oracle in the development-class run: its
    models never see the split the trials are scored on; else nothing."""
    tuning = CONFIG["tuning"]
    return f"--holdout {tuning['val_fraction']}" if tuning["develop"] else ""


def dev_tune_inputs(wildcards):
    """A development-class tune job's inputs: the data, and per tuning seed θ* and the
    development class's oracle."""
    seeds = CONFIG["seeds"]
    key = dict(dataset=wildcards.dataset, arch=wildcards.arch)
    return {
        "data": path("data", dataset=wildcards.dataset),
        "models": [path("pretrain_model", **key, seed=s) for s in seeds],
        "oracles": [
            path("model", **key, seed=s, forget=CONFIG["forget"][0], method=layout.ORACLE)
            for s in seeds
        ],
    }


def seed_paths_arg(option, key):
    """``--model SEED=PATH ...`` (or --oracle) of a development-class tune job."""

    def get(wildcards, input):
        return " ".join(f"{option} {s}={f}" for s, f in zip(CONFIG["seeds"], input[key]))

    return get


def space_arg(wildcards):
    """The search space of a methods entry (its own, or a variant's base's minus overrides)."""
    return as_json(tuning_space(CONFIG, wildcards.method))


def frozen_pattern():
    """The freeze rule's output: tuning.frozen, or (null: nothing is frozen, the rule never runs)
    a place in the results folder with the same wildcards."""
    return CONFIG["tuning"]["frozen"] or f"{R}/tuning/{{dataset}}/{{arch}}/frozen.yaml"


def frozen_target(arch):
    """The frozen file the development-class run writes for one arch."""
    return CONFIG["tuning"]["frozen"].format(dataset=CONFIG["dataset"], arch=arch)


def freeze_inputs(wildcards):
    """Every methods entry's development-class record of a setting, and the tuning seeds'
    training records (their time joins the recorded cost)."""
    key = dict(dataset=wildcards.dataset, arch=wildcards.arch)
    seeds = CONFIG["seeds"]
    return {
        "records": [path("dev_tune", **key, method=m) for m in CONFIG["methods"]],
        "training": [path("pretrain_info", **key, seed=s) for s in seeds]
        + [
            path("info", **key, seed=s, forget=CONFIG["forget"][0], method=layout.ORACLE)
            for s in seeds
        ],
    }


def dev_records():
    """Every development-class tuning record of the run (the tracking step's inputs)."""
    return expand(
        path("dev_tune"), dataset=CONFIG["dataset"], arch=CONFIG["archs"], method=CONFIG["methods"]
    )


def fisher_settings_arg(wildcards):
    """The config's Fisher settings, for tune jobs of methods that need the Fisher only (so a
    changed Fisher setting reruns just those)."""
    if not needs_fisher(wildcards.method):
        return ""
    return f"--fisher-settings {shlex.quote(as_json(CONFIG['fisher']))}"


def evaluate_inputs(wildcards):
    inputs = {
        "data": path("data", **wildcards),
        "original": path("pretrain_model", **wildcards),
        "oracle": path("model", **wildcards, method=layout.ORACLE),
    }
    for m in CONFIG["methods"]:
        inputs[m] = path("model", **wildcards, method=m)
    return inputs


def model_args(wildcards, input):
    return " ".join(f"--model {m}={input[m]}" for m in CONFIG["methods"])


def download_args():
    """`pbu download` options from config data: (stand-in | source + download), caps (the
    forget classes' floor makes the prepared file depend on config forget, so only set it with
    caps)."""
    data = CONFIG["data"]
    if data.get("stand_in"):  # generated images: no source, no download
        args = ["--stand-in"]
        if data.get("max_image_size"):
            args.append(f"--max-image-size {data['max_image_size']}")
    else:
        args = [f"--root {data['root']}"]
        if data["source"]:
            args.append(f"--source {data['source']}")
        if not data["download"]:
            args.append("--no-download")
    args += [
        f"--{k.replace('_', '-')} {data[k]}"
        for k in ("max_train_per_class", "max_test_per_class")
        if data.get(k)
    ]
    if data.get("min_forget_per_class"):  # the forget classes keep more under the caps
        classes = ",".join(str(c) for c in CONFIG["forget"])
        args.append(f"--keep-classes {classes} --keep-per-class {data['min_forget_per_class']}")
    return " ".join(args)


def stem_arg(wildcards):
    """``--stem NAME`` for a torchvision arch (model.stem, one name or per arch), else nothing."""
    stem = resolve_stem(wildcards.arch, CONFIG["model"]["stem"])
    return f"--stem {stem}" if stem else ""


def weights_marker(wildcards):
    if CONFIG["model"]["weights"] == "imagenet":
        return [path("weights", arch=wildcards.arch)]
    return []


def report_settings():
    """The settings report.md lists: what was run, with the selected methods' hparams."""
    keys = ("experiment", "dataset", "archs", "seeds", "forget", "methods", "model")
    out = {k: CONFIG[k] for k in keys}
    out.update(
        pretrain=CONFIG["pretrain"],
        fisher=CONFIG["fisher"],
        retain_subset=CONFIG["retain_subset"],
        hparams={m: hparams_of(m) for m in CONFIG["methods"]},
    )
    # the claims' matched forgetting reads the threshold; with tuning on, which protocol chose
    # which method's hyperparameters
    keys = ("protocol", "methods", "budget", "val_fraction", "threshold")
    out["tuning"] = {k: CONFIG["tuning"][k] for k in keys if CONFIG["tuning"]["enabled"]}
    out["tuning"]["threshold"] = CONFIG["tuning"]["threshold"]
    # the frozen development-class choice each setting loaded, and what each method ran with
    out["tuned"] = {
        arch: {
            "file": str(file),
            **{k: frozen["provenance"].get(k) for k in ("forget_class", "seeds", "budget")},
            **{k: frozen["provenance"].get(k) for k in ("date", "commit")},
            "hparams": {
                m: tuned_choice(CONFIG, TUNED, arch, m)["hparams"]
                for m in CONFIG["methods"]
                if tuned_choice(CONFIG, TUNED, arch, m)
            },
        }
        for arch, (file, frozen) in TUNED.items()
    }
    out["claims"] = CONFIG["claims"]
    listed = {m: v for m, v in CONFIG["variants"].items() if m in CONFIG["methods"]}
    if listed:  # what each variant changes (hparams above holds its resolved values)
        out["variants"] = listed
    if CONFIG["data"].get("stand_in"):  # the report says when its numbers are stand-in's
        out["data"] = CONFIG["data"]
    return out


def final_targets():
    if DEVELOP:  # the development-class run: the frozen choices, mirrored into MLflow
        return [frozen_target(a) for a in CONFIG["archs"]] + [path("tracked_tuning")]
    return [path("report"), path("tracked_report"), *forget_score_tables()]


def parent_dir(key):
    """A param: the folder of one input/output file (no hard-coded prefix)."""

    def get(wildcards, input, output):
        files = {**dict(input.items()), **dict(output.items())}
        return os.path.dirname(files[key])

    return get


# A warm fork server for local runs (pbu/forkserver.py): every `pbu` job forks from one process
# that imported torch once. Cluster jobs, --sdm conda/apptainer runs and dry runs (which run no
# hooks) never use it.
_SERVER = {}


def start_fork_server():
    if not CONFIG.get("fork_server", True):
        return
    if not workflow.local_exec or workflow.remote_exec or workflow.touch:
        return
    if workflow.deployment_settings.deployment_method:  # --sdm conda/apptainer: jobs must run
        return  # in their own environment, not in a fork of Snakemake's
    from pbu import forkserver

    path, pid = forkserver.start(log_path("server"), watch_pid=os.getpid())
    os.environ[forkserver.ENV_VAR] = path
    _SERVER.update(path=path, pid=pid)


def stop_fork_server():
    if _SERVER:
        from pbu import forkserver

        os.environ.pop(forkserver.ENV_VAR, None)
        forkserver.stop(_SERVER.pop("path"), _SERVER.pop("pid"))


onstart:
    start_fork_server()


# The scheduler's re-evaluation timers (pbu/scheduling.py; profiles/default sets their period to
# 10 s) would hold Snakemake's exit until the last one fires: cancel them once the run is over.
onsuccess:
    stop_fork_server()
    cancel_reevaluation_timers()


onerror:
    stop_fork_server()
    cancel_reevaluation_timers()
