// Per-type dot products of one 32-value sub-block of a GGML block with a q8_1 activation
// block: `dot_<type>(block, sub, a)`, for the matvecs (mmvq.cu). The GEMM and the row gather
// decode values with the block decoders of dequant.cuh.
#pragma once
#include "common.cuh"

__constant__ int8_t xd_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// Q4_0: {f16 d; u8 qs[16]}: value j = (qs[j] & 15) - 8, value j+16 = (qs[j] >> 4) - 8.
__device__ __forceinline__ float dot_q4_0(const uint8_t* b, int, const xd_q8_1& a) {
    const uint8_t* qs = b + 2;
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int v = xd_ld32(qs + 4 * k);
        sum = __dp4a(v & 0x0F0F0F0F, a.qs[k], sum);
        sum = __dp4a((v >> 4) & 0x0F0F0F0F, a.qs[k + 4], sum);
    }
    return xd_ldh(b) * (a.d * float(sum) - 8.0f * a.s);
}

// Q4_1: {f16 d; f16 m; u8 qs[16]}: value = d * q + m.
__device__ __forceinline__ float dot_q4_1(const uint8_t* b, int, const xd_q8_1& a) {
    const uint8_t* qs = b + 4;
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int v = xd_ld32(qs + 4 * k);
        sum = __dp4a(v & 0x0F0F0F0F, a.qs[k], sum);
        sum = __dp4a((v >> 4) & 0x0F0F0F0F, a.qs[k + 4], sum);
    }
    return xd_ldh(b) * a.d * float(sum) + xd_ldh(b + 2) * a.s;
}

// Four bits of `x` (bits 0..3) moved to bit 4 of each byte of the result.
__device__ __forceinline__ int xd_spread4_bit4(uint32_t x) {
    return int(((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25));
}

// Q5_0: {f16 d; u8 qh[4]; u8 qs[16]}: the fifth bit of value j is bit j of qh; minus 16.
__device__ __forceinline__ float dot_q5_0(const uint8_t* b, int, const xd_q8_1& a) {
    const uint32_t qh = uint32_t(xd_ld32(b + 2));
    const uint8_t* qs = b + 6;
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int v = xd_ld32(qs + 4 * k);
        const int lo = (v & 0x0F0F0F0F) | xd_spread4_bit4(qh >> (4 * k));
        const int hi = ((v >> 4) & 0x0F0F0F0F) | xd_spread4_bit4(qh >> (4 * k + 16));
        sum = __dp4a(lo, a.qs[k], sum);
        sum = __dp4a(hi, a.qs[k + 4], sum);
    }
    return xd_ldh(b) * (a.d * float(sum) - 16.0f * a.s);
}

// Q5_1: {f16 d; f16 m; u8 qh[4]; u8 qs[16]}: value = d * q5 + m.
__device__ __forceinline__ float dot_q5_1(const uint8_t* b, int, const xd_q8_1& a) {
    const uint32_t qh = uint32_t(xd_ld32(b + 4));
    const uint8_t* qs = b + 8;
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int v = xd_ld32(qs + 4 * k);
        const int lo = (v & 0x0F0F0F0F) | xd_spread4_bit4(qh >> (4 * k));
        const int hi = ((v >> 4) & 0x0F0F0F0F) | xd_spread4_bit4(qh >> (4 * k + 16));
        sum = __dp4a(lo, a.qs[k], sum);
        sum = __dp4a(hi, a.qs[k + 4], sum);
    }
    return xd_ldh(b) * a.d * float(sum) + xd_ldh(b + 2) * a.s;
}

// Q8_0: {f16 d; i8 qs[32]}.
__device__ __forceinline__ float dot_q8_0(const uint8_t* b, int, const xd_q8_1& a) {
    const uint8_t* qs = b + 2;
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) sum = __dp4a(xd_ld32(qs + 4 * k), a.qs[k], sum);
    return xd_ldh(b) * a.d * float(sum);
}

// A 16-entry signed byte table, its four little-endian words: uniform loads (every lane reads
// the same address), which __constant__ memory broadcasts.
__device__ __forceinline__ uint32_t xd_table_word(const int8_t* t, int w) {
    return uint32_t(uint8_t(t[4 * w])) | (uint32_t(uint8_t(t[4 * w + 1])) << 8) |
           (uint32_t(uint8_t(t[4 * w + 2])) << 16) | (uint32_t(uint8_t(t[4 * w + 3])) << 24);
}

