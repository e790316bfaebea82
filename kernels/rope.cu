// Rotary position embedding, NORM pairing (llama.cpp's LLAMA_ROPE_TYPE_NORM): within each
// head, the pairs (x[2i], x[2i+1]) with 2i < n_rot turn by
// pos * freq_scale * freq_base^(-2i / n_rot) / freq_factors[i]; the other values stay.
// The angle is computed in double, so it is as exact as f32 allows at any position (the CPU
// backend follows llama.cpp's f32 recurrence instead; the two can differ by an ulp); the
// rotation itself is f32.
#include "common.cuh"

// The cosine and sine of pair i's angle at position p (already times freq_scale).
__device__ __forceinline__ void xd_rope_angle(double p, int i, int n_rot, float freq_base,
                                              const float* __restrict__ freq_factors, float* c, float* s) {
    double theta = p * pow(double(freq_base), -2.0 * double(i) / double(n_rot));
    if (freq_factors) theta /= double(freq_factors[i]);
    *c = float(cos(theta));
    *s = float(sin(theta));
}

// x: [n_tokens][n_heads * head_dim], rotated in place; pos: [n_tokens]; freq_factors:
// [n_rot / 2] or null. grid (n_tokens, n_heads); any block size.
extern "C" __global__ void rope_norm(float* __restrict__ x, const int* __restrict__ pos, int n_heads, int head_dim,
                                     int n_rot, float freq_base, float freq_scale,
                                     const float* __restrict__ freq_factors) {
    xd_grid_dep_sync();
    float* h = x + ((long long)blockIdx.x * n_heads + blockIdx.y) * head_dim;
    const double p = double(pos[blockIdx.x]) * double(freq_scale);
    for (int i = threadIdx.x; i < n_rot / 2; i += blockDim.x) {
        float c, s;
        xd_rope_angle(p, i, n_rot, freq_base, freq_factors, &c, &s);
        const float a = h[2 * i], b = h[2 * i + 1];
        h[2 * i] = a * c - b * s;
        h[2 * i + 1] = a * s + b * c;
    }
}

// The attention block's RoPE and KV store in one launch: rope_norm of q (n_heads heads) and of
// k (n_kv_heads heads), in place, and the rotated k and v rows of token t stored in slot
// slots[t] of one layer's cache ([n_slots][n_kv_heads * head_dim], f32 or f16), as kv_store
// does. grid (n_tokens, n_heads + 2 * n_kv_heads): one block per q head, k head, v head; any
// block size.
template <typename KV>
__device__ __forceinline__ void xd_rope_kv_store(float* __restrict__ q, float* __restrict__ k,
                                                 const float* __restrict__ v, KV* __restrict__ k_cache,
                                                 KV* __restrict__ v_cache, const int* __restrict__ pos,
                                                 const int* __restrict__ slots, int n_heads, int n_kv_heads,
                                                 int head_dim, int n_rot, float freq_base, float freq_scale,
                                                 const float* __restrict__ freq_factors) {
    const int t = blockIdx.x, hb = blockIdx.y;
    const int row = n_kv_heads * head_dim;
    if (hb >= n_heads + n_kv_heads) {
        // A V head: stored as it is.
        const int h = hb - n_heads - n_kv_heads;
        const float* src = v + (long long)t * row + h * head_dim;
        KV* dst = v_cache + (long long)slots[t] * row + h * head_dim;
        for (int c = threadIdx.x; c < head_dim; c += blockDim.x) xd_kv_put(dst + c, src[c]);
        return;
    }
    const bool is_q = hb < n_heads;
    float* h = is_q ? q + ((long long)t * n_heads + hb) * head_dim : k + (long long)t * row + (hb - n_heads) * head_dim;
    KV* dst = is_q ? nullptr : k_cache + (long long)slots[t] * row + (hb - n_heads) * head_dim;
    const double p = double(pos[t]) * double(freq_scale);
    for (int i = threadIdx.x; i < n_rot / 2; i += blockDim.x) {
        float c, s;
        xd_rope_angle(p, i, n_rot, freq_base, freq_factors, &c, &s);
        const float a = h[2 * i], b = h[2 * i + 1];
        const float ra = a * c - b * s, rb = a * s + b * c;
        h[2 * i] = ra;
        h[2 * i + 1] = rb;
        if (dst) {
            xd_kv_put(dst + 2 * i, ra);
            xd_kv_put(dst + 2 * i + 1, rb);
        }
    }
    // The values past n_rot are not rotated; each thread stores what it reads.
    if (dst)
        for (int c = n_rot + threadIdx.x; c < head_dim; c += blockDim.x) xd_kv_put(dst + c, h[c]);
}

#define XD_ROPE_KV_KERNEL(name, kv)                                                                            \
    extern "C" __global__ void name(float* __restrict__ q, float* __restrict__ k, const float* __restrict__ v, \
                                    kv* __restrict__ k_cache, kv* __restrict__ v_cache,                        \
                                    const int* __restrict__ pos, const int* __restrict__ slots, int n_heads,   \
                                    int n_kv_heads, int head_dim, int n_rot, float freq_base, float freq_scale, \
                                    const float* __restrict__ freq_factors) {                                  \
        xd_grid_dep_sync();                                                                                    \
        xd_rope_kv_store(q, k, v, k_cache, v_cache, pos, slots, n_heads, n_kv_heads, head_dim, n_rot, freq_base, \
                         freq_scale, freq_factors);                                                            \
    }

XD_ROPE_KV_KERNEL(rope_kv_store_f32, float)
XD_ROPE_KV_KERNEL(rope_kv_store_f16, uint16_t)
