-- Queries of the migration runner (valka/db/migrate.py) on valka_schema_migrations.
-- %(lock_key)s is one fixed bigint; advisory locks are per database, so servers sharing
-- a database serialize their migrations and servers on other databases do not wait.

-- name: migration_lock_try
-- Take the migration lock if it is free; returns false when another session holds it.
SELECT pg_try_advisory_lock(%(lock_key)s);

-- name: migration_lock
-- Wait for the migration lock (held for the session, across the per-migration transactions).
SELECT pg_advisory_lock(%(lock_key)s);

-- name: migration_unlock
-- Release the migration lock before the connection closes.
SELECT pg_advisory_unlock(%(lock_key)s);

-- name: migration_table_create
-- Create the ledger of applied migrations if this database has none yet.
CREATE TABLE IF NOT EXISTS valka_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migration_table_exists
-- True when the ledger exists (read-only status checks must not create it).
SELECT to_regclass('valka_schema_migrations') IS NOT NULL;

-- name: migration_list
-- Every applied migration, oldest first.
SELECT version, name, checksum FROM valka_schema_migrations ORDER BY version;

-- name: migration_record
-- Record one applied migration, in the same transaction as the migration itself.
INSERT INTO valka_schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);
