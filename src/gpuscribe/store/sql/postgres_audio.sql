-- Named queries of the PostgreSQL audio store (store/audio.py): audio kept in PostgreSQL.

-- name: audio_insert_object
INSERT INTO audio_objects (name, size_bytes, chunk_count, created_at)
VALUES (%(name)s, 0, 0, %(now)s);

-- name: audio_insert_chunk
INSERT INTO audio_chunks (name, seq, data) VALUES (%(name)s, %(seq)s, %(data)s);

-- name: audio_finish_object
UPDATE audio_objects SET size_bytes = %(size)s, chunk_count = %(chunks)s WHERE name = %(name)s;

-- name: audio_object
SELECT name, size_bytes, chunk_count FROM audio_objects WHERE name = %(name)s;

-- name: audio_chunk
SELECT data FROM audio_chunks WHERE name = %(name)s AND seq = %(seq)s;

-- name: audio_delete
DELETE FROM audio_objects WHERE name = %(name)s;

-- name: audio_sweep
-- Audio no queued or running task refers to, older than the cutoff (an upload being submitted
-- is stored a moment before its task: the cutoff leaves it alone).
DELETE FROM audio_objects AS o
WHERE o.created_at < %(before)s
    AND NOT EXISTS (
        SELECT 1 FROM tasks AS t
        WHERE t.audio_path = %(prefix)s || o.name AND t.state IN ('queued', 'running')
    )
RETURNING name;
