"""Real processes for end-to-end tests: a server on a free loopback port, worker processes.

Every process is started in its own session and killed (SIGTERM, then SIGKILL after a
deadline) when the test ends, so nothing outlives the run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from valka.v1 import api_pb2, api_pb2_grpc

__all__ = ["Procs", "free_port", "server_proc"]

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    def __init__(self, db_url: str, tmp: Path) -> None:
        self.db_url = db_url
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.address = ""

    # Children run in the test's temporary folder: `python -m` puts the working directory
    # first on sys.path, and from the repository root that would be the pure source tree.
    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VALKA_")}
        # The children import the same valka build as this test run.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.update(extra)
        return env

    def spawn(self, args: list[str], log_name: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.tmp / log_name).open("wb") as log:
            proc = subprocess.Popen([sys.executable, *args], stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env(**env),
                                    cwd=self.tmp, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_server(self, port: int | None = None, /, **env: str) -> subprocess.Popen[bytes]:
        """Start a server; `port` reuses an address (a restart the workers reconnect to)."""
        port = port or free_port()
        self.address = f"127.0.0.1:{port}"
        proc = self.spawn(["-m", "valka.server"], f"server-{port}-{len(self.procs)}.log",
                          VALKA_DATABASE_URL=self.db_url, VALKA_GRPC_ADDR=self.address,
                          **env)
        self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            api = api_pb2_grpc.ApiServiceStub(channel)
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited early: {self.logs()}")
                try:
                    api.ListWorkers(api_pb2.ListWorkersRequest(), timeout=1.0)
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"server not ready: {self.logs()}") from None
                    time.sleep(0.05)

    def start_worker(self, queue: str, concurrency: int = 8) -> subprocess.Popen[bytes]:
        return self.spawn([str(HERE / "noop_worker.py"), self.address, queue,
                           str(concurrency)], f"worker-{len(self.procs)}.log")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.tmp.glob("*.log")))

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 20.0) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        # Workers first, so they drain while their server is still up.
        for proc in reversed(self.procs):
            self.stop(proc)


@pytest.fixture
def server_proc(db_url: str, tmp_path: Path) -> Iterator[Procs]:
    procs = Procs(db_url, tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
