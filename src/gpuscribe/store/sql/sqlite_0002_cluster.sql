-- SQLite migration 2: the node heartbeat table (audio stays in the data directory's files).

-- Every live node: its role, its devices (JSON, as /v1/gpus shows them) and its heartbeat.
-- A node whose lease ran out is no longer shown.
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT NOT NULL PRIMARY KEY,
    role TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    devices TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS nodes_expires ON nodes (expires_at);
