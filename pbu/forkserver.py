"""A warm fork server for the ``pbu`` command: pay Python + torch start-up once per pipeline run.

A pipeline job is short (an unlearning job computes for about a second on the CPU default) while
``import torch`` costs about 2 s of CPU in every fresh process; with ~135 jobs per default run
start-up was about 40 % of the whole run's CPU time. So, for local Snakemake runs:

- the ``onstart`` hook (``workflow/rules/common.smk``) starts ``python -m pbu.forkserver serve``,
  which imports torch and pbu's compute modules once and listens on a Unix socket, and exports
  ``PBU_SERVER=<socket>`` to the jobs;
- the ``pbu`` command (:func:`entry`, the console script) connects, hands over its argv, working
  directory, environment, umask and its stdin/stdout/stderr file descriptors (``SCM_RIGHTS``); the
  server forks a worker that takes them over and runs :func:`pbu.cli.main` exactly as a fresh
  process would, and the command exits with the worker's exit status;
- ``onsuccess`` / ``onerror`` stop the server; it also stops on its own when the Snakemake
  process it watches is gone or after ``--idle-timeout`` seconds without work.

Nothing changes for the user: without ``PBU_SERVER``, inside a SLURM job (``SLURM_JOB_ID`` is
set: the server lives on the submitting host), or when the socket cannot be reached, ``pbu``
runs in-process as before. The hook starts no server for cluster executors or for
``--sdm conda``/``apptainer`` runs, whose jobs must run in their own environment. Signals
sent to the command (Ctrl-C, Snakemake cancelling a job) are forwarded to its worker, and a
worker whose command died (even by SIGKILL) terminates itself, so no orphan keeps computing.

Accounting: the worker is the server's child, not the command's, so Snakemake's ``benchmark:``
files see the command's wall time (right) but not the worker's CPU time or memory. Each job's
own record therefore carries ``cpu_s`` and ``peak_rss_mb`` measured inside the worker
(``pbu.jobs.common.resources``), and ``benchmarks/bench_pipeline.py --from-results`` uses those.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)
ENV_VAR = "PBU_SERVER"
WORKER_VAR = "PBU_FORK_WORKER"
# glibc's allocator settings for pipeline jobs (workflow/rules/common.smk exports them, the SLURM
# profile's precommand spells the same): no block gets its own mmap, freed heap memory stays
# mapped unless 1 GiB of it is idle. The server inherits them, so every forked worker runs with
# them (glibc reads them once, at process start).
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
_HEADER = struct.Struct("!Q")  # payload length, sent along with the three file descriptors
PRELOAD = (
    "torch",
    "torch._dynamo",
    "torch._inductor",
    "torch.nn.functional",
    "torch.func",
    "numpy",
    "pbu.cli",
    "pbu.data",
    "pbu.models",
    "pbu.train",
    "pbu.checkpoint",
    "pbu.fisher",
    "pbu.methods",
    "pbu.metrics",
    "pbu.evaluation",
    "pbu.jobs.common",
    "pbu.jobs.train",
    "pbu.jobs.fisher",
    "pbu.jobs.unlearn",
    "pbu.jobs.tune",
    "pbu.jobs.evaluate",
    "sklearn.svm",
    "sklearn.linear_model",
    "sklearn.pipeline",
    "sklearn.preprocessing",
)


# ------------------------------------------------------------------------------------------
# client: the `pbu` console script
# ------------------------------------------------------------------------------------------


def _recv_line(sock: socket.socket, buf: bytearray) -> dict[str, Any] | None:
    """One JSON line from the worker, or None at end of stream."""
    while b"\n" not in buf:
        try:
            chunk = sock.recv(4096)
        except InterruptedError:
            continue
        if not chunk:
            return None
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


def run_remote(path: str, argv: list[str]) -> int | None:
    """Run ``pbu argv`` in a worker of the server at ``path``; None if it cannot be reached."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError:
        return None
    umask = os.umask(0)
    os.umask(umask)
    payload = json.dumps(
        {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask}
    ).encode()
    buf = bytearray()
    try:
        socket.send_fds(sock, [_HEADER.pack(len(payload))], [0, 1, 2])
        sock.sendall(payload)
        hello = _recv_line(sock, buf)
    except OSError:
        hello = None
    if hello is None or "pid" not in hello:  # refused before a worker started: run here
        sock.close()
        return None
    pid = int(hello["pid"])

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    done = _recv_line(sock, buf)
    sock.close()
    if done is None or "rc" not in done:
        # no logging configured in this thin client: the last-resort handler prints to stderr
        log.error(
            "pbu: error: the pbu server's worker (pid %d) ended without an exit status (killed?)",
            pid,
        )
        return 1
    return int(done["rc"])


def entry() -> int:
    """The ``pbu`` console script: through the fork server when one is offered, else in-process."""
    path = os.environ.get(ENV_VAR, "")
    if path and not os.environ.get("SLURM_JOB_ID"):
        rc = run_remote(path, sys.argv[1:])
        if rc is not None:
            return rc
    from pbu.cli import main

    return main()


# ------------------------------------------------------------------------------------------
# worker: the forked child that becomes the job
# ------------------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client closed the connection early")
        data.extend(chunk)
    return bytes(data)


