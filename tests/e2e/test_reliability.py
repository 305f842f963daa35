"""Reliability and safety: crashes, determinism, an unreachable or shared MLflow store, servers on
localhost only, corrupt inputs.

One real pipeline runs here, in stages that share its work (module-scoped fixtures):
`snakemake --cores 2` on `.test/config.yaml` plus a small override (methods pbu and finetune), in a
temporary copy of the repository (as tests/e2e/test_workflow.py does).

- ``crashed``: tracking goes to http://127.0.0.1:PORT, where nothing listens yet. The
  oracle's `pbu oracle` process is SIGKILLed in its second epoch.
- ``resumed``: a dry-run lists what is left, then a plain rerun finishes every compute job (two
  at a time) and fails only the tracking step, with a clear message.
- ``tracked``: a real `mlflow server` (127.0.0.1 only) starts on PORT; a rerun logs every job once,
  and a forced second tracking pass duplicates nothing.
- ``sqlite_tracked``: the override goes back to the default SQLite store; only the tracking
  steps rerun, and the store passes SQLite's integrity check with one run per job.

``uninterrupted`` runs the killed job alone, never interrupted, in another copy: the resumed
oracle must equal it bit for bit.

Covered elsewhere: config errors naming keys (test_config.py), corrupt, truncated and pickle-payload
checkpoints (test_models_checkpoint.py), one-line CLI errors (test_cli.py), an unwritable results
folder (test_config.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from pbu.checkpoint import load_checkpoint, load_tensors

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
OVERRIDE = "reliability.yaml"
EXPERIMENT = "pbu-e2e"  # .test/config.yaml's mlflow.experiment
GROUP = "results-test/mnist5k/small_cnn/seed0/forget2"
SEED_DIR = "results-test/mnist5k/small_cnn/seed0"
COMPUTE_RULES = ("download", "pretrain", "oracle", "fisher", "unlearn", "evaluate", "aggregate")
LOCALHOST = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _copy_repo(wd: Path, override: dict) -> Path:
    for item in ("Snakefile", "workflow", "config", "envs", ".test"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    (wd / OVERRIDE).write_text(yaml.safe_dump(override))
    return wd


def _snakemake_argv(*args: str) -> list[str]:
    # --configfile takes every word after it: targets and options go first
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "2",
        *args,
        "--configfile",
        ".test/config.yaml",
        OVERRIDE,
    ]


def _snakemake(wd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        _snakemake_argv(*args), cwd=wd, capture_output=True, text=True, timeout=timeout, env=ENV
    )


def _dry_run(wd: Path) -> dict[str, int]:
    """The jobs a plain `snakemake` would run now: {rule: count}."""
    proc = _snakemake(wd, "-n", "--quiet", "rules", timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M)}
    jobs.pop("total", None)
    return jobs


def _tail(proc) -> str:
    return (proc.stdout or "")[-3000:] + (proc.stderr or "")[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listen_addrs(port: int) -> set[str]:
    """Local addresses with a TCP socket LISTENing on ``port`` (from /proc/net/tcp{,6})."""
    out: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr_hex, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: TCP_LISTEN
                continue
            raw = bytes.fromhex(addr_hex)
            if sys.byteorder == "little":  # the kernel prints each 32-bit word in host order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.add(str(ipaddress.ip_address(raw)))
    return out


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True, and everything it started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)["state_dict"]


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _runs(uri: str, experiment: str = EXPERIMENT) -> list:
    """Active MLflow runs of ``experiment``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} in {uri}"
    return client.search_runs([exp.experiment_id], max_results=1000)


def _expected_runs(methods: list[str]) -> dict[str, int]:
    """Runs per `rule` tag for one (dataset, arch, seed, forget) group."""
    return {
        "pretrain": 1,
        "oracle": 1,
        "fisher": int("pbu" in methods),
        "unlearn": len(methods),
        "evaluate": 2,
        "report": 1,
    }


