-- name: worker_connect
-- A worker session began: create or refresh the worker's row.
INSERT INTO workers (id, name, node_id, queues, concurrency, labels, sdk_version, status,
                     connected_at, last_seen_at, disconnected_at)
VALUES (%(id)s, %(name)s, %(node_id)s, %(queues)s, %(concurrency)s, %(labels)s::jsonb,
        %(sdk_version)s, 'CONNECTED', now(), now(), NULL)
ON CONFLICT (id) DO UPDATE
SET name = EXCLUDED.name, node_id = EXCLUDED.node_id, queues = EXCLUDED.queues,
    concurrency = EXCLUDED.concurrency, labels = EXCLUDED.labels,
    sdk_version = EXCLUDED.sdk_version, status = 'CONNECTED', connected_at = now(),
    last_seen_at = now(), disconnected_at = NULL
RETURNING connected_at;

-- name: worker_disconnect
-- A worker session ended (only if no newer session of the same worker took over).
UPDATE workers SET status = 'DISCONNECTED', disconnected_at = now(), last_seen_at = now()
WHERE id = %(id)s AND node_id = %(node_id)s AND connected_at <= %(connected_at)s;

-- name: worker_disconnect_node
-- A node starts: its workers from an earlier life are gone.
UPDATE workers SET status = 'DISCONNECTED', disconnected_at = now()
WHERE node_id = %(node_id)s AND status <> 'DISCONNECTED';

-- name: worker_touch
-- A worker's heartbeat: it is still there.
UPDATE workers SET last_seen_at = now() WHERE id = %(id)s AND status = 'CONNECTED';

-- name: worker_list
-- Workers, connected first, newest first. A CONNECTED row not seen for stale_s seconds
-- belongs to a node that died without closing it: it is shown as LOST.
SELECT * FROM (
    SELECT id::text AS id, name, node_id, queues, concurrency, labels::text AS labels,
           sdk_version, connected_at, last_seen_at,
           CASE WHEN status = 'CONNECTED'
                     AND last_seen_at < now() - %(stale_s)s * interval '1 second'
                THEN 'LOST' ELSE status END AS status
    FROM workers) w
WHERE %(include_disconnected)s OR status = 'CONNECTED'
ORDER BY status, connected_at DESC
LIMIT %(limit)s;
