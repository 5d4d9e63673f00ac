"""The connection pool and dedicated connections on a real PostgreSQL."""

from __future__ import annotations

import time

import pytest

from valka.core.errors import DatabaseError
from valka.db.pool import Pool, connect_dedicated, describe_conninfo, open_pool

pytestmark = pytest.mark.integration


async def test_pool_connections_are_configured(db_pool: Pool) -> None:
    async with db_pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT current_setting('application_name'), current_setting('TimeZone'),"
            " current_setting('idle_in_transaction_session_timeout')"
        )
        row = await cursor.fetchone()
        assert not conn.autocommit

    assert row == ("valka-test", "UTC", "5min")


async def test_statement_timeout_is_applied(db_url: str) -> None:
    pool = await open_pool(db_url, 1, 1, name="timeouts", statement_timeout_ms=1500)
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT current_setting('statement_timeout')")
            assert await cursor.fetchone() == ("1500ms",)
    finally:
        await pool.close()


async def test_dedicated_connection_is_autocommit(db_url: str) -> None:
    conn = await connect_dedicated(db_url, name="listener")
    try:
        cursor = await conn.execute("SELECT current_setting('application_name')")
        assert await cursor.fetchone() == ("valka-listener",)
        assert conn.autocommit
    finally:
        await conn.close()


async def test_unreachable_database_fails_fast_and_clearly(pg_admin_url: str) -> None:
    url = "postgresql://nobody:secret@127.0.0.1:1/nowhere"
    started = time.monotonic()

    with pytest.raises(DatabaseError, match=r"postgresql nobody@127\.0\.0\.1:1/nowhere") as caught:
        await open_pool(url, 1, 2, name="bad", connect_timeout_s=2)

    assert "secret" not in str(caught.value)
    assert time.monotonic() - started < 10
    with pytest.raises(DatabaseError, match="could not connect"):
        await connect_dedicated(url, name="bad", connect_timeout_s=2)


def test_describe_conninfo_never_shows_the_password() -> None:
    text = describe_conninfo("host=db.example port=6432 dbname=valka user=app password=hunter2")

    assert text == "postgresql app@db.example:6432/valka"
    assert describe_conninfo("host='unterminated") == "<unparsable database URL>"
