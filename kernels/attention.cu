// Attention over a paged KV cache, split-K ("flash-decoding"), in one launch: each query
// token's visible positions are cut into splits of split_len; one block per (query head, split,
// token) runs an online softmax over its positions (max m, sum l, unnormalised V sum). With one
// split the block writes the output itself; with several, each block leaves its part in
// part_ml / part_acc and the block that finishes last for a (token, head) (a counter per pair)
// merges the parts. Built for decode (one token per sequence), correct for any batch.
//
// Cache layout (f32 or f16, one layer), as the engine's backend contract: slot s holds one token's K
// (or V) row of n_kv_heads * head_dim values; slot s belongs to block s / 16. Position p of a
// token's sequence is in slot table[p / 16] * 16 + p % 16. Query head h reads KV head
// h / (n_heads / n_kv_heads) (grouped-query attention).
#include "common.cuh"

#define XD_ATTN_WARPS 4       // blockDim.x = 32 * XD_ATTN_WARPS
#define XD_KV_BLOCK 16
// head_dim: a multiple of 32 up to 256, one kernel per size (see XD_ATTN_KERNEL).

// Value i of a layer's cache (f32, f16 or Q8_0 blocks; a row is whole blocks).
__device__ __forceinline__ float xd_kv_at(const float* c, long long i) { return c[i]; }
__device__ __forceinline__ float xd_kv_at(const uint16_t* c, long long i) { return xd_h2f(c[i]); }
__device__ __forceinline__ float xd_kv_at(const xd_kv_q8_0* c, long long i) {
    const xd_kv_q8_0& b = c[i >> 5];
    return xd_h2f(b.d) * float(b.qs[i & 31]);
}

// One part of an online softmax: its running max m and its sum l of exp(score - m).
struct xd_attn_ml {
    float m, l;
};

struct alignas(16) xd_attn_f4 {
    float v[4];
};

// Values i .. i + NC - 1 of a cache (a lane's share of one head's row; i is a multiple of NC):
// 16- or 8-byte loads where NC is a multiple of 4 (the row and head offsets are multiples of
// 32 values, so such a share is aligned), one load per value otherwise.
template <int NC>
__device__ __forceinline__ void xd_kv_load(const float* c, long long i, float (&out)[NC]) {
    if (NC % 4 == 0) {
#pragma unroll
        for (int j = 0; j < NC / 4; ++j) {
            const xd_attn_f4 w = reinterpret_cast<const xd_attn_f4*>(c + i)[j];
#pragma unroll
            for (int e = 0; e < 4; ++e) out[4 * j + e] = w.v[e];
        }
    } else {
#pragma unroll
        for (int j = 0; j < NC; ++j) out[j] = c[i + j];
    }
}
template <int NC>
__device__ __forceinline__ void xd_kv_load(const uint16_t* c, long long i, float (&out)[NC]) {
    if (NC % 4 == 0) {
#pragma unroll
        for (int j = 0; j < NC / 4; ++j) {
            const xd_h4 w = reinterpret_cast<const xd_h4*>(c + i)[j];
#pragma unroll
            for (int e = 0; e < 4; ++e) out[4 * j + e] = xd_h2f(w.v[e]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < NC; ++j) out[j] = xd_h2f(c[i + j]);
    }
}
template <int NC>
__device__ __forceinline__ void xd_kv_load(const xd_kv_q8_0* c, long long i, float (&out)[NC]) {
#pragma unroll
    for (int j = 0; j < NC; ++j) out[j] = xd_kv_at(c, i + j);
}

// Positions a warp has in flight together: their K and V rows are loaded at once, so a tile
// costs one memory latency rather than two per position.
template <int NC>
struct XdAttnTile {
    static constexpr int N = NC <= 2 ? 16 : (NC <= 4 ? 8 : 4);
};

// Merging n parts (m, l, acc) of one online softmax, m = -inf marking an empty part; part(s)
// returns part s's xd_attn_ml and acc(s, c) its value c. xd_attn_fold: the merged max and sum;
// xd_attn_fold_acc: value c of the merged unnormalised V sum, against that max. A block folds
// its warps into its split's part with these, and the last split's block folds the parts.
template <typename ML>
__device__ __forceinline__ xd_attn_ml xd_attn_fold(int n, ML part) {
    const float neg_inf = __int_as_float(0xff800000);
    float mm = neg_inf;
    for (int s = 0; s < n; ++s) mm = fmaxf(mm, part(s).m);
    float ll = 0.0f;
    for (int s = 0; s < n; ++s) {
        const xd_attn_ml p = part(s);
        if (p.m != neg_inf) ll += p.l * expf(p.m - mm);
    }
    return xd_attn_ml{mm, ll};
}
template <typename ML, typename ACC>
__device__ __forceinline__ float xd_attn_fold_acc(int n, ML part, ACC acc, float mm, int c) {
    const float neg_inf = __int_as_float(0xff800000);
    float a = 0.0f;
    for (int s = 0; s < n; ++s) {
        const float m = part(s).m;
        if (m != neg_inf) a += acc(s, c) * expf(m - mm);
    }
    return a;
}

// The merge of n parts into the output row of one (token, head), and its q8_1 blocks when out_q
// is not null (head_dim is a multiple of 32, so a warp's 32 values in one trip are one block).
// Every thread of the block calls it.
template <typename ML, typename ACC>
__device__ __forceinline__ void xd_attn_merge(int n, ML part, ACC acc, int head_dim, float* __restrict__ out,
                                              xd_q8_1* __restrict__ out_q, long long out_at) {
    const xd_attn_ml f = xd_attn_fold(n, part);
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        const float o = xd_attn_fold_acc(n, part, acc, f.m, c) / f.l;
        out[out_at + c] = o;
        if (out_q) xd_quantize_warp_q8_1(o, out_q + (out_at + c) / XD_WARP);
    }
}

