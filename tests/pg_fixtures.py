"""PostgreSQL fixtures shared by the integration and e2e suites.

Import them into a suite's conftest (`from tests.pg_fixtures import *`); `tests` resolves
as a namespace package from the repository root, which is on sys.path under
`python -m pytest` (or with pytest's `pythonpath = ["."]`).

- `pg_admin_url` (session): a superuser URL on the maintenance database. From
  VALKA_TEST_DATABASE_URL if set, else an embedded PostgreSQL started for the session
  (in a folder under /tmp/valka-test-pg-<uid>/, cleaned of killed runs' leftovers).
- `template_db` (session): a database with every migration of `schema/` applied, built once
  per run and used as the template of each test's database.
- `db_url`: a fresh copy of the template for one test, dropped afterwards.
- `empty_db_url`: a fresh empty database (no migrations) for one test, dropped afterwards.
- `db_pool`: an open pool on `db_url`.

Database names carry a host tag and the creating pid (`valka_t_<host>_<pid>_<random>`), so a
run can drop what a crashed earlier run left behind without touching a live run's databases.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from valka.db.embedded import (
    EmbeddedPostgres,
    create_database,
    drop_database,
    stop_orphaned_servers,
)
from valka.db.migrate import apply_migrations
from valka.db.pool import Pool, open_pool

__all__ = [
    "ADMIN_URL_ENV",
    "db_pool",
    "db_url",
    "drop_leftover_databases",
    "embedded_root",
    "empty_db_url",
    "new_embedded_data_dir",
    "pg_admin_url",
    "remove_abandoned_data_dirs",
    "template_db",
    "unique_db_name",
    "with_database",
]

ADMIN_URL_ENV = "VALKA_TEST_DATABASE_URL"

_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TEST_DB = re.compile(r"^valka_(?:t|tpl)_([0-9a-f]{6})_(\d+)_[0-9a-f]+$")


def unique_db_name(kind: str) -> str:
    """A database name that says which host and process made it."""
    return f"valka_{kind}_{_HOST_TAG}_{os.getpid()}_{secrets.token_hex(4)}"


def with_database(conninfo: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    return make_conninfo(conninfo, dbname=dbname)


def drop_leftover_databases(admin_url: str) -> list[str]:
    """Drop test databases made on this host by processes that are gone; return their names."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'valka\\_t%'"
        ).fetchall()
    dropped: list[str] = []
    for (name,) in rows:
        match = _TEST_DB.match(name)
        if match is None or match.group(1) != _HOST_TAG:
            continue  # another machine's (or not ours at all): its pid means nothing here
        pid = int(match.group(2))
        if pid == os.getpid() or psutil.pid_exists(pid):
            continue
        drop_database(admin_url, name)
        dropped.append(name)
    return dropped


def embedded_root() -> Path:
    """The folder that holds the data folders of test-run embedded servers.

    Not pytest's tmp_path: as root the server runs as another user, who must traverse every
    parent folder, and each pytest session resets /tmp/pytest-of-<user> to mode 0700, which
    would cut off the servers of any run going on at the same time.
    """
    root = Path(tempfile.gettempdir()) / f"valka-test-pg-{os.geteuid()}"
    root.mkdir(mode=0o711, exist_ok=True)
    return root


def new_embedded_data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="run-", dir=embedded_root()))


def remove_abandoned_data_dirs() -> list[Path]:
    """Stop servers and delete data folders that killed test runs left in `embedded_root`."""
    root = embedded_root()
    # Only old orphans: a run going on at the same time may have just made one on purpose.
    stop_orphaned_servers(root, older_than_s=600)
    removed: list[Path] = []
    for folder in root.iterdir():
        lock = folder / "postgres.lock"
        try:
            # A folder whose owner is starting right now may have a lock file not yet
            # locked, and a test may be about to restart a folder on purpose: only
            # consider folders untouched for ten minutes.
            if time.time() - lock.stat().st_mtime < 600:
                continue
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live owner
        else:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get(ADMIN_URL_ENV)
    if url:
        drop_leftover_databases(url)
        yield url
        return
    remove_abandoned_data_dirs()
    data_dir = new_embedded_data_dir()
    server = EmbeddedPostgres(data_dir, database="postgres", durable=False)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    name = unique_db_name("tpl")
    create_database(pg_admin_url, name)
    try:
        # A private thread and loop: session fixtures run outside pytest-asyncio's loops.
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            executor.submit(
                asyncio.run, apply_migrations(with_database(pg_admin_url, name))
            ).result()
        yield name
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    name = unique_db_name("t")
    create_database(pg_admin_url, name, template=template_db)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    name = unique_db_name("t")
    create_database(pg_admin_url, name)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture
async def db_pool(db_url: str) -> AsyncIterator[Pool]:
    pool = await open_pool(db_url, 1, 4, name="test")
    try:
        yield pool
    finally:
        await pool.close()
