#!/usr/bin/env bash
# Runs Slipway's whole test suite: unit tests of every crate, and the end-to-end tests that drive
# the real binary with git, OpenSSH, Docker Engine and curl. Installs what is missing and builds
# the stack images first, so it works on a machine that has never seen the project.
set -euo pipefail
cd "$(dirname "$0")/.."

# A target directory outside the clone, so repeated runs (and CI's fresh clones) reuse the build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/slipway/target}
mkdir -p "$CARGO_TARGET_DIR"

bash scripts/install-deps.sh
bash stacks/build.sh
# PostgreSQL from Debian: the database tests run on it too, then the end-to-end suite once more.
SLIPWAY_TEST_POSTGRES=$(bash scripts/postgres.sh)
export SLIPWAY_TEST_POSTGRES
cargo build -p slipway-cli
cargo test --workspace "$@"
SLIPWAY_TEST_DATABASE=postgres cargo test -p slipway-tests "$@"
