-- Cron schedules (schema/0003_schedules.sql). Times are computed by the caller from the
-- database clock (schedule_now, or db_now on the leader's reads), never a node's own clock.

-- name: schedule_now
-- The database clock, which every fire time is measured against.
SELECT now() AS db_now;

-- name: schedule_upsert
-- Create a schedule, or replace the definition of the one with this name (same id). An
-- unchanged expression keeps its pending fire time, so re-applying a definition (at each
-- deploy, say) neither skips nor repeats a fire.
INSERT INTO schedules AS s (id, name, cron, timezone, queue_name, task_name, input, priority,
                            max_retries, timeout_seconds, metadata, missed_policy, paused,
                            next_fire_at)
VALUES (%(id)s, %(name)s, %(cron)s, %(timezone)s, %(queue_name)s, %(task_name)s,
        %(input)s::jsonb, %(priority)s, %(max_retries)s, %(timeout_seconds)s,
        %(metadata)s::jsonb, %(missed_policy)s, %(paused)s, %(next_fire_at)s)
ON CONFLICT (name) DO UPDATE
SET cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, queue_name = EXCLUDED.queue_name,
    task_name = EXCLUDED.task_name, input = EXCLUDED.input, priority = EXCLUDED.priority,
    max_retries = EXCLUDED.max_retries, timeout_seconds = EXCLUDED.timeout_seconds,
    metadata = EXCLUDED.metadata, missed_policy = EXCLUDED.missed_policy,
    paused = EXCLUDED.paused,
    next_fire_at = CASE
        WHEN s.cron = EXCLUDED.cron AND s.timezone = EXCLUDED.timezone AND NOT s.paused
             AND NOT EXCLUDED.paused AND s.next_fire_at IS NOT NULL
        THEN s.next_fire_at ELSE EXCLUDED.next_fire_at END,
    updated_at = now()
RETURNING *;

-- name: schedule_notify
-- Wake the leader's schedule runner (sent at commit, to whichever node leads).
SELECT pg_notify('valka_schedules', '');

-- name: schedule_get
-- One schedule by name, with the database clock.
SELECT s.*, now() AS db_now FROM schedules s WHERE s.name = %(name)s;

-- name: schedule_list
-- Every schedule, by name.
SELECT * FROM schedules ORDER BY name;

-- name: schedule_pause
-- Stop a schedule firing; it has no pending fire time until resumed.
UPDATE schedules SET paused = true, next_fire_at = NULL, updated_at = now()
WHERE name = %(name)s
RETURNING *;

-- name: schedule_resume
-- Resume a paused schedule at its next future fire time (no catch-up of the paused period).
UPDATE schedules SET paused = false, next_fire_at = %(next_fire_at)s, updated_at = now()
WHERE name = %(name)s AND paused
RETURNING *;

-- name: schedule_delete
-- Delete a schedule; the tasks it created stay.
DELETE FROM schedules WHERE name = %(name)s RETURNING id;

-- name: schedule_peek
-- The leader's wake-up read: the earliest pending fire time (an index probe) and the clock.
SELECT (SELECT next_fire_at FROM schedules WHERE NOT paused AND next_fire_at IS NOT NULL
        ORDER BY next_fire_at LIMIT 1) AS next_fire_at,
       now() AS db_now;

-- name: schedule_due
-- Schedules whose fire time has come, earliest first, with the clock they were read at.
SELECT s.*, now() AS db_now FROM schedules s
WHERE NOT s.paused AND s.next_fire_at <= now()
ORDER BY s.next_fire_at
LIMIT %(limit)s;

-- name: schedule_advance_many
-- After firing: move each schedule to its next fire time, only if nobody moved it first
-- (another leader, a pause, a replaced definition). Returns the ids that moved.
UPDATE schedules s
SET next_fire_at = a.next_fire_at,
    last_fire_at = coalesce(a.last_fire_at, s.last_fire_at),
    last_task_id = coalesce(a.last_task_id, s.last_task_id),
    updated_at = now()
FROM unnest(%(ids)s::uuid[], %(expected)s::timestamptz[], %(next_fire_ats)s::timestamptz[],
            %(last_fire_ats)s::timestamptz[], %(last_task_ids)s::uuid[])
     AS a(id, expected, next_fire_at, last_fire_at, last_task_id)
WHERE s.id = a.id AND s.next_fire_at = a.expected AND NOT s.paused
RETURNING s.id;

-- name: schedule_listen
-- The leader's runner hears schedule changes made on any node.
LISTEN valka_schedules;
