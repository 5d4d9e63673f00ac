-- name: dead_letter_list
-- One page of dead letters, newest first; the cursor is the last id of the previous page.
SELECT id::text AS id, task_id::text AS task_id, queue_name, task_name, input::text AS input,
       metadata::text AS metadata, error_message, run_count, created_at
FROM dead_letter_queue
WHERE (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s)
  AND (%(after_id)s::uuid IS NULL OR id < %(after_id)s::uuid)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: dead_letter_task_ids
-- Tasks of the dead letters matching explicit ids, or a queue filter when all is set.
SELECT DISTINCT task_id::text AS task_id FROM dead_letter_queue
WHERE task_id = ANY(%(ids)s::uuid[])
   OR (%(all)s AND (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s));

-- name: dead_letter_purge
-- Delete dead letters (the tasks stay DEAD_LETTER, as history) by ids or filter and age.
DELETE FROM dead_letter_queue
WHERE (task_id = ANY(%(ids)s::uuid[])
       OR (%(all)s AND (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s)))
  AND (%(older_than)s::timestamptz IS NULL OR created_at < %(older_than)s::timestamptz);