// Four 4-bit indices (bits 0..3 of each byte of `q`, the rest zero) looked up in a 16-entry
// byte table held as words t0..t3, by byte permutes instead of per-lane (divergent) table
// loads: entries 0..7 and 8..15 are each picked by the indices' low three bits, then bit 3
// chooses between them.
__device__ __forceinline__ int xd_lookup16(uint32_t q, uint32_t t0, uint32_t t1, uint32_t t2, uint32_t t3) {
    const uint32_t x = q | (q >> 4);
    const uint32_t sel = (x & 0xffu) | ((x >> 8) & 0xff00u);  // index of byte i in nibble i
    const uint32_t lo = __byte_perm(t0, t1, sel & 0x7777u);
    const uint32_t hi = __byte_perm(t2, t3, sel & 0x7777u);
    return int(__byte_perm(lo, hi, 0x3210u | ((sel & 0x8888u) >> 1)));
}

// Sixteen bytes of IQ4 nibbles (low nibbles: values 0..15, high: 16..31) against `a`.
__device__ __forceinline__ int xd_iq4_dot16(const uint8_t* qs, const xd_q8_1& a) {
    const uint32_t t0 = xd_table_word(xd_kvalues_iq4nl, 0), t1 = xd_table_word(xd_kvalues_iq4nl, 1);
    const uint32_t t2 = xd_table_word(xd_kvalues_iq4nl, 2), t3 = xd_table_word(xd_kvalues_iq4nl, 3);
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t v = uint32_t(xd_ld32(qs + 4 * k));
        sum = __dp4a(xd_lookup16(v & 0x0F0F0F0Fu, t0, t1, t2, t3), a.qs[k], sum);
        sum = __dp4a(xd_lookup16((v >> 4) & 0x0F0F0F0Fu, t0, t1, t2, t3), a.qs[k + 4], sum);
    }
    return sum;
}

// IQ4_NL: {f16 d; u8 qs[16]}: value = d * kvalues[nibble].
__device__ __forceinline__ float dot_iq4_nl(const uint8_t* b, int, const xd_q8_1& a) {
    return xd_ldh(b) * a.d * float(xd_iq4_dot16(b + 2, a));
}

// IQ4_XS: {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: sub-block u has the 6-bit scale
// (low nibble from scales_l, two high bits from scales_h) minus 32.
__device__ __forceinline__ float dot_iq4_xs(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint32_t sh = xd_ld16(b + 2);
    const int ls = ((b[4 + u / 2] >> (4 * (u % 2))) & 15) | (((sh >> (2 * u)) & 3) << 4);
    return xd_ldh(b) * float(ls - 32) * a.d * float(xd_iq4_dot16(b + 8 + 16 * u, a));
}

// Q2_K: {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}. Sub-block u = 32 values at 2-bit shift
// 2*(u%4) of qs[32*(u/4) ..]; its two halves have scale bytes 2u and 2u+1 (low nibble: scale,
// high nibble: min).
__device__ __forceinline__ float dot_q2_k(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* q = b + 16 + 32 * (u / 4);
    const int shift = 2 * (u % 4);
    int s[2] = {0, 0}, m[2] = {0, 0};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int v = (xd_ld32(q + 4 * k) >> shift) & 0x03030303;
        s[k / 4] = __dp4a(v, a.qs[k], s[k / 4]);
        m[k / 4] = __dp4a(0x01010101, a.qs[k], m[k / 4]);
    }
    const int sc0 = b[2 * u], sc1 = b[2 * u + 1];
    const float d = xd_ldh(b + 80), dmin = xd_ldh(b + 82);
    return a.d * (d * float((sc0 & 15) * s[0] + (sc1 & 15) * s[1]) -
                  dmin * float((sc0 >> 4) * m[0] + (sc1 >> 4) * m[1]));
}

// The 6-bit signed scale i (0..15) of a Q3_K block's 12 packed scale bytes.
__device__ __forceinline__ int xd_q3k_scale(const uint8_t* sc, int i) {
    const int lo = i < 8 ? (sc[i] & 15) : (sc[i - 8] >> 4);
    const int hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

// Q3_K: {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}. Value = low 2 bits (as Q2_K) minus 4
// where bit u of hmask[l] is clear.
__device__ __forceinline__ float dot_q3_k(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* q = b + 32 + 32 * (u / 4);
    const int shift = 2 * (u % 4);
    int s[2] = {0, 0}, n[2] = {0, 0};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int v = (xd_ld32(q + 4 * k) >> shift) & 0x03030303;
        const int nh = (~xd_ld32(b + 4 * k) >> u) & 0x01010101;
        s[k / 4] = __dp4a(v, a.qs[k], s[k / 4]);
        n[k / 4] = __dp4a(nh, a.qs[k], n[k / 4]);
    }
    const uint8_t* sc = b + 96;
    return xd_ldh(b + 108) * a.d *
           float(xd_q3k_scale(sc, 2 * u) * (s[0] - 4 * n[0]) + xd_q3k_scale(sc, 2 * u + 1) * (s[1] - 4 * n[1]));
}

