-- Custom domains: each host routes to one app.
CREATE TABLE domains (
    host TEXT PRIMARY KEY,
    app_id BIGINT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);

-- How many instances of each process type run. Absent rows mean the default: web=1, others 0.
CREATE TABLE formation (
    app_id BIGINT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    process TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    PRIMARY KEY (app_id, process)
);
