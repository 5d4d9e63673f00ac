-- name: task_run_list
-- The runs of one task, first attempt first.
SELECT id::text AS id, task_id::text AS task_id, attempt, worker_id::text AS worker_id,
       node_id, status::text AS status, output::text AS output, error_message, started_at,
       finished_at, last_heartbeat_at
FROM task_runs WHERE task_id = %(task_id)s ORDER BY attempt;
