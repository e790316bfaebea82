// Decode attention over a paged KV cache, split-K ("flash-decoding"): the sequence's tokens are
// cut into splits of split_len tokens; one block per (query head, split) computes an online
// softmax over its tokens (max m, sum l, unnormalised V sum), and attn_decode_combine merges
// the splits of each head.
//
// Cache layout (f32): [block][n_kv_heads][16][head_dim]; block_table lists the sequence's
// blocks in order. Query head h reads KV head h / (n_heads / n_kv_heads) (grouped-query).
#include "common.cuh"

#define XD_ATTN_WARPS 4       // blockDim.x = 32 * XD_ATTN_WARPS
#define XD_ATTN_MAX_DIM 256   // head_dim: a multiple of 32, at most this
#define XD_KV_BLOCK 16

// q: [n_heads][head_dim]; part_ml: [n_heads][n_splits][2]; part_acc: [n_heads][n_splits][head_dim].
// grid (n_heads, n_splits), n_splits = ceil(seq_len / split_len).
extern "C" __global__ void __launch_bounds__(32 * XD_ATTN_WARPS)
attn_decode_split(const float* __restrict__ q, const float* __restrict__ k_cache,
                  const float* __restrict__ v_cache, const int* __restrict__ block_table, int seq_len,
                  int n_heads, int n_kv_heads, int head_dim, int split_len, float scale,
                  float* __restrict__ part_ml, float* __restrict__ part_acc) {
    __shared__ float s_m[XD_ATTN_WARPS], s_l[XD_ATTN_WARPS];
    __shared__ float s_acc[XD_ATTN_WARPS][XD_ATTN_MAX_DIM];
    const int lane = threadIdx.x % XD_WARP, warp = threadIdx.x / XD_WARP;
    const int h = blockIdx.x, split = blockIdx.y, n_splits = gridDim.y;
    const int kvh = h / (n_heads / n_kv_heads);
    const int nc = head_dim / XD_WARP;  // components per lane: lane + 32 * j
    const float neg_inf = __int_as_float(0xff800000);

    float qr[XD_ATTN_MAX_DIM / XD_WARP], acc[XD_ATTN_MAX_DIM / XD_WARP];
#pragma unroll
    for (int j = 0; j < XD_ATTN_MAX_DIM / XD_WARP; ++j) {
        qr[j] = j < nc ? q[h * head_dim + lane + XD_WARP * j] : 0.0f;
        acc[j] = 0.0f;
    }
    float m = neg_inf, l = 0.0f;
    const int t0 = split * split_len;
    const int t1 = min(seq_len, t0 + split_len);
    for (int t = t0 + warp; t < t1; t += XD_ATTN_WARPS) {
        const long long base =
            (((long long)block_table[t / XD_KV_BLOCK] * n_kv_heads + kvh) * XD_KV_BLOCK + t % XD_KV_BLOCK) *
            head_dim;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < XD_ATTN_MAX_DIM / XD_WARP; ++j)
            if (j < nc) s += qr[j] * k_cache[base + lane + XD_WARP * j];
        s = xd_warp_sum(s) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);  // 0 on the first token (m = -inf)
        const float p = expf(s - m_new);
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < XD_ATTN_MAX_DIM / XD_WARP; ++j)
            if (j < nc) acc[j] = acc[j] * corr + p * v_cache[base + lane + XD_WARP * j];
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

    // Merge the warps; a warp that saw no token has m = -inf and weight 0.
    float mm = neg_inf;
    for (int w = 0; w < XD_ATTN_WARPS; ++w) mm = fmaxf(mm, s_m[w]);
    const long long part = (long long)h * n_splits + split;
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

// out: [n_heads][head_dim]. grid (n_heads); any block size.
extern "C" __global__ void attn_decode_combine(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                                               int n_splits, int head_dim, float* __restrict__ out) {
    const int h = blockIdx.x;
    const float* ml = part_ml + 2LL * h * n_splits;
    const float neg_inf = __int_as_float(0xff800000);
    float mm = neg_inf;
    for (int s = 0; s < n_splits; ++s) mm = fmaxf(mm, ml[2 * s]);
    float ll = 0.0f;
    for (int s = 0; s < n_splits; ++s) ll += ml[2 * s + 1] * expf(ml[2 * s] - mm);
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < n_splits; ++s)
            a += part_acc[((long long)h * n_splits + s) * head_dim + c] * expf(ml[2 * s] - mm);
        out[(long long)h * head_dim + c] = a / ll;
    }
}
