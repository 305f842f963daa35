# Helpers: config validation, wildcard constraints, paths and input functions.
import json

from pbu.config import check_config
from pbu.registry import METHODS_NEEDING_FISHER

CONFIG = check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
R = CONFIG["results"]
CONDA_ENV = "../../envs/pbu.yaml"
SEED_DIR = R + "/{dataset}/{arch}/seed{seed}"
GROUP_DIR = SEED_DIR + "/forget{forget}"
LOGS = R + "/logs"
BENCH = R + "/benchmarks"


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
        GROUP_DIR,
        dataset=CONFIG["dataset"],
        arch=CONFIG["archs"],
        seed=CONFIG["seeds"],
        forget=CONFIG["forget"],
    )


def metrics_files():
    return [d + "/metrics.json" for d in group_dirs()]


def unlearn_inputs(wildcards):
    inputs = {
        "data": f"{R}/data/{wildcards.dataset}.pt",
        "model": SEED_DIR.format(**wildcards) + "/pretrain/model.pt",
    }
    if wildcards.method in METHODS_NEEDING_FISHER:
        inputs["fisher"] = GROUP_DIR.format(**wildcards) + "/fisher.pt"
    return inputs


def fisher_arg(wildcards, input):
    return f"--fisher {input.fisher}" if "fisher" in input.keys() else ""


def evaluate_inputs(wildcards):
    group = GROUP_DIR.format(**wildcards)
    inputs = {
        "data": f"{R}/data/{wildcards.dataset}.pt",
        "original": SEED_DIR.format(**wildcards) + "/pretrain/model.pt",
        "oracle": group + "/oracle/model.pt",
    }
    for m in CONFIG["methods"]:
        inputs[m] = f"{group}/{m}/model.pt"
    return inputs


def model_args(wildcards, input):
    return " ".join(f"--model {m}={input[m]}" for m in CONFIG["methods"])


def weights_marker(wildcards):
    if CONFIG["model"]["weights"] == "imagenet":
        return [f"{R}/weights/{wildcards.arch}.done"]
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
    return [
        f"{R}/report.md",
        f"{R}/mlflow/tracked_report.json",
    ]
