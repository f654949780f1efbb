#!/usr/bin/env bash
# Copies the stack images from the local Docker Engine into a Slipway registry, as OCI images:
#   stacks/push.sh REGISTRY_ADDR USER:TOKEN      e.g. stacks/push.sh 127.0.0.1:5000 admin:$(cat slipway-data/admin-token)
# The builder looks for them there as stacks/build:bookworm and stacks/run:bookworm.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: stacks/push.sh REGISTRY_ADDR USER:TOKEN" >&2; exit 2; }
registry=$1 creds=$2
SUITE=${DEBIAN_SUITE:-bookworm}
# skopeo keeps a blob-info cache; give it a private one so that it never writes outside a temp dir.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for name in run build; do
  XDG_DATA_HOME=$tmp _CONTAINERS_ROOTLESS_UID=0 skopeo copy --quiet --format oci \
    --dest-tls-verify=false --dest-creds "$creds" \
    "docker-daemon:slipway/stack-$name:$SUITE" "docker://$registry/stacks/$name:$SUITE"
  echo "-----> stacks/$name:$SUITE pushed to $registry"
done