// Scale and min j (0..7) of the 12 packed bytes of Q4_K / Q5_K.
__device__ __forceinline__ void xd_scale_min_k4(const uint8_t* q, int j, int& sc, int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K: {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: sub-block u is the low (u even) or high
// nibbles of qs[32*(u/2) ..]; value = d*sc*q - dmin*m.
__device__ __forceinline__ float dot_q4_k(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* q = b + 16 + 32 * (u / 2);
    const int shift = 4 * (u % 2);
    int s = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) s = __dp4a((xd_ld32(q + 4 * k) >> shift) & 0x0F0F0F0F, a.qs[k], s);
    int sc, m;
    xd_scale_min_k4(b + 4, u, sc, m);
    return xd_ldh(b) * float(sc) * a.d * float(s) - xd_ldh(b + 2) * float(m) * a.s;
}

// Q5_K: {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: as Q4_K with a fifth bit,
// bit u of qh[l].
__device__ __forceinline__ float dot_q5_k(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* q = b + 48 + 32 * (u / 2);
    const int shift = 4 * (u % 2);
    int s = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int lo = (xd_ld32(q + 4 * k) >> shift) & 0x0F0F0F0F;
        const int hb = (xd_ld32(b + 16 + 4 * k) >> u) & 0x01010101;
        s = __dp4a(lo | (hb << 4), a.qs[k], s);
    }
    int sc, m;
    xd_scale_min_k4(b + 4, u, sc, m);
    return xd_ldh(b) * float(sc) * a.d * float(s) - xd_ldh(b + 2) * float(m) * a.s;
}

// Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}. Sub-block u: n = u/4, k = u%4: low
// nibbles from ql[64n + 32(k%2) ..] shifted by 4(k/2), two high bits from qh[32n ..] at 2k;
// value minus 32; halves scaled by scales[8n + 2k] and [8n + 2k + 1].
__device__ __forceinline__ float dot_q6_k(const uint8_t* b, int u, const xd_q8_1& a) {
    const int n = u / 4, k4 = u % 4;
    const uint8_t* ql = b + 64 * n + 32 * (k4 % 2);
    const uint8_t* qh = b + 128 + 32 * n;
    const int lshift = 4 * (k4 / 2), hshift = 2 * k4;
    int s[2] = {0, 0}, m[2] = {0, 0};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int lo = (xd_ld32(ql + 4 * k) >> lshift) & 0x0F0F0F0F;
        const int hi = (xd_ld32(qh + 4 * k) >> hshift) & 0x03030303;
        s[k / 4] = __dp4a(lo | (hi << 4), a.qs[k], s[k / 4]);
        m[k / 4] = __dp4a(0x01010101, a.qs[k], m[k / 4]);
    }
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * n + 2 * k4;
    return xd_ldh(b + 208) * a.d * float(sc[0] * (s[0] - 32 * m[0]) + sc[1] * (s[1] - 32 * m[1]));
}


// ---- IQ types: lattice points from the grids in global memory (iq_grids.cuh) ---------

#include "iq_grids.cuh"

// `ksigns_iq2xs`: 7 stored sign bits, the 8th makes the number of minus signs even.
__device__ __forceinline__ uint32_t xd_ksigns(uint32_t i) { return i | (uint32_t(__popc(i) & 1) << 7); }

// The four unsigned bytes of g with byte i negated where bit i of `signs` is set: the sign bits
// spread to byte masks m (0 or 0xff), then per byte (g ^ m) - m.
__device__ __forceinline__ int xd_sign4(uint32_t g, uint32_t signs) {
    const uint32_t m = (((signs & 15u) * 0x00204081u) & 0x01010101u) * 0xffu;
    return int(__vsub4(g ^ m, m));
}

// Lattice point i of a grid, through the read-only data cache.
__device__ __forceinline__ uint64_t xd_grid(const uint64_t* g, uint32_t i) { return __ldg(g + i); }
__device__ __forceinline__ uint32_t xd_grid(const uint32_t* g, uint32_t i) { return __ldg(g + i); }

// Eight grid bytes (a u64 lattice point) with sign byte `s` against q8 words w and w+1.
__device__ __forceinline__ int xd_grid8_dot(uint64_t g, uint32_t s, const xd_q8_1& a, int w, int sum) {
    sum = __dp4a(xd_sign4(uint32_t(g), s), a.qs[w], sum);
    return __dp4a(xd_sign4(uint32_t(g >> 32), s >> 4), a.qs[w + 1], sum);
}

