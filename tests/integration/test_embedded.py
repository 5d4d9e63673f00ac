"""The embedded PostgreSQL: start, stop, restart, killed runs, stale pid files, root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from tests.pg_fixtures import new_embedded_data_dir
from valka.core.errors import DatabaseError
from valka.db.embedded import EmbeddedPostgres, stop_orphaned_servers

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def postgres_processes_under(folder: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] == "postgres" and Path(proc.cwd()).is_relative_to(folder):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not tmp_path: see embedded_root() for why.
    folder = new_embedded_data_dir()
    yield folder / "valka-data"
    # Whatever a test did, no postgres may outlive it.
    leaked = postgres_processes_under(folder)
    for proc in leaked:
        proc.kill()
    shutil.rmtree(folder, ignore_errors=True)
    assert not leaked, f"postgres processes outlived the test: {leaked}"


def query(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_start_query_stop(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir)

    url = server.start()
    pid = server.pid

    assert pid is not None
    assert query(url, "SELECT current_database()") == "valka"
    assert server.start() == url, "start() on a started server returns the same URL"
    server.stop()
    assert is_gone(pid)
    assert not (server.pgdata / "postmaster.pid").exists(), "a clean stop removes the pid file"
    server.stop()  # idempotent


def test_restart_keeps_data_and_releases_ownership(data_dir: Path) -> None:
    with (
        EmbeddedPostgres(data_dir, durable=False) as first,
        psycopg.connect(first.conninfo) as conn,
    ):
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")

    with EmbeddedPostgres(data_dir, durable=False) as second:
        assert query(second.conninfo, "SELECT v FROM kept") == "still here"


def test_second_owner_is_refused_while_the_first_runs(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir, durable=False) as first:
        with pytest.raises(
            DatabaseError, match=rf"in use by another process \(pid {os.getpid()}\)"
        ):
            EmbeddedPostgres(data_dir, durable=False).start()
        assert query(first.conninfo, "SELECT 1") == 1, "the refusal must not disturb the owner"


KILLED_OWNER = textwrap.dedent(
    """
    import sys
    from valka.db.embedded import EmbeddedPostgres
    server = EmbeddedPostgres(sys.argv[1], durable=False)
    server.start()
    print(server.pid, flush=True)
    sys.stdin.read()  # hold the server until killed
    """
)


def start_and_kill_owner(data_dir: Path) -> int:
    """Start a server from a child process, SIGKILL the child; return the orphan's pid."""
    owner = subprocess.Popen(
        [sys.executable, "-c", KILLED_OWNER, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert owner.stdout is not None
        orphan_pid = int(owner.stdout.readline())
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        if owner.stdin is not None:
            owner.stdin.close()
        if owner.stdout is not None:
            owner.stdout.close()
    # SIGKILL skips every cleanup: the server is left running with nobody owning it.
    assert not is_gone(orphan_pid)
    return orphan_pid


def test_recovers_from_a_killed_owner(data_dir: Path) -> None:
    orphan_pid = start_and_kill_owner(data_dir)

    with EmbeddedPostgres(data_dir, durable=False) as server:
        assert query(server.conninfo, "SELECT 1") == 1
        assert server.pid != orphan_pid
        assert is_gone(orphan_pid), "the orphaned server is stopped, not left beside ours"


def test_orphans_under_a_folder_are_stopped_and_owned_servers_kept(data_dir: Path) -> None:
    orphan_pid = start_and_kill_owner(data_dir / "killed")

    with EmbeddedPostgres(data_dir / "alive", durable=False) as alive:
        stopped = stop_orphaned_servers(data_dir)

        assert stopped == [orphan_pid]
        assert is_gone(orphan_pid)
        assert query(alive.conninfo, "SELECT 1") == 1


def test_server_stops_at_interpreter_exit(data_dir: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from valka.db.embedded import EmbeddedPostgres
        server = EmbeddedPostgres(sys.argv[1], durable=False)
        server.start()
        print(server.pid, flush=True)
        # no stop(): the atexit hook must do it
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        timeout=120,
    )

    assert is_gone(int(done.stdout))


@pytest.mark.parametrize("bystander_alive", [True, False], ids=["pid-reused", "pid-dead"])
def test_stale_pid_file_is_ignored(data_dir: Path, bystander_alive: bool) -> None:
    with EmbeddedPostgres(data_dir, durable=False):
        pass  # leaves an initialized cluster
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    assert bystander.stdin is not None
    if not bystander_alive:
        bystander.stdin.close()
        bystander.wait()
    # What a crash leaves: a pid file naming a process that is gone or, after a reboot,
    # belongs to something else.
    pid_file = data_dir / "postgres" / "postmaster.pid"
    pid_file.write_text(f"{bystander.pid}\n{pid_file.parent}\n0\n5432\n\n\n0 0\nready\n")
    try:
        with EmbeddedPostgres(data_dir, durable=False) as server:
            assert query(server.conninfo, "SELECT 1") == 1
            assert server.pid != bystander.pid
        if bystander_alive:
            assert bystander.poll() is None, "an unrelated process must never be signalled"
    finally:
        bystander.stdin.close()
        bystander.wait()


def test_long_data_dir_uses_a_short_socket_folder(data_dir: Path) -> None:
    deep = data_dir / ("x" * 60) / ("y" * 60)

    with EmbeddedPostgres(deep, durable=False) as server:
        assert "valka-pg-" in server.conninfo
        assert query(server.conninfo, "SELECT 1") == 1
        socket_dir = Path(server.conninfo.split("host=")[1].split("&")[0])

    assert not socket_dir.exists(), "the short socket folder is removed at stop"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_as_root_runs_unprivileged_and_stays_usable(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir, durable=False) as server:
        assert server.pid is not None
        assert psutil.Process(server.pid).uids().effective != 0
        assert query(server.conninfo, "SELECT current_user") == "postgres"
    cluster = data_dir / "postgres"
    assert cluster.stat().st_uid != 0
    # A cluster handed back to root (by hand, or by another tool) must still start.
    for path in [cluster, *cluster.rglob("*")]:
        os.chown(path, 0, 0, follow_symlinks=False)

    with EmbeddedPostgres(data_dir, durable=False) as server:
        assert query(server.conninfo, "SELECT 1") == 1
    assert cluster.stat().st_uid != 0
    assert data_dir.stat().st_uid == 0, "the data folder itself stays root's"
