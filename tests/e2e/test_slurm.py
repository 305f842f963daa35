"""`snakemake --profile slurm` (typed so, from the repository root) against a real SLURM cluster.

Needs a running cluster with a partition `debug` (CI: `bash .ci/slurm-ci.sh up`, then
`PBU_SLURM=1 pytest -m slurm`); skipped otherwise. Each test works in a temporary copy of the
repository, so the shipped profile is found exactly as a user's command finds it, and runs
snakemake under `timeout -k`, so a hang fails the test instead of stalling CI.

Test-only overrides of the shipped profile, all on the command line: partition `debug` and no
account (`--default-resources` replaces the profile's placeholders), a 2-second first status
check, and `--slurm-status-command squeue` when `sacct` does not work (a cluster without
slurmdbd: the plugin would otherwise poll sacct in vain and snakemake would wait forever).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PIPELINE_TIMEOUT_S = 900  # measured 5.5-7.5 min on a 2-core machine shared with other work
FAIL_TIMEOUT_S = 300
# rules the SLURM executor submits; download, weights, track and track_report are localrules
SUBMITTED = ("pretrain", "oracle", "fisher", "unlearn", "evaluate", "aggregate", "report")
LOCAL = ("download", "track", "track_report")

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("PBU_SLURM") != "1",
        reason="needs a running SLURM cluster with partition 'debug': "
        "`bash .ci/slurm-ci.sh up` (as root), then PBU_SLURM=1",
    ),
]


def sacct_works() -> bool:
    """True with accounting (slurmdbd): the plugin's default status polling (sacct) works."""
    try:
        return (
            subprocess.run(
                ["sacct", "-n", "-X", "-S", "now"], capture_output=True, timeout=30
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def cluster_args() -> list[str]:
    args = [
        "--profile",
        "slurm",
        "--default-resources",
        "slurm_partition=debug",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--jobs",
        "2",
        "--latency-wait",
        "5",
    ]
    if not sacct_works():
        args += ["--slurm-status-command", "squeue"]
    return args


def run_snakemake(args: list[str], cwd: Path, timeout_s: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")  # jobs inherit it
    cmd = ["timeout", "-k", "30", str(timeout_s), str(BIN / "snakemake"), *args]
    return subprocess.run(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The workflow's files in a fresh folder (no results, no .snakemake state)."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in (
        "Snakefile",
        "workflow",
        "config",
        "profiles",
        "slurm",
        "envs",
        ".test",
        "tests/e2e/slurm_fail",
    ):
        src = REPO / name
        if src.is_symlink():  # ./slurm -> profiles/slurm, so `--profile slurm` resolves
            (root / name).symlink_to(os.readlink(src))
        elif src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    return root


def slurm_logs(root: Path) -> dict[str, list[Path]]:
    """Per rule, the SLURM log files the plugin kept (.snakemake/slurm_logs/rule_<rule>/...)."""
    logs: dict[str, list[Path]] = {}
    for log in sorted(root.glob(".snakemake/slurm_logs/rule_*/**/*.log")):
        rule = log.relative_to(root / ".snakemake/slurm_logs").parts[0].removeprefix("rule_")
        logs.setdefault(rule, []).append(log)
    return logs


def slurm_records(job_ids: set[str]) -> dict[str, dict[str, str]]:
    """What slurmctld holds for each job id (`scontrol show job`, kept for MinJobAge), else the
    job's jobcomp/filetxt line (fewer fields: no GPU request, TimeLimit in minutes)."""
    records = {}
    for job_id in job_ids:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True
        ).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        if fields.get("JobId") == job_id:
            records[job_id] = {**fields, "source": "scontrol"}
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    where = re.search(r"^JobCompLoc\s*=\s*(\S+)", conf, re.M)
    if job_ids - set(records) and "jobcomp/filetxt" in conf and where and Path(where[1]).is_file():
        for line in Path(where[1]).read_text().splitlines():  # the last line of an id wins
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("JobId") in job_ids - set(records):
                records[fields["JobId"]] = {
                    **fields,
                    "TRES": fields.get("Tres", ""),
                    "source": "jobcomp",
                }
    return records


def time_limit_minutes(record: dict[str, str]) -> int:
    """TimeLimit as minutes: scontrol prints [D-]HH:MM:SS, jobcomp plain minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+):(\d+)", record["TimeLimit"])
    if not m:
        return int(record["TimeLimit"])
    days, hours, minutes, _ = (int(g or 0) for g in m.groups())
    return (days * 24 + hours) * 60 + minutes


def partition_has_gpu() -> bool:
    out = subprocess.run(
        ["sinfo", "-h", "-p", "debug", "-o", "%G"], capture_output=True, text=True
    ).stdout
    return "gpu" in out


def test_pipeline_runs_through_slurm(repo_copy: Path, tmp_path: Path):
    results = tmp_path / "results"
    overrides = {
        "results": str(results),
        "mlflow": {"tracking_uri": f"sqlite:///{results}/mlflow/mlflow.db"},
    }
    gpu_rule = "fisher" if partition_has_gpu() else None
    if gpu_rule:  # CI's node has one fake GPU (no device): the job runs, on the CPU
        overrides["resources"] = {gpu_rule: {"gpu": 1}}
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump(overrides))
    proc = run_snakemake(
        ["--configfile", ".test/config.yaml", str(override), *cluster_args()],
        repo_copy,
        PIPELINE_TIMEOUT_S,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake exited {proc.returncode}:\n{out[-6000:]}"

    # the outputs a user looks at
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / ".test/config.yaml").read_text()))
    update_config(config, overrides)
    group = (
        results
        / config["dataset"]
        / config["archs"][0]
        / f"seed{config['seeds'][0]}"
        / f"forget{config['forget'][0]}"
    )
    assert (results / "report.md").stat().st_size > 0
    assert (group / "metrics.json").stat().st_size > 0
    assert (results / "mlflow" / "mlflow.db").stat().st_size > 0
    # the local fork server (pbu/forkserver.py) is never started for a cluster executor
    assert not (results / "logs" / "pbu-server.log").exists()
    # the profile's glibc allocator settings (its precommand) reached the job's process
    malloc_env = json.loads((group / "fisher.json").read_text())["malloc_env"]
    assert (
        malloc_env.items()
        >= {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1073741824"}.items()
    ), malloc_env

    # every compute job went through sbatch (one kept SLURM log each); localrules did not
    logs = slurm_logs(repo_copy)
    n_methods = len(config["methods"])
    assert {r: len(v) for r, v in logs.items()} == {
        rule: n_methods if rule == "unlearn" else 1 for rule in SUBMITTED
    }
    assert not set(LOCAL) & set(logs)

    # ... and slurmctld ran each one to completion, with the config's resources
    ids = {log.stem: rule for rule, files in logs.items() for log in files}
    records = slurm_records(set(ids))
    assert set(records) == set(ids), f"SLURM has no record of jobs {set(ids) - set(records)}"
    for job_id, rule in ids.items():
        rec = records[job_id]
        assert rec["JobState"] == "COMPLETED", (rule, rec)
        key = {"oracle": "pretrain"}.get(rule, rule)  # the oracle uses pretrain's resources
        if key not in config["resources"]:  # aggregate, report: fixed in their rules
            continue
        res = config["resources"][key]
        assert f"cpu={res['threads']},mem={res['mem_mb']}M," in rec["TRES"], (rule, rec)
        assert time_limit_minutes(rec) == res["runtime"], (rule, rec)
        if rec["source"] == "scontrol":  # only scontrol shows the GPU request
            gpus = rec.get("TresPerJob", "") + rec.get("TresPerNode", "")
            assert ("gpu" in gpus) == (res["gpu"] > 0), (rule, res, rec)  # gpu: 0 asks none
        else:
            assert rule != gpu_rule, f"job {job_id} left scontrol before its GPU could be checked"


def test_failing_job_is_reported_not_waited_for(repo_copy: Path, tmp_path: Path):
    workdir = tmp_path / "fail"
    workdir.mkdir()
    proc = run_snakemake(
        [
            "--snakefile",
            str(repo_copy / "tests/e2e/slurm_fail/Snakefile"),
            "--directory",
            str(workdir),
            *cluster_args(),
        ],
        repo_copy,
        FAIL_TIMEOUT_S,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 124, 137), f"exit {proc.returncode}:\n{out[-6000:]}"
    assert "Error in rule fail" in out, out[-6000:]
    assert (workdir / "ok.txt").read_text().strip() == "ok"  # keep-going: the good job finished
    assert not (workdir / "fail.txt").exists()
    # the plugin keeps a failed job's SLURM log; it holds the job's own stderr
    failed_logs = [
        p
        for base in (repo_copy, workdir)
        for p in base.glob(".snakemake/slurm_logs/rule_fail/**/*.log")
    ]
    assert failed_logs, "no SLURM log kept for the failed job"
    assert any("pbu-slurm-test: failing on purpose" in p.read_text() for p in failed_logs)
    records = slurm_records({p.stem for p in failed_logs})
    assert records and all(r["JobState"] == "FAILED" for r in records.values()), records
