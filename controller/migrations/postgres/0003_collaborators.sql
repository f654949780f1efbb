-- Users other than the owner who may push, configure and operate an app.
CREATE TABLE collaborators (
    app_id BIGINT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, user_id)
);
