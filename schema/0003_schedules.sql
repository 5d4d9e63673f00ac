-- Cron schedules: each fire time enqueues one task built from the schedule's template.
-- The scheduler leader fires a schedule when next_fire_at has passed, inserting the task with
-- the idempotency key `schedule:<id>:<fire time ms>` and then moving next_fire_at on with a
-- compare-and-set, so a leader that dies in between cannot lead to a second task.
CREATE TABLE schedules (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    cron             text NOT NULL,
    timezone         text NOT NULL DEFAULT 'UTC',
    -- The task template. NULL retries or timeout: the server's default at each fire.
    queue_name       text NOT NULL,
    task_name        text NOT NULL,
    input            jsonb,
    priority         integer NOT NULL DEFAULT 0,
    max_retries      integer CHECK (max_retries >= 0),
    timeout_seconds  integer CHECK (timeout_seconds > 0),
    metadata         jsonb NOT NULL DEFAULT '{}',
    -- What a fire time that passed with no leader running turns into.
    missed_policy    text NOT NULL DEFAULT 'RUN_ONCE'
                     CHECK (missed_policy IN ('SKIP', 'RUN_ONCE')),
    paused           boolean NOT NULL DEFAULT false,
    -- NULL while paused, or when the expression has no fire time left.
    next_fire_at     timestamptz,
    last_fire_at     timestamptz,
    last_task_id     uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The leader's only regular reads: the earliest fire time, and the schedules now due.
CREATE INDEX schedules_due_idx ON schedules (next_fire_at) WHERE NOT paused;
