-- Named queries of the SQLite store. The PostgreSQL file holds the same names and parameters.
-- Every update of a running task names its lease token and changes nothing when it is stale.

-- name: insert_task
INSERT INTO tasks (
    id, state, priority, options, audio_path, audio_seconds, audio_format, created_at,
    original_filename, idempotency_key, max_attempts
) VALUES (
    :id, 'queued', :priority, :options, :audio_path, :audio_seconds, :audio_format, :created_at,
    :original_filename, :idempotency_key, :max_attempts
)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING *;

-- name: insert_event
INSERT INTO task_events (task_id, at, state, detail) VALUES (:task_id, :at, :state, :detail);

-- name: task_by_id
SELECT * FROM tasks WHERE id = :id;

-- name: task_by_key
SELECT * FROM tasks WHERE idempotency_key = :key;

-- name: list_all
SELECT * FROM tasks ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: list_by_state
SELECT * FROM tasks WHERE state = :state ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: queued_ready
SELECT * FROM tasks
WHERE state = 'queued' AND not_before <= :now
ORDER BY created_at, seq
LIMIT :limit;

-- name: queued_ready_priority
SELECT * FROM tasks
WHERE state = 'queued' AND priority = :priority AND not_before <= :now
ORDER BY created_at, seq
LIMIT :limit;

-- name: lock_queue
SELECT 1 AS locked;  -- the write transaction already serialises adds

-- name: count_queued
SELECT count(*) AS n FROM tasks WHERE state = 'queued';

-- name: counts_by_state
SELECT state, count(*) AS n FROM tasks GROUP BY state;

-- name: queued_by_priority
SELECT priority, count(*) AS n FROM tasks WHERE state = 'queued' GROUP BY priority;

-- name: events_of
SELECT task_id, at, state, detail FROM task_events WHERE task_id = :id ORDER BY seq;

-- name: result_of
SELECT transcript FROM results WHERE task_id = :id;

-- name: claim
UPDATE tasks SET
    state = 'running', node = :node, gpu_index = :gpu_index, gpu_uuid = :gpu_uuid,
    memory_estimate_bytes = :memory_estimate_bytes, started_at = :now, finished_at = NULL,
    lease_token = :token, lease_expires_at = :expires, attempts = attempts + 1,
    wait_reason = NULL, progress = 0
WHERE id = :id AND state = 'queued' AND not_before <= :now
RETURNING *;

-- name: renew
UPDATE tasks SET lease_expires_at = :expires
WHERE id = :id AND lease_token = :token AND state = 'running';

-- name: set_progress
UPDATE tasks SET progress = :progress
WHERE id = :id AND lease_token = :token AND state = 'running';

-- name: complete
UPDATE tasks SET
    state = 'completed', progress = 1, memory_peak_bytes = :peak, finished_at = :now,
    error = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running';

-- name: insert_result
INSERT INTO results (task_id, transcript) VALUES (:id, :transcript)
ON CONFLICT (task_id) DO UPDATE SET transcript = excluded.transcript;

-- name: retry
UPDATE tasks SET
    state = 'queued', not_before = :retry_at, error = :error, lease_token = NULL,
    lease_expires_at = NULL, node = NULL, gpu_index = NULL, gpu_uuid = NULL, progress = 0
WHERE id = :id AND lease_token = :token AND state = 'running'
    AND attempts < max_attempts AND NOT cancel_requested
RETURNING *;

-- name: fail_running
UPDATE tasks SET
    state = 'failed', error = :error, finished_at = :now, lease_token = NULL,
    lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING *;

-- name: unclaim
-- A claim its node could not start: back to the queue with the attempt it counted given back.
UPDATE tasks SET
    state = 'queued', attempts = attempts - 1,
    started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END,
    wait_reason = :reason, lease_token = NULL, lease_expires_at = NULL, node = NULL,
    gpu_index = NULL, gpu_uuid = NULL, progress = 0
WHERE id = :id AND lease_token = :token AND state = 'running' AND NOT cancel_requested
RETURNING *;

-- name: unclaim_cancelled
UPDATE tasks SET
    state = 'cancelled', attempts = attempts - 1,
    started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END,
    finished_at = :now, lease_token = NULL, lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING *;

-- name: cancels_requested
SELECT id FROM tasks WHERE state = 'running' AND node = :node AND cancel_requested;

