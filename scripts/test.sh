#!/usr/bin/env bash
# Runs every test of the project: the Rust suite (unit, fixture and C-ABI tests) and the
# language bindings' suites. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
scripts/fetch-smollm2.sh >/dev/null
# The model is now in the cache: tests that compare against the real file must not skip it.
export XDAN_REQUIRE_SMOLLM2=1
# NVRTC for tests/cuda_nvrtc.rs (the CUDA kernels must compile; no GPU needed). The version is
# pinned so the ptxas reports stay comparable.
python3 -m pip install --quiet --disable-pip-version-check nvidia-cuda-nvrtc-cu12==12.9.86 2>&1 \
  | grep -v "Running pip as the 'root' user" || true
cargo test --release --all-targets 2>&1

# The bindings, packaging and examples run against target/release/libxdan.so.
cargo build --release --lib 2>&1
XDAN_NO_BUILD=1 scripts/test-bindings.sh
