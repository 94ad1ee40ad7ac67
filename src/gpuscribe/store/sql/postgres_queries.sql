-- Named queries of the PostgreSQL store. The SQLite file holds the same names and parameters.
-- Every update of a running task names its lease token and changes nothing when it is stale.

-- name: insert_task
INSERT INTO tasks (
    id, state, priority, options, audio_path, audio_seconds, audio_format, created_at,
    original_filename, idempotency_key, max_attempts
) VALUES (
    %(id)s, 'queued', %(priority)s, %(options)s, %(audio_path)s, %(audio_seconds)s, %(audio_format)s, %(created_at)s,
    %(original_filename)s, %(idempotency_key)s, %(max_attempts)s
)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING *;

-- name: insert_event
INSERT INTO task_events (task_id, at, state, detail) VALUES (%(task_id)s, %(at)s, %(state)s, %(detail)s);

-- name: task_by_id
SELECT * FROM tasks WHERE id = %(id)s;

-- name: task_by_key
SELECT * FROM tasks WHERE idempotency_key = %(key)s;

-- name: list_all
SELECT * FROM tasks ORDER BY created_at DESC, seq DESC LIMIT %(limit)s;

-- name: list_by_state
SELECT * FROM tasks WHERE state = %(state)s ORDER BY created_at DESC, seq DESC LIMIT %(limit)s;

-- name: queued_ready
SELECT * FROM tasks
WHERE state = 'queued' AND not_before <= %(now)s
ORDER BY created_at, seq
LIMIT %(limit)s;

-- name: queued_ready_priority
SELECT * FROM tasks
WHERE state = 'queued' AND priority = %(priority)s AND not_before <= %(now)s
ORDER BY created_at, seq
LIMIT %(limit)s;

-- name: lock_queue
SELECT pg_advisory_xact_lock(7316240541) AS locked;  -- serialises count-then-insert

-- name: count_queued
SELECT count(*) AS n FROM tasks WHERE state = 'queued';

-- name: counts_by_state
SELECT state, count(*) AS n FROM tasks GROUP BY state;

-- name: queued_by_priority
SELECT priority, count(*) AS n FROM tasks WHERE state = 'queued' GROUP BY priority;

-- name: events_of
SELECT task_id, at, state, detail FROM task_events WHERE task_id = %(id)s ORDER BY seq;

-- name: result_of
SELECT transcript FROM results WHERE task_id = %(id)s;

-- name: claim
UPDATE tasks SET
    state = 'running', node = %(node)s, gpu_index = %(gpu_index)s, gpu_uuid = %(gpu_uuid)s,
    memory_estimate_bytes = %(memory_estimate_bytes)s, started_at = %(now)s, finished_at = NULL,
    lease_token = %(token)s, lease_expires_at = %(expires)s, attempts = attempts + 1,
    wait_reason = NULL, progress = 0
WHERE id = %(id)s AND state = 'queued' AND not_before <= %(now)s
RETURNING *;

-- name: renew
UPDATE tasks SET lease_expires_at = %(expires)s
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running';

-- name: set_progress
UPDATE tasks SET progress = %(progress)s
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running';

-- name: complete
UPDATE tasks SET
    state = 'completed', progress = 1, memory_peak_bytes = %(peak)s, finished_at = %(now)s,
    error = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running';

-- name: insert_result
INSERT INTO results (task_id, transcript) VALUES (%(id)s, %(transcript)s)
ON CONFLICT (task_id) DO UPDATE SET transcript = excluded.transcript;

-- name: retry
UPDATE tasks SET
    state = 'queued', not_before = %(retry_at)s, error = %(error)s, lease_token = NULL,
    lease_expires_at = NULL, node = NULL, gpu_index = NULL, gpu_uuid = NULL, progress = 0
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running'
    AND attempts < max_attempts AND NOT cancel_requested
RETURNING *;

-- name: fail_running
UPDATE tasks SET
    state = 'failed', error = %(error)s, finished_at = %(now)s, lease_token = NULL,
    lease_expires_at = NULL
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running'
RETURNING *;

-- name: unclaim
-- A claim its node could not start: back to the queue with the attempt it counted given back.
UPDATE tasks SET
    state = 'queued', attempts = attempts - 1,
    started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END,
    wait_reason = %(reason)s, lease_token = NULL, lease_expires_at = NULL, node = NULL,
    gpu_index = NULL, gpu_uuid = NULL, progress = 0
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running' AND NOT cancel_requested
RETURNING *;

-- name: unclaim_cancelled
UPDATE tasks SET
    state = 'cancelled', attempts = attempts - 1,
    started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END,
    finished_at = %(now)s, lease_token = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running'
RETURNING *;

-- name: cancels_requested
SELECT id FROM tasks WHERE state = 'running' AND node = %(node)s AND cancel_requested;

