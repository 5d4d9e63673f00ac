-- name: task_insert_many
-- Insert tasks from parallel arrays; a duplicate idempotency key inserts nothing.
-- Hot-path rows arrive DISPATCHING, bound to a worker, with a short dispatch lease.
-- delay_ms is timed by the database clock, never the client's.
INSERT INTO tasks (id, queue_name, task_name, partition_id, status, priority, input, metadata,
                   max_retries, attempt, timeout_seconds, idempotency_key, worker_id, node_id,
                   lease_expires_at, scheduled_at)
SELECT r.id, r.queue_name, r.task_name, r.partition_id, r.status, r.priority, r.input,
       r.metadata, r.max_retries, CASE WHEN r.status = 'DISPATCHING' THEN 1 ELSE 0 END,
       r.timeout_seconds, r.idempotency_key, r.worker_id,
       CASE WHEN r.status = 'DISPATCHING' THEN %(node_id)s END,
       CASE WHEN r.status = 'DISPATCHING'
            THEN now() + %(dispatch_lease_s)s * interval '1 second' END,
       CASE WHEN r.scheduled_at IS NOT NULL THEN r.scheduled_at
            ELSE now() + r.delay_ms * interval '1 millisecond' END
FROM unnest(%(ids)s::uuid[], %(queue_names)s::text[], %(task_names)s::text[],
            %(partition_ids)s::int[], %(statuses)s::task_status[], %(priorities)s::int[],
            %(inputs)s::jsonb[], %(metadatas)s::jsonb[], %(max_retries)s::int[],
            %(timeouts)s::int[], %(idempotency_keys)s::text[], %(worker_ids)s::uuid[],
            %(scheduled_ats)s::timestamptz[], %(delays_ms)s::bigint[])
     AS r(id, queue_name, task_name, partition_id, status, priority, input, metadata,
          max_retries, timeout_seconds, idempotency_key, worker_id, scheduled_at, delay_ms)
ON CONFLICT (queue_name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, attempt, created_at, scheduled_at, updated_at;

-- name: task_get_by_idempotency_keys
-- The live tasks holding the given (queue, idempotency key) pairs.
SELECT t.* FROM tasks t
JOIN unnest(%(queue_names)s::text[], %(idempotency_keys)s::text[]) AS k(queue_name, key)
  ON t.queue_name = k.queue_name AND t.idempotency_key = k.key;

-- name: task_get
-- One task by id.
SELECT * FROM tasks WHERE id = %(id)s;

-- name: task_get_many
-- Tasks by id; unknown ids are left out.
SELECT * FROM tasks WHERE id = ANY(%(ids)s::uuid[]);

-- name: task_list
-- One page of tasks, newest first; the cursor is the last id of the previous page.
SELECT * FROM tasks
WHERE (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s)
  AND (%(status)s::task_status IS NULL OR status = %(status)s::task_status)
  AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s)
  AND (%(after_id)s::uuid IS NULL OR id < %(after_id)s::uuid)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: task_claim_pending
-- The cold path: claim the next ready tasks of one partition (priority, then age). Never
-- run prepared: a plan cached while the table was empty would scan it sequentially forever.
UPDATE tasks t
SET status = 'DISPATCHING', attempt = t.attempt + 1, node_id = %(node_id)s, worker_id = NULL,
    lease_expires_at = now() + %(dispatch_lease_s)s * interval '1 second', updated_at = now()
FROM (SELECT id FROM tasks
      WHERE queue_name = %(queue_name)s AND partition_id = %(partition_id)s
        AND status = 'PENDING' AND scheduled_at <= now()
      ORDER BY priority DESC, id
      LIMIT %(limit)s
      FOR UPDATE SKIP LOCKED) c
WHERE t.id = c.id
RETURNING t.id, t.attempt, t.priority, t.task_name, t.input::text AS input,
          t.metadata::text AS metadata, t.timeout_seconds, t.run_count, t.max_retries,
          t.created_at;

-- name: task_pending_queues
-- Queues with ready work, by a loose index scan of the ready index (no full DISTINCT scan).
WITH RECURSIVE q AS (
    (SELECT queue_name FROM tasks WHERE status = 'PENDING' ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT t.queue_name FROM tasks t
            WHERE t.status = 'PENDING' AND t.queue_name > q.queue_name
            ORDER BY t.queue_name LIMIT 1)
    FROM q WHERE q.queue_name IS NOT NULL
)
SELECT queue_name FROM q WHERE queue_name IS NOT NULL;

