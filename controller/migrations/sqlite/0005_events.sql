-- The audit log: who did what, when. `app` is a name, not a reference, so an app's history
-- outlives the app.
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    app TEXT,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX events_app ON events (app, id);
