"""Where every result file lives: the one description of the results folder.

The Snakemake rules (``workflow/rules/common.smk``), :mod:`pbu.aggregate`, :mod:`pbu.tracking`
and the benchmark scripts all build and read paths through this module, so the layout is written
once. It imports nothing heavy (no torch, pandas or mlflow): Snakemake loads it for every dry run.

One directory level per wildcard (``dataset``, ``arch``, ``seed``, ``forget``, ``method``)::

    {results}/data/{dataset}.pt                                 the prepared dataset
    {results}/weights/{arch}.done                               ImageNet weights fetched
    {results}/{dataset}/{arch}/seed{seed}/pretrain/model.pt     the original model (+ info.json)
    {results}/.../seed{seed}/forget{forget}/oracle/model.pt     the oracle (+ info.json)
    {results}/.../seed{seed}/forget{forget}/fisher.pt           the forget-set Fisher (+ .json)
    {results}/.../seed{seed}/forget{forget}/{method}/model.pt   + info.json, history.json
    {results}/.../seed{seed}/forget{forget}/tune/{method}.json  a per-group tuning record
    {results}/tuning/{dataset}/{arch}/{method}.json             a development-class tuning record
    {results}/optuna/{dataset}/{arch}/{method}.db               its Optuna study (SQLite)
    {results}/.../seed{seed}/forget{forget}/metrics.json        every model of the group, evaluated
    {results}/.../seed{seed}/forget{forget}/confidences.npz     their per-example confidences
    {results}/{dataset}/{arch}/ceiling/forget{forget}/confidences.npz   the ceiling's oracles'
                                                                 (+ info.json, the job's record)
    {results}/aggregate/runs.csv, history.csv, timings.csv
    {results}/aggregate/forget_score.csv, forget_score_images.csv, forget_score_runs.csv
                                                                 (+ forget_score.json, record)
    {results}/report.md, tables/, figures/
    {results}/mlflow/tracked.json, tracked_report.json, tracked_tuning.json
    {results}/logs/<job>.log, {results}/benchmarks/<job>.tsv    mirror the jobs (see JOBS)

A template's wildcards are ``str.format`` placeholders, the same as Snakemake's: a wildcard not
given stays ``{name}``, so ``path("model", "results")`` is the unlearn rule's output pattern and
``path("model", "results", dataset="mnist5k", arch="small_cnn", seed=0, forget=2,
method="pbu")`` one concrete file. :func:`parse` reads a path back into its wildcards.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Each wildcard's allowed values (regular expressions; the rules' ``wildcard_constraints``).
WILDCARDS: dict[str, str] = {
    "dataset": r"[a-z0-9_]+",
    "arch": r"[a-z0-9_]+",
    "seed": r"\d+",
    "forget": r"\d+",
    "method": r"[a-z0-9_]+",
}
#: Wildcards that are integers (parsed back as ``int``).
INT_WILDCARDS = ("seed", "forget")

#: The folder of a model trained from scratch on the retained classes (a group's ``{method}``
#: folder of that name; it is never an unlearning method's name).
ORACLE = "oracle"

#: Names a method or variant may not take: another model's row (``original``, the oracle), a
#: group's own file or folder (``fisher.pt``, ``tune/``, ``metrics.json``), a job's log stem
#: (``evaluate``, ``pretrain``) or a tracking tag value (``all``, ``none``).
RESERVED_NAMES = (
    "original",
    ORACLE,
    "fisher",
    "freeze",
    "tune",
    "metrics",
    "evaluate",
    "pretrain",
    "all",
    "none",
)

SEED_DIR = "{dataset}/{arch}/seed{seed}"
GROUP_DIR = SEED_DIR + "/forget{forget}"
#: The forget score's ceiling: the per-example confidences of oracles from further seeds.
CEILING_DIR = "{dataset}/{arch}/ceiling/forget{forget}"

#: Every file (or folder) of the results folder by name: template relative to the results root.
#: :func:`parse` tries them in this order (the first match wins).
FILES: dict[str, str] = {
    "seed_dir": SEED_DIR,
    "group_dir": GROUP_DIR,
    "data": "data/{dataset}.pt",
    "weights": "weights/{arch}.done",
    "pretrain_model": SEED_DIR + "/pretrain/model.pt",
    "pretrain_info": SEED_DIR + "/pretrain/info.json",
    "fisher": GROUP_DIR + "/fisher.pt",
    "fisher_info": GROUP_DIR + "/fisher.json",
    "metrics": GROUP_DIR + "/metrics.json",
    "confidences": GROUP_DIR + "/confidences.npz",
    "ceiling_confidences": CEILING_DIR + "/confidences.npz",
    "ceiling_info": CEILING_DIR + "/info.json",
    "tune": GROUP_DIR + "/tune/{method}.json",
    "dev_tune": "tuning/{dataset}/{arch}/{method}.json",
    "dev_study": "optuna/{dataset}/{arch}/{method}.db",
    "model": GROUP_DIR + "/{method}/model.pt",  # the oracle's too: method=ORACLE
    "info": GROUP_DIR + "/{method}/info.json",
    "history": GROUP_DIR + "/{method}/history.json",
    "runs_csv": "aggregate/runs.csv",
    "history_csv": "aggregate/history.csv",
    "timings_csv": "aggregate/timings.csv",
    "forget_score_csv": "aggregate/forget_score.csv",
    "forget_score_images_csv": "aggregate/forget_score_images.csv",
    "forget_score_runs_csv": "aggregate/forget_score_runs.csv",
    "forget_score_info": "aggregate/forget_score.json",
    "report": "report.md",
    "tables": "tables",
    "figures": "figures",
    "tracked": "mlflow/tracked.json",
    "tracked_report": "mlflow/tracked_report.json",
    "tracked_tuning": "mlflow/tracked_tuning.json",
}

#: Every job by name: the stem its log (``logs/<stem>.log``) and Snakemake benchmark
#: (``benchmarks/<stem>.tsv``) mirror. :func:`parse_job` tries them in this order.
JOBS: dict[str, str] = {
    "download": "download/{dataset}",
    "weights": "weights/{arch}",
    "pretrain": SEED_DIR + "/pretrain",
    "oracle": GROUP_DIR + "/" + ORACLE,
    "fisher": GROUP_DIR + "/fisher",
    "evaluate": GROUP_DIR + "/evaluate",
    # one job runs every method of a group (config unlearn_batch); "-" is in no method's name
    "unlearn_batch": GROUP_DIR + "/unlearn-batch",
    "ceiling": CEILING_DIR + "/confidences",
    "tune": GROUP_DIR + "/tune/{method}",
    "freeze": "tuning/{dataset}/{arch}/freeze",  # before tune_dev: its stem would match too
    "tune_dev": "tuning/{dataset}/{arch}/{method}",
    "unlearn": GROUP_DIR + "/{method}",  # last of a group's jobs: any other name is a method
    "aggregate": "aggregate",
    "forget_score": "forget_score",
    "track": "track",
    "track_report": "track_report",
    "track_tuning": "track_tuning",
    "report": "report",
    "server": "pbu-server",  # the local fork server (pbu/forkserver.py), not a job
}
LOGS = "logs"
BENCHMARKS = "benchmarks"


class LayoutError(ValueError):
    """A path that is not one of the results folder's files, or a bad wildcard value."""


