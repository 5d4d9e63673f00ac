-- Valka's first schema: tasks and everything that hangs off them.
-- Statuses are a PostgreSQL enum: 4 bytes a row, readable in psql, and a typo is an error.
CREATE TYPE task_status AS ENUM (
    'PENDING', 'DISPATCHING', 'RUNNING', 'COMPLETED', 'FAILED',
    'RETRY', 'DEAD_LETTER', 'CANCELLED'
);

CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    queue_name       text NOT NULL,
    task_name        text NOT NULL,
    partition_id     integer NOT NULL,
    status           task_status NOT NULL DEFAULT 'PENDING',
    priority         integer NOT NULL DEFAULT 0,
    input            jsonb,
    metadata         jsonb NOT NULL DEFAULT '{}',
    output           jsonb,
    error_message    text,
    max_retries      integer NOT NULL CHECK (max_retries >= 0),
    -- Fencing token: bumped by every dispatch, checked by every transition.
    attempt          integer NOT NULL DEFAULT 0,
    -- Executions charged against max_retries; an unacknowledged dispatch is not charged.
    run_count        integer NOT NULL DEFAULT 0,
    timeout_seconds  integer NOT NULL CHECK (timeout_seconds > 0),
    idempotency_key  text,
    worker_id        uuid,
    run_id           uuid,
    node_id          text,
    lease_expires_at timestamptz,
    scheduled_at     timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz
) WITH (fillfactor = 80);

-- Frequent status updates stay HOT and dead rows are cleaned early.
ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

-- The cold path: next ready tasks of one partition, by priority then age (UUIDv7 sorts by time).
CREATE INDEX tasks_ready_idx ON tasks (queue_name, partition_id, priority DESC, id)
    WHERE status = 'PENDING';
-- The reaper: leases that can expire.
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at)
    WHERE status IN ('DISPATCHING', 'RUNNING');
-- Retries and delayed tasks that come due.
CREATE INDEX tasks_retry_due_idx ON tasks (scheduled_at) WHERE status = 'RETRY';
-- Idempotency is per queue.
CREATE UNIQUE INDEX tasks_idempotency_idx ON tasks (queue_name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Listing by queue and status, newest first, with cursor pagination on id.
CREATE INDEX tasks_queue_status_idx ON tasks (queue_name, status, id);

CREATE TABLE task_runs (
    id               uuid PRIMARY KEY,
    task_id          uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    worker_id        uuid,
    node_id          text,
    status           task_status NOT NULL DEFAULT 'RUNNING',
    output           jsonb,
    error_message    text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    last_heartbeat_at timestamptz,
    UNIQUE (task_id, attempt)
);

CREATE TABLE task_logs (
    id           bigserial PRIMARY KEY,
    task_run_id  uuid NOT NULL,
    task_id      uuid NOT NULL,
    ts           timestamptz NOT NULL,
    level        smallint NOT NULL,
    message      text NOT NULL,
    metadata     jsonb
);
CREATE INDEX task_logs_run_idx ON task_logs (task_run_id, id);

CREATE TABLE dead_letter_queue (
    id             uuid PRIMARY KEY,
    task_id        uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    queue_name     text NOT NULL,
    task_name      text NOT NULL,
    input          jsonb,
    metadata       jsonb NOT NULL DEFAULT '{}',
    error_message  text,
    run_count      integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_queue_queue_idx ON dead_letter_queue (queue_name, id);

CREATE TABLE workers (
    id               uuid PRIMARY KEY,
    name             text NOT NULL,
    node_id          text NOT NULL,
    queues           text[] NOT NULL,
    concurrency      integer NOT NULL,
    labels           jsonb NOT NULL DEFAULT '{}',
    sdk_version      text NOT NULL DEFAULT '',
    status           text NOT NULL DEFAULT 'CONNECTED',
    connected_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    disconnected_at  timestamptz
);

CREATE TABLE task_signals (
    id               uuid PRIMARY KEY,
    task_id          uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    name             text NOT NULL,
    payload          jsonb,
    status           text NOT NULL DEFAULT 'PENDING',
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    acknowledged_at  timestamptz
);
CREATE INDEX task_signals_open_idx ON task_signals (task_id) WHERE status <> 'ACKNOWLEDGED';

-- Wake the readers of a queue when ready work is inserted, whoever wrote it (this node,
-- another node, plain SQL). One notification per queue per statement; the payload is the
-- queue name only, far below NOTIFY's 8000-byte limit whatever the task carries. Updates
-- that make a task ready again notify from their own statements, so the hot UPDATEs
-- (acks, results, heartbeats) pay for no trigger.
CREATE FUNCTION valka_notify_ready_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE q text;
BEGIN
    FOR q IN SELECT DISTINCT queue_name FROM new_rows WHERE status = 'PENDING' LOOP
        PERFORM pg_notify('valka_ready', q);
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_notify_ready_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION valka_notify_ready_insert();
