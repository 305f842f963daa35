"""The frozen development-class choice: one generated config file per setting (dataset, arch)
that the verdict runs load (torch-free, cheap to import: the config check reads it).

``pbu freeze`` (:func:`freeze_records`) writes it from the development-class tuning records
(:func:`pbu.tune.tune_dev_class`, one per method or variant): per method the tuned names only
(``hparams``), the value it reached, the ties, and the provenance of the whole run (class,
tuning seeds, budget, objective, sampler, date, commit, command, cost). A run whose
``tuning.frozen`` names the file loads it (:func:`load_frozen`); each unlearn job then runs with
its config hyperparameters, the frozen choice over them, and a variant's overrides last
(:func:`apply`): a variant absent from the file takes its base method's choice (``pbu_stop2`` is
PBU as tuned, with its own stop threshold). The job records ``protocol: dev_class`` and where the
values came from (:func:`source`).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

FORMAT = "pbu-tuned-hparams/1"
PROTOCOL = "dev_class"
TIE_LIMIT = 0.10  #: the largest share of tied choices the protocol accepts (issue 23)
REGENERATE = "snakemake --cores all --configfile config/tune.yaml"


class FrozenError(ValueError):
    """A frozen tuning file that is malformed or does not fit the run."""


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def git_commit(root: str | os.PathLike = ".") -> str:
    """The checkout's commit (short), with ``+dirty`` when tracked files differ; ``unknown``
    outside a git checkout."""

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
        return run.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _same(records: Sequence[Mapping[str, Any]], key: str) -> Any:
    values = {repr(r.get(key)) for r in records}
    if len(values) != 1:
        raise FrozenError(f"the tuning records differ in {key}: {sorted(values)}")
    return records[0].get(key)


def choices(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A record's choice and each tuning seed's own choice, recomputed from its trials
    (:func:`pbu.tune_dev.tie_report`: the lowest value, tied when another trial with other
    hyperparameters has the same value)."""
    from pbu.tune_dev import tie_report

    trials = record["trials"]
    points = [t["varied"] for t in trials]
    chosen = tie_report([t.get("score") for t in trials], points)
    per_seed = {
        str(s): tie_report(
            [((t.get("per_seed") or {}).get(str(s)) or {}).get("loss") for t in trials], points
        )
        for s in record["seeds"]
    }
    return chosen, per_seed


