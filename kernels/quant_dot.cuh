// Per-type dot products of one 32-value sub-block of a GGML block with a q8_1 activation
// block: `dot_<type>(block, sub, a)`, for the matvecs (mmvq.cu). The GEMM and the row gather
// decode values with the block decoders of dequant.cuh.
#pragma once
#include "common.cuh"

__constant__ int8_t xd_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// Q4_0: {f16 d; u8 qs[16]}: value j = (qs[j] & 15) - 8, value j+16 = (qs[j] >> 4) - 8.
__device__ __forceinline__ float dot_q4_0(const uint8_t* b, int, const xd_q8_1& a, const uint8_t*) {
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
__device__ __forceinline__ float dot_q4_1(const uint8_t* b, int, const xd_q8_1& a, const uint8_t*) {
    const uint8_t* qs = b + 4;  // 20-byte blocks: 4-byte aligned
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int v = xd_ld32a(qs + 4 * k);
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
__device__ __forceinline__ float dot_q5_0(const uint8_t* b, int, const xd_q8_1& a, const uint8_t*) {
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
__device__ __forceinline__ float dot_q5_1(const uint8_t* b, int, const xd_q8_1& a, const uint8_t*) {
    const uint32_t qh = uint32_t(xd_ld32a(b + 4));  // 24-byte blocks: 4-byte aligned
    const uint8_t* qs = b + 8;
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int v = xd_ld32a(qs + 4 * k);
        const int lo = (v & 0x0F0F0F0F) | xd_spread4_bit4(qh >> (4 * k));
        const int hi = ((v >> 4) & 0x0F0F0F0F) | xd_spread4_bit4(qh >> (4 * k + 16));
        sum = __dp4a(lo, a.qs[k], sum);
        sum = __dp4a(hi, a.qs[k + 4], sum);
    }
    return xd_ldh(b) * a.d * float(sum) + xd_ldh(b + 2) * a.s;
}

// Q8_0: {f16 d; i8 qs[32]}.
__device__ __forceinline__ float dot_q8_0(const uint8_t* b, int, const xd_q8_1& a, const uint8_t*) {
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
// ALIGNED: qs is 4-byte aligned (IQ4_XS's 136-byte blocks; IQ4_NL's 18-byte ones are not).
template <bool ALIGNED>
__device__ __forceinline__ int xd_iq4_dot16(const uint8_t* qs, const xd_q8_1& a) {
    const uint32_t t0 = xd_table_word(xd_kvalues_iq4nl, 0), t1 = xd_table_word(xd_kvalues_iq4nl, 1);
    const uint32_t t2 = xd_table_word(xd_kvalues_iq4nl, 2), t3 = xd_table_word(xd_kvalues_iq4nl, 3);
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t v = uint32_t(ALIGNED ? xd_ld32a(qs + 4 * k) : xd_ld32(qs + 4 * k));
        sum = __dp4a(xd_lookup16(v & 0x0F0F0F0Fu, t0, t1, t2, t3), a.qs[k], sum);
        sum = __dp4a(xd_lookup16((v >> 4) & 0x0F0F0F0Fu, t0, t1, t2, t3), a.qs[k + 4], sum);
    }
    return sum;
}

// IQ4_NL: {f16 d; u8 qs[16]}: value = d * kvalues[nibble].
__device__ __forceinline__ float dot_iq4_nl(const uint8_t* b, int, const xd_q8_1& a, const uint8_t*) {
    return xd_ldh(b) * a.d * float(xd_iq4_dot16<false>(b + 2, a));
}

// IQ4_XS: {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: sub-block u has the 6-bit scale
// (low nibble from scales_l, two high bits from scales_h) minus 32.
__device__ __forceinline__ float dot_iq4_xs(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t*) {
    const uint32_t sh = xd_ld16(b + 2);
    const int ls = ((b[4 + u / 2] >> (4 * (u % 2))) & 15) | (((sh >> (2 * u)) & 3) << 4);
    return xd_ldh(b) * float(ls - 32) * a.d * float(xd_iq4_dot16<true>(b + 8 + 16 * u, a));
}

// Q2_K: {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}. Sub-block u = 32 values at 2-bit shift
// 2*(u%4) of qs[32*(u/4) ..]; its two halves have scale bytes 2u and 2u+1 (low nibble: scale,
// high nibble: min).
__device__ __forceinline__ float dot_q2_k(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t*) {
    const uint8_t* q = b + 16 + 32 * (u / 4);
    const int shift = 2 * (u % 4);
    int s[2] = {0, 0}, m[2] = {0, 0};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int v = (xd_ld32a(q + 4 * k) >> shift) & 0x03030303;  // 84-byte blocks: 4-byte aligned
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
__device__ __forceinline__ float dot_q3_k(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t*) {
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
__device__ __forceinline__ float dot_q4_k(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t*) {
    const uint8_t* q = b + 16 + 32 * (u / 2);  // 144-byte blocks: 16-byte aligned
    const int shift = 4 * (u % 2);
    const xd_words4 w[2] = {xd_ld128a(q), xd_ld128a(q + 16)};
    int s = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) s = __dp4a((w[k / 4].w[k % 4] >> shift) & 0x0F0F0F0F, a.qs[k], s);
    int sc, m;
    xd_scale_min_k4(b + 4, u, sc, m);
    return xd_ldh(b) * float(sc) * a.d * float(s) - xd_ldh(b + 2) * float(m) * a.s;
}

// Q5_K: {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: as Q4_K with a fifth bit,
// bit u of qh[l].
__device__ __forceinline__ float dot_q5_k(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t*) {
    const uint8_t* q = b + 48 + 32 * (u / 2);  // 176-byte blocks: 16-byte aligned
    const int shift = 4 * (u % 2);
    const xd_words4 w[2] = {xd_ld128a(q), xd_ld128a(q + 16)};
    const xd_words4 h[2] = {xd_ld128a(b + 16), xd_ld128a(b + 32)};
    int s = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int lo = (w[k / 4].w[k % 4] >> shift) & 0x0F0F0F0F;
        const int hb = (h[k / 4].w[k % 4] >> u) & 0x01010101;
        s = __dp4a(lo | (hb << 4), a.qs[k], s);
    }
    int sc, m;
    xd_scale_min_k4(b + 4, u, sc, m);
    return xd_ldh(b) * float(sc) * a.d * float(s) - xd_ldh(b + 2) * float(m) * a.s;
}

// Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}. Sub-block u: n = u/4, k = u%4: low
// nibbles from ql[64n + 32(k%2) ..] shifted by 4(k/2), two high bits from qh[32n ..] at 2k;
// value minus 32; halves scaled by scales[8n + 2k] and [8n + 2k + 1].
__device__ __forceinline__ float dot_q6_k(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t*) {
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

// 0xff in byte i of the result where bit 8i + 7 of v is set, else 0: prmt with sign-replicating
// selectors (PTX on the GPU, since __byte_perm documents only the selectors' low three bits).
__device__ __forceinline__ uint32_t xd_sign_bytes(uint32_t v) {
#if defined(__CUDA_ARCH__)
    uint32_t r;
    asm("prmt.b32 %0, %1, 0, 0xBA98;" : "=r"(r) : "r"(v));
    return r;
#else
    return __byte_perm(v, 0, 0xBA98u);
#endif
}

// Byte masks of sign byte s: bits 0..3 to the four bytes of m0, bits 4..7 to those of m1. Each
// multiply lays its four copies of the nibble side by side without overlap (so without carries),
// one sign bit landing on bit 7 of each byte.
__device__ __forceinline__ void xd_sign_masks(uint32_t s, uint32_t& m0, uint32_t& m1) {
    m0 = xd_sign_bytes((s & 0x0fu) * 0x10204080u);
    m1 = xd_sign_bytes((s & 0xf0u) * 0x01020408u);
}

// The masks of ksigns(s7) (xd_ksigns, s7 < 128) without forming it. Neither multiply needs its
// nibble masked out first: bit j of s7 lands on bits j + 7 + 7k (m0) or j + 3 + 7k (m1) for the
// four k, all distinct for j < 7 (two would need j's 7 apart), so there are no carries; the
// only one on bit 7 of byte b is j = b (m0) or j = b + 4 (m1, none for byte 3). So bit 31 of
// m1's product is clear for the parity bit.
__device__ __forceinline__ void xd_ksign_masks(uint32_t s7, uint32_t& m0, uint32_t& m1) {
    m0 = xd_sign_bytes(s7 * 0x10204080u);
    m1 = xd_sign_bytes(s7 * 0x01020408u + (uint32_t(__popc(s7)) << 31));
}

// Eight unsigned lattice bytes (words g0, g1; every byte below 128) with sign byte s against
// the q8 words w and w+1. A negated byte is taken as g ^ 0xff = -g - 1, and the -1s are summed
// apart (`neg`, the dot product of the masks themselves, each byte -1 or 0): the caller's value
// is sum - neg, the same integer as negating the bytes one by one.
__device__ __forceinline__ void xd_grid8_dot_masks(uint32_t g0, uint32_t g1, uint32_t m0, uint32_t m1, const xd_q8_1& a,
                                                   int w, int& sum, int& neg) {
    sum = __dp4a(int(g0 ^ m0), a.qs[w], sum);
    neg = __dp4a(int(m0), a.qs[w], neg);
    sum = __dp4a(int(g1 ^ m1), a.qs[w + 1], sum);
    neg = __dp4a(int(m1), a.qs[w + 1], neg);
}

// The same with an explicit sign byte s (IQ2_S, IQ3_S).
__device__ __forceinline__ void xd_grid8_dot(uint32_t g0, uint32_t g1, uint32_t s, const xd_q8_1& a, int w, int& sum,
                                             int& neg) {
    uint32_t m0, m1;
    xd_sign_masks(s, m0, m1);
    xd_grid8_dot_masks(g0, g1, m0, m1, a, w, sum, neg);
}

// The same with 7 stored sign bits and their parity (IQ2_XXS, IQ2_XS, IQ3_XXS).
__device__ __forceinline__ void xd_grid8_dot_ksigns(uint32_t g0, uint32_t g1, uint32_t s7, const xd_q8_1& a, int w,
                                                    int& sum, int& neg) {
    uint32_t m0, m1;
    xd_ksign_masks(s7, m0, m1);
    xd_grid8_dot_masks(g0, g1, m0, m1, a, w, sum, neg);
}

// Lattice point i of a grid the matvec block copied into shared memory (`tab`, see XdDotTable):
// lanes looking up different points meet in shared memory's banks (a few passes per warp),
// where through the L1 cache each distinct line of the grid a warp touches costs a pass (up to
// 32 for the 16 KB IQ1_S grid).
__device__ __forceinline__ uint32_t xd_tab32(const uint8_t* tab, uint32_t i) {
    return reinterpret_cast<const uint32_t*>(tab)[i];
}

// The IQ2 grids' three magnitudes 0x08, 0x19, 0x2b, and IQ1_S's values -1, 0, 1, as bytes 0..2 of
// a word, in constant memory so that the byte permutes below read them as an operand.
__constant__ uint32_t xd_grid_levels[2] = {0x002b1908u, 0x000100ffu};
#define XD_IQ2_LEVELS 0
#define XD_IQ1_LEVELS 1

// Point i of a three-valued grid from its nibble form in `tab` (xd_iq*_grid_nib): nibble 4, 5, 6
// picks byte 0, 1, 2 of the levels word by a byte permute (the permute's second word; its first
// is zero); lo holds values 0..3, hi 4..7. A 4-byte entry where the point itself has 8: a warp's
// random lookups then meet about half the bank conflicts of 8-byte ones.
__device__ __forceinline__ void xd_grid_point3(const uint8_t* tab, uint32_t i, int which, uint32_t& lo,
                                               uint32_t& hi) {
    const uint32_t e = xd_tab32(tab, i);
    const uint32_t levels = xd_grid_levels[which];
#if defined(__CUDA_ARCH__)
    // prmt itself: it reads the selector's low 16 bits only, and nibbles 4..6 have no sign-mode
    // bit, so neither needs the masking __byte_perm adds.
    asm("prmt.b32 %0, 0, %1, %2;" : "=r"(lo) : "r"(levels), "r"(e));
    asm("prmt.b32 %0, 0, %1, %2;" : "=r"(hi) : "r"(levels), "r"(e >> 16));
#else
    lo = __byte_perm(0u, levels, e);
    hi = __byte_perm(0u, levels, e >> 16);
#endif
}

// IQ2_XXS: {f16 d; u16 qs[32]}: sub-block u is two u32 at qs[4u]: four grid indices (bytes of
// the first), four 7-bit sign groups and a 4-bit scale (the second). Grid: xd_iq2xxs_grid_nib in
// `tab`.
__device__ __forceinline__ float dot_iq2_xxs(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t* tab) {
    const uint8_t* q = b + 2 + 8 * u;
    const uint32_t idx = uint32_t(xd_ld32(q)), aux = uint32_t(xd_ld32(q + 4));
    int sum = 0, neg = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        uint32_t g0, g1;
        xd_grid_point3(tab, (idx >> (8 * l)) & 0xffu, XD_IQ2_LEVELS, g0, g1);
        xd_grid8_dot_ksigns(g0, g1, (aux >> (7 * l)) & 127u, a, 2 * l, sum, neg);
    }
    return xd_ldh(b) * (0.5f + float(aux >> 28)) * 0.25f * a.d * float(sum - neg);
}

// IQ2_XS: {f16 d; u16 qs[32]; u8 scales[8]}: each u16 is a 9-bit grid index and 7 sign bits;
// the scale byte's nibbles cover the sub-block's halves. Grid: xd_iq2xs_grid_nib in `tab`.
__device__ __forceinline__ float dot_iq2_xs(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t* tab) {
    const uint8_t* q = b + 2 + 8 * u;
    int s[2] = {0, 0}, n[2] = {0, 0};
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint32_t v = xd_ld16(q + 2 * l);
        uint32_t g0, g1;
        xd_grid_point3(tab, v & 511u, XD_IQ2_LEVELS, g0, g1);
        xd_grid8_dot_ksigns(g0, g1, v >> 9, a, 2 * l, s[l / 2], n[l / 2]);
    }
    const int sc = b[66 + u];
    return xd_ldh(b) * 0.25f * a.d *
           ((0.5f + float(sc & 15)) * float(s[0] - n[0]) + (0.5f + float(sc >> 4)) * float(s[1] - n[1]));
}

// IQ2_S: {f16 d; u8 qs[32]; u8 signs[32]; u8 qh[8]; u8 scales[8]}: 10-bit grid indices (two high
// bits from qh), explicit sign bytes. Grid: xd_iq2s_grid_nib in `tab`.
__device__ __forceinline__ float dot_iq2_s(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t* tab) {
    const uint8_t* qs = b + 2 + 4 * u;
    const uint8_t* sg = b + 34 + 4 * u;
    const uint32_t qh = b[66 + u];
    int s[2] = {0, 0}, n[2] = {0, 0};
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint32_t idx = qs[l] | ((qh << (8 - 2 * l)) & 0x300u);
        uint32_t g0, g1;
        xd_grid_point3(tab, idx, XD_IQ2_LEVELS, g0, g1);
        xd_grid8_dot(g0, g1, sg[l], a, 2 * l, s[l / 2], n[l / 2]);
    }
    const int sc = b[74 + u];
    return xd_ldh(b) * 0.25f * a.d *
           ((0.5f + float(sc & 15)) * float(s[0] - n[0]) + (0.5f + float(sc >> 4)) * float(s[1] - n[1]));
}

