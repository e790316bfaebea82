#!/usr/bin/env bash
# Runs every test of the project: the Rust suite (unit, fixture and C-ABI tests) and the
# language bindings' suites. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
scripts/fetch-smollm2.sh >/dev/null
cargo test --release --all-targets 2>&1
