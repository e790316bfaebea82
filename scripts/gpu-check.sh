#!/usr/bin/env bash
# The CUDA backend on a real GPU, in one run (CI has no GPU: tests/cuda_*.rs check the kernels
# there with NVRTC and the CPU emulator).
#
#   scripts/gpu-check.sh pack   (here, with Rust) builds the tools in release, strips them and
#                               copies them with the data they read into .gpu-pack/ (ignored by
#                               git through .git/info/exclude); prints its size and fails above
#                               56 MiB (the device tool carries 64 MiB with the tracked tree).
#                               Fixture models are added smallest first up to 54 MiB.
#   scripts/gpu-check.sh run    (on the GPU machine, from the repository root, .gpu-pack carried;
#                               no Rust or network needed) runs the stages below, each under its
#                               own `timeout`, all within TOTAL seconds (default 470): a stage
#                               gets min(its cap, what is left); one without time is skipped.
#
# Stages (cap, expected time on an H100/H200):
#   a  nvidia-smi: card, driver, memory                                        (10 s, 1 s)
#   b  cuda_parity: CUDA vs CPU on every carried tiny-mixtral fixture (and vs
#      llama.cpp's greedy tokens) and on a random tiny-mixtral model of every
#      weight type; prompt logits within a per-type tolerance, 16 greedy steps  (50 s, 15 s)
#   b2 the same, random Q8_0/Q4_K/IQ2_XXS models, 150 steps: attention past 64
#      positions (split, merged by the last block)                             (30 s, 10 s)
#   b3 the same with the fused decode kernels (XDAN_CUDA_FUSION=1), 40 steps   (30 s, 10 s)
#   c  compute-sanitizer --tool memcheck on one small parity run (random Q4_K,
#      2 steps), if compute-sanitizer is installed                             (45 s, 20 s)
#   d  cuda_check: kernels, Q8_0/F16 forward parity through the matvecs and
#      the prefill GEMMs, launches per decode step, matvec and GEMM timings    (40 s, 20 s)
#   d2 the C API test (tests/c/api_test.c, 590+ checks) against the packed library, whose
#      XDAN_DEVICE_AUTO contexts land on the GPU there                         (60 s, 10 s)
#   d3 cuda_check --mmvq-sweep: the decode matvecs of every type for each block shape
#      of MmvqShape::SWEEP (mmvq.cu compiled per shape, side by side), one table,
#      outputs equal across shapes bit for bit                                 (100 s, 50 s)
#      (alone: .gpu-pack/cuda_check .gpu-pack/data --mmvq-sweep)
#   e  make_model a Mixtral-8x7B-shaped random model, llama.cpp's IQ2_XXS mix
#      (~12 GB), in /dev/shm if it has room, else /tmp                         (30 s, 10 s)
#      bench_gpu: pp512 + tg64 x3 next to the measured copy bandwidth and the
#      roofline (its --budget keeps it inside the limit); delete the model     (70 s, 30 s)
#      the GPU time of 32 decode steps by kernel: under nsys if installed (75 s), and by CUDA
#      events (XDAN_CUDA_PROFILE=1, graph replay off)                          (40 s, 15 s)
#      then decode alone (tg64 x2) with graph replay off, the fused kernels on, the matvec
#      block shape of before, programmatic dependent launches on (alone and with the fused
#      kernels), one change at a time                                       (5 x 25 s, 5 x 8 s)
#      and decode after a 2048-token context (--depth 2048)                    (30 s, 10 s)
#      and pp512 + tg16 with vram_budget 6 GiB: experts partly on the CPU      (40 s, 20 s)
#   f  the same at Q4_K_M (~27 GB)                                     (45 s, 25 s; 80 s, 40 s)
#
# A dry run without a GPU (stages a-d fail or skip, e/f run small on the CPU):
#   OUT=/tmp/gc MODEL_ARGS="--layers 2 --embd 256 --ff 512 --heads 8 --heads-kv 2" \
#   BENCH_DEVICE=cpu bash scripts/gpu-check.sh run
#
# Output: everything to stdout and $OUT/gpu-check.log (appended stage by stage, so a later
# failure or timeout keeps what came before); the benchmark table alone in $OUT/bench.md;
# a summary of the stages at the end. Without $OUT, /tmp. Exit 0 when every stage passed.
#
# NVRTC there: the python3 wheels (nvidia-cuda-nvrtc) or /usr/local/cuda, found by the library
# itself; XDAN_NVRTC overrides. Compiled kernels are cached in $XDAN_CACHE_DIR (default here:
# /tmp/xdan-cache), so only the first stage compiles. The machine needs a glibc at least as new
# as the build machine's.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=.gpu-pack
tools="cuda_check cuda_parity bench_gpu make_model"

