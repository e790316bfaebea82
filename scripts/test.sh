#!/usr/bin/env bash
# Runs every test of the project: the Rust suite (unit, fixture and C-ABI tests) and the
# language bindings' suites. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
scripts/fetch-smollm2.sh >/dev/null
# The model is now in the cache: tests that compare against the real file must not skip it.
export XDAN_REQUIRE_SMOLLM2=1
cargo test --release --all-targets 2>&1

# The bindings, packaging and examples run against target/release/libxdan.so.
cargo build --release --lib 2>&1
XDAN_NO_BUILD=1 scripts/test-bindings.sh
