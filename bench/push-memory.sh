#!/usr/bin/env bash
# Peak memory of `slipway server` across a git push of incompressible data: does a push stream
# through the server, or is it held in memory?
#
# For each binary in BINS and each size in SIZES (MiB), starts a fresh server (bench/server.sh),
# pushes a Procfile app (tests/fixtures/procfile-app) with SIZE MiB of /dev/urandom in 10 files
# beside it, waits for the push to deploy, and reads the server's VmHWM (peak resident set) from
# /proc before and after the push. Flat in push size means streaming. The whole deploy is
# included: receive, build, export to the registry (same process), and the Docker pull of the
# image from that registry.
#
#   BINS="target/release/slipway" SIZES="100 1000" bash bench/push-memory.sh
#
# Output: one 'RESULT push-memory ...' line per binary and size. Run from the repository root,
# as root, with Docker running; the stacks must be built (stacks/build.sh).
set -euo pipefail
BINS=${BINS:-${CARGO_TARGET_DIR:-target}/release/slipway}
SIZES=${SIZES:-100 1000}

work=$(mktemp -d /tmp/bench-push-memory.XXXXXX)
trap 'rm -rf "$work"' EXIT

# One repository per size, made once and pushed to every binary.
for mb in $SIZES; do
  repo=$work/repo-$mb
  cp -r tests/fixtures/procfile-app "$repo"
  mkdir "$repo/data"
  for i in $(seq 1 10); do head -c $((mb * 1024 * 1024 / 10)) /dev/urandom >"$repo/data/blob$i.bin"; done
  git -C "$repo" init -q -b main && git -C "$repo" add -A
  git -C "$repo" -c user.email=b@b -c user.name=b commit -qm "procfile app with $mb MiB of random data"
  git -C "$repo" repack -adq
done

# kib FIELD PID: a /proc/PID/status field (VmHWM, VmRSS) in KiB.
kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$2/status"; }

for BIN in $BINS; do
  BIN=$(realpath "$BIN")
  for mb in $SIZES; do
    (
      # shellcheck source=server.sh
      . bench/server.sh
      app=mem$mb
      "$BIN" apps:create "$app" >/dev/null
      before=$(kib VmHWM "$pid")
      start=$(date +%s.%N)
      if ! git -C "$work/repo-$mb" push "ssh://git@127.0.0.1:$SSH/$app.git" main >"$tmp/push.log" 2>&1; then
        cat "$tmp/push.log" >&2
        exit 1
      fi
      secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
      pack=$(cat "$work/repo-$mb"/.git/objects/pack/*.pack | wc -c)
      echo "RESULT push-memory bin=$BIN push_mib=$mb pack_bytes=$pack push_s=$secs" \
        "vmhwm_before_kib=$before vmhwm_after_kib=$(kib VmHWM "$pid") vmrss_after_kib=$(kib VmRSS "$pid")"
    )
  done
done