// IQ2_XXS: {f16 d; u16 qs[32]}: sub-block u is two u32 at qs[4u]: four grid indices (bytes of
// the first), four 7-bit sign groups and a 4-bit scale (the second).
__device__ __forceinline__ float dot_iq2_xxs(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* q = b + 2 + 8 * u;
    const uint32_t idx = uint32_t(xd_ld32(q)), aux = uint32_t(xd_ld32(q + 4));
    int sum = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l)
        sum = xd_grid8_dot(xd_grid(xd_iq2xxs_grid, (idx >> (8 * l)) & 0xffu), xd_ksigns((aux >> (7 * l)) & 127u), a, 2 * l, sum);
    return xd_ldh(b) * (0.5f + float(aux >> 28)) * 0.25f * a.d * float(sum);
}

// IQ2_XS: {f16 d; u16 qs[32]; u8 scales[8]}: each u16 is a 9-bit grid index and 7 sign bits;
// the scale byte's nibbles cover the sub-block's halves.
__device__ __forceinline__ float dot_iq2_xs(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* q = b + 2 + 8 * u;
    int s[2] = {0, 0};
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint32_t v = xd_ld16(q + 2 * l);
        s[l / 2] = xd_grid8_dot(xd_grid(xd_iq2xs_grid, v & 511u), xd_ksigns(v >> 9), a, 2 * l, s[l / 2]);
    }
    const int sc = b[66 + u];
    return xd_ldh(b) * 0.25f * a.d * ((0.5f + float(sc & 15)) * float(s[0]) + (0.5f + float(sc >> 4)) * float(s[1]));
}

// IQ2_S: {f16 d; u8 qs[32]; u8 signs[32]; u8 qh[8]; u8 scales[8]}: 10-bit grid indices (two high
// bits from qh), explicit sign bytes.
__device__ __forceinline__ float dot_iq2_s(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* qs = b + 2 + 4 * u;
    const uint8_t* sg = b + 34 + 4 * u;
    const uint32_t qh = b[66 + u];
    int s[2] = {0, 0};
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint32_t idx = qs[l] | ((qh << (8 - 2 * l)) & 0x300u);
        s[l / 2] = xd_grid8_dot(xd_grid(xd_iq2s_grid, idx), sg[l], a, 2 * l, s[l / 2]);
    }
    const int sc = b[74 + u];
    return xd_ldh(b) * 0.25f * a.d * ((0.5f + float(sc & 15)) * float(s[0]) + (0.5f + float(sc >> 4)) * float(s[1]));
}

// IQ3_XXS: {f16 d; u8 qs[64]; u32 scales_signs[8]}: eight 8-bit indices of 4-value grid points
// per sub-block; the u32 holds four 7-bit sign groups and a 4-bit scale.
__device__ __forceinline__ float dot_iq3_xxs(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* q3 = b + 2 + 8 * u;
    const uint32_t aux = uint32_t(xd_ld32(b + 66 + 4 * u));
    int sum = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint32_t sg = xd_ksigns((aux >> (7 * l)) & 127u);
        sum = __dp4a(xd_sign4(xd_grid(xd_iq3xxs_grid, q3[2 * l]), sg), a.qs[2 * l], sum);
        sum = __dp4a(xd_sign4(xd_grid(xd_iq3xxs_grid, q3[2 * l + 1]), sg >> 4), a.qs[2 * l + 1], sum);
    }
    return xd_ldh(b) * (0.5f + float(aux >> 28)) * 0.5f * a.d * float(sum);
}

// IQ3_S: {f16 d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8 scales[4]}: 9-bit indices (high bit
// from qh[u]), explicit signs, odd scales 1 + 2 * nibble.
__device__ __forceinline__ float dot_iq3_s(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* qs = b + 2 + 8 * u;
    const uint32_t qh = b[66 + u];
    const uint8_t* sg = b + 74 + 4 * u;
    int sum = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint32_t g1 = xd_grid(xd_iq3s_grid, qs[2 * l] | ((qh << (8 - 2 * l)) & 256u));
        const uint32_t g2 = xd_grid(xd_iq3s_grid, qs[2 * l + 1] | ((qh << (7 - 2 * l)) & 256u));
        sum = __dp4a(xd_sign4(g1, sg[l]), a.qs[2 * l], sum);
        sum = __dp4a(xd_sign4(g2, uint32_t(sg[l]) >> 4), a.qs[2 * l + 1], sum);
    }
    const int nib = (b[106 + u / 2] >> (4 * (u % 2))) & 15;
    return xd_ldh(b) * float(1 + 2 * nib) * a.d * float(sum);
}

