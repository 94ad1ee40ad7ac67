-- PostgreSQL migration 2: what several machines share besides the queue.

-- Uploaded audio, so that any node can run any task with nothing but the database. An object
-- is its chunks (1 MiB each); both are written in one transaction, so a reader sees all of an
-- object or none. Deleting the object deletes its chunks.
CREATE TABLE IF NOT EXISTS audio_objects (
    name TEXT NOT NULL PRIMARY KEY,
    size_bytes BIGINT NOT NULL,
    chunk_count INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE INDEX IF NOT EXISTS audio_objects_created ON audio_objects (created_at);

CREATE TABLE IF NOT EXISTS audio_chunks (
    name TEXT NOT NULL REFERENCES audio_objects (name) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (name, seq)
);

-- Audio is compressed already: store chunks out of line without trying to compress them again.
ALTER TABLE audio_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- Every live node: its role, its devices (JSON, as /v1/gpus shows them) and its heartbeat.
-- A node whose lease ran out is no longer shown.
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT NOT NULL PRIMARY KEY,
    role TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    devices TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS nodes_expires ON nodes (expires_at);