// IQ3_XXS: {f16 d; u8 qs[64]; u32 scales_signs[8]}: eight 8-bit indices of 4-value grid points
// per sub-block; the u32 holds four 7-bit sign groups and a 4-bit scale. Grid: xd_iq3xxs_grid in
// `tab`.
__device__ __forceinline__ float dot_iq3_xxs(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t* tab) {
    // The eight index bytes as two words (fewer shared-memory loads than byte by byte).
    const uint32_t q3[2] = {uint32_t(xd_ld32(b + 2 + 8 * u)), uint32_t(xd_ld32(b + 6 + 8 * u))};
    const uint32_t aux = uint32_t(xd_ld32(b + 66 + 4 * u));
    int sum = 0, neg = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint32_t q = q3[l / 2] >> (16 * (l % 2));
        xd_grid8_dot_ksigns(xd_tab32(tab, q & 0xffu), xd_tab32(tab, (q >> 8) & 0xffu), (aux >> (7 * l)) & 127u, a,
                            2 * l, sum, neg);
    }
    return xd_ldh(b) * (0.5f + float(aux >> 28)) * 0.5f * a.d * float(sum - neg);
}

// IQ3_S: {f16 d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8 scales[4]}: 9-bit indices (high bit
// from qh[u]), explicit signs, odd scales 1 + 2 * nibble. Grid: xd_iq3s_grid in `tab`.
__device__ __forceinline__ float dot_iq3_s(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t* tab) {
    // Index bytes and sign bytes as words (fewer shared-memory loads than byte by byte).
    const uint32_t qs[2] = {uint32_t(xd_ld32(b + 2 + 8 * u)), uint32_t(xd_ld32(b + 6 + 8 * u))};
    const uint32_t qh = b[66 + u];
    const uint32_t sg = uint32_t(xd_ld32(b + 74 + 4 * u));
    int sum = 0, neg = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const uint32_t q = qs[l / 2] >> (16 * (l % 2));
        const uint32_t g1 = xd_tab32(tab, (q & 0xffu) | ((qh << (8 - 2 * l)) & 256u));
        const uint32_t g2 = xd_tab32(tab, ((q >> 8) & 0xffu) | ((qh << (7 - 2 * l)) & 256u));
        xd_grid8_dot(g1, g2, (sg >> (8 * l)) & 0xffu, a, 2 * l, sum, neg);
    }
    const int nib = (b[106 + u / 2] >> (4 * (u % 2))) & 15;
    return xd_ldh(b) * float(1 + 2 * nib) * a.d * float(sum - neg);
}

