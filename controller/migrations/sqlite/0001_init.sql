CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

-- API tokens are stored as SHA-256 hex digests; the token itself is shown once.
CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);

CREATE TABLE keys (
    fingerprint TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE apps (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner_id INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL
);

-- status: 'pending' until the reconciler has it serving, then 'deployed'; 'failed' when its
-- instances never became ready (the reconciler then keeps the previous release serving).
CREATE TABLE releases (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    image TEXT,
    config TEXT NOT NULL,
    processes TEXT NOT NULL,
    commit_sha TEXT,
    description TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (app_id, version)
);
