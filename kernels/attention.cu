// Attention over a paged KV cache, split-K ("flash-decoding"): each query token's visible
// positions are cut into splits of split_len; one block per (query head, split, token) runs an
// online softmax over its positions (max m, sum l, unnormalised V sum), and attn_combine merges
// the splits. Built for decode (one token per sequence), correct for any batch.
//
// Cache layout (f32 or f16, one layer), as the engine's backend contract: slot s holds one token's K
// (or V) row of n_kv_heads * head_dim values; slot s belongs to block s / 16. Position p of a
// token's sequence is in slot table[p / 16] * 16 + p % 16. Query head h reads KV head
// h / (n_heads / n_kv_heads) (grouped-query attention).
#include "common.cuh"

#define XD_ATTN_WARPS 4       // blockDim.x = 32 * XD_ATTN_WARPS
#define XD_ATTN_MAX_DIM 256   // head_dim: a multiple of 32, at most this
#define XD_KV_BLOCK 16

// q: [n_tokens][n_heads * head_dim]. Token t sees the first n_kv[t] positions of the sequence
// whose block table starts at tables + table_off[t]. part_ml: [n_tokens][n_heads][n_splits][2],
// part_acc: [n_tokens][n_heads][n_splits][head_dim], n_splits = gridDim.y (enough for the
// longest token; splits past a token's length record an empty part).
// grid (n_heads, n_splits, n_tokens).
// Value i of a layer's cache (f32, f16 or Q8_0 blocks; a row is whole blocks).
__device__ __forceinline__ float xd_kv_at(const float* c, long long i) { return c[i]; }
__device__ __forceinline__ float xd_kv_at(const uint16_t* c, long long i) { return xd_h2f(c[i]); }
__device__ __forceinline__ float xd_kv_at(const xd_kv_q8_0* c, long long i) {
    const xd_kv_q8_0& b = c[i >> 5];
    return xd_h2f(b.d) * float(b.qs[i & 31]);
}

template <typename KV>
__device__ __forceinline__ void xd_attn_split(const float* __restrict__ q, const KV* __restrict__ k_cache,
                                              const KV* __restrict__ v_cache, const int* __restrict__ tables,
                                              const int* __restrict__ table_off, const int* __restrict__ n_kv,
                                              int n_heads, int n_kv_heads, int head_dim, int split_len, float scale,
                                              float* __restrict__ part_ml, float* __restrict__ part_acc) {
    __shared__ float s_m[XD_ATTN_WARPS], s_l[XD_ATTN_WARPS];
    __shared__ float s_acc[XD_ATTN_WARPS][XD_ATTN_MAX_DIM];
    const int lane = threadIdx.x % XD_WARP, warp = threadIdx.x / XD_WARP;
    const int h = blockIdx.x, split = blockIdx.y, tok = blockIdx.z, n_splits = gridDim.y;
    const int kvh = h / (n_heads / n_kv_heads);
    const int row = n_kv_heads * head_dim;
    const int nc = head_dim / XD_WARP;  // components per lane: lane + 32 * j
    const float neg_inf = __int_as_float(0xff800000);
    const int* table = tables + table_off[tok];
    const float* qh = q + ((long long)tok * n_heads + h) * head_dim;

    float qr[XD_ATTN_MAX_DIM / XD_WARP], acc[XD_ATTN_MAX_DIM / XD_WARP];
#pragma unroll
    for (int j = 0; j < XD_ATTN_MAX_DIM / XD_WARP; ++j) {
        qr[j] = j < nc ? qh[lane + XD_WARP * j] : 0.0f;
        acc[j] = 0.0f;
    }
    float m = neg_inf, l = 0.0f;
    const int t0 = split * split_len;
    const int t1 = min(n_kv[tok], t0 + split_len);
    for (int t = t0 + warp; t < t1; t += XD_ATTN_WARPS) {
        const long long slot = (long long)table[t / XD_KV_BLOCK] * XD_KV_BLOCK + t % XD_KV_BLOCK;
        const long long base = slot * row + kvh * head_dim;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < XD_ATTN_MAX_DIM / XD_WARP; ++j)
            if (j < nc) s += qr[j] * xd_kv_at(k_cache, base + lane + XD_WARP * j);
        s = xd_warp_sum(s) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);  // 0 on the first position (m = -inf)
        const float p = expf(s - m_new);
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < XD_ATTN_MAX_DIM / XD_WARP; ++j)
            if (j < nc) acc[j] = acc[j] * corr + p * xd_kv_at(v_cache, base + lane + XD_WARP * j);
        m = m_new;
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < XD_ATTN_MAX_DIM / XD_WARP; ++j)
        if (j < nc) s_acc[warp][lane + XD_WARP * j] = acc[j];
    __syncthreads();

    // Merge the warps; a warp that saw no position has m = -inf and weight 0.
    float mm = neg_inf;
    for (int w = 0; w < XD_ATTN_WARPS; ++w) mm = fmaxf(mm, s_m[w]);
    const long long part = ((long long)tok * n_heads + h) * n_splits + split;
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < XD_ATTN_WARPS; ++w)
            if (s_m[w] != neg_inf) a += s_acc[w][c] * expf(s_m[w] - mm);
        part_acc[part * head_dim + c] = a;
    }
    if (threadIdx.x == 0) {
        float ll = 0.0f;
        for (int w = 0; w < XD_ATTN_WARPS; ++w)
            if (s_m[w] != neg_inf) ll += s_l[w] * expf(s_m[w] - mm);
        part_ml[2 * part] = mm;
        part_ml[2 * part + 1] = ll;
    }
}