-- name: cancel_queued
UPDATE tasks SET state = 'cancelled', finished_at = %(now)s, wait_reason = NULL
WHERE id = %(id)s AND state = 'queued';

-- name: request_cancel
UPDATE tasks SET cancel_requested = TRUE
WHERE id = %(id)s AND state = 'running' AND NOT cancel_requested;

-- name: finish_cancel
UPDATE tasks SET
    state = 'cancelled', finished_at = %(now)s, lease_token = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running';

-- name: set_wait_reason
UPDATE tasks SET wait_reason = %(reason)s WHERE id = %(id)s AND state = 'queued';

-- name: fail_queued
UPDATE tasks SET state = 'failed', error = %(error)s, finished_at = %(now)s, wait_reason = NULL
WHERE id = %(id)s AND state = 'queued';

-- name: expire_cancelled
UPDATE tasks SET
    state = 'cancelled', finished_at = %(now)s, lease_token = NULL, lease_expires_at = NULL
WHERE state = 'running' AND lease_expires_at < %(now)s AND cancel_requested
RETURNING id;

-- name: expire_exhausted
UPDATE tasks SET
    state = 'failed', finished_at = %(now)s, lease_token = NULL, lease_expires_at = NULL,
    error = 'lease expired on attempt ' || CAST(attempts AS TEXT) || ' of '
        || CAST(max_attempts AS TEXT) || ': no attempts left'
WHERE state = 'running' AND lease_expires_at < %(now)s AND attempts >= max_attempts
RETURNING id, error;

-- name: expire_requeue
UPDATE tasks SET
    state = 'queued', lease_token = NULL, lease_expires_at = NULL, node = NULL,
    gpu_index = NULL, gpu_uuid = NULL, progress = 0
WHERE state = 'running' AND lease_expires_at < %(now)s
RETURNING id;

-- name: prune
DELETE FROM tasks
WHERE state IN ('completed', 'failed', 'cancelled') AND finished_at < %(before)s
RETURNING *;

-- name: insert_sample
INSERT INTO calibration_samples (
    gpu_name, engine, model, compute_type, batch_size, beam_size, working_bytes,
    weights_bytes, context_bytes, measured_at, estimate_bytes
) VALUES (
    %(gpu_name)s, %(engine)s, %(model)s, %(compute_type)s, %(batch_size)s, %(beam_size)s, %(working_bytes)s,
    %(weights_bytes)s, %(context_bytes)s, %(measured_at)s, %(estimate_bytes)s
);

-- name: samples_of
SELECT * FROM calibration_samples
WHERE gpu_name = %(gpu_name)s AND engine = %(engine)s AND model = %(model)s
    AND compute_type = %(compute_type)s AND batch_size = %(batch_size)s AND beam_size = %(beam_size)s
ORDER BY measured_at DESC, seq DESC
LIMIT %(limit)s;

-- name: all_samples
SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY gpu_name, engine, model, compute_type, batch_size, beam_size
        ORDER BY measured_at DESC, seq DESC
    ) AS newest_rank
    FROM calibration_samples
) AS ranked
WHERE newest_rank <= %(limit)s
ORDER BY gpu_name, engine, model, compute_type, batch_size, beam_size, newest_rank;

-- name: migration_lock
-- Held until the migrating transaction ends: nodes starting at once migrate one at a time.
SELECT pg_advisory_xact_lock(1735422323) AS locked;

-- name: schema_version_table
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    applied_at DOUBLE PRECISION NOT NULL
);

-- name: schema_versions
SELECT version FROM schema_version ORDER BY version;

-- name: record_version
INSERT INTO schema_version (version, applied_at) VALUES (%(version)s, %(now)s)
ON CONFLICT (version) DO NOTHING;

-- name: node_heartbeat
INSERT INTO nodes (name, role, started_at, heartbeat_at, expires_at, devices)
VALUES (%(name)s, %(role)s, %(started_at)s, %(now)s, %(expires)s, %(devices)s)
ON CONFLICT (name) DO UPDATE SET
    role = excluded.role, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
    expires_at = excluded.expires_at, devices = excluded.devices;

-- name: live_nodes
SELECT * FROM nodes WHERE expires_at >= %(now)s ORDER BY name;

-- name: node_remove
DELETE FROM nodes WHERE name = %(name)s;

-- name: nodes_forget
DELETE FROM nodes WHERE expires_at < %(before)s;

-- name: lock_queued_window
-- A scheduling pass's window of one priority: rows another node's pass holds are skipped, so
-- nodes scheduling at the same moment take disjoint windows; the locks end with the pass.
SELECT * FROM tasks
WHERE state = 'queued' AND priority = %(priority)s AND not_before <= %(now)s
ORDER BY created_at, seq
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;
