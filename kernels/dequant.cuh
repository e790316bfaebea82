// Block decoders: `xd_dq_<type>(block, sub, j0, v)` writes values j0 .. j0 + 3 (j0 a multiple
// of 4) of the 32-value sub-block `sub` of a GGML block to v[0..4] as f32, bit for bit what the
// CPU dequantizer (src/quant) gives. The prefill GEMM (gemm.cu) and the row gather (get_rows.cu)
// decode through these; the matvecs use the integer dot products of quant_dot.cuh instead.
//
// Four consecutive values share their scale and, in every format, one 32-bit word of packed
// codes, so a run of 4 costs one or two loads and a few integer ops per value. Where the
// reference computes `scale * q - min` the product is rounded on its own (xd_mul): a fused
// multiply-add would round once and differ from the CPU in the last bit.
#pragma once
#include "quant_dot.cuh"

// a * b rounded to f32, never contracted into a following add.
__device__ __forceinline__ float xd_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

// Byte i of w.
__device__ __forceinline__ uint32_t xd_byte(uint32_t w, int i) { return (w >> (8 * i)) & 0xffu; }

// The IQ4 and MXFP4 value tables as immediate 64-bit constants (8 int8 entries each): a lookup
// is a shift in registers, where a __constant__ table read with the 16 different nibbles of a
// warp would be serialized. get_rows checks them against the CPU tables bit for bit.
__device__ __forceinline__ int xd_iq4_value(uint32_t nib) {
    const uint64_t t = nib & 8u ? 0x7159453526190d01ull : 0xf6eaddcfbfad9881ull;
    return int8_t(uint8_t(t >> (8 * (nib & 7u))));
}
__device__ __forceinline__ int xd_mxfp4_value(uint32_t nib) {
    const int m = int((0x0c08060403020100ull >> (8 * (nib & 7u))) & 0xffu);
    return nib & 8u ? -m : m;
}

// ---- legacy 32-value blocks ---------------------------------------------------------------

// Q4_0: {f16 d; u8 qs[16]}: value j = d * (nibble - 8), low nibbles first.
__device__ __forceinline__ void xd_dq_q4_0(const uint8_t* b, int, int j0, float* v) {
    const float d = xd_ldh(b);
    const uint32_t w = uint32_t(xd_ld32(b + 2 + (j0 & 15))) >> (j0 & 16 ? 4 : 0);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = float(int(xd_byte(w, i) & 15u) - 8) * d;
}

// Q4_1: {f16 d; f16 m; u8 qs[16]}: d * nibble + m.
__device__ __forceinline__ void xd_dq_q4_1(const uint8_t* b, int, int j0, float* v) {
    const float d = xd_ldh(b), m = xd_ldh(b + 2);
    const uint32_t w = uint32_t(xd_ld32(b + 4 + (j0 & 15))) >> (j0 & 16 ? 4 : 0);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = xd_mul(float(xd_byte(w, i) & 15u), d) + m;
}

// Q5_0: {f16 d; u8 qh[4]; u8 qs[16]}: bit j of qh is the fifth bit of value j; minus 16.
__device__ __forceinline__ void xd_dq_q5_0(const uint8_t* b, int, int j0, float* v) {
    const float d = xd_ldh(b);
    const uint32_t qh = uint32_t(xd_ld32(b + 2)) >> j0;
    const uint32_t w = uint32_t(xd_ld32(b + 6 + (j0 & 15))) >> (j0 & 16 ? 4 : 0);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = float(int((xd_byte(w, i) & 15u) | (((qh >> i) & 1u) << 4)) - 16) * d;
}

// Q5_1: {f16 d; f16 m; u8 qh[4]; u8 qs[16]}: d * q5 + m.
__device__ __forceinline__ void xd_dq_q5_1(const uint8_t* b, int, int j0, float* v) {
    const float d = xd_ldh(b), m = xd_ldh(b + 2);
    const uint32_t qh = uint32_t(xd_ld32(b + 4)) >> j0;
    const uint32_t w = uint32_t(xd_ld32(b + 8 + (j0 & 15))) >> (j0 & 16 ? 4 : 0);
#pragma unroll
    for (int i = 0; i < 4; ++i)
        v[i] = xd_mul(float((xd_byte(w, i) & 15u) | (((qh >> i) & 1u) << 4)), d) + m;
}

// Q8_0: {f16 d; i8 qs[32]}.
__device__ __forceinline__ void xd_dq_q8_0(const uint8_t* b, int, int j0, float* v) {
    const float d = xd_ldh(b);
    const uint32_t w = uint32_t(xd_ld32(b + 2 + j0));
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = float(int8_t(xd_byte(w, i))) * d;
}

