#!/usr/bin/env bash
# Failed requests during deploys under steady load, through the router: wrk keeps CONNS
# keep-alive connections busy on one app for the whole run while the app is redeployed
# DEPLOYS times (config:set, each a rolling replacement of its web instance), restarted once
# (ps:restart) and has one instance killed (docker kill: a crash, which is not zero-downtime by
# nature and is counted separately). Reports requests, non-2xx answers and socket errors for
# each phase. Uses its own server on free ports and a temp dir, removes its containers on exit.
#   bench/deploy-under-load.sh    SLIPWAY_BIN=path/to/slipway (default: release build)
#   DEPLOYS=5 CONNS=16 WEB=2 (web instances)
set -euo pipefail
cd "$(dirname "$0")/.."
DEPLOYS=${DEPLOYS:-5}; CONNS=${CONNS:-16}; WEB=${WEB:-2}
BIN=${SLIPWAY_BIN:-${CARGO_TARGET_DIR:-/var/cache/slipway/target}/release/slipway}
[ -x "$BIN" ] || { echo "no slipway binary at $BIN (cargo build --release -p slipway-cli)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
# shellcheck source=server.sh
. bench/server.sh

app=load
push_fixture "$app"
"$BIN" ps:scale -a "$app" "web=$WEB" >/dev/null
url="http://127.0.0.1:$HTTP/"
host="Host: $app.slipway.localhost"
until [ "$(docker ps -q --filter "label=slipway.app=$app" --filter "label=slipway.instance=$(cat "$tmp/data/instance-id")" | wc -l)" = "$WEB" ] \
  && curl -sf -H "$host" "$url" >/dev/null; do sleep 0.2; done
sleep 3

# Runs wrk for $2 seconds while `$1` runs; prints "requests non2xx socket_errors".
under_load() {
  local action=$1 seconds=$2
  wrk -t 2 -c "$CONNS" -d "${seconds}s" --timeout 10s --latency -H "$host" "$url" > "$tmp/wrk.log" 2>&1 &
  local wrk_pid=$!
  sleep 2
  eval "$action"
  wait "$wrk_pid"
  local requests non2xx socket
  requests=$(awk '/requests in/ { print $1 }' "$tmp/wrk.log")
  non2xx=$(awk '/Non-2xx/ { print $NF }' "$tmp/wrk.log"); non2xx=${non2xx:-0}
  socket=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$tmp/wrk.log"); socket=${socket:-0}
  grep -hE "Socket errors|Latency  |99%" "$tmp/wrk.log" >&2 || true
  echo "$requests $non2xx $socket"
}

# Waits until the router answers with release $1.
serving() { until curl -s -H "$host" "$url" | grep -q " $1\$"; do sleep 0.1; done; }

deploys() {
  local i
  for i in $(seq 1 "$DEPLOYS"); do
    "$BIN" config:set -a "$app" "ROUND=$i" >/dev/null
    serving "v$((i + 1))"
    sleep 3 # the old instances drain (2 s) and stop
  done
}
read -r d_req d_bad d_sock < <(under_load deploys $((DEPLOYS * 8 + 6)))
echo "deploys:  $DEPLOYS rolling deploys, $d_req requests, $d_bad non-2xx, $d_sock socket errors"

restart() { "$BIN" ps:restart -a "$app" >/dev/null; sleep 8; }
read -r r_req r_bad r_sock < <(under_load restart 14)
echo "restart:  ps:restart, $r_req requests, $r_bad non-2xx, $r_sock socket errors"

crash() {
  local id start
  id=$(docker ps -q --filter "label=slipway.app=$app" --filter "label=slipway.process=web" | head -1)
  start=$(date +%s.%N)
  docker kill "$id" >/dev/null
  # Back to WEB running instances.
  until [ "$(docker ps -q --filter "label=slipway.app=$app" --filter "label=slipway.process=web" | wc -l)" = "$WEB" ] \
    && ! docker ps -q | grep -q "^${id:0:12}"; do sleep 0.05; done
  awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f\n", b - a }' > "$tmp/crash.s"
  sleep 5
}
read -r c_req c_bad c_sock < <(under_load crash 12)
echo "crash:    docker kill of 1 of $WEB instances, replaced in $(cat "$tmp/crash.s") s; $c_req requests, $c_bad non-2xx, $c_sock socket errors"
echo "RESULT deploy_under_load deploys=$DEPLOYS failed_deploy=$((d_bad + d_sock)) of $d_req failed_restart=$((r_bad + r_sock)) of $r_req failed_crash=$((c_bad + c_sock)) of $c_req crash_replaced_s=$(cat "$tmp/crash.s")"
