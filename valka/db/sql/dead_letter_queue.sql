-- name: dead_letter_list
-- One page of dead letters, newest first; the cursor is the last id of the previous page.
SELECT id::text AS id, task_id::text AS task_id, queue_name, task_name, input::text AS input,
       metadata::text AS metadata, error_message, run_count, created_at
FROM dead_letter_queue
WHERE (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s)
  AND (%(after_id)s::uuid IS NULL OR id < %(after_id)s::uuid)
ORDER BY id DESC
LIMIT %(limit)s;