// IQ4_NL: {f16 d; u8 qs[16]}: d * kvalues[nibble].
__device__ __forceinline__ void xd_dq_iq4_nl(const uint8_t* b, int, int j0, float* v) {
    const float d = xd_ldh(b);
    const uint32_t w = uint32_t(xd_ld32(b + 2 + (j0 & 15))) >> (j0 & 16 ? 4 : 0);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = d * float(xd_iq4_value(xd_byte(w, i)));
}

// MXFP4: {u8 e (E8M0); u8 qs[16]}: kvalues_mxfp4[nibble] * 2^(e - 128). Byte-aligned blocks:
// bytes are read one by one.
__device__ __forceinline__ void xd_dq_mxfp4(const uint8_t* b, int, int j0, float* v) {
    const uint32_t e = b[0];
    const float d = __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
    const int sh = j0 & 16 ? 4 : 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = float(xd_mxfp4_value(b[1 + (j0 & 15) + i] >> sh)) * d;
}

// ---- K-quants: 256-value super-blocks of eight 32-value sub-blocks -------------------------

// Q2_K: {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}: sub-block u is the 2-bit field at shift
// 2*(u%4) of qs[32*(u/4) ..]; its halves have scale bytes 2u, 2u + 1 (scale | min << 4).
__device__ __forceinline__ void xd_dq_q2_k(const uint8_t* b, int u, int j0, float* v) {
    const uint32_t sc = b[2 * u + j0 / 16];
    const float dl = xd_ldh(b + 80) * float(sc & 15u), ml = xd_ldh(b + 82) * float(sc >> 4);
    const uint32_t w = uint32_t(xd_ld32(b + 16 + 32 * (u / 4) + j0)) >> (2 * (u % 4));
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = xd_mul(dl, float(xd_byte(w, i) & 3u)) - ml;
}

// Q3_K: {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}: the Q2_K field minus 4 where bit u of
// hmask[j] is clear; per 16 values a signed 6-bit scale.
__device__ __forceinline__ void xd_dq_q3_k(const uint8_t* b, int u, int j0, float* v) {
    const float dl = xd_ldh(b + 108) * float(xd_q3k_scale(b + 96, 2 * u + j0 / 16));
    const uint32_t w = uint32_t(xd_ld32(b + 32 + 32 * (u / 4) + j0)) >> (2 * (u % 4));
    const uint32_t h = uint32_t(xd_ld32(b + j0)) >> u;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int q = int(xd_byte(w, i) & 3u) - (xd_byte(h, i) & 1u ? 0 : 4);
        v[i] = dl * float(q);
    }
}

// Q4_K: {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: sub-block u is the low (u even) or high
// nibbles of qs[32*(u/2) ..]; value = (d*sc) * q - dmin*m.
__device__ __forceinline__ void xd_dq_q4_k(const uint8_t* b, int u, int j0, float* v) {
    int sc, m;
    xd_scale_min_k4(b + 4, u, sc, m);
    const float dl = xd_ldh(b) * float(sc), ml = xd_ldh(b + 2) * float(m);
    const uint32_t w = uint32_t(xd_ld32(b + 16 + 32 * (u / 2) + j0)) >> (4 * (u % 2));
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = xd_mul(dl, float(xd_byte(w, i) & 15u)) - ml;
}

// Q5_K: {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: Q4_K plus bit u of qh[j] as 16.
__device__ __forceinline__ void xd_dq_q5_k(const uint8_t* b, int u, int j0, float* v) {
    int sc, m;
    xd_scale_min_k4(b + 4, u, sc, m);
    const float dl = xd_ldh(b) * float(sc), ml = xd_ldh(b + 2) * float(m);
    const uint32_t w = uint32_t(xd_ld32(b + 48 + 32 * (u / 2) + j0)) >> (4 * (u % 2));
    const uint32_t h = uint32_t(xd_ld32(b + 16 + j0)) >> u;
#pragma unroll
    for (int i = 0; i < 4; ++i)
        v[i] = xd_mul(dl, float((xd_byte(w, i) & 15u) | ((xd_byte(h, i) & 1u) << 4))) - ml;
}

// Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: sub-block u (n = u/4, k = u%4): low
// nibbles of ql[64n + 32(k%2) ..] at shift 4(k/2), two high bits of qh[32n ..] at shift 2k,
// minus 32; value = (d * scale) * q.
__device__ __forceinline__ void xd_dq_q6_k(const uint8_t* b, int u, int j0, float* v) {
    const int n = u / 4, k = u % 4;
    const float dl = xd_ldh(b + 208) * float(int8_t(b[192 + 2 * u + j0 / 16]));
    const uint32_t lo = uint32_t(xd_ld32(b + 64 * n + 32 * (k % 2) + j0)) >> (4 * (k / 2));
    const uint32_t hi = uint32_t(xd_ld32(b + 128 + 32 * n + j0)) >> (2 * k);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = dl * float(int((xd_byte(lo, i) & 15u) | ((xd_byte(hi, i) & 3u) << 4)) - 32);
}

// IQ4_XS: {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: (d * (ls - 32)) * kvalues[nibble].
__device__ __forceinline__ void xd_dq_iq4_xs(const uint8_t* b, int u, int j0, float* v) {
    const uint32_t sh = xd_ld16(b + 2);
    const int ls = ((b[4 + u / 2] >> (4 * (u % 2))) & 15) | (((sh >> (2 * u)) & 3) << 4);
    const float dl = xd_ldh(b) * float(ls - 32);
    const uint32_t w = uint32_t(xd_ld32(b + 8 + 16 * u + (j0 & 15))) >> (j0 & 16 ? 4 : 0);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = dl * float(xd_iq4_value(xd_byte(w, i)));
}

// ---- IQ lattice types ---------------------------------------------------------------------

// Four grid magnitudes (bytes of g) times db, negated where bits 0..3 of `signs` are set: the
// reference's db * g * (+-1), whose sign flip is exact.
__device__ __forceinline__ void xd_dq_signed4(float db, uint32_t g, uint32_t signs, float* v) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float t = db * float(xd_byte(g, i));
        v[i] = (signs >> i) & 1u ? -t : t;
    }
}

// IQ2_XXS: {f16 d; u16 qs[32]}: sub-block u is two u32 at byte 8u: four grid indices, then four
// 7-bit sign groups and a 4-bit scale; db = d * (0.5 + scale) * 0.25.
__device__ __forceinline__ void xd_dq_iq2_xxs(const uint8_t* b, int u, int j0, float* v) {
    const uint8_t* q = b + 2 + 8 * u;
    const uint32_t aux = uint32_t(xd_ld32(q + 4));
    const int l = j0 / 8, h = j0 & 4;
    const float db = xd_ldh(b) * (0.5f + float(aux >> 28)) * 0.25f;
    const uint64_t g = xd_iq2xxs_grid[q[l]];
    xd_dq_signed4(db, uint32_t(g >> (8 * h)), xd_ksigns((aux >> (7 * l)) & 127u) >> h, v);
}

// IQ2_XS: {f16 d; u16 qs[32]; u8 scales[8]}: each u16 a 9-bit grid index and 7 sign bits; the
// scale byte's nibbles cover the sub-block's halves.
__device__ __forceinline__ void xd_dq_iq2_xs(const uint8_t* b, int u, int j0, float* v) {
    const int l = j0 / 8, h = j0 & 4;
    const uint32_t q = xd_ld16(b + 2 + 8 * u + 2 * l);
    const float db = xd_ldh(b) * (0.5f + float((b[66 + u] >> (4 * (l / 2))) & 15)) * 0.25f;
    const uint64_t g = xd_iq2xs_grid[q & 511u];
    xd_dq_signed4(db, uint32_t(g >> (8 * h)), xd_ksigns(q >> 9) >> h, v);
}

// IQ2_S: {f16 d; u8 qs[32]; u8 signs[32]; u8 qh[8]; u8 scales[8]}: 10-bit grid indices (two high
// bits from qh), explicit sign bytes.
__device__ __forceinline__ void xd_dq_iq2_s(const uint8_t* b, int u, int j0, float* v) {
    const int l = j0 / 8, h = j0 & 4;
    const uint32_t idx = b[2 + 4 * u + l] | ((uint32_t(b[66 + u]) << (8 - 2 * l)) & 0x300u);
    const float db = xd_ldh(b) * (0.5f + float((b[74 + u] >> (4 * (l / 2))) & 15)) * 0.25f;
    const uint64_t g = xd_iq2s_grid[idx];
    xd_dq_signed4(db, uint32_t(g >> (8 * h)), uint32_t(b[34 + 4 * u + l]) >> h, v);
}

