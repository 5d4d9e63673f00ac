"""Schema migrations: numbered SQL files applied in order, once, under a lock.

Migrations are `NNNN_description.sql` files. Each is applied in its own transaction together
with its row in `valka_schema_migrations` (version, name, sha256 of the file bytes), so a
migration is either fully applied and recorded or not at all. A migration therefore cannot
use statements that refuse to run in a transaction (`CREATE INDEX CONCURRENTLY`, `VACUUM`).

Servers starting together serialize on a session-level advisory lock held on one dedicated
connection; the second waits, then finds nothing left to do. Before applying anything the
runner checks the history: an applied migration whose file changed, a recorded version with
no file (a server older than its database), or a new file numbered below an applied one are
refused, because running on a schema that differs from what the code expects corrupts data
more quietly than refusing to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

import psycopg
from psycopg.rows import TupleRow

from valka.core.errors import DatabaseError, MigrationError
from valka.db.pool import connect_dedicated
from valka.db.sqlfile import load_queries

__all__ = [
    "Migration",
    "MigrationStatus",
    "apply_migrations",
    "discover_migrations",
    "migration_status",
    "migrations_dir",
    "pending_migrations",
]

_log = logging.getLogger(__name__)

_QUERIES: Final = load_queries("valka.db", "sql/schema_migrations.sql")

# sha256("valka.schema_migrations")[:8] as a signed bigint: fixed forever, because servers of
# different versions must agree on it.
_LOCK_KEY: Final = -2963079468683290031

_FILE_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")

Connectable = str | psycopg.AsyncConnection[TupleRow]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # the file name without `.sql`, e.g. "0001_initial"
    checksum: str  # sha256 hex of the file bytes
    sql: str


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    applied: tuple[str, ...]
    pending: tuple[str, ...]
    problems: tuple[str, ...]  # edited, missing or out-of-order migrations

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.problems


def migrations_dir() -> Traversable:
    """Where the migrations are: package data in a wheel, `<repo>/schema` in a source tree."""
    try:
        spec = importlib.util.find_spec("valka.schema")
    except ModuleNotFoundError:
        spec = None
    if spec is not None:
        return resources.files("valka.schema")
    repo_schema = Path(__file__).resolve().parents[2] / "schema"
    if repo_schema.is_dir():
        return repo_schema
    raise MigrationError(
        f"no migrations found: the package has no valka.schema data and {repo_schema}"
        " does not exist"
    )


def discover_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Read and validate the migration files of `directory`, ordered by version."""
    folder = migrations_dir() if directory is None else directory
    by_version: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name} is not named NNNN_description.sql")
        version = int(match.group(1))
        data = entry.read_bytes()
        try:
            sql = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"migration file {entry.name} is not UTF-8: {exc}") from exc
        if not sql.strip():
            raise MigrationError(f"migration file {entry.name} is empty")
        migration = Migration(
            version=version,
            name=entry.name.removesuffix(".sql"),
            checksum=hashlib.sha256(data).hexdigest(),
            sql=sql,
        )
        other = by_version.get(version)
        if other is not None:
            raise MigrationError(
                f"migration files {other.name}.sql and {entry.name} share version {version:04d}"
            )
        by_version[version] = migration
    return [by_version[v] for v in sorted(by_version)]


async def apply_migrations(conninfo: str, directory: Traversable | None = None) -> list[str]:
    """Apply every pending migration; return the names applied, oldest first.

    Raises MigrationError, without applying anything, if the recorded history does not
    match the files, and when a migration fails (that migration is rolled back and not
    recorded; earlier ones in the same run stay applied).
    """
    migrations = discover_migrations(directory)
    conn = await connect_dedicated(conninfo, name="migrate")
    try:
        await _lock(conn)
        await conn.execute(_QUERIES["migration_table_create"])
        applied = await _applied(conn)
        pending, problems = _compare(applied, migrations)
        if problems:
            raise MigrationError(_refusal(problems))
        done: list[str] = []
        for migration in pending:
            await _apply_one(conn, migration)
            done.append(migration.name)
        await conn.execute(_QUERIES["migration_unlock"], {"lock_key": _LOCK_KEY})
        return done
    except psycopg.Error as exc:
        raise DatabaseError(f"could not migrate the database: {exc}") from exc
    finally:
        # Closing the session also releases the lock if we left early.
        await conn.close()


