#!/usr/bin/env bash
# Builds every fuzz target (cargo-fuzz, release, no sanitizer, debug assertions and overflow
# checks on, 16 codegen units) for fuzz/run.sh and fuzz/package.sh. Installs cargo-fuzz with
# `cargo install` when missing. The fuzz workspace's lock file starts as a copy of the main one,
# so the dependencies both share keep the versions the main crate is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
# libFuzzer's instrumentation flags are unstable-only; the stable toolchain accepts them so.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
# 16 codegen units instead of cargo-fuzz's 1: on CI's two cores the build took 7m53s instead of
# 11m03s (a deps-at-opt-level-1 profile on top was no faster: 8m54s).
cargo fuzz build -O -a -s none --codegen-units 16
