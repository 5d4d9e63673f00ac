-- name: leader_attempt_elect
-- Try to become the scheduler leader: a session advisory lock, held while the session lives.
SELECT pg_try_advisory_lock(%(key)s) AS elected;

-- name: leader_ping
-- Prove the leader's session is still alive (a broken one loses the lock with it).
SELECT 1;

-- name: leader_current
-- The application name of the session holding the leader lock, if any.
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = (%(key)s::bigint >> 32)::oid AND l.objid = (%(key)s::bigint & 4294967295)::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