// IQ3_XXS: {f16 d; u8 qs[64]; u32 scales_signs[8]}: one 8-bit index of a 4-value grid point per
// 4 values; the u32 holds four 7-bit sign groups and a 4-bit scale; db = d * (0.5 + s) * 0.5.
__device__ __forceinline__ void xd_dq_iq3_xxs(const uint8_t* b, int u, int j0, float* v) {
    const uint32_t aux = uint32_t(xd_ld32(b + 66 + 4 * u));
    const int l = j0 / 8, h = j0 & 4;
    const float db = xd_ldh(b) * (0.5f + float(aux >> 28)) * 0.5f;
    xd_dq_signed4(db, xd_iq3xxs_grid[b[2 + 8 * u + j0 / 4]], xd_ksigns((aux >> (7 * l)) & 127u) >> h, v);
}

// IQ3_S: {f16 d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8 scales[4]}: 9-bit indices (high bit from
// qh[u]), explicit signs; db = d * (1 + 2 * nibble).
__device__ __forceinline__ void xd_dq_iq3_s(const uint8_t* b, int u, int j0, float* v) {
    const int l = j0 / 8, h = j0 & 4, p = j0 / 4;  // p: index 0..7 of the 4-value grid point
    const uint32_t idx = b[2 + 8 * u + p] | ((uint32_t(b[66 + u]) << (8 - p)) & 256u);
    const int nib = (b[106 + u / 2] >> (4 * (u % 2))) & 15;
    const float db = xd_ldh(b) * float(1 + 2 * nib);
    xd_dq_signed4(db, xd_iq3s_grid[idx], uint32_t(b[74 + 4 * u + l]) >> h, v);
}

// IQ1_S: {f16 d; u8 qs[32]; u16 qh[8]}: 11-bit indices of {-1,0,1} grid points; per sub-block a
// 3-bit scale and the sign of the +-1/8 shift: dl * (g + delta).
__device__ __forceinline__ void xd_dq_iq1_s(const uint8_t* b, int u, int j0, float* v) {
    const uint32_t qh = xd_ld16(b + 34 + 2 * u);
    const int l = j0 / 8, h = j0 & 4;
    const float dl = xd_ldh(b) * float(2 * int((qh >> 12) & 7u) + 1);
    const float delta = qh & 0x8000u ? -0.125f : 0.125f;
    const uint32_t g = uint32_t(xd_iq1s_grid[b[2 + 4 * u + l] | (((qh >> (3 * l)) & 7u) << 8)] >> (8 * h));
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = dl * (float(int8_t(xd_byte(g, i))) + delta);
}

// IQ1_M: {u8 qs[32]; u8 qh[16]; u16 scales[4]}: the f16 super-block scale spread over the top
// nibbles of the scale words; per 16 values a 3-bit scale, per 8 the sign of the shift.
__device__ __forceinline__ void xd_dq_iq1_m(const uint8_t* b, int u, int j0, float* v) {
    const uint32_t s0 = xd_ld16(b + 48), s1 = xd_ld16(b + 50), s2 = xd_ld16(b + 52), s3 = xd_ld16(b + 54);
    const float d = xd_h2f(uint16_t((s0 >> 12) | ((s1 >> 8) & 0xf0u) | ((s2 >> 4) & 0xf00u) | (s3 & 0xf000u)));
    const int l = j0 / 8, h = j0 & 4;
    const uint32_t sw = xd_ld16(b + 48 + 2 * (u / 2));
    const float dl = d * float(2 * int((sw >> (6 * (u % 2) + 3 * (l / 2))) & 7u) + 1);
    const uint32_t qh = b[32 + 2 * u + l / 2];
    const uint32_t idx = b[4 * u + l] | (((l % 2) ? (qh << 4) : (qh << 8)) & 0x700u);
    const float delta = qh & ((l % 2) ? 0x80u : 0x08u) ? -0.125f : 0.125f;
    const uint32_t g = uint32_t(xd_iq1s_grid[idx] >> (8 * h));
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = dl * (float(int8_t(xd_byte(g, i))) + delta);
}

// ---- float rows, read as 32-value "blocks" -------------------------------------------------

__device__ __forceinline__ void xd_dq_f32(const uint8_t* b, int, int j0, float* v) {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = reinterpret_cast<const float*>(b)[j0 + i];
}
__device__ __forceinline__ void xd_dq_f16(const uint8_t* b, int, int j0, float* v) {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = xd_ldh(b + 2 * (j0 + i));
}
__device__ __forceinline__ void xd_dq_bf16(const uint8_t* b, int, int j0, float* v) {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = xd_bf2f(uint16_t(xd_ld16(b + 2 * (j0 + i))));
}
