-- name: queue_settings_all
-- Every queue's controls, loaded at start and after a change anywhere in the cluster.
SELECT queue_name, paused, max_concurrency, rate_per_second FROM queue_settings;

-- name: queue_settings_get
-- One queue's controls.
SELECT queue_name, paused, max_concurrency, rate_per_second FROM queue_settings
WHERE queue_name = %(queue_name)s;

-- name: queue_settings_upsert
-- Change a queue's controls (NULL leaves a value as it is) and tell every node.
WITH up AS (
    INSERT INTO queue_settings AS s (queue_name, paused, max_concurrency, rate_per_second)
    VALUES (%(queue_name)s, coalesce(%(paused)s, false), coalesce(%(max_concurrency)s, 0),
            coalesce(%(rate_per_second)s, 0))
    ON CONFLICT (queue_name) DO UPDATE
    SET paused = coalesce(%(paused)s, s.paused),
        max_concurrency = coalesce(%(max_concurrency)s, s.max_concurrency),
        rate_per_second = coalesce(%(rate_per_second)s, s.rate_per_second),
        updated_at = now()
    RETURNING queue_name, paused, max_concurrency, rate_per_second
)
SELECT up.*, pg_notify('valka_queue_settings', up.queue_name) FROM up;

-- name: queue_counts
-- Task counts per queue and status (an index-only scan of tasks_queue_status_idx).
SELECT queue_name, status::text AS status, count(*) AS n FROM tasks GROUP BY 1, 2;