// q: [n_tokens][n_heads * head_dim]. Token t sees the first n_kv[t] positions of the sequence
// whose block table starts at tables + table_off[t]. n_splits = gridDim.y (enough for the
// longest token; splits past a token's length record an empty part). With n_splits > 1:
// part_ml [n_tokens][n_heads][n_splits][2], part_acc [...][head_dim], and counts
// [n_tokens][n_heads], zero before the launch and left zero after it. out: [n_tokens][n_heads *
// head_dim]; out_q, when not null, its q8_1 blocks ([n_tokens][n_heads * head_dim / 32]), as
// quantize_q8_1 makes them, for the output projection. grid (n_heads, n_splits, n_tokens).
// Lane i holds values NC * i .. NC * i + NC - 1 of the head (NC = head_dim / 32).
template <typename KV, int NC>
__device__ __forceinline__ void xd_attn(const float* __restrict__ q, const KV* __restrict__ k_cache,
                                        const KV* __restrict__ v_cache, const int* __restrict__ tables,
                                        const int* __restrict__ table_off, const int* __restrict__ n_kv,
                                        int n_heads, int n_kv_heads, int split_len, float scale, float* part_ml,
                                        float* part_acc, int* counts, float* __restrict__ out,
                                        xd_q8_1* __restrict__ out_q) {
    constexpr int T = XdAttnTile<NC>::N;
    constexpr int HD = NC * XD_WARP;
    __shared__ float s_m[XD_ATTN_WARPS], s_l[XD_ATTN_WARPS];
    __shared__ float s_acc[XD_ATTN_WARPS][HD];
    __shared__ int s_last;
    const int lane = threadIdx.x % XD_WARP, warp = threadIdx.x / XD_WARP;
    const int h = blockIdx.x, split = blockIdx.y, tok = blockIdx.z, n_splits = gridDim.y;
    const int kvh = h / (n_heads / n_kv_heads);
    const long long row = (long long)n_kv_heads * HD;
    const float neg_inf = __int_as_float(0xff800000);
    const int* table = tables + table_off[tok];
    const float* qh = q + ((long long)tok * n_heads + h) * HD;

    float qr[NC], acc[NC];
#pragma unroll
    for (int j = 0; j < NC; ++j) {
        qr[j] = qh[NC * lane + j];
        acc[j] = 0.0f;
    }
    float m = neg_inf, l = 0.0f;
    const int t0 = split * split_len;
    const int t1 = min(n_kv[tok], t0 + split_len);
    for (int tb = t0 + warp * T; tb < t1; tb += XD_ATTN_WARPS * T) {
        // The tile's K and V rows, loaded together (positions past t1 read nothing).
        float kr[T][NC], vr[T][NC];
#pragma unroll
        for (int i = 0; i < T; ++i) {
            const int t = tb + i;
            if (t < t1) {
                const long long slot = (long long)table[t / XD_KV_BLOCK] * XD_KV_BLOCK + t % XD_KV_BLOCK;
                const long long base = slot * row + kvh * HD + NC * lane;
                xd_kv_load<NC>(k_cache, base, kr[i]);
                xd_kv_load<NC>(v_cache, base, vr[i]);
            } else {
#pragma unroll
                for (int j = 0; j < NC; ++j) kr[i][j] = vr[i][j] = 0.0f;
            }
        }
        float s[T];
        float mt = neg_inf;
#pragma unroll
        for (int i = 0; i < T; ++i) {
            float d = 0.0f;
#pragma unroll
            for (int j = 0; j < NC; ++j) d += qr[j] * kr[i][j];
            s[i] = xd_warp_sum(d) * scale;
            if (tb + i < t1) mt = fmaxf(mt, s[i]);
        }
        const float m_new = fmaxf(m, mt);
        const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
        l *= corr;
#pragma unroll
        for (int j = 0; j < NC; ++j) acc[j] *= corr;
#pragma unroll
        for (int i = 0; i < T; ++i) {
            const float p = tb + i < t1 ? expf(s[i] - m_new) : 0.0f;
            l += p;
#pragma unroll
            for (int j = 0; j < NC; ++j) acc[j] += p * vr[i][j];
        }
        m = m_new;
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < NC; ++j) s_acc[warp][NC * lane + j] = acc[j];
    __syncthreads();

    const long long pair = (long long)tok * n_heads + h;
    const long long out_at = pair * HD;
    // The block's own part: its warps merged (a warp that saw no position has m = -inf).
    auto warp_part = [&](int w) { return xd_attn_ml{s_m[w], s_l[w]}; };
    auto warp_acc = [&](int w, int c) { return s_acc[w][c]; };
    if (n_splits == 1) {
        xd_attn_merge(XD_ATTN_WARPS, warp_part, warp_acc, HD, out, out_q, out_at);
        return;
    }
    const xd_attn_ml f = xd_attn_fold(XD_ATTN_WARPS, warp_part);
    const long long part = pair * n_splits + split;
    for (int c = threadIdx.x; c < HD; c += blockDim.x)
        part_acc[part * HD + c] = xd_attn_fold_acc(XD_ATTN_WARPS, warp_part, warp_acc, f.m, c);
    if (threadIdx.x == 0) {
        part_ml[2 * part] = f.m;
        part_ml[2 * part + 1] = f.l;
    }
    // The last of the pair's blocks to get here merges the parts: every thread's stores are
    // made visible to the device before the block counts itself in, and that block reads the
    // parts past its L1 after a fence of its own.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = xd_count_in(counts + pair, 1, n_splits);
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const float* ml = part_ml + 2 * pair * n_splits;
    const float* pa = part_acc + pair * n_splits * HD;
    auto split_part = [&](int s) { return xd_attn_ml{__ldcg(ml + 2 * s), __ldcg(ml + 2 * s + 1)}; };
    auto split_acc = [&](int s, int c) { return __ldcg(pa + (long long)s * HD + c); };
    xd_attn_merge(n_splits, split_part, split_acc, HD, out, out_q, out_at);
}

