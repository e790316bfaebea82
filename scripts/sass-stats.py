#!/usr/bin/env python3
"""Static instruction counts of the quantized matvec kernels, from nvdisasm's SASS listing.

Usage: sass-stats.py LISTING.sass [KERNEL_REGEX]

For each kernel: its instructions in all, and its dot-product bodies: the stretches between
two convergence markers (BSSY) that hold __dp4a instructions (IDP). In the plain matvecs
(mul_mat_vec_<type>, the default pattern) at one row per warp there is one body per sub-block
of 32 values a lane takes in a staging round (mmvq.cu unrolls them), so a body is what a lane
executes per 32 weights, with its shared-memory (LDS) and global (LDG) loads and its
arithmetic and logic instructions (ALU: all but loads, stores, control, barriers and the
uniform datapath's U* instructions; what competes for the 64 integer lanes per clock per SM
of sm_89/sm_90, with the FP32 ones); the staging copies around it are not counted. A count of
instructions, not a speed.
"""
import re
import statistics
import sys

NOT_ALU = {'LDS', 'LDG', 'LDC', 'LD', 'STS', 'STG', 'ST', 'LDGSTS', 'LDGDEPBAR', 'DEPBAR', 'BAR', 'BRA',
           'BSSY', 'BSYNC', 'NOP', 'EXIT', 'RET', 'CALL', 'S2R', 'S2UR', 'CS2R', 'WARPSYNC', 'SHFL', 'MEMBAR',
           'ATOM', 'ATOMS', 'RED', 'ERRBAR', 'CCTL', 'YIELD'}
INSN = re.compile(r'^\s+/\*[0-9a-f]{4}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)')


def kernels(text):
    parts = re.split(r'\n\s*\.text\.(\S+):', text)
    for i in range(1, len(parts), 2):
        ops = [m.group(2) for m in (INSN.match(l) for l in parts[i + 1].split('\n')) if m]
        yield parts[i], ops


def bodies(ops):
    out, cur = [], []
    for op in ops:
        if op == 'BSSY':
            if 'IDP' in cur:
                out.append(cur)
            cur = []
        cur.append(op)
    if 'IDP' in cur:
        out.append(cur)
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pattern = re.compile(sys.argv[2] if len(sys.argv) > 2 else r'^mul_mat_vec_(?!swiglu_)[a-z0-9_]+$')
    rows = []
    for name, ops in kernels(open(sys.argv[1]).read()):
        if not pattern.search(name):
            continue
        b = bodies(ops)
        if b:
            n = statistics.median(len(x) for x in b)
            lds = statistics.median(x.count('LDS') for x in b)
            ldg = statistics.median(x.count('LDG') for x in b)
            idp = statistics.median(x.count('IDP') for x in b)
            alu = statistics.median(sum(1 for o in x if o not in NOT_ALU and not o.startswith('U')) for x in b)
            rows.append((name, len(ops), len(b), n, alu, idp, lds, ldg))
        else:
            rows.append((name, len(ops), 0, 0, 0, 0, 0, 0))
    print('| kernel | instructions | dot bodies | instructions per body (median) | ALU | IDP | LDS | LDG |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|')
    for r in sorted(rows):
        print('| %s | %d | %d | %g | %g | %g | %g | %g |' % r)


if __name__ == '__main__':
    main()
