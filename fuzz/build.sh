#!/usr/bin/env bash
# Builds every fuzz target (cargo-fuzz, release, no sanitizer, debug assertions and overflow
# checks on) for fuzz/run.sh and fuzz/package.sh. Installs cargo-fuzz with `cargo install` when
# missing. The fuzz workspace's lock file starts as a copy of the main one, so the dependencies
# both share keep the versions the main crate is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
# libFuzzer's instrumentation flags are unstable-only; the stable toolchain accepts them so.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
cargo fuzz build -O -a -s none