def _assert_counts(runs: list, expected: dict[str, int]) -> None:
    jobs = Counter(r.data.tags.get("pbu.job") for r in runs)
    assert None not in jobs
    assert [j for j, n in jobs.items() if n > 1] == []  # no job logged twice
    assert Counter(r.data.tags["rule"] for r in runs) == expected


def _assert_one_run_per_job(runs: list, methods: list[str]) -> None:
    _assert_counts(runs, _expected_runs(methods))


def _concurrency(log: str) -> tuple[int, set[tuple[str, str]]]:
    """Most jobs running at once in a snakemake log, and the pairs of rules that overlapped."""
    running: dict[str, str] = {}
    best, pairs = 0, set()
    rule = None
    for line in log.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif (m := re.match(r"^\s+jobid: (\d+)", line)) and rule:
            pairs |= {tuple(sorted((rule, other))) for other in running.values()}
            running[m.group(1)], rule = rule, None
            best = max(best, len(running))
        elif m := re.match(r"^Finished jobid: (\d+)", line):
            running.pop(m.group(1), None)
    return best, pairs


def _check_final_files(results: Path) -> list[Path]:
    """Every result file under its final name loads completely; returns the temporary files."""
    temps = []
    for p in sorted(results.rglob("*")):
        if not p.is_file() or "logs" in p.parts or "benchmarks" in p.parts:
            continue
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            temps.append(p)
        elif p.name == "model.pt":
            load_checkpoint(p)  # raises CheckpointError on a truncated file
        elif p.suffix == ".pt":
            load_tensors(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
    return temps


# ------------------------------------------------------------------------------------------
# pipelines (module-scoped: each runs once)
# ------------------------------------------------------------------------------------------

METHODS = ["pbu", "finetune"]
ORACLE = f"{GROUP}/oracle/model.pt"


@pytest.fixture(scope="module")
def tracking_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, tracking_port):
    """Start the pipeline and SIGKILL the oracle's training process in its second epoch."""
    import psutil

    uri = f"http://127.0.0.1:{tracking_port}"
    wd = _copy_repo(
        tmp_path_factory.mktemp("crash"),
        {"methods": METHODS, "mlflow": {"tracking_uri": uri, "experiment": EXPERIMENT}},
    )
    oracle_log = wd / "results-test/logs/mnist5k/small_cnn/seed0/forget2/oracle.log"
    out = open(wd / "snakemake-crash.out", "w")
    snake = subprocess.Popen(
        _snakemake_argv(),
        cwd=wd,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=ENV,
        start_new_session=True,
    )
    victim = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and snake.poll() is None:
            if victim is None:
                for child in psutil.Process(snake.pid).children(recursive=True):
                    try:
                        argv = child.cmdline()
                    except psutil.Error:
                        continue
                    # the python process itself, not the shell that started it
                    if (
                        "oracle" in argv
                        and "--forget" in argv
                        and any(a.endswith("/pbu") for a in argv)
                    ):
                        victim = child
            # `pbu oracle` logs "epoch 1: ..." when epoch 1 ends; epoch 2 (of 2) is then running
            elif oracle_log.exists() and "epoch 1:" in oracle_log.read_text():
                os.kill(victim.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        else:
            pytest.fail(
                f"the oracle's training never reached epoch 2 (snakemake rc={snake.poll()})"
            )
        rc = snake.wait(timeout=600)
    finally:
        _stop_group(snake)
        out.close()
    return SimpleNamespace(
        wd=wd,
        uri=uri,
        rc=rc,
        log=(wd / "snakemake-crash.out").read_text(),
        oracle_log=oracle_log.read_text(),
        victim=victim.pid,
        temps=_check_final_files(wd / "results-test"),
        files={
            p.relative_to(wd).as_posix() for p in (wd / "results-test").rglob("*") if p.is_file()
        },
    )


@pytest.fixture(scope="module")
def resumed(crashed, tracking_port):
    """Dry-run after the crash, then a plain rerun (no --rerun-incomplete); no server yet."""
    assert _listen_addrs(tracking_port) == set(), "something listens on the tracking port"
    dry = _dry_run(crashed.wd)
    proc = _snakemake(crashed.wd)
    return SimpleNamespace(wd=crashed.wd, dry=dry, proc=proc, log=proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def mlflow_server(resumed, tracking_port, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 only, started after the pipeline found it missing."""
    d = tmp_path_factory.mktemp("mlflow-server")
    uri = f"http://127.0.0.1:{tracking_port}"
    log = open(d / "server.log", "w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(tracking_port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{d}/m.db",
            "--default-artifact-root",
            str(d / "art"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(ENV, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "mlflow server did not come up:\n" + (d / "server.log").read_text()[-3000:]
                )
            time.sleep(0.5)
        yield SimpleNamespace(uri=uri, port=tracking_port, proc=proc, db=d / "m.db")
    finally:
        _stop_group(proc)
        log.close()


@pytest.fixture(scope="module")
def tracked(resumed, mlflow_server):
    """With the server back: dry-run, rerun, then force the tracking steps once more.

    (Deleting tracked.json does not force it: its consumers are up to date, so Snakemake 9 has
    "nothing to be done". ``--forcerun track`` reruns track, report and track_report.)
    """
    wd = resumed.wd
    dry = _dry_run(wd)
    first = _snakemake(wd)
    assert first.returncode == 0, _tail(first)
    runs_first = _runs(mlflow_server.uri)
    second = _snakemake(wd, "--forcerun", "track")
    assert second.returncode == 0, _tail(second)
    assert re.search(r"rule track:", second.stdout + second.stderr), _tail(second)
    return SimpleNamespace(
        wd=wd,
        dry=dry,
        runs_first=runs_first,
        runs_second=_runs(mlflow_server.uri),
        summary=json.loads((wd / "results-test/mlflow/tracked.json").read_text()),
    )


@pytest.fixture(scope="module")
def sqlite_tracked(tracked):
    """Back to the .test config's SQLite store: only the tracking steps run again."""
    wd = tracked.wd
    (wd / OVERRIDE).write_text(yaml.safe_dump({"methods": METHODS}))
    dry = _dry_run(wd)
    proc = _snakemake(wd)
    assert proc.returncode == 0, _tail(proc)
    return SimpleNamespace(wd=wd, dry=dry, db=wd / "results-test/mlflow/mlflow.db")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The killed job (and the download it needs), run alone and never interrupted."""
    wd = _copy_repo(tmp_path_factory.mktemp("uninterrupted"), {"methods": METHODS})
    proc = _snakemake(wd, ORACLE)
    assert proc.returncode == 0, _tail(proc)
    return wd


# ------------------------------------------------------------------------------------------
# 1. crash and resume
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_training_job_fails_and_leaves_no_truncated_file(crashed):
    # killed in epoch 2 of 2, before anything was saved
    assert "epoch 1:" in crashed.oracle_log and "epoch 2:" not in crashed.oracle_log
    assert crashed.rc != 0
    assert re.search(r"Error in rule oracle:", crashed.log), crashed.log[-3000:]
    # the killed job's outputs are absent, never present and truncated
    assert f"{GROUP}/oracle/model.pt" not in crashed.files
    assert f"{GROUP}/oracle/info.json" not in crashed.files
    # everything that does sit under a final name loaded completely (_check_final_files), and
    # only atomic_write's ".NAME.XXXX.tmp" files may be left over
    assert all(re.fullmatch(r"\..+\.tmp", p.name) for p in crashed.temps)
    # the job that ran beside it (pretrain) finished and is complete
    info = json.loads((crashed.wd / SEED_DIR / "pretrain/info.json").read_text())
    assert len(info["history"]) == info["epochs"] == 2


@pytest.mark.slow
def test_rerun_after_crash_runs_only_the_incomplete_job_and_dependents(crashed, resumed):
    # a job is left to do exactly when its output is missing after the crash
    outputs = [
        ("download", "results-test/data/mnist5k.pt"),
        ("pretrain", f"{SEED_DIR}/pretrain/model.pt"),
        ("oracle", ORACLE),
        ("fisher", f"{GROUP}/fisher.pt"),
    ]
    outputs += [("unlearn", f"{GROUP}/{m}/model.pt") for m in METHODS]
    expected = Counter(rule for rule, path in outputs if path not in crashed.files)
    expected.update(["evaluate", "aggregate", "track", "report", "track_report", "all"])
    assert "download" not in resumed.dry and "pretrain" not in resumed.dry, resumed.dry
    assert resumed.dry == dict(expected) and resumed.dry["oracle"] == 1, resumed.dry
    # Snakemake saw the job fail, removed its outputs and its "incomplete" mark: a plain rerun
    # works; --rerun-incomplete is not needed.
    assert "IncompleteFilesException" not in resumed.log
    assert "rerun-incomplete" not in resumed.log
    for rule in ("oracle", "evaluate", "aggregate"):
        assert re.search(rf"rule {rule}:", resumed.log), rule
    for rule in ("download", "pretrain"):
        assert not re.search(rf"rule {rule}:", resumed.log), rule


@pytest.mark.slow
def test_resumed_job_equals_the_same_job_uninterrupted(resumed, uninterrupted):
    _assert_bitwise_equal(_state(resumed.wd / ORACLE), _state(uninterrupted / ORACLE))
    info = f"{GROUP}/oracle/info.json"
    a, b = (json.loads((wd / info).read_text()) for wd in (resumed.wd, uninterrupted))
    assert a["history"] == b["history"] and len(a["history"]) == 2
    assert a["seed"] == b["seed"] == 0


# ------------------------------------------------------------------------------------------
# 3. MLflow tracking server unreachable, then back
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_unreachable_server_fails_only_tracking_and_keeps_results(crashed, resumed):
    wd = resumed.wd
    assert resumed.proc.returncode != 0
    assert re.search(r"Error in rule track:", resumed.log), resumed.log[-3000:]
    for rel in (
        f"{SEED_DIR}/pretrain/model.pt",
        f"{GROUP}/oracle/model.pt",
        f"{GROUP}/pbu/model.pt",
        f"{GROUP}/metrics.json",
        "results-test/aggregate/runs.csv",
    ):
        assert (wd / rel).is_file(), rel
    load_checkpoint(wd / GROUP / "pbu/model.pt")
    assert "pbu" in json.loads((wd / GROUP / "metrics.json").read_text())["metrics"]
    log = (wd / "results-test/logs/track.log").read_text().strip().splitlines()
    assert "Traceback" not in "\n".join(log)
    assert log[-1].startswith(f"pbu: error: MLflow tracking server {crashed.uri} is unreachable")
    assert "Every result is kept" in log[-1] and "rerun snakemake" in log[-1]
    assert not (wd / "results-test/mlflow/tracked.json").exists()


@pytest.mark.slow
def test_tracking_server_listens_on_localhost_only(mlflow_server):
    assert _listen_addrs(mlflow_server.port) == {"127.0.0.1"}


@pytest.mark.slow
def test_server_back_logs_every_job_exactly_once(tracked, mlflow_server):
    # only the tracking steps were left to run (the report does not wait for MLflow)
    assert set(tracked.dry) == {"track", "track_report", "all"}, tracked.dry
    _assert_one_run_per_job(tracked.runs_first, METHODS)
    # tracking again (--forcerun track) duplicates nothing
    _assert_one_run_per_job(tracked.runs_second, METHODS)
    assert {r.data.tags["pbu.job"] for r in tracked.runs_second} == {
        r.data.tags["pbu.job"] for r in tracked.runs_first
    }
    assert tracked.summary["created"] == 0
    assert tracked.summary["unchanged"] == tracked.summary["runs"]
    assert tracked.summary["tracking_uri"] == mlflow_server.uri


# ------------------------------------------------------------------------------------------
# 4. parallel jobs never corrupt the store
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_parallel_jobs_leave_the_store_intact(resumed, tracked, mlflow_server, sqlite_tracked):
    # --cores 2, one thread per job: two jobs at a time, an unlearn job among them at some point
    running, pairs = _concurrency(resumed.log)
    assert running == 2 and any("unlearn" in pair for pair in pairs), (running, pairs)
    # switching stores reruns only the tracking steps
    assert set(sqlite_tracked.dry) == {"track", "track_report", "all"}, sqlite_tracked.dry
    for db in (sqlite_tracked.db, mlflow_server.db):  # direct, and behind the server
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)], db
        finally:
            con.close()
    _assert_one_run_per_job(_runs(f"sqlite:///{sqlite_tracked.db}"), METHODS)


_TRACK_AT_A_SIGNAL = """
import os, sys, time
import mlflow.tracking, pbu.cli, pbu.tracking  # imported first, so both processes start at once
ready, go = sys.argv[1:3]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
sys.exit(pbu.cli.main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_simultaneous_track_processes_log_each_job_once(resumed, tmp_path):
    """Two `pbu track` processes released at the same instant into one store.

    The store and experiment exist, the runs do not (as when a pipeline grows): without a lock
    both processes find every job missing and both log it.
    """
    from mlflow.tracking import MlflowClient

    metrics = [str(resumed.wd / GROUP / "metrics.json")]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).create_experiment(
        "race", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    script = tmp_path / "track_at_a_signal.py"
    script.write_text(_TRACK_AT_A_SIGNAL)
    argvs = [
        [
            "track",
            "--tracking-uri",
            uri,
            "--experiment",
            "race",
            "--out",
            str(tmp_path / f"tracked{i}.json"),
            *metrics,
        ]
        for i in range(2)
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"ready{i}"), str(tmp_path / "go"), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for i, argv in enumerate(argvs)
    ]
    try:
        deadline = time.monotonic() + 300
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    created = 0
    for p, argv, (_out, err) in zip(procs, argvs, outs):
        assert "database is locked" not in err and "Traceback" not in err, err[-3000:]
        if p.returncode != 0:  # allowed: a clean one-line failure that a rerun fixes
            assert p.returncode == 2, err[-3000:]
            rerun = subprocess.run(
                [str(BIN / "pbu"), *argv], capture_output=True, text=True, env=ENV, timeout=300
            )
            assert rerun.returncode == 0, rerun.stderr[-3000:]
        created += json.loads(Path(argv[argv.index("--out") + 1]).read_text())["created"]
    runs = _runs(uri, "race")
    expected = _expected_runs(METHODS)
    expected.pop("report")
    _assert_counts(runs, expected)
    assert created == sum(expected.values())  # each job logged once, by one of the two


# ------------------------------------------------------------------------------------------
# 2. determinism (CPU, one thread per process, as the pipeline runs)
# ------------------------------------------------------------------------------------------


def _pbu(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "pbu"), *args, "--device", "cpu", "--threads", "1", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _finish(*procs: subprocess.Popen) -> None:
    for p in procs:
        _out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def determinism(tmp_path_factory):
    """`pbu pretrain` with seeds 0, 0, 1; `pbu fisher`; `pbu unlearn --method pbu` twice."""
    from pbu.data import load_dataset, save_prepared

    d = tmp_path_factory.mktemp("determinism")
    train, test = load_dataset("mnist5k")  # half of it: this is about repeatability, not accuracy
    save_prepared(d / "data.pt", train.subset(torch.arange(2000)), test.subset(torch.arange(500)))
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    recipe = json.dumps(dict(cfg["pretrain"], epochs=1))
    runs = {"a": 0, "b": 0, "c": 1}
    _finish(
        *(
            _pbu(
                "pretrain",
                "--data",
                str(d / "data.pt"),
                "--arch",
                "small_cnn",
                "--seed",
                str(seed),
                "--recipe",
                recipe,
                "--out-model",
                str(d / f"{n}.pt"),
                "--out-info",
                str(d / f"{n}.json"),
            )
            for n, seed in runs.items()
        )
    )
    _finish(
        _pbu(
            "fisher",
            "--data",
            str(d / "data.pt"),
            "--model",
            str(d / "a.pt"),
            "--forget",
            "2",
            "--out",
            str(d / "fisher.pt"),
            "--out-info",
            str(d / "fisher.json"),
        )
    )
    hparams = json.dumps(cfg["hparams"]["pbu"])
    _finish(
        *(
            _pbu(
                "unlearn",
                "--data",
                str(d / "data.pt"),
                "--model",
                str(d / "a.pt"),
                "--forget",
                "2",
                "--method",
                "pbu",
                "--hparams",
                hparams,
                "--fisher",
                str(d / "fisher.pt"),
                "--seed",
                "0",
                "--monitor-retain",
                "300",
                "--out-model",
                str(d / f"u{n}.pt"),
                "--out-history",
                str(d / f"u{n}.hist.json"),
                "--out-info",
                str(d / f"u{n}.json"),
            )
            for n in ("a", "b")
        )
    )
    return d


@pytest.mark.slow
def test_same_seed_gives_bitwise_identical_pretraining(determinism):
    d = determinism
    _assert_bitwise_equal(_state(d / "a.pt"), _state(d / "b.pt"))
    a, b = (json.loads((d / f"{n}.json").read_text()) for n in "ab")
    assert a["history"] == b["history"] and a["final_test_acc"] == b["final_test_acc"]
    assert a["history"][0]["test_acc"] > 50  # it did learn


@pytest.mark.slow
def test_different_seed_gives_different_weights(determinism):
    a, c = _state(determinism / "a.pt"), _state(determinism / "c.pt")
    assert all(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


@pytest.mark.slow
def test_pbu_unlearning_is_deterministic(determinism):
    d = determinism
    _assert_bitwise_equal(_state(d / "ua.pt"), _state(d / "ub.pt"))
    # and it did change the model (the last layer's weights moved)
    assert not torch.equal(
        _state(d / "ua.pt")["classifier.3.weight"], _state(d / "a.pt")["classifier.3.weight"]
    )
    ha, hb = (json.loads((d / f"u{n}.hist.json").read_text()) for n in "ab")
    assert ha == hb and len(ha["history"]) >= 1
    ia, ib = (json.loads((d / f"u{n}.json").read_text()) for n in "ab")
    assert ia["info"] == ib["info"] and ia["epochs"] == ib["epochs"]


# ------------------------------------------------------------------------------------------
# 6. a corrupt Fisher file
# ------------------------------------------------------------------------------------------


def _garbage(d: Path, path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _truncated(d: Path, path: Path) -> None:
    data = (d / "fisher.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _a_model_not_a_fisher(d: Path, path: Path) -> None:
    shutil.copy(d / "a.pt", path)


def _wrong_model(d: Path, path: Path) -> None:
    """A well-formed Fisher file whose tensors do not fit the model (another architecture)."""
    ck = load_tensors(d / "fisher.pt")
    name = next(iter(ck["fisher"]))
    ck["fisher"] = {k: v for k, v in ck["fisher"].items() if k != name}
    ck["fisher"]["conv9.weight"] = torch.ones(3)
    torch.save(ck, path)


def _wrong_shape(d: Path, path: Path) -> None:
    ck = load_tensors(d / "fisher.pt")
    name = next(iter(ck["fisher"]))
    ck["fisher"][name] = torch.ones(3)
    torch.save(ck, path)


def _not_a_number(d: Path, path: Path) -> None:
    ck = load_tensors(d / "fisher.pt")
    name = next(iter(ck["fisher"]))
    ck["fisher"][name] = torch.full_like(ck["fisher"][name], float("nan"))
    torch.save(ck, path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "corrupt,match",
    [
        (_garbage, "corrupt or truncated"),
        (_truncated, "corrupt or truncated"),
        (_a_model_not_a_fisher, "not a Fisher file"),
        (_wrong_model, "does not fit the model"),
        (_wrong_shape, "does not fit the model"),
        (_not_a_number, "negative or non-finite values"),
    ],
)
def test_corrupt_fisher_file_is_named_in_a_clean_error(
    determinism, tmp_path, capsys, corrupt, match
):
    from pbu.cli import main

    d = determinism
    bad = tmp_path / "bad-fisher.pt"
    corrupt(d, bad)
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    out = tmp_path / "out.pt"
    rc = main(
        [
            "unlearn",
            "--data",
            str(d / "data.pt"),
            "--model",
            str(d / "a.pt"),
            "--forget",
            "2",
            "--method",
            "pbu",
            "--hparams",
            json.dumps(cfg["hparams"]["pbu"]),
            "--fisher",
            str(bad),
            "--seed",
            "0",
            "--device",
            "cpu",
            "--quiet",
            "--out-model",
            str(out),
            "--out-history",
            str(tmp_path / "h.json"),
            "--out-info",
            str(tmp_path / "i.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith(f"pbu: error: {bad}") and match in err[-1], err[-1]
    assert list(tmp_path.iterdir()) == [bad]  # no model, history, info or temporary file


# ------------------------------------------------------------------------------------------
# 5. SLURM: every daemon on localhost only
# ------------------------------------------------------------------------------------------

_HOST_KEYS = re.compile(r"^\s*(\w*(?:Host|Addr))=(\S+)", re.M)
_NODE_ADDR = re.compile(r"\bNodeAddr=(\S+)")


def _without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _assert_localhost_slurm(text: str, where: str) -> None:
    text = _without_comments(text)
    hosts = dict(_HOST_KEYS.findall(text))
    assert "SlurmctldHost" in hosts, f"{where}: no SlurmctldHost"
    for key, value in hosts.items():
        name, _, addr = value.partition("(")
        for h in (name, addr.rstrip(")")):
            if h and not h.startswith("$"):
                assert h in ("localhost", "127.0.0.1"), f"{where}: {key}={value}"
    addrs = _NODE_ADDR.findall(text)
    assert addrs and set(addrs) == {"127.0.0.1"}, f"{where}: NodeAddr {addrs}"
    # without these, slurmctld and slurmd listen on every interface whatever the host names say
    params = re.search(r"^CommunicationParameters=(\S+)", text, re.M)
    assert params, f"{where}: no CommunicationParameters"
    assert {"NoCtldInAddrAny", "NoInAddrAny"} <= set(params.group(1).split(",")), where
    assert "0.0.0.0" not in text, where


def test_slurm_ci_script_binds_every_daemon_to_localhost():
    script = ROOT / ".ci/slurm-ci.sh"
    if not script.exists():
        pytest.skip(".ci/slurm-ci.sh is not in this checkout")
    text = _without_comments(script.read_text())
    _assert_localhost_slurm(text, str(script))
    for m in re.finditer(r"--bind-address=(\S+)", text):
        assert m.group(1) == "127.0.0.1", m.group(0)
    assert "mariadbd" not in text or "--bind-address=127.0.0.1" in text


@pytest.mark.slurm
@pytest.mark.skipif(
    os.environ.get("PBU_SLURM") != "1",
    reason="checks a running SLURM cluster: `bash .ci/slurm-ci.sh up` (as root), then PBU_SLURM=1",
)
def test_running_slurm_cluster_listens_on_localhost_only():
    conf = Path("/etc/slurm/slurm.conf")
    text = conf.read_text()
    _assert_localhost_slurm(text, str(conf))
    ports = {"slurmctld": 6817, "slurmd": 6818}
    for key, daemon in (("SlurmctldPort", "slurmctld"), ("SlurmdPort", "slurmd")):
        if m := re.search(rf"^{key}=(\d+)", text, re.M):
            ports[daemon] = int(m.group(1))
    for daemon, port in ports.items():
        addrs = _listen_addrs(port)
        assert addrs, f"{daemon}: nothing listens on port {port}"
        assert addrs <= LOCALHOST, f"{daemon} listens on {addrs}"
    for daemon, port in (("slurmdbd", 6819), ("MariaDB", 3306)):  # when accounting is on
        addrs = _listen_addrs(port)
        assert addrs <= LOCALHOST, f"{daemon} (port {port}) listens on {addrs}"
