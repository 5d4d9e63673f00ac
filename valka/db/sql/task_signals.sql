-- name: signal_insert
-- Store a signal for a task that exists and is not finished.
INSERT INTO task_signals (id, task_id, name, payload)
SELECT %(id)s, t.id, %(name)s, %(payload)s::jsonb FROM tasks t
WHERE t.id = %(task_id)s AND t.status IN ('PENDING', 'RETRY', 'DISPATCHING', 'RUNNING')
RETURNING id::text AS id, task_id::text AS task_id, name, payload::text AS payload, status,
          created_at, delivered_at, acknowledged_at;

-- name: signal_mark_delivered
-- Signals handed to the worker holding their task.
UPDATE task_signals SET status = 'DELIVERED', delivered_at = now()
WHERE id = ANY(%(ids)s::uuid[]) AND status = 'PENDING';

-- name: signal_acknowledge
-- Signals the worker confirmed, only for tasks held by that worker.
UPDATE task_signals s SET status = 'ACKNOWLEDGED', acknowledged_at = now()
FROM tasks t
WHERE s.id = ANY(%(ids)s::uuid[]) AND s.status <> 'ACKNOWLEDGED' AND t.id = s.task_id
  AND t.worker_id = %(worker_id)s;

-- name: signal_list
-- The signals of one task, oldest first.
SELECT id::text AS id, task_id::text AS task_id, name, payload::text AS payload, status,
       created_at, delivered_at, acknowledged_at
FROM task_signals WHERE task_id = %(task_id)s ORDER BY created_at, id;
