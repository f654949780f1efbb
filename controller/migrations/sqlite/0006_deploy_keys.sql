-- A deploy key is scoped to one app: it can push that app and nothing else.
ALTER TABLE keys ADD COLUMN app_id INTEGER REFERENCES apps(id) ON DELETE CASCADE;
