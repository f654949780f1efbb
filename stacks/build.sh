#!/usr/bin/env bash
# Builds Slipway's default stack images from Debian packages with debootstrap and imports them
# into the local Docker Engine:
#   slipway/stack-run:bookworm    what apps run on: python3, nodejs, ca-certificates
#   slipway/stack-build:bookworm  what buildpacks run in: the run image plus venv, pip, npm, git
#                                 and Go (the run image has no Go: a Go app is a static binary)
# Both images have the user `slipway` (uid/gid 1000) that builds and apps run as.
# `stacks/push.sh` then copies them into a Slipway registry.
#
# An image already present is kept while its label slipway.stack.packages (a digest of the suite
# and the package lists it was built from) matches this script's lists; an image from an older
# list, or with no label, is rebuilt, and FORCE=1 rebuilds both. Downloaded .debs are cached in
# $SLIPWAY_CACHE/debootstrap (default /var/cache/slipway) so a rebuild needs little network.
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}
CACHE=${SLIPWAY_CACHE:-/var/cache/slipway}
# A fixed timestamp for every file in the rootfs, so that the same packages give the same layer.
EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

RUN_PACKAGES=python3,nodejs,ca-certificates,tzdata
# golang-go is Debian's Go toolchain (1.19 in bookworm); it depends only on its own source
# package and libc, so debootstrap installs it (and caches its .debs) without apt.
BUILD_PACKAGES=$RUN_PACKAGES,python3-venv,python3-pip,git,curl,golang-go
# npm pulls ~300 node-* packages whose configure order debootstrap gets wrong; apt installs it
# inside the finished rootfs instead.
BUILD_APT_EXTRA=npm

build_image() {
  local name=$1 packages=$2 extra=${3:-} tag="slipway/stack-$1:$SUITE"
  local want have
  want=$(printf '%s\n' "$SUITE" "$packages" "$extra" | sha256sum | cut -d ' ' -f 1)
  have=$(docker image inspect --format '{{ index .Config.Labels "slipway.stack.packages" }}' \
    "$tag" 2>/dev/null || true)
  if [ "${FORCE:-0}" != 1 ] && [ "$have" = "$want" ]; then
    echo "-----> $tag already present"
    return
  fi
  if [ -n "$have" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "-----> $tag was built from other packages; rebuilding"
  fi
  echo "-----> building $tag from Debian $SUITE packages"
  local root; root=$(mktemp -d "${TMPDIR:-/tmp}/slipway-stack-$name.XXXXXX")
  mkdir -p "$CACHE/debootstrap/$name"
  debootstrap --variant=minbase --include="$packages" --cache-dir="$CACHE/debootstrap/$name" \
    "$SUITE" "$root" "$MIRROR" > "$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
  if [ -n "$extra" ]; then
    mount -t proc proc "$root/proc"
    cp "$root/etc/resolv.conf" "$root/etc/resolv.conf.orig" 2>/dev/null || true
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mkdir -p "$CACHE/apt/$name"
    local rc=0
    { chroot "$root" apt-get update -qq && chroot "$root" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends -o Dir::Cache::archives=/var/cache/apt/archives $extra; } \
        > "$root.apt.log" 2>&1 || rc=$?
    umount "$root/proc"
    [ "$rc" = 0 ] || { tail -20 "$root.apt.log"; exit 1; }
    rm -f "$root.apt.log"
  fi
  chroot "$root" groupadd --gid 1000 slipway
  chroot "$root" useradd --uid 1000 --gid 1000 --create-home --shell /bin/sh slipway
  mkdir -p "$root/workspace" "$root/layers"
  chown 1000:1000 "$root/workspace" "$root/layers"
  # Trim what a container never needs and what changes on every run.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/tmp/* "$root"/root/.cache
  find "$root" -newermt "@$EPOCH" -exec touch --no-dereference --date="@$EPOCH" {} + 2>/dev/null || true
  tar --numeric-owner --sort=name --mtime="@$EPOCH" -C "$root" -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'USER 1000:1000' \
        --change 'WORKDIR /workspace' \
        --change 'CMD ["/bin/sh"]' \
        --change "LABEL slipway.stack.packages=$want" \
        - "$tag" >/dev/null
  rm -rf "$root" "$root.log"
  echo "-----> $tag built"
}

build_image run "$RUN_PACKAGES" &
run_pid=$!
build_image build "$BUILD_PACKAGES" "$BUILD_APT_EXTRA"
wait "$run_pid"
