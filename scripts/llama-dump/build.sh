#!/usr/bin/env bash
# Builds llama.cpp b11312 (the commit tests/data's references came from: the vendored copy in the
# PyPI sdist llama-cpp-python==0.3.36) for the CPU as the fixtures were made (AVX2/FMA/F16C,
# no AVX-512 even where the machine has it, OpenMP, llamafile sgemm), and dump.cpp against it.
# Prints the path of the dump tool. Needs g++ and pip (cmake from PyPI when missing); ~10 min on
# 2 cores, once. LLAMA_BENCH=1 also builds build/bin/llama-bench.
#
#   scripts/llama-dump/build.sh [WORKDIR]       (default target/llama-dump)
# Then, e.g. for a prompt then two single-token steps:
#   $(scripts/llama-dump/build.sh) MODEL /tmp/l 1 2 3 -- 4 -- 5
#   cargo run --release --example dump_passes -- MODEL /tmp/x 1 2 3 -- 4 -- 5
#   python3 scripts/llama-dump/compare.py /tmp/l /tmp/x
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(realpath -m "${1:-$here/../../target/llama-dump}")
src="$work/llama_cpp_python-0.3.36/vendor/llama.cpp"
mkdir -p "$work"
if [ ! -d "$src" ]; then
    # The sdist alone: ":all:" would also build pip's build requirements (cmake) from source.
    pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$work" >&2
    tar xzf "$work/llama_cpp_python-0.3.36.tar.gz" -C "$work"
fi
if [ ! -e "$src/build/CMakeCache.txt" ]; then
    command -v cmake > /dev/null || pip install --quiet cmake >&2
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
        -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
fi
# Up to date in seconds when built before; LLAMA_BENCH=1 also builds llama-bench (docs/perf.md).
cmake --build "$src/build" -j "$(nproc)" --target llama ${LLAMA_BENCH:+llama-bench} >&2
g++ -O2 -std=c++17 "$here/dump.cpp" -I"$src/include" -I"$src/ggml/include" -L"$src/build/bin" \
    -lllama -lggml -lggml-base -Wl,-rpath,"$src/build/bin" -o "$work/dump"
echo "$work/dump"
