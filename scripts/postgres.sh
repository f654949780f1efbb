#!/usr/bin/env bash
# Starts Debian's PostgreSQL for the test suite and makes a `slipway` role that may create
# databases (each test server gets its own). Idempotent. Prints the base URL to use as
# SLIPWAY_TEST_POSTGRES.
set -euo pipefail

# scripts/install-deps.sh installs Debian's postgresql package.
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | grep -q "^$version main .* online"; then
    pg_ctlcluster "$version" main start >&2
fi
for _ in $(seq 1 30); do
    su postgres -c "psql -qAtc 'SELECT 1'" >/dev/null 2>&1 && break
    sleep 1
done
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" { print $3 }')
su postgres -c "psql -qAt -p $port" >&2 <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'slipway') THEN
    CREATE ROLE slipway LOGIN CREATEDB PASSWORD 'slipway';
  END IF;
END $$;
-- DROP DATABASE ... WITH (FORCE) ends every session on the database, an autovacuum worker's
-- too, and that needs the right to signal backends of other roles.
GRANT pg_signal_backend TO slipway;
SQL
# Databases earlier test runs left behind (a killed run never drops its own).
su postgres -c "psql -qAt -p $port -c \"SELECT datname FROM pg_database WHERE datname ~ '^slipway_(unit|e2e)_'\"" |
    while read -r db; do su postgres -c "psql -q -p $port -c 'DROP DATABASE IF EXISTS $db WITH (FORCE)'" >&2; done
echo "postgres://slipway:slipway@127.0.0.1:$port"
