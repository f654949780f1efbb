#!/usr/bin/env bash
# Installs what Slipway needs on a Debian machine and makes sure the Docker Engine is running:
# Docker Engine (Debian's docker.io), git, the OpenSSH client, debootstrap (stack images),
# skopeo (pushing stacks), curl, python3-websocket (the WebSocket client of the TLS test), PostgreSQL (the suite runs on it too), and the C toolchain bits the Rust build needs (cmake, libssl-dev).
# Safe to run again: it installs only what is missing and starts dockerd only when it is down.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have dockerd || need+=(docker.io)
have git || need+=(git)
have ssh || need+=(openssh-client)
have ssh-keygen || need+=(openssh-client)
have debootstrap || need+=(debootstrap)
have skopeo || need+=(skopeo)
have curl || need+=(curl)
/usr/bin/python3 -c 'import websocket' 2>/dev/null || need+=(python3-websocket)
have docker-registry || need+=(docker-registry)
have cmake || need+=(cmake)
have pkg-config || need+=(pkg-config)
have cc || need+=(build-essential)
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql postgresql-client)

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if [ ${#need[@]} -gt 0 ]; then
  echo "-----> installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "-----> starting dockerd"
  $SUDO mkdir -p /var/log
  # setsid + nohup: the engine must outlive this script (the server and CI use it afterwards).
  $SUDO setsid nohup dockerd >/var/log/slipway-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/slipway-dockerd.log" >&2; tail -20 /var/log/slipway-dockerd.log >&2; exit 1; }
fi
echo "-----> dependencies ready (Docker Engine $(docker version --format '{{.Server.Version}}'))"
