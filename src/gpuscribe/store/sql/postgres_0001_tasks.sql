-- PostgreSQL migration 1: tasks, their history, results and calibration samples.
-- Every statement is idempotent: a database made before migrations were numbered takes it too.

CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    applied_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS tasks (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    priority SMALLINT NOT NULL,
    options TEXT NOT NULL,
    audio_path TEXT NOT NULL,
    audio_seconds DOUBLE PRECISION NOT NULL,
    audio_format TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    original_filename TEXT,
    idempotency_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    gpu_index INTEGER,
    gpu_uuid TEXT,
    node TEXT,
    memory_estimate_bytes BIGINT,
    memory_peak_bytes BIGINT,
    error TEXT,
    wait_reason TEXT,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_expires_at DOUBLE PRECISION,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency_key ON tasks (idempotency_key);
-- The queue scan (and lists by state) read this index in order, oldest first, checking
-- not_before on each row: `queued(limit)` stops after `limit` ready rows, with no sort.
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (state, created_at, seq);
CREATE INDEX IF NOT EXISTS tasks_queue_priority ON tasks (state, priority, created_at, seq);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at);
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (state, lease_expires_at);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (state, finished_at);

CREATE TABLE IF NOT EXISTS task_events (
    seq BIGSERIAL PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);

CREATE INDEX IF NOT EXISTS task_events_task ON task_events (task_id, seq);

CREATE TABLE IF NOT EXISTS results (
    task_id TEXT NOT NULL PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    transcript TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS calibration_samples (
    seq BIGSERIAL PRIMARY KEY,
    gpu_name TEXT NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    compute_type TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    beam_size INTEGER NOT NULL,
    working_bytes BIGINT NOT NULL,
    weights_bytes BIGINT,
    context_bytes BIGINT,
    measured_at DOUBLE PRECISION NOT NULL,
    estimate_bytes BIGINT
);

CREATE INDEX IF NOT EXISTS calibration_samples_key ON calibration_samples
    (gpu_name, engine, model, compute_type, batch_size, beam_size, measured_at);