-- name: task_release_dispatching_many
-- Assignments never acknowledged go back to PENDING at once; the attempt is not charged.
WITH upd AS (
    UPDATE tasks t
    SET status = 'PENDING', worker_id = NULL, node_id = NULL, lease_expires_at = NULL,
        updated_at = now()
    FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS r(id, attempt)
    WHERE t.id = r.id AND t.attempt = r.attempt AND t.status = 'DISPATCHING'
    RETURNING t.id, t.queue_name
)
SELECT u.id, u.queue_name, pg_notify('valka_ready', u.queue_name) FROM upd u;

-- name: task_mark_running_many
-- Acknowledged assignments start running: one run row each, a lease, one charged execution.
WITH upd AS (
    UPDATE tasks t
    SET status = 'RUNNING', run_count = t.run_count + 1, worker_id = %(worker_id)s,
        run_id = r.run_id, node_id = %(node_id)s, started_at = now(),
        lease_expires_at = now() + %(lease_s)s * interval '1 second', updated_at = now()
    FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(run_ids)s::uuid[])
         AS r(id, attempt, run_id)
    WHERE t.id = r.id AND t.attempt = r.attempt AND t.status = 'DISPATCHING'
    RETURNING t.id, t.attempt, t.run_id, t.worker_id, t.node_id
), runs AS (
    INSERT INTO task_runs (id, task_id, attempt, worker_id, node_id, last_heartbeat_at)
    SELECT run_id, id, attempt, worker_id, node_id, now() FROM upd
)
-- Signals sent while the task waited are delivered with its start (one row per signal).
SELECT upd.id, upd.attempt, s.id::text AS signal_id, s.name AS signal_name,
       s.payload::text AS signal_payload
FROM upd LEFT JOIN task_signals s ON s.task_id = upd.id AND s.status = 'PENDING';

-- name: task_complete_many
-- Successful results; only the worker holding the running attempt can complete it.
WITH upd AS (
    UPDATE tasks t
    SET status = 'COMPLETED', output = r.output, error_message = NULL, completed_at = now(),
        lease_expires_at = NULL, updated_at = now()
    FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(outputs)s::jsonb[])
         AS r(id, attempt, output)
    WHERE t.id = r.id AND t.attempt = r.attempt AND t.status = 'RUNNING'
      AND t.worker_id = %(worker_id)s
    RETURNING t.id, t.attempt, t.run_id, r.output
), runs AS (
    UPDATE task_runs tr SET status = 'COMPLETED', output = upd.output, finished_at = now()
    FROM upd WHERE tr.id = upd.run_id
)
SELECT id, attempt FROM upd;

-- name: task_fail_many
-- Failed results: non-retryable -> FAILED; retryable with executions left -> RETRY after a
-- full-jitter backoff (or the handler's own delay); exhausted -> DEAD_LETTER with a copy in
-- dead_letter_queue.
WITH r AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(errors)s::text[],
                         %(retryables)s::bool[], %(delays_ms)s::bigint[])
         AS r(id, attempt, error, retryable, delay_ms)
), upd AS (
    UPDATE tasks t
    SET status = CASE WHEN NOT r.retryable THEN 'FAILED'::task_status
                      WHEN t.run_count > t.max_retries THEN 'DEAD_LETTER'::task_status
                      ELSE 'RETRY'::task_status END,
        error_message = r.error,
        scheduled_at = CASE
            WHEN r.delay_ms > 0 THEN now() + r.delay_ms * interval '1 millisecond'
            ELSE now() + random() * least(%(backoff_cap_s)s,
                     %(backoff_base_s)s * power(2, greatest(t.run_count - 1, 0)))
                     * interval '1 second' END,
        completed_at = CASE WHEN NOT r.retryable OR t.run_count > t.max_retries
                            THEN now() END,
        lease_expires_at = NULL, updated_at = now()
    FROM r
    WHERE t.id = r.id AND t.attempt = r.attempt AND t.status = 'RUNNING'
      AND t.worker_id = %(worker_id)s
    RETURNING t.id, t.attempt, t.run_id, t.status, t.queue_name, t.task_name, t.input,
              t.metadata, t.error_message, t.run_count
), runs AS (
    UPDATE task_runs tr SET status = 'FAILED', error_message = upd.error_message,
                            finished_at = now()
    FROM upd WHERE tr.id = upd.run_id
), dlq AS (
    INSERT INTO dead_letter_queue (id, task_id, queue_name, task_name, input, metadata,
                                   error_message, run_count)
    SELECT gen_random_uuid(), id, queue_name, task_name, input, metadata, error_message,
           run_count
    FROM upd WHERE status = 'DEAD_LETTER'
)
SELECT id, attempt, status::text AS status FROM upd;