case "${1:-}" in
pack)
    set -e
    args=""
    for t in $tools; do args="$args --example $t"; done
    # shellcheck disable=SC2086
    cargo build --release $args
    rm -rf "$pack"
    mkdir -p "$pack/data/quant" "$pack/data/tiny-mixtral"
    for t in $tools; do
        cp "target/release/examples/$t" "$pack/"
        strip "$pack/$t" 2>/dev/null || true
    done
    for t in Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M MXFP4; do cp "tests/data/quant/${t}_real.bin" "$pack/data/quant/"; done
    fix=tests/data/tiny-mixtral
    add() {  # variant, files...
        local v=$1; shift
        mkdir -p "$pack/data/tiny-mixtral/$v"
        for f in "$@"; do cp "$fix/$v/$f" "$pack/data/tiny-mixtral/$v/"; done
    }
    # cuda_check reads Q8_0 and F16 with llama.cpp's logits and expert order of prompt p1.
    for v in Q8_0 F16; do add "$v" "tiny-mixtral-$v.gguf" logits_p1.bin routing_order_p1.bin refs.json; done
    # The C API test (tests/c/api_test.c) against the library, found next to it ($ORIGIN), with
    # the arguments tests/capi.rs gives it; with XDAN_DEVICE_AUTO it runs on the GPU there.
    mkdir -p "$pack/capi"
    cargo build --release --lib
    cp target/release/libxdan.so "$pack/capi/libxdan.so.1"
    strip "$pack/capi/libxdan.so.1" 2>/dev/null || true
    ${CC:-cc} -std=c11 -O1 -Wall -Wextra -Werror -pthread -I include tests/c/api_test.c -o "$pack/capi/api_test" \
        "$pack/capi/libxdan.so.1" -Wl,-rpath,'$ORIGIN'
    cp tests/data/tokenizer/vocabs/ggml-vocab-llama-spm.gguf tests/data/tokenizer/vocabs/ggml-vocab-qwen2.gguf "$pack/capi/"
    python3 - "$pack" > "$pack/capi/args" <<'PY'
import json, sys
pack = sys.argv[1]
refs = json.load(open("tests/data/tiny-mixtral/Q8_0/refs.json"))
p1 = next(p for p in refs["prompts"] if p["name"] == "p1")
case = next(c for c in json.load(open("tests/data/tokenizer/llama-spm.json"))["cases"]
            if c["text"] == "The quick brown fox jumps over the lazy dog.")
mode = case["add_special"]
ids = lambda v: ",".join(str(x) for x in v)
for a in (f"{pack}/data/tiny-mixtral/Q8_0/tiny-mixtral-Q8_0.gguf", f"{pack}/capi/ggml-vocab-llama-spm.gguf",
          f"{pack}/capi/ggml-vocab-qwen2.gguf", "/tmp/xdan-capi", ids(p1["ids"]), ids(refs["greedy"]["ids"]),
          case["text"], ids(mode["ids"]), mode["detokenize"], mode["detokenize_nospecial"]):
    print(a)
