-- TLS certificates users add for their apps (certs:add); the router presents them by SNI.
-- `names` holds the certificate's DNS names, space-separated; `key_pem` is PKCS#8 PEM.
CREATE TABLE certs (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    names TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    chain_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (app_id, fingerprint)
);
-- tls:enable: the router redirects the app's plain HTTP requests to HTTPS.
ALTER TABLE apps ADD COLUMN https_enforced INTEGER NOT NULL DEFAULT 0;
