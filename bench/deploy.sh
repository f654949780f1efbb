#!/usr/bin/env bash
# Measures a deploy the way a user meets it: seconds from the start of `git push` to the first
# 200 through the router, for a first deploy and for a redeploy after a one-line change, and the
# resident memory of an idle `slipway server`. Uses its own server on free ports and a temp dir,
# removes its containers on exit.
# Runs each fixture app in FIXTURES (default: the Python and Node.js ones).
#   bench/deploy.sh [REPS]        SLIPWAY_BIN=path/to/slipway (default: release build)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
BIN=${SLIPWAY_BIN:-${CARGO_TARGET_DIR:-/var/cache/slipway/target}/release/slipway}
[ -x "$BIN" ] || { echo "no slipway binary at $BIN (cargo build --release -p slipway-cli)" >&2; exit 1; }

# shellcheck source=server.sh
. bench/server.sh
sleep 5
rss_idle=$(ps -o rss= -p "$pid" | tr -d ' ')

# Seconds from the start of `git push` until the router answers 200 with the new release.
deploy() {
  local app=$1 release=$2 start end
  start=$(date +%s.%N)
  git -C "$tmp/$app" push "ssh://git@127.0.0.1:$SSH/$app.git" main > "$tmp/push.log" 2>&1 || { cat "$tmp/push.log" >&2; exit 1; }
  until curl -s -H "Host: $app.slipway.localhost" "http://127.0.0.1:$HTTP/" | grep -qE " $release( |\$)"; do sleep 0.05; done
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f\n", b - a }'
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for fixture in ${FIXTURES:-python-app node-app}; do
  first=(); redeploy=()
  for rep in $(seq 1 "$REPS"); do
    app=${fixture%%-*}$rep
    "$BIN" apps:create "$app" >/dev/null
    cp -r "tests/fixtures/$fixture" "$tmp/$app"
    git -C "$tmp/$app" init -q -b main && git -C "$tmp/$app" add -A
    git -C "$tmp/$app" -c user.email=b@b -c user.name=b commit -qm init
    first+=("$(deploy "$app" v1)")
    up_first=$(grep -o '[0-9]* KiB uploaded' "$tmp/push.log" | tail -1)
    # A one-line change to the app's code.
    echo "one-line change $rep" >> "$tmp/$app/CHANGES"
    git -C "$tmp/$app" add -A
    git -C "$tmp/$app" -c user.email=b@b -c user.name=b commit -qm change
    redeploy+=("$(deploy "$app" v2)")
    up_redeploy=$(grep -o '[0-9]* KiB uploaded' "$tmp/push.log" | tail -1)
  done
  echo "$fixture first deploys (s):  ${first[*]}"
  echo "$fixture redeploys (s):      ${redeploy[*]}"
  echo "$fixture uploaded: first deploy $up_first, redeploy $up_redeploy"
  echo "RESULT deploy fixture=$fixture first_s=$(median "${first[@]}") redeploy_s=$(median "${redeploy[@]}")"
done
sleep 5
rss_after=$(ps -o rss= -p "$pid" | tr -d ' ')
echo "RESULT deploy idle_rss_kib=$rss_idle rss_after_kib=$rss_after"
