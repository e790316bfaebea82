#!/usr/bin/env bash
# The CUDA backend on a real GPU, for a session that has one (CI has none: tests/cuda_*.rs
# check the kernels there with NVRTC and the CPU emulator).
#
#   scripts/gpu-check.sh pack      (here) builds examples/cuda_check in release and copies it,
#                                  stripped, with the fixtures it reads into .gpu-pack/
#                                  (about 25 MiB; ignored by git through .git/info/exclude).
#   scripts/gpu-check.sh run [--sanitize]
#                                  (on the GPU machine, from the repository root, with
#                                  .gpu-pack carried) runs it: NVRTC compiles every kernel for
#                                  the device, tiny-mixtral Q8_0 and F16 go through the engine's
#                                  forward on the GPU and are compared with the CPU backend and
#                                  with llama.cpp (experts, argmax, logits), then decode-shaped
#                                  launches per decode step and matvec timings are printed. --sanitize runs the parity part
#                                  again under compute-sanitizer memcheck and racecheck.
#                                  Output goes to stdout and, when $OUT is set, $OUT/gpu-check.log.
#
# NVRTC there: the python3 wheels (nvidia-cuda-nvrtc) or /usr/local/cuda, found by the library
# itself; XDAN_NVRTC overrides. Compiled kernels are cached in $XDAN_CACHE_DIR (default here:
# /tmp/xdan-cache). The machine needs a glibc at least as new as the build machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
pack=.gpu-pack

case "${1:-}" in
pack)
    cargo build --release --example cuda_check
    rm -rf "$pack"
    mkdir -p "$pack/data/quant" "$pack/data/tiny-mixtral"
    cp target/release/examples/cuda_check "$pack/"
    strip "$pack/cuda_check" 2>/dev/null || true
    for t in Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M MXFP4; do cp "tests/data/quant/${t}_real.bin" "$pack/data/quant/"; done
    for v in Q8_0 F16; do
        mkdir -p "$pack/data/tiny-mixtral/$v"
        cp "tests/data/tiny-mixtral/$v/tiny-mixtral-$v.gguf" "tests/data/tiny-mixtral/$v/logits_p1.bin" \
           "tests/data/tiny-mixtral/$v/routing_order_p1.bin" "$pack/data/tiny-mixtral/$v/"
    done
    ex="$(git rev-parse --git-path info/exclude)"
    grep -qx "/$pack/" "$ex" 2>/dev/null || echo "/$pack/" >> "$ex"
    du -sh "$pack"
    echo "now: device run, carry [\"$pack\"], command: bash scripts/gpu-check.sh run"
    ;;
run)
    export XDAN_CACHE_DIR="${XDAN_CACHE_DIR:-/tmp/xdan-cache}"
    log="${OUT:-/tmp}/gpu-check.log"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$log" || true
    set +e
    "$pack/cuda_check" "$pack/data" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    if [ "${2:-}" = "--sanitize" ] && command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck; do
            echo "== compute-sanitizer --tool $tool" | tee -a "$log"
            compute-sanitizer --tool "$tool" --error-exitcode 3 "$pack/cuda_check" "$pack/data" 2>&1 | tail -n 30 | tee -a "$log"
            r=${PIPESTATUS[0]}
            [ "$r" -ne 0 ] && rc=$r
        done
    fi
    echo "gpu-check: exit $rc" | tee -a "$log"
    exit "$rc"
    ;;
*)
    sed -n '2,25p' "$0"
    exit 2
    ;;
esac