def placeholders(template: str) -> list[str]:
    """The wildcard names of a template, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


class _Keep(dict):
    """format_map's mapping: a wildcard not given stays a ``{placeholder}``."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, **wildcards: Any) -> str:
    """``template`` with the given wildcards filled in (the others stay placeholders).

    Raises LayoutError for a name that is no wildcard (a typo) or a value its wildcard does not
    allow (e.g. ``seed=-1`` or a ``/`` in a dataset name), so a built path always parses back.
    """
    values = {}
    for name, value in wildcards.items():
        if name not in WILDCARDS:
            raise LayoutError(f"unknown wildcard {name!r}; the layout's are {', '.join(WILDCARDS)}")
        text = str(value)
        if text != "{" + name + "}" and not re.fullmatch(WILDCARDS[name], text):
            raise LayoutError(f"wildcard {name}={value!r} does not match {WILDCARDS[name]}")
        values[name] = text
    return template.format_map(_Keep(values))


def _join(root: str | os.PathLike, rel: str) -> str:
    return os.path.join(os.fspath(root), rel) if os.fspath(root) else rel


def path(name: str, root: str | os.PathLike = "", **wildcards: Any) -> str:
    """The path of file ``name`` (a key of :data:`FILES`) under ``root``."""
    try:
        template = FILES[name]
    except KeyError:
        raise LayoutError(
            f"no file {name!r} in the results layout; known: {', '.join(FILES)}"
        ) from None
    return _join(root, fill(template, **wildcards))


