"""PostgreSQL fixtures shared by the integration and e2e suites.

Import them into a suite's conftest (`from tests.pg_fixtures import *`); `tests` resolves
as a namespace package from the repository root, which is on sys.path under
`python -m pytest` (or with pytest's `pythonpath = ["."]`).

- `pg_admin_url` (session): a superuser URL on the maintenance database. From
  VALKA_TEST_DATABASE_URL if set, else an embedded PostgreSQL started for the session.
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
import hashlib
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Iterator

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
    "empty_db_url",
    "pg_admin_url",
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


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get(ADMIN_URL_ENV)
    if url:
        drop_leftover_databases(url)
        yield url
        return
    # A killed earlier run (of any test using EmbeddedPostgres) left its server running
    # on a folder under the shared temp root; nothing else would ever stop it.
    stop_orphaned_servers(tmp_path_factory.getbasetemp().parent)
    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("embedded-pg"), database="postgres", durable=False
    )
    try:
        yield server.start()
    finally:
        server.stop()


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