-- name: task_extend_leases
-- Heartbeats: extend the lease of each running attempt this worker still holds.
UPDATE tasks t
SET lease_expires_at = now() + %(lease_s)s * interval '1 second'
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS r(id, attempt)
WHERE t.id = r.id AND t.attempt = r.attempt AND t.status = 'RUNNING'
  AND t.worker_id = %(worker_id)s
RETURNING t.id, t.attempt;

-- name: task_cancel
-- Cancel any non-terminal task; returns the status it had, so a holder can be told.
UPDATE tasks t
SET status = 'CANCELLED', error_message = %(reason)s, completed_at = now(),
    lease_expires_at = NULL, updated_at = now()
FROM (SELECT id, status, worker_id FROM tasks WHERE id = %(id)s FOR UPDATE) old
WHERE t.id = old.id AND t.status IN ('PENDING', 'RETRY', 'DISPATCHING', 'RUNNING')
RETURNING t.*, old.status::text AS previous_status;

-- name: task_run_cancel
-- The running attempt of a cancelled task ends as CANCELLED.
UPDATE task_runs SET status = 'CANCELLED', finished_at = now()
WHERE task_id = %(task_id)s AND attempt = %(attempt)s AND status = 'RUNNING';

-- name: task_reap_expired_dispatching
-- Dispatch leases that ran out (the node holding them died): back to PENDING, not charged.
WITH upd AS (
    UPDATE tasks t
    SET status = 'PENDING', worker_id = NULL, node_id = NULL, lease_expires_at = NULL,
        updated_at = now()
    FROM (SELECT id FROM tasks
          WHERE status = 'DISPATCHING' AND lease_expires_at < now()
          ORDER BY lease_expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) e
    WHERE t.id = e.id
    RETURNING t.id, t.queue_name
)
SELECT u.id, u.queue_name, pg_notify('valka_ready', u.queue_name) FROM upd u;

-- name: task_reap_expired_running
-- Running leases that ran out (no heartbeat): RETRY, or DEAD_LETTER when exhausted.
WITH upd AS (
    UPDATE tasks t
    SET status = CASE WHEN t.run_count > t.max_retries THEN 'DEAD_LETTER'::task_status
                      ELSE 'RETRY'::task_status END,
        error_message = 'lease expired: no heartbeat from the worker',
        scheduled_at = now() + random() * least(%(backoff_cap_s)s,
                       %(backoff_base_s)s * power(2, greatest(t.run_count - 1, 0)))
                       * interval '1 second',
        completed_at = CASE WHEN t.run_count > t.max_retries THEN now() END,
        lease_expires_at = NULL, updated_at = now()
    FROM (SELECT id FROM tasks
          WHERE status = 'RUNNING' AND lease_expires_at < now()
          ORDER BY lease_expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) e
    WHERE t.id = e.id
    RETURNING t.id, t.attempt, t.run_id, t.status, t.queue_name, t.task_name, t.input,
              t.metadata, t.error_message, t.run_count
), runs AS (
    UPDATE task_runs tr SET status = 'FAILED', error_message = upd.error_message,
                            finished_at = now()
    FROM upd WHERE tr.id = upd.run_id
), dlq AS (
    INSERT INTO dead_letter_queue (id, task_id, queue_name, task_name, input, metadata,
                                   error_message, run_count)
    SELECT gen_random_uuid(), id, queue_name, task_name, input, metadata, error_message,
           run_count
    FROM upd WHERE status = 'DEAD_LETTER'
)
SELECT id, attempt, status::text AS status FROM upd;

-- name: task_promote_due
-- Retries whose backoff has passed become ready again.
WITH upd AS (
    UPDATE tasks t SET status = 'PENDING', updated_at = now()
    FROM (SELECT id FROM tasks
          WHERE status = 'RETRY' AND scheduled_at <= now()
          ORDER BY scheduled_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) d
    WHERE t.id = d.id
    RETURNING t.id, t.queue_name
)
SELECT u.id, u.queue_name, pg_notify('valka_ready', u.queue_name) FROM upd u;

-- name: task_retry
-- An operator's retry: FAILED or DEAD_LETTER -> PENDING with a fresh set of retries; the
-- attempt (the fencing token) keeps counting. Its dead-letter copy goes.
WITH upd AS (
    UPDATE tasks t
    SET status = 'PENDING', run_count = 0, error_message = NULL, output = NULL,
        completed_at = NULL, started_at = NULL, scheduled_at = now(), worker_id = NULL,
        node_id = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE t.id = ANY(%(ids)s::uuid[]) AND t.status IN ('FAILED', 'DEAD_LETTER')
    RETURNING t.id, t.queue_name
), gone AS (
    DELETE FROM dead_letter_queue d USING upd WHERE d.task_id = upd.id
)
SELECT u.id::text AS id, pg_notify('valka_ready', u.queue_name) FROM upd u;