def _watch_client(conn: socket.socket) -> None:
    """End the worker when its command goes away (it never sends anything after the request)."""
    try:
        while conn.recv(1024):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _become_job(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """In the forked child: take over the command's fds, cwd and environment; run pbu; exit."""
    rc = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[WORKER_VAR] = "1"  # job records say so (pbu.jobs.common.resources)
        os.umask(int(request["umask"]))
        import random

        random.seed()  # fresh-process semantics; pbu seeds what it uses explicitly anyway
        sys.argv = ["pbu", *request["argv"]]
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
        from pbu.cli import main

        try:
            rc = main(list(request["argv"]))
        except SystemExit as err:  # a message code means status 1, as in the interpreter
            rc = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
            if not isinstance(err.code, int) and err.code is not None:
                log.error("%s", err.code)
        except KeyboardInterrupt:
            rc = 130
        except BaseException:  # as a fresh interpreter would: traceback, status 1
            import traceback

            traceback.print_exc()
            rc = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        try:
            conn.sendall(json.dumps({"rc": rc}).encode() + b"\n")
        except OSError:
            pass
        os._exit(rc if isinstance(rc, int) and 0 <= rc < 256 else 1)


# ------------------------------------------------------------------------------------------
# server
# ------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(
    path: str,
    *,
    watch_pid: int | None = None,
    idle_timeout: float = 3600.0,
    preload: tuple[str, ...] = PRELOAD,
) -> None:
    """Import ``preload``, then fork one worker per connection until told to stop."""
    import importlib

    t0, c0 = time.perf_counter(), time.process_time()
    for name in preload:
        importlib.import_module(name)
    if "pbu.methods" in preload:
        from pbu.methods import available

        available()  # import every method module
    log.info(
        "preloaded %d modules in %.1f s (%.1f s CPU); listening on %s",
        len(preload),
        time.perf_counter() - t0,
        time.process_time() - c0,
        path,
    )

    stop = False
    children: set[int] = set()

    def on_term(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    tmp = f"{path}.{os.getpid()}.tmp"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(tmp)
    os.chmod(tmp, 0o600)
    listener.listen(64)
    os.replace(tmp, path)  # the socket appears only once the server is ready
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    last_work = time.monotonic()
    try:
        while not stop:
            for key, _ in sel.select(timeout=2.0):
                if key.data == "wake":
                    os.read(wake_r, 4096)
                    continue
                conn, _ = listener.accept()
                try:
                    msg, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
                    if len(msg) != _HEADER.size or len(fds) != 3:
                        raise ConnectionError("malformed request")
                    request = json.loads(_recv_exact(conn, _HEADER.unpack(msg)[0]))
                except (OSError, ValueError, ConnectionError) as err:
                    log.warning("bad request: %s", err)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    listener.close()
                    signal.set_wakeup_fd(-1)
                    os.close(wake_r)
                    os.close(wake_w)
                    _become_job(conn, fds, request)  # never returns
                children.add(pid)
                log.info("worker %d: pbu %s", pid, " ".join(request["argv"])[:200])
                conn.close()
                for fd in fds:
                    os.close(fd)
            while children:  # reap finished workers
                try:
                    pid, _status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    children.clear()
                    break
                if pid == 0:
                    break
                children.discard(pid)
            if children:
                last_work = time.monotonic()
            if watch_pid is not None and not _alive(watch_pid):
                log.info("process %d is gone; stopping", watch_pid)
                break
            if time.monotonic() - last_work > idle_timeout:
                log.info("idle for %.0f s; stopping", idle_timeout)
                break
    finally:
        sel.close()
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------------------
# start / stop (used by the Snakemake hooks and the tests)
# ------------------------------------------------------------------------------------------


def start(
    log_file: str | os.PathLike,
    *,
    watch_pid: int | None = None,
    idle_timeout: float = 3600.0,
    wait: float = 60.0,
) -> tuple[str, int]:
    """Start a server in the background; return (socket path, pid) once it is ready.

    If it is not ready within ``wait`` seconds, the path is still returned: commands fall back to
    running in-process until the socket appears.
    """
    import subprocess
    import tempfile

    folder = tempfile.mkdtemp(prefix="pbu-server-")
    path = os.path.join(folder, "pbu.sock")
    cmd = [
        sys.executable,
        "-m",
        "pbu.forkserver",
        "serve",
        "--socket",
        path,
        "--idle-timeout",
        str(idle_timeout),
    ]
    if watch_pid is not None:
        cmd += ["--watch-pid", str(watch_pid)]
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and proc.poll() is None and not os.path.exists(path):
        time.sleep(0.05)
    return path, proc.pid


def stop(path: str, pid: int, timeout: float = 10.0) -> None:
    """Stop a server started by :func:`start` and remove its socket folder."""
    import shutil

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    else:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.05)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pbu.forkserver", description="warm fork server for the pbu command"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="preload torch and pbu, then serve pbu commands")
    sp.add_argument("--socket", required=True, help="Unix socket path to listen on")
    sp.add_argument("--watch-pid", type=int, help="stop when this process is gone")
    sp.add_argument(
        "--idle-timeout",
        type=float,
        default=3600.0,
        help="stop after this many seconds without work",
    )
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)  # the server's log file (see start())
    handler.setFormatter(logging.Formatter("%(asctime)s pbu server: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # a worker's own logging (pbu.cli) configures the root logger afresh
    serve(args.socket, watch_pid=args.watch_pid, idle_timeout=args.idle_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