#define XD_ATTN_KERNEL(name, kv)                                                                              \
    extern "C" __global__ void __launch_bounds__(32 * XD_ATTN_WARPS)                                          \
        name(const float* __restrict__ q, const kv* __restrict__ k_cache, const kv* __restrict__ v_cache,     \
             const int* __restrict__ tables, const int* __restrict__ table_off, const int* __restrict__ n_kv, \
             int n_heads, int n_kv_heads, int head_dim, int split_len, float scale, float* __restrict__ part_ml, \
             float* __restrict__ part_acc) {                                                                  \
        xd_grid_dep_sync();                                                                                   \
        xd_attn_split(q, k_cache, v_cache, tables, table_off, n_kv, n_heads, n_kv_heads, head_dim, split_len,   \
                      scale, part_ml, part_acc);                                                               \
    }

XD_ATTN_KERNEL(attn_split_f32, float)
XD_ATTN_KERNEL(attn_split_f16, uint16_t)
XD_ATTN_KERNEL(attn_split_q8_0, xd_kv_q8_0)

// out: [n_tokens][n_heads * head_dim]. grid (n_heads, n_tokens); any block size (a multiple of
// 32 with out_q). Every token sees at least one position, so at least one split is non-empty.
// out_q, when not null, receives the q8_1 blocks of out ([n_tokens][n_heads * head_dim / 32]),
// as quantize_q8_1 makes them for the output projection: head_dim is a multiple of 32, so the
// 32 values a warp holds in one trip are one block.
__device__ __forceinline__ void xd_attn_combine(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                                                int n_splits, int head_dim, float* __restrict__ out,
                                                xd_q8_1* __restrict__ out_q) {
    const int h = blockIdx.x, tok = blockIdx.y, n_heads = gridDim.x;
    const long long first = ((long long)tok * n_heads + h) * n_splits;
    const float* ml = part_ml + 2 * first;
    const float neg_inf = __int_as_float(0xff800000);
    float mm = neg_inf;
    for (int s = 0; s < n_splits; ++s) mm = fmaxf(mm, ml[2 * s]);
    float ll = 0.0f;
    for (int s = 0; s < n_splits; ++s)
        if (ml[2 * s] != neg_inf) ll += ml[2 * s + 1] * expf(ml[2 * s] - mm);
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < n_splits; ++s)
            if (ml[2 * s] != neg_inf) a += part_acc[(first + s) * head_dim + c] * expf(ml[2 * s] - mm);
        const long long at = ((long long)tok * n_heads + h) * head_dim + c;
        const float o = a / ll;
        out[at] = o;
        if (out_q) xd_quantize_warp_q8_1(o, out_q + at / XD_WARP);
    }
}

extern "C" __global__ void attn_combine(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                                        int n_splits, int head_dim, float* __restrict__ out) {
    xd_grid_dep_sync();
    xd_attn_combine(part_ml, part_acc, n_splits, head_dim, out, nullptr);
}

extern "C" __global__ void attn_combine_q8_1(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                                             int n_splits, int head_dim, float* __restrict__ out,
                                             xd_q8_1* __restrict__ out_q) {
    xd_grid_dep_sync();
    xd_attn_combine(part_ml, part_acc, n_splits, head_dim, out, out_q);
}
