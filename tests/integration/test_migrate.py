"""The migration runner on a real PostgreSQL, with throwaway migrations in tmp folders."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import sys
import time
from pathlib import Path

import psycopg
import pytest

import valka
from valka.core.errors import MigrationError
from valka.db import migrate
from valka.db.migrate import (
    apply_migrations,
    discover_migrations,
    migration_status,
    migrations_dir,
    pending_migrations,
)

pytestmark = pytest.mark.integration

CREATE_A = "CREATE TABLE a (id int PRIMARY KEY);\nINSERT INTO a VALUES (1), (2);\n"
ADD_COLUMN = "ALTER TABLE a ADD COLUMN note text NOT NULL DEFAULT '100% fine';\n"


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "schema"
    folder.mkdir()
    (folder / "0001_create_a.sql").write_text(CREATE_A)
    (folder / "0002_add_column.sql").write_text(ADD_COLUMN)
    (folder / "README.md").write_text("not a migration")
    return folder


async def ledger(url: str) -> list[tuple[int, str, str]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT version, name, checksum FROM valka_schema_migrations ORDER BY version"
        )
        return [(int(v), str(n), str(c)) for v, n, c in await cursor.fetchall()]


async def table_exists(url: str, table: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        row = await cursor.fetchone()
        return bool(row and row[0])


async def test_applies_all_from_empty_in_order(empty_db_url: str, migrations: Path) -> None:
    assert await pending_migrations(empty_db_url, migrations) == [
        "0001_create_a",
        "0002_add_column",
    ]

    applied = await apply_migrations(empty_db_url, migrations)

    assert applied == ["0001_create_a", "0002_add_column"]
    first_sum = hashlib.sha256(CREATE_A.encode()).hexdigest()
    rows = await ledger(empty_db_url)
    assert [(v, n) for v, n, _ in rows] == [(1, "0001_create_a"), (2, "0002_add_column")]
    assert rows[0][2] == first_sum
    async with await psycopg.AsyncConnection.connect(empty_db_url) as conn:
        cursor = await conn.execute("SELECT id, note FROM a ORDER BY id")
        assert await cursor.fetchall() == [(1, "100% fine"), (2, "100% fine")]


async def test_second_run_applies_nothing(empty_db_url: str, migrations: Path) -> None:
    await apply_migrations(empty_db_url, migrations)

    again = await apply_migrations(empty_db_url, migrations)

    assert again == []
    assert await pending_migrations(empty_db_url, migrations) == []
    status = await migration_status(empty_db_url, migrations)
    assert status.up_to_date
    assert status.applied == ("0001_create_a", "0002_add_column")


async def test_new_migration_is_applied_alone(empty_db_url: str, migrations: Path) -> None:
    await apply_migrations(empty_db_url, migrations)
    (migrations / "0003_create_b.sql").write_text("CREATE TABLE b (id int);\n")

    assert await apply_migrations(empty_db_url, migrations) == ["0003_create_b"]
    assert await table_exists(empty_db_url, "b")


async def test_edited_applied_migration_is_refused(empty_db_url: str, migrations: Path) -> None:
    await apply_migrations(empty_db_url, migrations)
    (migrations / "0001_create_a.sql").write_text(CREATE_A + "-- a harmless-looking edit\n")
    (migrations / "0003_create_b.sql").write_text("CREATE TABLE b (id int);\n")

    with pytest.raises(MigrationError) as caught:
        await apply_migrations(empty_db_url, migrations)

    message = str(caught.value)
    assert "0001_create_a.sql was edited after it was applied" in message
    assert "refusing to start" in message
    assert not await table_exists(empty_db_url, "b"), "nothing may be applied after a refusal"
    status = await migration_status(empty_db_url, migrations)
    assert not status.up_to_date
    assert any("0001_create_a.sql" in p for p in status.problems)
    with pytest.raises(MigrationError, match="edited"):
        await pending_migrations(empty_db_url, migrations)


async def test_applied_migration_without_file_is_refused(
    empty_db_url: str, migrations: Path
) -> None:
    await apply_migrations(empty_db_url, migrations)
    (migrations / "0002_add_column.sql").unlink()

    with pytest.raises(MigrationError, match=r"0002_add_column is applied .* missing"):
        await apply_migrations(empty_db_url, migrations)


async def test_new_migration_numbered_below_applied_is_refused(
    empty_db_url: str, migrations: Path
) -> None:
    (migrations / "0002_add_column.sql").rename(migrations / "0003_add_column.sql")
    await apply_migrations(empty_db_url, migrations)
    (migrations / "0002_late.sql").write_text("CREATE TABLE late (id int);\n")

    with pytest.raises(MigrationError, match=r"0002_late\.sql is numbered below"):
        await apply_migrations(empty_db_url, migrations)
    assert not await table_exists(empty_db_url, "late")


async def test_failing_migration_rolls_back_and_is_not_recorded(
    empty_db_url: str, migrations: Path
) -> None:
    broken = migrations / "0002_add_column.sql"
    broken.write_text("CREATE TABLE half_done (id int);\nSELECT 1 / 0;\n")

    with pytest.raises(MigrationError, match=r"0002_add_column\.sql failed .*division by zero"):
        await apply_migrations(empty_db_url, migrations)

    assert [n for _, n, _ in await ledger(empty_db_url)] == ["0001_create_a"]
    assert not await table_exists(empty_db_url, "half_done")
    broken.write_text(ADD_COLUMN)
    assert await apply_migrations(empty_db_url, migrations) == ["0002_add_column"]


async def test_concurrent_runners_apply_each_migration_once(
    empty_db_url: str, migrations: Path
) -> None:
    # Hold the lock ourselves until both runners are queued on it, so they really overlap.
    async with await psycopg.AsyncConnection.connect(empty_db_url, autocommit=True) as holder:
        await holder.execute("SELECT pg_advisory_lock(%s)", [migrate._LOCK_KEY])
        runners = [
            asyncio.create_task(apply_migrations(empty_db_url, migrations)) for _ in range(2)
        ]
        await wait_for_lock_waiters(holder, 2)
        await holder.execute("SELECT pg_advisory_unlock(%s)", [migrate._LOCK_KEY])
        results = await asyncio.gather(*runners)

    assert sorted(results, key=len) == [[], ["0001_create_a", "0002_add_column"]]
    assert [n for _, n, _ in await ledger(empty_db_url)] == ["0001_create_a", "0002_add_column"]


async def wait_for_lock_waiters(conn: psycopg.AsyncConnection[tuple[object, ...]], n: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        row = await cursor.fetchone()
        if row is not None and row[0] == n:
            return
        assert time.monotonic() < deadline, f"runners never queued on the lock: {row}"
        await asyncio.sleep(0.01)


async def test_status_accepts_an_open_connection(empty_db_url: str, migrations: Path) -> None:
    async with await psycopg.AsyncConnection.connect(empty_db_url) as conn:
        before = await migration_status(conn, migrations)
        await conn.rollback()
        await apply_migrations(empty_db_url, migrations)
        after = await migration_status(conn, migrations)

    assert before.pending == ("0001_create_a", "0002_add_column")
    assert before.applied == ()
    assert after.up_to_date


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_short.sql": "SELECT 1;"}, "not named NNNN_description.sql"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;"}, "share version 0001"),
        ({"0001_blank.sql": "  \n"}, "is empty"),
    ],
)
def test_bad_migration_files_are_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    with pytest.raises(MigrationError, match=message):
        discover_migrations(tmp_path)


def test_migrations_dir_prefers_package_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_schema = Path(__file__).resolve().parents[2] / "schema"
    if importlib.util.find_spec("valka.schema") is not None:
        # The installed (compiled) run: the wheel's copies, identical to the repo's files.
        wheel_schema = Path(str(migrations_dir()))
        assert wheel_schema != repo_schema
        shipped = sorted(p.name for p in wheel_schema.glob("*.sql"))
        assert shipped == sorted(p.name for p in repo_schema.glob("*.sql"))
        for name in shipped:
            assert (wheel_schema / name).read_bytes() == (repo_schema / name).read_bytes()
        return
    assert Path(str(migrations_dir())) == repo_schema, "a source tree uses <repo>/schema"
    # What an installed wheel looks like: the files shipped as valka/schema/.
    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "__init__.py").write_text("")
    (tmp_path / "schema" / "0001_packaged.sql").write_text("SELECT 1;\n")
    monkeypatch.setattr(valka, "__path__", [*valka.__path__, str(tmp_path)])
    try:
        found = migrations_dir()
        names = [m.name for m in discover_migrations(found)]
    finally:
        # Finding it imported it; later tests must see the source tree again.
        monkeypatch.undo()
        sys.modules.pop("valka.schema", None)

    assert names == ["0001_packaged"]
    assert Path(str(migrations_dir())) == repo_schema


async def test_real_schema_is_applied_to_test_databases(db_url: str) -> None:
    real = [m.name for m in discover_migrations(migrations_dir())]

    status = await migration_status(db_url)

    assert status.up_to_date
    assert list(status.applied) == real
