"""Connections to PostgreSQL: the shared pool and dedicated long-lived connections.

Every connection identifies itself as `valka-<name>` in pg_stat_activity and runs with UTC
timestamps, an optional statement timeout, and a bound on idle-in-transaction sessions (a
leaked transaction must not hold row locks forever).

Prepared statements: psycopg's default `prepare_threshold` (5) is kept, so a query run five
times on a connection is prepared server-side. Two consequences: a pooler that does not
track prepared statements (PgBouncer in transaction mode before 1.21) needs it disabled,
which means adding a `prepare_threshold=None` option here; and a claim query first
prepared against an empty table can keep a sequential-scan generic plan, so such queries
must be written to re-plan (see the research notes on SKIP LOCKED).
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from valka.core.errors import DatabaseError
from valka.db.sqlfile import load_queries

__all__ = ["Pool", "connect_dedicated", "describe_conninfo", "open_pool"]

Pool = AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]

_QUERIES: Final = load_queries("valka.db", "sql/admin.sql")

# Long enough for any honest transaction, short enough that a forgotten one is noticed.
_IDLE_IN_TRANSACTION_TIMEOUT_MS: Final = 300_000


async def open_pool(
    conninfo: str,
    min_size: int,
    max_size: int,
    *,
    name: str,
    statement_timeout_ms: int = 0,
    connect_timeout_s: float = 10.0,
) -> Pool:
    """Open a pool and wait until `min_size` connections are up.

    Raises DatabaseError if the database cannot be reached within `connect_timeout_s`, so a
    server with a wrong URL fails at start with a clear message rather than at first use.
    Connections are handed out with autocommit off: callers use `conn.transaction()`.
    """

    async def configure(conn: psycopg.AsyncConnection[TupleRow]) -> None:
        await _configure_session(conn, statement_timeout_ms)
        # The pool requires connections back in the idle state.
        await conn.commit()

    pool: Pool = AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        name=name,
        kwargs=_connect_kwargs(name, connect_timeout_s),
        configure=configure,
        # A checkout waits no longer than a connect may take: during an outage callers get
        # an error in seconds, not after the client's own deadline.
        timeout=connect_timeout_s,
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=connect_timeout_s)
    except PoolTimeout as exc:
        await pool.close()
        raise DatabaseError(
            f"could not open {min_size} connection(s) to {describe_conninfo(conninfo)}"
            f" within {connect_timeout_s:g}s: {exc}"
        ) from exc
    return pool


async def connect_dedicated(
    conninfo: str,
    *,
    name: str,
    statement_timeout_ms: int = 0,
    connect_timeout_s: float = 10.0,
) -> psycopg.AsyncConnection[TupleRow]:
    """Open one autocommit connection outside the pool (LISTEN, session advisory locks)."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, **_connect_kwargs(name, connect_timeout_s)
        )
    except psycopg.Error as exc:
        raise DatabaseError(f"could not connect to {describe_conninfo(conninfo)}: {exc}") from exc
    try:
        await _configure_session(conn, statement_timeout_ms)
    except BaseException:
        await conn.close()
        raise
    return conn


def describe_conninfo(conninfo: str) -> str:
    """Where a connection string points, for messages and logs: never the password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    host = params.get("host") or params.get("hostaddr") or "default host"
    port = params.get("port")
    dbname = params.get("dbname") or "default database"
    user = params.get("user")
    where = f"{host}:{port}" if port else str(host)
    who = f"{user}@" if user else ""
    return f"postgresql {who}{where}/{dbname}"


def _connect_kwargs(name: str, connect_timeout_s: float) -> dict[str, Any]:
    # libpq rounds connect_timeout to whole seconds and treats values below 2 as 2.
    return {
        "application_name": f"valka-{name}",
        "connect_timeout": max(2, round(connect_timeout_s)),
    }


async def _configure_session(
    conn: psycopg.AsyncConnection[TupleRow], statement_timeout_ms: int
) -> None:
    await conn.execute(
        _QUERIES["session_configure"],
        {
            "statement_timeout": str(statement_timeout_ms),
            "idle_in_transaction_timeout": str(_IDLE_IN_TRANSACTION_TIMEOUT_MS),
        },
    )
