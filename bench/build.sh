#!/usr/bin/env bash
# Measures builds the way a pusher sees them: for each app, a first build and a rebuild after a
# one-line change to the app's code, with
#   build_s   seconds from the start of `git push` to the image being in the registry (the
#             `... KiB uploaded` line): receive, detect, build, export
#   deploy_s  seconds to the end of the push: the build plus release, start and readiness
#   KiB       what the export uploaded to the registry
# Apps: the Python and Node.js fixtures (no dependencies) and python-deps / node-deps, the same
# apps with vendored dependencies (bench/deps_apps.py: PACKAGES packages of MODULES modules).
# Uses its own server on free ports and a temp dir, removes its containers on exit.
#   bench/build.sh [REPS]         SLIPWAY_BIN=path/to/slipway (default: release build)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
BIN=${SLIPWAY_BIN:-${CARGO_TARGET_DIR:-/var/cache/slipway/target}/release/slipway}
[ -x "$BIN" ] || { echo "no slipway binary at $BIN (cargo build --release -p slipway-cli)" >&2; exit 1; }

# shellcheck source=server.sh
. bench/server.sh
python3 bench/deps_apps.py "$tmp/apps" "${PACKAGES:-30}" "${MODULES:-40}"
cp -r tests/fixtures/python-app tests/fixtures/node-app "$tmp/apps/"

# Pushes $1 and prints "build_s deploy_s uploaded_KiB".
push() {
  local app=$1 start
  start=$(date +%s.%N)
  git -C "$tmp/$app" push "ssh://git@127.0.0.1:$SSH/$app.git" main 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done > "$tmp/push.log"
  grep -q 'Launching... done' "$tmp/push.log" || { cat "$tmp/push.log" >&2; exit 1; }
  awk -v s="$start" '
    / KiB uploaded/ { built = $1 - s; kib = $0; sub(/ KiB uploaded.*/, "", kib); sub(/.*\(/, "", kib) }
    { last = $1 - s }
    END { printf "%.2f %.2f %s\n", built, last, kib }' "$tmp/push.log"
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for fixture in ${APPS:-python-app python-deps node-app node-deps}; do
  fb=(); fd=(); rb=(); rd=()
  for rep in $(seq 1 "$REPS"); do
    app=${fixture//-/}$rep
    "$BIN" apps:create "$app" >/dev/null
    cp -r "$tmp/apps/$fixture" "$tmp/$app"
    git -C "$tmp/$app" init -q -b main && git -C "$tmp/$app" add -A
    git -C "$tmp/$app" -c user.email=b@b -c user.name=b commit -qm init
    read -r b d first_kib < <(push "$app")
    fb+=("$b"); fd+=("$d")
    # A one-line change to the app's code.
    echo "one-line change $rep" >> "$tmp/$app/CHANGES"
    git -C "$tmp/$app" add -A
    git -C "$tmp/$app" -c user.email=b@b -c user.name=b commit -qm change
    read -r b d re_kib < <(push "$app")
    rb+=("$b"); rd+=("$d")
  done
  echo "$fixture first build / deploy (s): ${fb[*]} / ${fd[*]}"
  echo "$fixture rebuild / redeploy (s):   ${rb[*]} / ${rd[*]}"
  fbm=$(median "${fb[@]}"); rbm=$(median "${rb[@]}")
  echo "RESULT build app=$fixture first_build_s=$fbm rebuild_s=$rbm" \
    "ratio=$(awk -v a="$rbm" -v b="$fbm" 'BEGIN { printf "%.2f", a / b }')" \
    "first_deploy_s=$(median "${fd[@]}") redeploy_s=$(median "${rd[@]}")" \
    "uploaded_first_kib=$first_kib uploaded_rebuild_kib=$re_kib"
done