PY
    cap=$((54 << 20))
    for f in $(ls -S -r "$fix"/*/tiny-mixtral-*.gguf); do
        v=$(basename "$(dirname "$f")")
        [ -e "$pack/data/tiny-mixtral/$v" ] && continue
        size=$(du -sb "$pack" | cut -f1)
        [ $((size + $(stat -c %s "$f") + 20000)) -gt "$cap" ] && continue
        add "$v" "tiny-mixtral-$v.gguf" refs.json
    done
    ex="$(git rev-parse --git-path info/exclude)"
    grep -qx "/$pack/" "$ex" 2>/dev/null || echo "/$pack/" >> "$ex"
    bytes=$(du -sb "$pack" | cut -f1)
    echo "fixtures packed: $(ls "$pack/data/tiny-mixtral" | tr '\n' ' ')"
    echo "pack: $pack, $bytes bytes ($((bytes >> 20)) MiB)"
    if [ "$bytes" -gt $((56 << 20)) ]; then
        echo "pack: over the 56 MiB limit" >&2
        exit 1
    fi
    echo "now: device run, carry [\"$pack\"], command: bash scripts/gpu-check.sh run"
    ;;
run)
    export XDAN_CACHE_DIR="${XDAN_CACHE_DIR:-/tmp/xdan-cache}"
    out="${OUT:-/tmp}"
    log="$out/gpu-check.log"
    md="$out/bench.md"
    total="${TOTAL:-470}"
    : > "$log"
    : > "$md"
    summary=()
    failed=0
    say() { echo "$*" | tee -a "$log"; }
    # stage NAME CAP COMMAND...: runs under min(CAP, time left) seconds, logs, records.
    stage() {
        local name=$1 cap=$2; shift 2
        local left=$((total - SECONDS - 5))
        local t=$((cap < left ? cap : left))
        if [ "$t" -lt 5 ]; then
            say "== $name: SKIPPED (no time left)"
            summary+=("$name: skipped (time)")
            failed=1
            return 1
        fi
        say "== $name [limit ${t} s, at ${SECONDS} s]"
        local t0=$SECONDS
        timeout -k 5 "$t" "$@" 2>&1 | tee -a "$log"
        local rc=${PIPESTATUS[0]}
        local what="rc $rc"
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="TIMEOUT after ${t} s"
        say "-> $name: $what in $((SECONDS - t0)) s"
        summary+=("$name: $what, $((SECONDS - t0)) s")
        [ "$rc" -ne 0 ] && failed=1
        return "$rc"
    }
    # A directory with room for BYTES, else /tmp.
    room() {
        local need=$1
        local avail
        avail=$(df -B1 --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ')
        if [ -n "$avail" ] && [ "$avail" -gt "$need" ]; then echo /dev/shm; else echo /tmp; fi
    }
    # bench MIX BYTES_ESTIMATE MAKE_CAP BENCH_CAP: make the model, bench it, delete it.
    bench() {
        local mix=$1 need=$2 mcap=$3 cap=$4
        local dir
        dir=$(room "$need")
        local model="$dir/xdan-bench-$mix.gguf"
        say "model: $model (free there: $(df -h --output=avail "$dir" | tail -n 1 | tr -d ' '))"
        # shellcheck disable=SC2086
        stage "make $mix" "$mcap" "$pack/make_model" "$model" --mix "$mix" ${MODEL_ARGS:-} \
            && { local left=$((total - SECONDS - 10)); local b=$((cap < left ? cap : left));
                 stage "bench $mix" "$b" "$pack/bench_gpu" --model "$model" --device "${BENCH_DEVICE:-cuda}" -p 512 -n 64 -r 3 \
                     --budget $((b - 10)) --label "Mixtral-8x7B shape, random, $mix" --md "$md"; }
        # Where the decode time comes from, on the IQ2_XXS model: GPU time by kernel, then
        # decode alone with one setting changed at a time (graph replay off, the fused decode
        # kernels on, the matvec block shape of before, programmatic dependent launches).
        if [ "$mix" = iq2_xxs ] && [ -e "$model" ]; then
            # The GPU time of a decode step by kernel, when Nsight Systems is installed.
            nsys=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -n 1)
            if [ -n "$nsys" ]; then
                stage "profile $mix (nsys, decode by kernel)" 75 sh -c "\"$nsys\" profile -q -t cuda --cuda-graph-trace=node -o /tmp/xdan-prof -f true \
                    \"$pack/bench_gpu\" --model \"$model\" -p 0 -n 32 -r 1 --bw-mib 64 --budget 30 >/dev/null \
                    && \"$nsys\" stats -q --report cuda_gpu_kern_sum --format table /tmp/xdan-prof.nsys-rep | cut -c1-220 | head -n 40"
            else
                say "== profile: SKIPPED (nsys not found)"
            fi
            # The same by CUDA events around each launch (graph replay off; the events add a
            # little time per launch): the table the device prints when it is dropped.
            stage "profile $mix (events, decode by kernel)" 40 env XDAN_CUDA_PROFILE=1 "$pack/bench_gpu" --model "$model" \
                --device "${BENCH_DEVICE:-cuda}" -p 0 -n 32 -r 1 --bw-mib 64 --budget 25
            for v in XDAN_CUDA_GRAPHS=0 XDAN_CUDA_FUSION=1 XDAN_CUDA_MMVQ=4,1,1 XDAN_CUDA_PDL=1 "XDAN_CUDA_PDL=1 XDAN_CUDA_FUSION=1"; do
                # shellcheck disable=SC2086  # $v may set two variables
                stage "ablate $mix $v" 25 env $v "$pack/bench_gpu" --model "$model" --device "${BENCH_DEVICE:-cuda}" -p 0 -n 64 -r 2 \
                    --budget 18 --bw-mib 256 --label "Mixtral-8x7B shape, random, $mix, $v" --md "$md"
            done
            # Decode after a 2048-token context: what attention costs once positions add up.
            stage "decode $mix after 2048 tokens" 30 "$pack/bench_gpu" --model "$model" --device "${BENCH_DEVICE:-cuda}" \
                -p 0 -n 64 -r 2 --depth 2048 --budget 24 --bw-mib 256 --label "Mixtral-8x7B shape, random, $mix, tg64 after 2048" --md "$md"
            # A budget the experts do not fit in: about two thirds of them stay in host memory
            # (the RTX 4090 case for a model over 24 GB); decode computes them on the CPU, the
            # 512-token prefill brings each layer's over to the GPU.
            stage "hybrid $mix, vram_budget 6 GiB" 40 "$pack/bench_gpu" --model "$model" --device "${BENCH_DEVICE:-cuda}" \
                -p 512 -n 16 -r 1 --vram-gib 6 --budget 32 --bw-mib 256 --label "Mixtral-8x7B shape, random, $mix, vram_budget 6 GiB" --md "$md"
        fi
        rm -f "$model"
    }

    say "gpu-check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -srm), budget ${total} s"
    stage "a nvidia-smi" 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv
    stage "b parity" 50 "$pack/cuda_parity" "$pack/data"
    # A longer decode (positions past 64: attention in several splits, merged by the last block)
    # and the fused decode kernels, against the CPU.
    stage "b2 parity, 150 steps" 30 "$pack/cuda_parity" "$pack/data" --no-fixtures --types Q8_0,Q4_K,IQ2_XXS --steps 150
    stage "b3 parity, fused kernels" 30 env XDAN_CUDA_FUSION=1 "$pack/cuda_parity" "$pack/data" --no-fixtures \
        --types Q8_0,Q4_K,Q6_K,IQ2_XXS,IQ4_XS --steps 40
    san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
    if [ -n "$san" ]; then
        stage "c memcheck" 45 "$san" --tool memcheck --error-exitcode 3 \
            "$pack/cuda_parity" "$pack/data" --no-fixtures --types Q4_K --steps 2 --lazy
    else
        say "== c memcheck: SKIPPED (compute-sanitizer not found)"
        summary+=("c memcheck: skipped (no compute-sanitizer)")
    fi
    stage "d cuda_check" 40 "$pack/cuda_check" "$pack/data"
    if [ -x "$pack/capi/api_test" ]; then
        mkdir -p /tmp/xdan-capi
        mapfile -t capi_args < "$pack/capi/args"
        stage "d2 C API test (AUTO: the GPU)" 60 env XDAN_TEST_OTHER_MODEL="$pack/data/tiny-mixtral/F16/tiny-mixtral-F16.gguf" \
            "$pack/capi/api_test" "${capi_args[@]}"
    fi
    stage "d3 matvec block shapes" 100 "$pack/cuda_check" "$pack/data" --mmvq-sweep
    {
        echo "GPU benchmark, $(date -u '+%Y-%m-%d'): $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
        echo "Mixtral-8x7B shape (32 layers, 4096 embd, 14336 ff, 8 experts top-2, 32000 vocab), random weights;"
        echo "pp512 = one 512-token prefill step, tg64 = 64 single-token decode steps, mean ± sd of up to 3 runs;"
        echo "roofline = measured device copy rate (read+write bytes/s) / weight bytes read per decode token."
        [ -n "${MODEL_ARGS:-}" ] && echo "(shape overridden: make_model $MODEL_ARGS; device ${BENCH_DEVICE:-cuda})"
        echo
    } >> "$md"
    bench iq2_xxs $((14 << 30)) 30 70
    bench q4_k_m $((29 << 30)) 45 80

    say ""
    say "== summary (${SECONDS} s of ${total})"
    for s in "${summary[@]}"; do say "  $s"; done
    say "  check lines in the log: $(grep -c '^ok ' "$log") ok, $(grep -c '^FAIL' "$log") FAIL, $(grep -c '^n/a ' "$log") n/a, $(grep -c '^n/c ' "$log") n/c (not compared)"
    say ""
    cat "$md" | tee -a "$log"
    say "gpu-check: $([ "$failed" -eq 0 ] && echo 'all stages passed' || echo 'some stage FAILED'), ${SECONDS} s"
    exit "$failed"
    ;;
*)
    sed -n '2,43p' "$0"
    exit 2
    ;;
esac
