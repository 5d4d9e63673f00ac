"""`make demo`: a server, a worker and a producer on this machine, end to end.

Starts `python -m valka.server` (embedded PostgreSQL in .valka-demo/data unless
VALKA_DATA_DIR or VALKA_DATABASE_URL is set) on free loopback ports, waits until it
answers, starts the example worker, runs the example producer (extra arguments go to it,
e.g. `tools/demo.py --dir ~/src`), and stops everything it started, whatever happens.
Exits with the producer's exit status. Server and worker output: .valka-demo/*.log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Final

import grpc

from valka.v1 import api_pb2, api_pb2_grpc

REPO: Final = Path(__file__).resolve().parent.parent
DEMO_DIR: Final = REPO / ".valka-demo"
READY_TIMEOUT: Final = 180.0  # the first start runs initdb
WORKER_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 45.0  # longer than the worker's 30 s drain
LOG_TAIL_LINES: Final = 40


class DemoError(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(no output)"


def spawn(args: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C in the terminal reaches only this script, which then stops
    # worker and server in order (the worker drains before the server goes away).
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def list_workers(address: str, token: str | None) -> int | None:
    """How many workers the server lists, or None if it does not answer yet."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    # A new channel per attempt: a channel that failed to connect waits out its own
    # reconnect backoff, which would delay noticing that the server is up.
    with grpc.insecure_channel(address) as channel:
        stub = api_pb2_grpc.ApiServiceStub(channel)
        try:
            response = stub.ListWorkers(
                api_pb2.ListWorkersRequest(), timeout=2.0, metadata=metadata
            )
        except grpc.RpcError:
            return None
    return len(response.workers)


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[bytes],
    log_path: Path,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DemoError(
                f"{what}: the process exited with status {proc.returncode}; its output:\n"
                + tail(log_path)
            )
        if check():
            return
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: not ready after {timeout:.0f} s; output:\n" + tail(log_path))
        time.sleep(0.2)


def stop(name: str, proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"demo: {name} did not stop within {STOP_TIMEOUT:.0f} s; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    DEMO_DIR.mkdir(exist_ok=True)
    env = dict(os.environ)
    own_data_dir: Path | None = None
    if not env.get("VALKA_DATA_DIR") and not env.get("VALKA_DATABASE_URL"):
        own_data_dir = DEMO_DIR / "data"
        env["VALKA_DATA_DIR"] = str(own_data_dir)
    address = f"127.0.0.1:{free_port()}"
    env["VALKA_GRPC_ADDR"] = address
    env["VALKA_HTTP_ADDR"] = f"127.0.0.1:{free_port()}"
    token = env.get("VALKA_TOKEN") or None
    server_log_path = DEMO_DIR / "server.log"
    worker_log_path = DEMO_DIR / "worker.log"
    server: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    with open(server_log_path, "wb") as server_log, open(worker_log_path, "wb") as worker_log:
        try:
            print(f"demo: starting the server on {address} (log: {server_log_path})", flush=True)
            server = spawn(["-m", "valka.server"], env, server_log)
            wait_until(
                "server",
                lambda: list_workers(address, token) is not None,
                READY_TIMEOUT,
                server,
                server_log_path,
            )
            print(f"demo: starting the worker (log: {worker_log_path})", flush=True)
            worker = spawn(["-m", "valka.examples.worker", "--server", address], env, worker_log)
            wait_until(
                "worker",
                lambda: bool(list_workers(address, token)),
                WORKER_TIMEOUT,
                worker,
                worker_log_path,
            )
            print("demo: running the producer", flush=True)
            producer = subprocess.run(
                [sys.executable, "-m", "valka.examples.producer", "--server", address, *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            return producer.returncode
        except DemoError as exc:
            print(f"demo: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("demo: interrupted", file=sys.stderr)
            return 130
        finally:
            # Ignore further Ctrl-C while stopping: an interrupted cleanup leaves processes.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            stop("worker", worker)
            stop("server", server)
            if own_data_dir is not None:
                _stop_orphaned_postgres(own_data_dir)


def _stop_orphaned_postgres(data_dir: Path) -> None:
    """A server that had to be killed leaves its embedded PostgreSQL running: stop it."""
    try:
        from valka.db.embedded import stop_orphaned_servers
    except ImportError:
        return
    for pid in stop_orphaned_servers(data_dir):
        print(f"demo: stopped an orphaned PostgreSQL (pid {pid})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