-- name: cancel_queued
UPDATE tasks SET state = 'cancelled', finished_at = :now, wait_reason = NULL
WHERE id = :id AND state = 'queued';

-- name: request_cancel
UPDATE tasks SET cancel_requested = TRUE
WHERE id = :id AND state = 'running' AND NOT cancel_requested;

-- name: finish_cancel
UPDATE tasks SET
    state = 'cancelled', finished_at = :now, lease_token = NULL, lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running';

-- name: set_wait_reason
UPDATE tasks SET wait_reason = :reason WHERE id = :id AND state = 'queued';

-- name: fail_queued
UPDATE tasks SET state = 'failed', error = :error, finished_at = :now, wait_reason = NULL
WHERE id = :id AND state = 'queued';

-- name: expire_cancelled
UPDATE tasks SET
    state = 'cancelled', finished_at = :now, lease_token = NULL, lease_expires_at = NULL
WHERE state = 'running' AND lease_expires_at < :now AND cancel_requested
RETURNING id;

-- name: expire_exhausted
UPDATE tasks SET
    state = 'failed', finished_at = :now, lease_token = NULL, lease_expires_at = NULL,
    error = 'lease expired on attempt ' || CAST(attempts AS TEXT) || ' of '
        || CAST(max_attempts AS TEXT) || ': no attempts left'
WHERE state = 'running' AND lease_expires_at < :now AND attempts >= max_attempts
RETURNING id, error;

-- name: expire_requeue
UPDATE tasks SET
    state = 'queued', lease_token = NULL, lease_expires_at = NULL, node = NULL,
    gpu_index = NULL, gpu_uuid = NULL, progress = 0
WHERE state = 'running' AND lease_expires_at < :now
RETURNING id;

-- name: prune
DELETE FROM tasks
WHERE state IN ('completed', 'failed', 'cancelled') AND finished_at < :before
RETURNING *;

-- name: insert_sample
INSERT INTO calibration_samples (
    gpu_name, engine, model, compute_type, batch_size, beam_size, working_bytes,
    weights_bytes, context_bytes, measured_at, estimate_bytes
) VALUES (
    :gpu_name, :engine, :model, :compute_type, :batch_size, :beam_size, :working_bytes,
    :weights_bytes, :context_bytes, :measured_at, :estimate_bytes
);

-- name: samples_of
SELECT * FROM calibration_samples
WHERE gpu_name = :gpu_name AND engine = :engine AND model = :model
    AND compute_type = :compute_type AND batch_size = :batch_size AND beam_size = :beam_size
ORDER BY measured_at DESC, seq DESC
LIMIT :limit;

-- name: all_samples
SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY gpu_name, engine, model, compute_type, batch_size, beam_size
        ORDER BY measured_at DESC, seq DESC
    ) AS newest_rank
    FROM calibration_samples
) AS ranked
WHERE newest_rank <= :limit
ORDER BY gpu_name, engine, model, compute_type, batch_size, beam_size, newest_rank;

-- name: migration_lock
SELECT 1 AS locked;  -- BEGIN IMMEDIATE already holds the write lock

-- name: schema_version_table
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    applied_at REAL NOT NULL
);

-- name: schema_versions
SELECT version FROM schema_version ORDER BY version;

-- name: record_version
INSERT OR IGNORE INTO schema_version (version, applied_at) VALUES (:version, :now);

-- name: node_heartbeat
INSERT INTO nodes (name, role, started_at, heartbeat_at, expires_at, devices)
VALUES (:name, :role, :started_at, :now, :expires, :devices)
ON CONFLICT (name) DO UPDATE SET
    role = excluded.role, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
    expires_at = excluded.expires_at, devices = excluded.devices;

-- name: live_nodes
SELECT * FROM nodes WHERE expires_at >= :now ORDER BY name;

-- name: node_remove
DELETE FROM nodes WHERE name = :name;

-- name: nodes_forget
DELETE FROM nodes WHERE expires_at < :before;

-- name: lock_queued_window
-- BEGIN IMMEDIATE already holds the write lock: one pass at a time, whatever the process.
SELECT * FROM tasks
WHERE state = 'queued' AND priority = :priority AND not_before <= :now
ORDER BY created_at, seq
LIMIT :limit;