// One kernel per cache type and head_dim (32 to 256 by 32), named attn_<kv>_<head_dim>: the
// head's size fixes each lane's share of it, so the loads vectorize and the tile's rows stay in
// registers (one kernel switching over the sizes holds all their shared memory and spills).
#define XD_ATTN_KERNEL(name, kv, hd)                                                                        \
    extern "C" __global__ void __launch_bounds__(32 * XD_ATTN_WARPS)                                        \
        name(const float* __restrict__ q, const kv* __restrict__ k_cache, const kv* __restrict__ v_cache,   \
             const int* __restrict__ tables, const int* __restrict__ table_off, const int* __restrict__ n_kv, \
             int n_heads, int n_kv_heads, int split_len, float scale, float* part_ml, float* part_acc,       \
             int* counts, float* __restrict__ out, xd_q8_1* __restrict__ out_q) {                           \
        xd_grid_dep_sync();                                                                                 \
        xd_attn<kv, hd / XD_WARP>(q, k_cache, v_cache, tables, table_off, n_kv, n_heads, n_kv_heads, split_len, \
                                 scale, part_ml, part_acc, counts, out, out_q);                              \
    }

XD_ATTN_KERNEL(attn_f32_32, float, 32)
XD_ATTN_KERNEL(attn_f32_64, float, 64)
XD_ATTN_KERNEL(attn_f32_96, float, 96)
XD_ATTN_KERNEL(attn_f32_128, float, 128)
XD_ATTN_KERNEL(attn_f32_160, float, 160)
XD_ATTN_KERNEL(attn_f32_192, float, 192)
XD_ATTN_KERNEL(attn_f32_224, float, 224)
XD_ATTN_KERNEL(attn_f32_256, float, 256)
XD_ATTN_KERNEL(attn_f16_32, uint16_t, 32)
XD_ATTN_KERNEL(attn_f16_64, uint16_t, 64)
XD_ATTN_KERNEL(attn_f16_96, uint16_t, 96)
XD_ATTN_KERNEL(attn_f16_128, uint16_t, 128)
XD_ATTN_KERNEL(attn_f16_160, uint16_t, 160)
XD_ATTN_KERNEL(attn_f16_192, uint16_t, 192)
XD_ATTN_KERNEL(attn_f16_224, uint16_t, 224)
XD_ATTN_KERNEL(attn_f16_256, uint16_t, 256)
XD_ATTN_KERNEL(attn_q8_0_32, xd_kv_q8_0, 32)
XD_ATTN_KERNEL(attn_q8_0_64, xd_kv_q8_0, 64)
XD_ATTN_KERNEL(attn_q8_0_96, xd_kv_q8_0, 96)
XD_ATTN_KERNEL(attn_q8_0_128, xd_kv_q8_0, 128)
XD_ATTN_KERNEL(attn_q8_0_160, xd_kv_q8_0, 160)
XD_ATTN_KERNEL(attn_q8_0_192, xd_kv_q8_0, 192)
XD_ATTN_KERNEL(attn_q8_0_224, xd_kv_q8_0, 224)
XD_ATTN_KERNEL(attn_q8_0_256, xd_kv_q8_0, 256)
