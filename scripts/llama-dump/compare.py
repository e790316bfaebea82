#!/usr/bin/env python3
"""Compares xdan's XDAN_DUMP_DIR activations with llama.cpp's (dump.cpp), pass by pass: for
each pass, the first (layer, tensor) where they differ and by how much, then the last logits.

    compare.py LLAMA_DIR XDAN_DIR          (needs numpy)
"""
import os
import sys

import numpy as np

NAMES = ["attn_norm", "Qcur", "Kcur", "Vcur", "kqv_out", "attn_out", "ffn_inp", "ffn_norm", "ffn_out", "l_out"]


def load(path):
    return np.fromfile(path, dtype=np.float32) if os.path.exists(path) else None


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ldir, xdir = sys.argv[1:]
    p = 0
    while os.path.isdir(f"{ldir}/pass-{p}") and os.path.isdir(f"{xdir}/pass-{p}"):
        lp, xp = f"{ldir}/pass-{p}", f"{xdir}/pass-{p}"
        first, worst, layer = None, 0.0, 0
        while os.path.exists(f"{xp}/l_out-{layer}.bin"):
            for name in NAMES:
                a, b = load(f"{xp}/{name}-{layer}.bin"), load(f"{lp}/{name}-{layer}.bin")
                if a is None or b is None or a.size != b.size:
                    continue
                d = float(np.abs(a - b).max())
                worst = max(worst, d)
                if d > 0 and first is None:
                    first = (layer, name, d)
            layer += 1
        ll, xl = load(f"{lp}/logits.bin"), load(f"{xp}/last_logits.bin")
        dl = float(np.abs(ll[-xl.size:] - xl).max()) if ll is not None and xl is not None else float("nan")
        where = "identical activations" if first is None else f"first difference: layer {first[0]} {first[1]} by {first[2]:.3g}"
        print(f"pass {p}: {layer} layers, {where}, worst {worst:.3g}; last logits max |diff| {dl:.4g}")
        p += 1
    if p == 0:
        sys.exit("no pass-0 in both folders")


main()
