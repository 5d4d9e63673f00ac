-- Session setup and database administration (valka/db/pool.py, valka/db/embedded.py).
-- Queries with {name} placeholders are psycopg.sql templates: identifiers are composed
-- with sql.Identifier, never pasted in as text.

-- name: session_configure
-- Session settings for every Valka connection: UTC timestamps and bounded stuck states.
SELECT
    set_config('TimeZone', 'UTC', false),
    set_config('statement_timeout', %(statement_timeout)s, false),
    set_config('idle_in_transaction_session_timeout', %(idle_in_transaction_timeout)s, false);

-- name: database_exists
-- True when a database of this name exists on the server.
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(name)s);

-- name: database_create
-- Create an empty database (template: {name}).
CREATE DATABASE {name};

-- name: database_create_from_template
-- Clone a database (template: {name}, {template}); the template must have no open sessions.
CREATE DATABASE {name} TEMPLATE {template};

-- name: database_drop
-- Drop a database, closing its sessions first (template: {name}).
DROP DATABASE IF EXISTS {name} WITH (FORCE);
