#!/usr/bin/env bash
# Static instruction counts of a kernel program's machine code (no GPU needed): compiles it with
# NVRTC (examples/kernel_cubin.rs), disassembles it with nvdisasm (the `nvidia-cuda-nvdisasm`
# wheel, installed under target/sass-tools on first use) and prints scripts/sass-stats.py's table.
# Usage: scripts/sass-stats.sh [PROGRAM (mmvq.cu)] [ARCH (90)] [KERNEL_REGEX]
set -euo pipefail
cd "$(dirname "$0")/.."
prog=${1:-mmvq.cu}
arch=${2:-90}
tools=target/sass-tools
nvdisasm=$(find "$tools" -name nvdisasm -type f 2>/dev/null | head -1 || true)
if [ -z "$nvdisasm" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$tools" nvidia-cuda-nvdisasm 2>&1 \
    | grep -v "Running pip as the 'root' user" || true
  nvdisasm=$(find "$tools" -name nvdisasm -type f | head -1)
fi
cargo build --release --quiet --example kernel_cubin
out=target/sass
mkdir -p "$out"
cubin="$out/${prog%.cu}-sm$arch.cubin"
./target/release/examples/kernel_cubin "$prog" "$arch" "$cubin" >/dev/null 2>&1
# nvdisasm warns that it falls back to its older listing format for NVRTC's CUBINs; harmless.
"$nvdisasm" -c "$cubin" 2>/dev/null > "${cubin%.cubin}.sass"
python3 scripts/sass-stats.py "${cubin%.cubin}.sass" ${3:+"$3"}
