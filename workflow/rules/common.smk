# Helpers: config validation, wildcard constraints, paths and input functions.
import json
import os
import shlex

from pbu.config import check_config
from pbu.registry import METHODS_NEEDING_FISHER, resolve_stem

CONFIG = check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
R = CONFIG["results"]
CONDA_ENV = "../../envs/pbu.yaml"
SEED_PARTS = ("{dataset}", "{arch}", "seed{seed}")
GROUP_PARTS = (*SEED_PARTS, "forget{forget}")


def results(*parts):
    """A path under the results folder."""
    return os.path.join(R, *parts)


def seed_path(*parts):
    """results/{dataset}/{arch}/seed{seed}/..."""
    return results(*SEED_PARTS, *parts)


def group_path(*parts):
    """results/{dataset}/{arch}/seed{seed}/forget{forget}/..."""
    return results(*GROUP_PARTS, *parts)


def log_path(*parts):
    """Logs mirror the results paths under results/logs."""
    return results("logs", *parts)


def bench_path(*parts):
    """Benchmarks mirror the results paths under results/benchmarks."""
    return results("benchmarks", *parts)


wildcard_constraints:
    dataset="[a-z0-9_]+",
    arch="[a-z0-9_]+",
    seed=r"\d+",
    forget=r"\d+",
    method="|".join(sorted(CONFIG["hparams"])),


def res(rule_name, key):
    """A resource of a rule from config.resources."""
    return CONFIG["resources"][rule_name][key]


def as_json(obj):
    """Stable JSON for rule params (a changed value reruns exactly the dependent jobs)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def group_dirs():
    """Every results/{dataset}/{arch}/seed{seed}/forget{forget} folder of this config."""
    return expand(
        group_path(),
        dataset=CONFIG["dataset"],
        arch=CONFIG["archs"],
        seed=CONFIG["seeds"],
        forget=CONFIG["forget"],
    )


def metrics_files():
    return [os.path.join(d, "metrics.json") for d in group_dirs()]


def unlearn_inputs(wildcards):
    inputs = {
        "data": results("data", f"{wildcards.dataset}.pt"),
        "model": seed_path("pretrain", "model.pt").format(**wildcards),
    }
    if wildcards.method in METHODS_NEEDING_FISHER:
        inputs["fisher"] = group_path("fisher.pt").format(**wildcards)
    if is_tuned(wildcards.method):
        inputs["tune"] = tune_path(wildcards.method).format(**wildcards)
    return inputs


def fisher_arg(wildcards, input):
    return f"--fisher {input.fisher}" if "fisher" in input.keys() else ""


def is_tuned(method):
    """Whether blind tuning (config tuning:) chooses this method's hyperparameters."""
    return CONFIG["tuning"]["enabled"] and method in CONFIG["tuning"]["methods"]


def tune_path(method="{method}"):
    """results/{dataset}/{arch}/seed{seed}/forget{forget}/tune/{method}.json"""
    return group_path("tune", f"{method}.json")


def tuned_arg(wildcards, input):
    return f"--hparams-from {input.tune}" if "tune" in input.keys() else ""


def fisher_settings_arg(wildcards):
    """The config's Fisher settings, for tune jobs of methods that need the Fisher only (so a
    changed Fisher setting reruns just those)."""
    if wildcards.method not in METHODS_NEEDING_FISHER:
        return ""
    return f"--fisher-settings {shlex.quote(as_json(CONFIG['fisher']))}"


def evaluate_inputs(wildcards):
    inputs = {
        "data": results("data", f"{wildcards.dataset}.pt"),
        "original": seed_path("pretrain", "model.pt").format(**wildcards),
        "oracle": group_path("oracle", "model.pt").format(**wildcards),
    }
    for m in CONFIG["methods"]:
        inputs[m] = group_path(m, "model.pt").format(**wildcards)
    return inputs


def model_args(wildcards, input):
    return " ".join(f"--model {m}={input[m]}" for m in CONFIG["methods"])


def stem_arg(wildcards):
    """``--stem NAME`` for a torchvision arch (model.stem, one name or per arch), else nothing."""
    stem = resolve_stem(wildcards.arch, CONFIG["model"]["stem"])
    return f"--stem {stem}" if stem else ""


def weights_marker(wildcards):
    if CONFIG["model"]["weights"] == "imagenet":
        return [results("weights", f"{wildcards.arch}.done")]
    return []


def report_settings():
    """The settings report.md lists: what was run, with the selected methods' hparams."""
    keys = ("experiment", "dataset", "archs", "seeds", "forget", "methods", "model")
    out = {k: CONFIG[k] for k in keys}
    out.update(
        pretrain=CONFIG["pretrain"],
        fisher=CONFIG["fisher"],
        retain_subset=CONFIG["retain_subset"],
        hparams={m: CONFIG["hparams"][m] for m in CONFIG["methods"]},
    )
    return out


def final_targets():
    return [results("report.md"), results("mlflow", "tracked_report.json")]


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

    path, pid = forkserver.start(log_path("pbu-server.log"), watch_pid=os.getpid())
    os.environ[forkserver.ENV_VAR] = path
    _SERVER.update(path=path, pid=pid)


def stop_fork_server():
    if _SERVER:
        from pbu import forkserver

        os.environ.pop(forkserver.ENV_VAR, None)
        forkserver.stop(_SERVER.pop("path"), _SERVER.pop("pid"))


onstart:
    start_fork_server()


onsuccess:
    stop_fork_server()


onerror:
    stop_fork_server()