def tie_rates(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How many choices were tied: over the methods' choices, and over each tuning seed's own
    choice (what that seed alone would have chosen)."""
    picks = [choices(r) for r in records]
    chosen = [bool(c["tied"]) for c, _ in picks]
    per_seed = [bool(c["tied"]) for _, seeds in picks for c in seeds.values()]

    def rate(flags: list[bool]) -> dict[str, Any]:
        n = len(flags)
        return {"tied": sum(flags), "of": n, "rate": round(sum(flags) / n, 4) if n else None}

    return {"limit": TIE_LIMIT, "choices": rate(chosen), "per_seed_choices": rate(per_seed)}


def freeze_records(
    records: Sequence[Mapping[str, Any]],
    *,
    training: Sequence[Mapping[str, Any]] = (),
    command: str = REGENERATE,
    commit: str | None = None,
    date: str | None = None,
) -> dict[str, Any]:
    """The frozen file's content from one development-class record per method (all of one
    setting, class, seed set, budget and sampler seed). ``training``: the tuning seeds' θ* and
    oracle records (info.json), whose training time joins the cost."""
    if not records:
        raise FrozenError("no tuning records to freeze")
    for r in records:
        if r.get("protocol") != PROTOCOL:
            raise FrozenError(f"{r.get('method')}: not a {PROTOCOL} record ({r.get('protocol')})")
    keys = ("dataset", "arch", "forget", "seeds", "budget", "sampler_seed", "val_fraction")
    same = {k: _same(records, k) for k in keys}
    _same(records, "retain_subset")
    names = [r["method"] for r in records]
    if len(set(names)) != len(names):
        raise FrozenError(f"a method has two tuning records: {names}")
    methods: dict[str, Any] = {}
    for r in records:
        trials = r["trials"]
        chosen, per_seed = choices(r)
        if chosen["trial"] is None:
            raise FrozenError(f"{r['method']}: every trial failed")
        best = trials[chosen["trial"]]
        methods[r["method"]] = {
            "base_method": r.get("base_method", r["method"]),
            "overrides": dict(r.get("overrides") or {}),
            "hparams": dict(best["varied"]),
            "value": chosen["value"],
            "trial": chosen["trial"],
            "trials": len(trials),
            "failed": sum(1 for t in trials if t.get("score") is None),
            "tied": chosen["tied"],
            "gap_to_next": chosen["gap"],
            "per_seed": {
                s: {"trial": c["trial"], "value": c["value"], "tied": c["tied"]}
                for s, c in per_seed.items()
            },
            "metrics": best["metrics"],
            "sampler": r["sampler"],
            "space": r["space"],
            "base_hparams": r["base_hparams"],
            "time_s": round(float(r["total_time_s"]), 2),
        }
    train_s = sum(float(t.get("time_s") or 0.0) for t in training)
    tune_s = sum(float(r["total_time_s"]) for r in records)
    first = records[0]
    return {
        "format": FORMAT,
        "dataset": same["dataset"],
        "arch": same["arch"],
        "protocol": PROTOCOL,
        "provenance": {
            "forget_class": same["forget"],
            "seeds": list(same["seeds"]),
            "budget": same["budget"],
            "trials_per_method": sorted({m["trials"] for m in methods.values()}),
            "objective": first["rule"]["text"],
            "weights": first["rule"]["weights"],
            "sampler_seed": same["sampler_seed"],
            "val_fraction": same["val_fraction"],
            "retain_subset": first.get("retain_subset"),
            "date": date or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit or git_commit(),
            "tuning_commits": sorted({str(r.get("commit", "unknown")) for r in records}),
            "command": command,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {first.get('device')}",
        },
        "cost_s": {
            "tuning": round(tune_s, 1),
            "training_tuning_seeds": round(train_s, 1),
            "per_method": {n: m["time_s"] for n, m in methods.items()},
            "note": "tuning jobs' wall time (trials, their evaluation, the Fisher) and the "
            "tuning seeds' θ* and oracle training; no verdict counts it (docs/tuning.md)",
        },
        "ties": tie_rates(records),
        "methods": methods,
    }


def dump(frozen: Mapping[str, Any]) -> str:
    """The frozen file's text: a header saying how it was made, then the YAML."""
    head = (
        f"# Generated by `pbu freeze` from the development-class tuning run; regenerate with\n"
        f"#   {frozen['provenance']['command']}\n"
        "# A run loads it through tuning.frozen (docs/tuning.md). Not to be edited by hand.\n"
    )
    return head + yaml.safe_dump(dict(frozen), sort_keys=False, allow_unicode=True, width=100)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def load_frozen(path: str | os.PathLike) -> dict[str, Any]:
    """A frozen file, checked for its format and the keys a run reads."""
    try:
        frozen = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise FrozenError(f"{path}: cannot read a frozen tuning file ({err})") from None
    if not isinstance(frozen, dict) or frozen.get("format") != FORMAT:
        raise FrozenError(f"{path}: not a frozen tuning file (format {FORMAT} expected)")
    for key in ("dataset", "arch", "provenance", "methods"):
        if key not in frozen:
            raise FrozenError(f"{path}: lacks {key!r}")
    for name, entry in frozen["methods"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("hparams"), dict):
            raise FrozenError(f"{path}: methods.{name} lacks its hparams mapping")
    return frozen


def choice(
    frozen: Mapping[str, Any], name: str, base_method: str
) -> tuple[dict[str, Any], str] | None:
    """The tuned hyperparameters a methods entry runs with and whose choice they are: its own
    entry, else (a variant absent from the file) its base method's; None when neither was
    tuned."""
    methods = frozen["methods"]
    for who in (name, base_method):
        if who in methods:
            return dict(methods[who]["hparams"]), who
    return None


def apply(
    hparams: Mapping[str, Any], tuned: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The hyperparameters a job runs with: its config values, the frozen choice over them,
    a variant's overrides last (they define it)."""
    return {**hparams, **tuned, **overrides}


def source(path: str | os.PathLike, frozen: Mapping[str, Any], chosen_by: str) -> dict[str, Any]:
    """Where a job's hyperparameters came from, for its info.json and MLflow run."""
    prov = frozen["provenance"]
    return {
        "file": str(path),
        "protocol": PROTOCOL,
        "choice_of": chosen_by,
        "forget_class": prov.get("forget_class"),
        "seeds": prov.get("seeds"),
        "budget": prov.get("budget"),
        "date": prov.get("date"),
        "commit": prov.get("commit"),
    }