// IQ1_S: {f16 d; u8 qs[32]; u16 qh[8]}: 11-bit indices of {-1,0,1} grid points, a 3-bit scale
// and the sign of a shift (+-1/8) applied to every value of the sub-block.
__device__ __forceinline__ float dot_iq1_s(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t* tab) {
    const uint8_t* qs = b + 2 + 4 * u;
    const uint32_t qh = xd_ld16(b + 34 + 2 * u);
    int sum = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        uint32_t lo, hi;
        xd_grid_point3(tab, qs[l] | (((qh >> (3 * l)) & 7u) << 8), XD_IQ1_LEVELS, lo, hi);
        sum = __dp4a(int(lo), a.qs[2 * l], sum);
        sum = __dp4a(int(hi), a.qs[2 * l + 1], sum);
    }
    const float dl = xd_ldh(b) * float(2 * ((qh >> 12) & 7u) + 1);
    const float delta = (qh & 0x8000u) ? -0.125f : 0.125f;
    return dl * (a.d * float(sum) + delta * a.s);
}

// IQ1_M: {u8 qs[32]; u8 qh[16]; u16 scales[4]}: the f16 super-block scale is spread over the top
// nibbles of the four scale words; per 8 values its own shift sign, per 16 a 3-bit scale.
__device__ __forceinline__ float dot_iq1_m(const uint8_t* b, int u, const xd_q8_1& a, const uint8_t* tab) {
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
        uint32_t lo, hi;
        xd_grid_point3(tab, idx, XD_IQ1_LEVELS, lo, hi);
        int s = __dp4a(int(lo), a.qs[2 * l], 0);
        s = __dp4a(int(hi), a.qs[2 * l + 1], s);
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

__device__ __forceinline__ float dot_mxfp4(const uint8_t* b, int, const xd_q8_1& a, const uint8_t*) {
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

// ---- lookup tables the matvec blocks copy into shared memory ------------------------------

typedef float (*XdDotFn)(const uint8_t*, int, const xd_q8_1&, const uint8_t*);

// What a dot product reads through `tab`: BYTES bytes from src() (a multiple of 16, 16-byte
// aligned), or nothing. The IQ types read their grid, the IQ2 and IQ1 ones in nibble form
// (0.5–8 KB). A block's copy mostly hits the L1 cache, filled by the SM's earlier blocks, and
// costs less shared-memory traffic than the lookups it serves.
template <XdDotFn DOT>
struct XdDotTable {
    static constexpr int BYTES = 0;
    __device__ static const void* src() { return nullptr; }
};
#define XD_DOT_TABLE(dot, grid)                                    \
    template <>                                                    \
    struct XdDotTable<dot> {                                       \
        static constexpr int BYTES = int(sizeof(grid));            \
        __device__ static const void* src() { return grid; }       \
    };
XD_DOT_TABLE(dot_iq2_xxs, xd_iq2xxs_grid_nib)
XD_DOT_TABLE(dot_iq2_xs, xd_iq2xs_grid_nib)
XD_DOT_TABLE(dot_iq2_s, xd_iq2s_grid_nib)
XD_DOT_TABLE(dot_iq3_xxs, xd_iq3xxs_grid)
XD_DOT_TABLE(dot_iq3_s, xd_iq3s_grid)
XD_DOT_TABLE(dot_iq1_s, xd_iq1s_grid_nib)
XD_DOT_TABLE(dot_iq1_m, xd_iq1s_grid_nib)