async def pending_migrations(
    conninfo: Connectable, directory: Traversable | None = None
) -> list[str]:
    """Names of the migrations not yet applied; MigrationError if the history is broken."""
    status = await migration_status(conninfo, directory)
    if status.problems:
        raise MigrationError(_refusal(list(status.problems)))
    return list(status.pending)


async def migration_status(
    conninfo: Connectable, directory: Traversable | None = None
) -> MigrationStatus:
    """Compare the database with the migration files without changing anything.

    Accepts a connection string or an open connection (a pooled one, for health checks).
    """
    migrations = discover_migrations(directory)
    try:
        async with _connection(conninfo) as conn:
            cursor = await conn.execute(_QUERIES["migration_table_exists"])
            row = await cursor.fetchone()
            exists = bool(row and row[0])
            applied = await _applied(conn) if exists else []
    except psycopg.Error as exc:
        raise DatabaseError(f"could not read the migration history: {exc}") from exc
    pending, problems = _compare(applied, migrations)
    return MigrationStatus(
        applied=tuple(name for _, name, _ in applied),
        pending=tuple(m.name for m in pending),
        problems=tuple(problems),
    )


async def _lock(conn: psycopg.AsyncConnection[TupleRow]) -> None:
    cursor = await conn.execute(_QUERIES["migration_lock_try"], {"lock_key": _LOCK_KEY})
    row = await cursor.fetchone()
    if row is not None and row[0]:
        return
    _log.info("another server is migrating this database; waiting for it to finish")
    await conn.execute(_QUERIES["migration_lock"], {"lock_key": _LOCK_KEY})


async def _applied(conn: psycopg.AsyncConnection[TupleRow]) -> list[tuple[int, str, str]]:
    cursor = await conn.execute(_QUERIES["migration_list"])
    return [(int(v), str(n), str(c)) for v, n, c in await cursor.fetchall()]


def _compare(
    applied: list[tuple[int, str, str]], migrations: list[Migration]
) -> tuple[list[Migration], list[str]]:
    by_version = {m.version: m for m in migrations}
    problems: list[str] = []
    for version, name, checksum in applied:
        migration = by_version.get(version)
        if migration is None:
            problems.append(
                f"migration {name} is applied to the database but {name}.sql is missing"
                " (is this server older than the database schema?)"
            )
        elif migration.name != name:
            problems.append(
                f"migration {version:04d} was applied as {name} but the file is now"
                f" {migration.name}.sql; applied migrations must not be renamed"
            )
        elif migration.checksum != checksum:
            problems.append(
                f"applied migration {migration.name}.sql was edited after it was applied"
                f" (recorded sha256 {checksum[:12]}, file now {migration.checksum[:12]});"
                " restore the original file and put the change in a new migration"
            )
    applied_versions = {version for version, _, _ in applied}
    pending = [m for m in migrations if m.version not in applied_versions]
    if pending and applied_versions:
        latest = max(applied_versions)
        for migration in pending:
            if migration.version < latest:
                problems.append(
                    f"migration {migration.name}.sql is numbered below the already applied"
                    f" version {latest:04d}; a new migration needs a higher number"
                )
    return pending, problems


async def _apply_one(conn: psycopg.AsyncConnection[TupleRow], migration: Migration) -> None:
    _log.info("applying migration %s", migration.name)
    try:
        async with conn.transaction():
            # Migration files ship with the package; nothing in them comes from input.
            await conn.execute(migration.sql)
            await conn.execute(
                _QUERIES["migration_record"],
                {
                    "version": migration.version,
                    "name": migration.name,
                    "checksum": migration.checksum,
                },
            )
    except psycopg.Error as exc:
        raise MigrationError(
            f"migration {migration.name}.sql failed and was rolled back: {exc}"
        ) from exc


def _refusal(problems: list[str]) -> str:
    lines = "\n".join(f"  - {p}" for p in problems)
    return (
        "refusing to start: the database schema history does not match the migration"
        f" files:\n{lines}"
    )


@contextlib.asynccontextmanager
async def _connection(
    conninfo: Connectable,
) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
    if not isinstance(conninfo, str):
        yield conninfo
        return
    conn = await connect_dedicated(conninfo, name="migrate-status")
    try:
        yield conn
    finally:
        await conn.close()
