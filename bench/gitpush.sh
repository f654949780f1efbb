#!/usr/bin/env bash
# `git push` through Slipway against OpenSSH + git-receive-pack, in the same run: points the
# shared anchor script (../shared/bench/gitpush.sh, or GITPUSH_SH) at a fresh `slipway server`.
#
# What is measured, honestly:
# - The anchor's repository (100 MiB of random data and 2000 small files) gets a two-line
#   Procfile app (tests/fixtures/procfile-app: Procfile and serve.sh) in the same commit, so that
#   Slipway has something to build; the anchor pushes the very same pack. The files are added by
#   a pre-commit hook given to the script's git through GIT_CONFIG_* (core.hooksPath), since the
#   script makes its repository itself.
# - `full-push` for Slipway is the whole deploy: receive, build (the Procfile buildpack: no
#   compiling), export of a 100 MiB app layer to the registry, and the new release serving.
#   OpenSSH does only the receive, so that ratio is not like for like.
# - `receive`: the same pushes, timed from the start of ssh until the pusher sees
#   `-----> Building`: git has received and indexed the pack and checked connectivity, the hook
#   has run `git archive` and the server holds the whole source. That is the like-for-like
#   figure against the anchor's full push (which ends once receive-pack has the pack and has
#   updated the ref). It is taken by a GIT_SSH_COMMAND wrapper that copies ssh's output to git
#   and notes when that line passes.
# - The server's peak resident memory (VmHWM) after all the pushes.
#
#   bench/gitpush.sh          SLIPWAY_BIN=path/to/slipway (default: release build); REPS=3
# Run from anywhere, as root, with Docker running and the stacks built (stacks/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SLIPWAY_BIN:-${CARGO_TARGET_DIR:-/var/cache/slipway/target}/release/slipway}
[ -x "$BIN" ] || { echo "no slipway binary at $BIN (cargo build --release -p slipway-cli)" >&2; exit 1; }
GITPUSH_SH=${GITPUSH_SH:-$(realpath ../shared/bench/gitpush.sh 2>/dev/null || echo /work/shared/bench/gitpush.sh)}

# shellcheck source=server.sh
. bench/server.sh

# The pre-commit hook that makes the anchor's repository a Procfile app.
mkdir -p "$tmp/hooks"
cat >"$tmp/hooks/pre-commit" <<EOF
#!/bin/sh
[ -e Procfile ] && exit 0
cp "$PWD/tests/fixtures/procfile-app/Procfile" "$PWD/tests/fixtures/procfile-app/serve.sh" .
git add Procfile serve.sh
EOF
chmod +x "$tmp/hooks/pre-commit"

# ssh for Slipway, through a filter that notes when `-----> Building` reaches the pusher.
cat >"$tmp/ssh-timed" <<'EOF'
#!/usr/bin/env python3
import os, subprocess, sys, time
start = time.time()
ssh = subprocess.Popen(os.environ["BENCH_SSH"].split() + sys.argv[1:], stdout=subprocess.PIPE)
needle, tail, seen = b"-----> Building", b"", False
out = sys.stdout.buffer
while True:
    chunk = ssh.stdout.read1(65536)
    if not chunk:
        break
    out.write(chunk)
    out.flush()
    if not seen and needle in tail + chunk:
        seen = True
        with open(os.environ["BENCH_TIMES"], "a") as f:
            f.write("%s %.3f\n" % (sys.argv[-1].split()[-1], time.time() - start))
    tail = chunk[-len(needle):]
sys.exit(ssh.wait())
EOF
chmod +x "$tmp/ssh-timed"
export BENCH_SSH="$GIT_SSH_COMMAND" BENCH_TIMES="$tmp/receive-times"
: >"$BENCH_TIMES"

# Slipway's ssh key exchange: the anchor uses the same one, so handshakes cost the same.
# Slipway refuses the `true` command; only the key exchange it agreed is wanted from ssh -v.
kex=$({ ssh -v -p "$SSH" ${GIT_SSH_COMMAND#ssh} git@127.0.0.1 true 2>&1 || true; } |
  sed -n 's/.*kex: algorithm: \([^ ]*\).*/\1/p' | head -1 | tr -d '\r')
echo "# slipway $("$BIN" --version 2>/dev/null || echo "$BIN"); slipway ssh kex $kex"

GIT_URL="ssh://git@127.0.0.1:$SSH/bench-{n}.git" \
  GIT_SSH_COMMAND="$tmp/ssh-timed" \
  GIT_RESET_CMD="'$BIN' apps:create \"bench-\$BENCH_TOKEN\"" \
  ANCHOR_SSH_OPTS="-o KexAlgorithms=$kex" \
  GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=core.hooksPath GIT_CONFIG_VALUE_0="$tmp/hooks" \
  bash "$GITPUSH_SH" | tee "$tmp/gitpush.out"

# The receive figures: per app, the first push is the full one, the second the incremental one.
full=$(awk '!seen[$1]++ {print $2}' "$BENCH_TIMES" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
incr=$(awk 'seen[$1]++ == 1 {print $2}' "$BENCH_TIMES" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
anchor_full=$(sed -n 's/^RESULT gitpush target=openssh op=full-push .* s=\([0-9.]*\) .*/\1/p' "$tmp/gitpush.out")
anchor_incr=$(sed -n 's/^RESULT gitpush target=openssh op=incr-push s=\([0-9.]*\) .*/\1/p' "$tmp/gitpush.out")
bytes=$(sed -n 's/^RESULT gitpush target=openssh op=full-push bytes=\([0-9]*\) .*/\1/p' "$tmp/gitpush.out")
awk -v s="$full" -v a="$anchor_full" -v b="$bytes" 'BEGIN {
  printf "RESULT gitpush target=project op=receive bytes=%d s=%.3f MiBps=%.1f time_ratio_vs_openssh=%.3f throughput_ratio_vs_openssh=%.3f\n", b, s, b / 1048576 / s, s / a, a / s }'
awk -v s="$incr" -v a="$anchor_incr" 'BEGIN {
  printf "RESULT gitpush target=project op=incr-receive s=%.3f time_ratio_vs_openssh=%.3f\n", s, s / a }'
echo "RESULT gitpush target=project server_vmhwm_kib=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$pid/status") server_vmrss_kib=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$pid/status")"
