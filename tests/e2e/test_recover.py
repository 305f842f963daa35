"""Recovery when snakemake itself is killed (kill -9 of its process group, mid-run).

The killed run leaves a lock and marks the outputs of the jobs it was running as incomplete. The
README's one line, ``snakemake --unlock && snakemake --cores all`` (with the run's
``--configfile``), must finish the run: the workflow profile that Snakemake loads by itself
(``profiles/default/``, ``rerun-incomplete: true``) redoes the interrupted jobs. The fork server
(``pbu/forkserver.py``) and its workers must not outlive the killed snakemake.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
CONFIG = ".test/config.yaml"


def _incomplete(wd: Path) -> set[str]:
    """Output paths that snakemake has marked incomplete (its .snakemake/incomplete records:
    urlsafe base64 of the path, split into '@'-prefixed folder names when long)."""
    folder = wd / ".snakemake" / "incomplete"
    out = set()
    for dirpath, _, files in os.walk(folder):
        for f in files:
            if f == "migration_underway":
                continue
            rel = Path(dirpath, f).relative_to(folder).parts
            b64 = "".join(p.lstrip("@") for p in rel)
            out.add(base64.urlsafe_b64decode(b64).decode())
    return out


def _server_of(snakemake_pid: int) -> psutil.Process | None:
    """The fork server started by the onstart hook of this snakemake (it watches its pid)."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if (
            "pbu.forkserver" in cmd
            and "--watch-pid" in cmd
            and cmd[cmd.index("--watch-pid") + 1] == str(snakemake_pid)
        ):
            return p
    return None


def test_kill_9_of_snakemake_then_the_documented_line_finishes_the_run(tmp_path):
    wd = tmp_path / "wf"
    wd.mkdir()
    for item in ("Snakefile", "workflow", "config", "envs", ".test", "profiles"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    env = {k: v for k, v in os.environ.items() if k != "PBU_SERVER"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = open(tmp_path / "killed.log", "w")
    run = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", CONFIG],
        cwd=wd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # its own process group, as a shell gives it
    try:
        # wait until a training job is mid-way: its model is marked incomplete and a worker of
        # the fork server runs it
        deadline = time.monotonic() + 300
        server, children = None, []
        while time.monotonic() < deadline and run.poll() is None:
            server = server or _server_of(run.pid)
            if server and any(p.endswith("model.pt") for p in _incomplete(wd)):
                children = server.children(recursive=True)
                if children:
                    time.sleep(1.0)  # into the job's work, past its start
                    children = server.children(recursive=True)
                    break
            time.sleep(0.1)
        assert run.poll() is None, "the run ended before it could be killed"
        assert server is not None, "no fork server was started"
        assert children, "no job was running in the fork server"
        cmd = server.cmdline()
        socket_dir = Path(cmd[cmd.index("--socket") + 1]).parent
        running = {p for p in _incomplete(wd) if p.endswith("model.pt")}
        killed_at = time.time()
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        log.close()

    # the fork server and its workers notice (the server polls every 2 s) and stop
    _, alive = psutil.wait_procs([server, *children], timeout=30)
    assert not alive, f"outlived the killed snakemake: {alive}"
    assert not any(socket_dir.glob("*.sock"))  # it removed its socket on the way out
    shutil.rmtree(socket_dir, ignore_errors=True)  # the folder is the (killed) hook's to remove

    # what the kill left: a lock, and the interrupted jobs' outputs marked incomplete
    assert any((wd / ".snakemake" / "locks").iterdir())
    assert running and running <= _incomplete(wd)
    plain = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", CONFIG],
        cwd=wd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode != 0 and "LockException" in plain.stdout + plain.stderr

    # the README's line finishes it
    line = f"snakemake --unlock && snakemake --cores all --configfile {CONFIG}"
    rec = subprocess.run(
        ["bash", "-c", line], cwd=wd, env=env, capture_output=True, text=True, timeout=900
    )
    out = rec.stdout + rec.stderr
    assert rec.returncode == 0, out[-4000:]
    assert "profiles/default" in out  # the workflow profile was loaded by itself
    assert not _incomplete(wd)
    for path in running:  # the interrupted jobs were redone, not trusted
        assert (wd / path).stat().st_mtime > killed_at, path
    assert (wd / "results-test" / "report.md").exists()
    assert (wd / "results-test" / "mlflow" / "tracked_report.json").exists()
    again = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", CONFIG],
        cwd=wd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
