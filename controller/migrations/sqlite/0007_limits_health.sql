-- Resource limits per process type; a missing row or NULL column means no limit.
CREATE TABLE limits (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    process TEXT NOT NULL,
    memory_bytes INTEGER,
    nano_cpus INTEGER,
    PRIMARY KEY (app_id, process)
);
-- The HTTP path a new web instance must answer with 2xx or 3xx before it gets traffic; NULL
-- means accepting a TCP connection on PORT is enough.
ALTER TABLE apps ADD COLUMN health_path TEXT;
