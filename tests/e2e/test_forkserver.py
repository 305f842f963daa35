"""The warm fork server behind the ``pbu`` command (pbu/forkserver.py).

A command run through the server must be indistinguishable from a fresh process: same output,
exit status, working directory and environment; and a server must never outlive its purpose or
leave a worker computing for a command that is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbu import forkserver

pytestmark = pytest.mark.slow  # every test starts the server or the pbu CLI

PBU = shutil.which("pbu") or str(Path(sys.executable).with_name("pbu"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    path, pid = forkserver.start(log, idle_timeout=600)
    assert os.path.exists(path), log.read_text()
    yield path, pid, log
    forkserver.stop(path, pid)
    assert not os.path.exists(path)


def _run(argv, *, server_path=None, cwd=None, extra_env=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in (forkserver.ENV_VAR, "SLURM_JOB_ID")}
    if server_path:
        env[forkserver.ENV_VAR] = server_path
    env.update(extra_env or {})
    return subprocess.run(
        [PBU, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _workers(log: Path) -> list[tuple[int, str]]:
    return [
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"worker (\d+): pbu (.*)", log.read_text())
    ]


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # reap it if it is our child (a server started here), else just probe
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("argv", [["methods"], ["unlearn", "--help"]])
def test_output_identical_to_a_fresh_process_and_env_is_the_callers(server, argv):
    path, _pid, log = server
    outs = {}
    for columns in ("60", "160"):  # argparse wraps help at $COLUMNS: the env must travel
        fresh = _run(argv, extra_env={"COLUMNS": columns})
        n = len(_workers(log))
        served = _run(argv, server_path=path, extra_env={"COLUMNS": columns})
        assert len(_workers(log)) == n + 1, "the command did not go through the server"
        assert (served.returncode, served.stdout, served.stderr) == (
            fresh.returncode,
            fresh.stdout,
            fresh.stderr,
        )
        assert fresh.returncode == 0 and fresh.stdout
        outs[columns] = served.stdout
    if argv[-1] == "--help":
        assert outs["60"] != outs["160"]


def test_errors_keep_their_exit_status_and_message(server):
    path, _pid, _log = server
    for argv in (["no-such-command"], ["unlearn", "--method", "pbu"]):
        fresh, served = _run(argv), _run(argv, server_path=path)
        assert served.returncode == fresh.returncode == 2
        assert served.stderr == fresh.stderr and "error" in served.stderr


def test_runs_in_the_callers_directory(server, tmp_path):
    path, _pid, _log = server
    res = _run(
        ["download", "--dataset", "mnist5k", "--out", "sub/mnist5k.pt"],
        server_path=path,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    from pbu.data import load_prepared

    train, test = load_prepared(tmp_path / "sub" / "mnist5k.pt")
    assert (len(train), len(test)) == (4000, 1000)


def test_falls_back_to_in_process(server, tmp_path):
    path, _pid, log = server
    n = len(_workers(log))
    missing = _run(["methods"], server_path=str(tmp_path / "nothing.sock"))
    in_slurm = _run(["methods"], server_path=path, extra_env={"SLURM_JOB_ID": "1"})
    assert missing.returncode == in_slurm.returncode == 0
    assert "pbu" in missing.stdout and missing.stdout == in_slurm.stdout
    assert len(_workers(log)) == n, "a SLURM job or a dead socket must not use the server"


def _long_job(tmp_path: Path) -> list[str]:
    data = tmp_path / "d.pt"
    assert _run(["download", "--dataset", "mnist5k", "--out", str(data)]).returncode == 0
    recipe = (
        '{"epochs":500,"batch_size":64,"optimizer":"adam","lr":0.001,"weight_decay":0.0,'
        '"momentum":0.9,"schedule":"cosine","augment":false,"amp":false,'
        '"channels_last":false,"compile":false}'
    )
    return [
        "pretrain",
        "--data",
        str(data),
        "--arch",
        "small_cnn",
        "--seed",
        "0",
        "--weights",
        "none",
        "--recipe",
        recipe,
        "--device",
        "cpu",
        "--threads",
        "1",
        "--quiet",
        "--out-model",
        str(tmp_path / "m.pt"),
        "--out-info",
        str(tmp_path / "i.json"),
    ]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_worker_never_outlives_its_command(server, tmp_path, how):
    path, _pid, log = server
    argv = _long_job(tmp_path)
    n = len(_workers(log))
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    env[forkserver.ENV_VAR] = path
    client = subprocess.Popen(
        [PBU, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while len(_workers(log)) == n and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = _workers(log)[n][0]
    time.sleep(1.0)
    assert client.poll() is None, client.communicate()
    client.send_signal(how)  # SIGTERM is forwarded; after SIGKILL the worker notices the EOF
    rc = client.wait(timeout=30)
    assert rc != 0
    assert _wait_gone(worker), f"worker {worker} still running after its command got {how!r}"
    assert not (tmp_path / "m.pt").exists()


def test_server_stops_with_the_process_it_watches(tmp_path):
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    path, pid = forkserver.start(tmp_path / "s.log", watch_pid=watched.pid)
    try:
        assert os.path.exists(path)
        watched.kill()
        watched.wait()
        assert _wait_gone(pid, timeout=20), "server kept running after Snakemake was gone"
        assert not os.path.exists(path)
        assert "is gone; stopping" in (tmp_path / "s.log").read_text()
    finally:
        forkserver.stop(path, pid)