def _job_stem(job: str) -> str:
    try:
        return JOBS[job]
    except KeyError:
        raise LayoutError(
            f"no job {job!r} in the results layout; known: {', '.join(JOBS)}"
        ) from None


def log(job: str, root: str | os.PathLike = "", **wildcards: Any) -> str:
    """The log file of ``job`` (a key of :data:`JOBS`): ``{root}/logs/<stem>.log``."""
    return _join(root, f"{LOGS}/{fill(_job_stem(job), **wildcards)}.log")


def benchmark(job: str, root: str | os.PathLike = "", **wildcards: Any) -> str:
    """The Snakemake benchmark file of ``job``: ``{root}/benchmarks/<stem>.tsv``."""
    return _join(root, f"{BENCHMARKS}/{fill(_job_stem(job), **wildcards)}.tsv")


def glob(template: str) -> str:
    """A template as a glob pattern (every wildcard a ``*``), e.g. for ``Path.glob``."""
    return template.format_map({n: "*" for n in placeholders(template)})


def _regex(template: str) -> str:
    """A template as a regular expression with one named group per wildcard."""
    out, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if name:
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{WILDCARDS[name]})")
            seen.add(name)
    return "".join(out)


_SUFFIX = {name: re.compile(r"(?:^|(?<=/))" + _regex(t) + "$") for name, t in FILES.items()}
_JOB_SUFFIX = {
    job: re.compile(
        r"(?:^|(?<=/))(?P<_folder>"
        + LOGS
        + "|"
        + BENCHMARKS
        + ")/"
        + _regex(stem)
        + r"\.(?P<_ext>log|tsv)$"
    )
    for job, stem in JOBS.items()
}


@dataclass(frozen=True)
class Found:
    """A parsed path: which file it is (``name``, a key of :data:`FILES`), its wildcards
    (``seed`` and ``forget`` as ints) and the results root it lies under."""

    name: str
    wildcards: dict[str, Any]
    root: str = ""

    def file(self, name: str, **override: Any) -> Path:
        """Another file of the same results folder, with this path's wildcards (and
        ``override``); wildcards the other file does not have are ignored."""
        return Path(path(name, self.root, **{**self.wildcards, **override}))


def _typed(groups: dict[str, str]) -> dict[str, Any]:
    return {k: int(v) if k in INT_WILDCARDS else v for k, v in groups.items()}


def _candidates(p: str | os.PathLike) -> list[str]:
    given = Path(p).as_posix()
    absolute = Path(os.path.abspath(p)).as_posix()
    return [given] if given == absolute else [given, absolute]


def _root(text: str, start: int) -> str:
    return text[:start].rstrip("/") or ("/" if start else "")


def parse(p: str | os.PathLike, name: str | None = None) -> Found:
    """Which results file ``p`` is, and its wildcards and root.

    ``name`` restricts the match to that file of :data:`FILES`. A path that is none of them
    raises LayoutError naming it and the layout it should follow.
    """
    names = [name] if name else list(FILES)
    if name and name not in FILES:
        raise LayoutError(f"no file {name!r} in the results layout; known: {', '.join(FILES)}")
    for text in _candidates(p):
        for n in names:
            m = _SUFFIX[n].search(text)
            if m:
                return Found(n, _typed(m.groupdict()), _root(text, m.start()))
    wanted = f"results/{FILES[name]}" if name else "a file of the results layout (pbu/layout.py)"
    raise LayoutError(f"{p}: not {wanted}")


def parse_job(p: str | os.PathLike) -> Found:
    """Which job a log (``logs/<stem>.log``) or benchmark (``benchmarks/<stem>.tsv``) file is
    of: ``name`` is the job (a key of :data:`JOBS`), ``root`` the results folder."""
    for text in _candidates(p):
        for job, regex in _JOB_SUFFIX.items():
            m = regex.search(text)
            if m:
                wildcards = {k: v for k, v in m.groupdict().items() if not k.startswith("_")}
                return Found(job, _typed(wildcards), _root(text, m.start()))
    raise LayoutError(
        f"{p}: not a job's results/{LOGS}/<job>.log or "
        f"results/{BENCHMARKS}/<job>.tsv (pbu/layout.py)"
    )
