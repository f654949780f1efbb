#!/usr/bin/env bash
# Slipway's router against nginx on the same work, with ../shared/bench/router.sh: a 1 KiB
# static backend, nginx as a reverse proxy in front of it, and the router (the release build of
# `router/examples/static_routes`, 2 threads as nginx has 2 workers) routing `app.bench.test` to
# the same backend, plus 10,000 generated apps so the table is the size of a busy server's.
# Also prints the router's resident memory with that table, idle and after the run.
# ACCESS_LOG=1 logs every request as `slipway server` does (to /dev/null, through a buffer).
#   bench/router.sh               REPS=3 ... (see ../shared/bench/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p slipway-router --example static_routes
BIN=$TARGET/release/examples/static_routes
ANCHOR=${ANCHOR:-../shared/bench/router.sh}
[ -x "$ANCHOR" ] || { echo "missing $ANCHOR" >&2; exit 1; }

free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND_PORT=${BACKEND_PORT:-$(free)}
ROUTER_PORT=$(free)
# The router's stdin is this pipe: closing it stops the router.
exec 3> >("$BIN" "127.0.0.1:$ROUTER_PORT" "app.bench.test=127.0.0.1:$BACKEND_PORT" "+10000=127.0.0.1:$BACKEND_PORT" >/dev/null)
trap 'exec 3>&-' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$ROUTER_PORT/" && break; sleep 0.1; done
pid=$(pgrep -f "static_routes 127.0.0.1:$ROUTER_PORT")
echo "# router with 10,000 apps + 1: RSS idle $(awk '/VmRSS/ {print $2, $3}' /proc/"$pid"/status)"
ROUTER_URL="http://127.0.0.1:$ROUTER_PORT/1k" ROUTER_HOST=app.bench.test BACKEND_PORT=$BACKEND_PORT \
  "$ANCHOR"
echo "# router RSS after the run: $(awk '/VmRSS/ {print $2, $3}' /proc/"$pid"/status), peak $(awk '/VmHWM/ {print $2, $3}' /proc/"$pid"/status)"
