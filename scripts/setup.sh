#!/usr/bin/env bash
# Sets up Slipway on this machine and starts it: installs what is missing (Docker Engine, git,
# OpenSSH client, debootstrap, skopeo), builds the default stack images from Debian packages,
# builds slipway, starts `slipway server`, and pushes the stacks into its registry.
# Ctrl-C stops the server. Settings come from the same environment variables as `slipway server`
# (SLIPWAY_DATA, SLIPWAY_DOMAIN, SLIPWAY_API_ADDR, SLIPWAY_SSH_ADDR, SLIPWAY_REGISTRY_ADDR,
# SLIPWAY_HTTP_ADDR).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/slipway/target}
mkdir -p "$CARGO_TARGET_DIR"
PROFILE=${SLIPWAY_PROFILE:-release}

bash scripts/install-deps.sh
bash stacks/build.sh
echo "-----> building slipway ($PROFILE)"
if [ "$PROFILE" = release ]; then cargo build --release -p slipway-cli; else cargo build -p slipway-cli; fi
bin="$CARGO_TARGET_DIR/$PROFILE/slipway"
# Put `slipway` on PATH for the client commands, when this user may.
if [ -w /usr/local/bin ]; then
  ln -sf "$bin" /usr/local/bin/slipway
  echo "-----> slipway is at $bin (linked as /usr/local/bin/slipway)"
else
  echo "-----> slipway is at $bin; add it to your PATH"
fi

data=${SLIPWAY_DATA:-./slipway-data}
registry=${SLIPWAY_REGISTRY_ADDR:-127.0.0.1:5000}
api=${SLIPWAY_API_ADDR:-127.0.0.1:7700}
"$bin" server --data "$data" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null; wait "$pid"' INT TERM
for _ in $(seq 1 100); do
  [ -s "$data/admin-token" ] && curl -s -o /dev/null "http://$api/v1/whoami" && break
  kill -0 "$pid" 2>/dev/null || { echo "slipway server exited" >&2; exit 1; }
  sleep 0.2
done
bash stacks/push.sh "${registry/0.0.0.0/127.0.0.1}" "admin:$(cat "$data/admin-token")"
echo "-----> Slipway is ready. Ctrl-C stops it."
wait "$pid"
