# Sourced by the benchmarks: starts `slipway server` ($BIN) on free ports in a temp dir ($tmp),
# pushes the stacks, logs in as admin (SLIPWAY_URL, SLIPWAY_TOKEN), adds an SSH key
# ($tmp/key, used through GIT_SSH_COMMAND), and on exit stops the server and removes its
# containers. Sets API, SSH, REG, HTTP (ports) and pid.
tmp=$(mktemp -d /tmp/bench-slipway.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(port); SSH=$(port); REG=$(port); HTTP=$(port)
SLIPWAY_API_ADDR=127.0.0.1:$API SLIPWAY_SSH_ADDR=127.0.0.1:$SSH SLIPWAY_REGISTRY_ADDR=127.0.0.1:$REG \
  SLIPWAY_HTTP_ADDR=127.0.0.1:$HTTP "$BIN" server --data "$tmp/data" > "$tmp/server.log" 2>&1 &
pid=$!
cleanup() {
  kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  id=$(cat "$tmp/data/instance-id" 2>/dev/null || true)
  [ -n "$id" ] && docker ps -aq --filter "label=slipway.instance=$id" | xargs -r docker rm -f >/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 1 100); do [ -s "$tmp/data/admin-token" ] && curl -s -o /dev/null "http://127.0.0.1:$API/" && break; sleep 0.1; done
export SLIPWAY_URL=http://127.0.0.1:$API SLIPWAY_TOKEN=$(cat "$tmp/data/admin-token")
bash stacks/push.sh "127.0.0.1:$REG" "admin:$SLIPWAY_TOKEN" >/dev/null
ssh-keygen -q -t ed25519 -N '' -f "$tmp/key"
"$BIN" keys:add "$tmp/key.pub" >/dev/null
export GIT_SSH_COMMAND="ssh -i $tmp/key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


# Makes app $1 from the fixture app in $tmp/$1 and deploys it with git push.
push_fixture() {
  local app=$1
  "$BIN" apps:create "$app" >/dev/null
  cp -r tests/fixtures/python-app "$tmp/$app"
  git -C "$tmp/$app" init -q -b main && git -C "$tmp/$app" add -A
  git -C "$tmp/$app" -c user.email=b@b -c user.name=b commit -qm init
  git -C "$tmp/$app" push "ssh://git@127.0.0.1:$SSH/$app.git" main > "$tmp/push.log" 2>&1 || { cat "$tmp/push.log" >&2; exit 1; }
}