// IQ1_S: {f16 d; u8 qs[32]; u16 qh[8]}: 11-bit indices of {-1,0,1} grid points, a 3-bit scale
// and the sign of a shift (+-1/8) applied to every value of the sub-block.
__device__ __forceinline__ float dot_iq1_s(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* qs = b + 2 + 4 * u;
    const uint32_t qh = xd_ld16(b + 34 + 2 * u);
    int sum = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint64_t g = xd_grid(xd_iq1s_grid, qs[l] | (((qh >> (3 * l)) & 7u) << 8));
        sum = __dp4a(int(uint32_t(g)), a.qs[2 * l], sum);
        sum = __dp4a(int(uint32_t(g >> 32)), a.qs[2 * l + 1], sum);
    }
    const float dl = xd_ldh(b) * float(2 * ((qh >> 12) & 7u) + 1);
    const float delta = (qh & 0x8000u) ? -0.125f : 0.125f;
    return dl * (a.d * float(sum) + delta * a.s);
}

// IQ1_M: {u8 qs[32]; u8 qh[16]; u16 scales[4]}: the f16 super-block scale is spread over the top
// nibbles of the four scale words; per 8 values its own shift sign, per 16 a 3-bit scale.
__device__ __forceinline__ float dot_iq1_m(const uint8_t* b, int u, const xd_q8_1& a) {
    const uint8_t* qs = b + 4 * u;
    const uint8_t* qh = b + 32 + 2 * u;
    const uint32_t s0 = xd_ld16(b + 48), s1 = xd_ld16(b + 50), s2 = xd_ld16(b + 52), s3 = xd_ld16(b + 54);
    const float d = xd_h2f(uint16_t((s0 >> 12) | ((s1 >> 8) & 0xf0u) | ((s2 >> 4) & 0xf00u) | (s3 & 0xf000u)));
    const uint32_t sw = xd_ld16(b + 48 + 2 * (u / 2));
    const int sh = 6 * (u % 2);
    float part[2] = {0.0f, 0.0f};
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint32_t h = qh[l / 2];
        const uint32_t idx = qs[l] | ((l % 2 ? (h << 4) : (h << 8)) & 0x700u);
        const uint64_t g = xd_grid(xd_iq1s_grid, idx);
        int s = __dp4a(int(uint32_t(g)), a.qs[2 * l], 0);
        s = __dp4a(int(uint32_t(g >> 32)), a.qs[2 * l + 1], s);
        int m = __dp4a(0x01010101, a.qs[2 * l], 0);
        m = __dp4a(0x01010101, a.qs[2 * l + 1], m);
        const float delta = (h & (l % 2 ? 0x80u : 0x08u)) ? -0.125f : 0.125f;
        part[l / 2] += float(s) + delta * float(m);
    }
    const float dl1 = d * float(2 * ((sw >> sh) & 7u) + 1);
    const float dl2 = d * float(2 * ((sw >> (sh + 3)) & 7u) + 1);
    return a.d * (dl1 * part[0] + dl2 * part[1]);
}

// MXFP4: {u8 e (E8M0); u8 qs[16]}: value = kvalues_mxfp4[nibble] * 2^(e - 128) (the table holds
// doubled E2M1 values). The 17-byte blocks are byte-aligned, so bytes are read one by one.
__constant__ int8_t xd_kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

__device__ __forceinline__ float dot_mxfp4(const uint8_t* b, int, const xd_q8_1& a) {
    const uint32_t e = b[0];
    const float d = __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
    const uint8_t* qs = b + 1;
    const uint32_t t0 = xd_table_word(xd_kvalues_mxfp4, 0), t1 = xd_table_word(xd_kvalues_mxfp4, 1);
    const uint32_t t2 = xd_table_word(xd_kvalues_mxfp4, 2), t3 = xd_table_word(xd_kvalues_mxfp4, 3);
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t v = uint32_t(qs[4 * k]) | (uint32_t(qs[4 * k + 1]) << 8) | (uint32_t(qs[4 * k + 2]) << 16) |
                           (uint32_t(qs[4 * k + 3]) << 24);
        sum = __dp4a(xd_lookup16(v & 0x0F0F0F0Fu, t0, t1, t2, t3), a.qs[k], sum);
        sum = __dp4a(xd_lookup16((v >> 4) & 0x0F0F0F0Fu, t0, t1, t2, t3), a.qs[k + 4], sum);
    }
    return d * a.d * float(sum);
}
