// Element-wise kernels of the decode step: SwiGLU, residual add, the weighted sum of the
// chosen experts' outputs, and the KV-cache store.
#include "common.cuh"

// y = silu(g) * u.
extern "C" __global__ void swiglu(const float* __restrict__ g, const float* __restrict__ u,
                                  float* __restrict__ y, int n) {
    xd_grid_dep_sync();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float v = g[i];
        y[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

// x += y (the residual stream).
extern "C" __global__ void add_f32(float* __restrict__ x, const float* __restrict__ y, int n) {
    xd_grid_dep_sync();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// The mixture: out[t][c] = sum_j weights[t][j] * e[t * k + j][c] over each token's k chosen
// experts' outputs e: [n_tokens * k][n].
extern "C" __global__ void moe_combine(float* __restrict__ out, const float* __restrict__ e,
                                       const float* __restrict__ weights, int k, int n, int n_tokens) {
    xd_grid_dep_sync();
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)n_tokens * n) {
        const long long t = i / n, c = i % n;
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) acc += weights[t * k + j] * e[(t * k + j) * n + c];
        out[i] = acc;
    }
}

// Stores row t of k and v ([n_tokens][n_embd_kv]) in slot slots[t] of one layer's cache
// ([n_slots][n_embd_kv], f32 or f16). grid.x * blockDim.x >= n_tokens * n_embd_kv.

template <typename KV>
__device__ __forceinline__ void xd_kv_store(const float* __restrict__ k, const float* __restrict__ v,
                                            KV* __restrict__ k_cache, KV* __restrict__ v_cache,
                                            const int* __restrict__ slots, int n_tokens, int n_embd_kv) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)n_tokens * n_embd_kv) {
        const long long t = i / n_embd_kv, c = i % n_embd_kv;
        const long long at = (long long)slots[t] * n_embd_kv + c;
        xd_kv_put(k_cache + at, k[i]);
        xd_kv_put(v_cache + at, v[i]);
    }
}

extern "C" __global__ void kv_store_f32(const float* __restrict__ k, const float* __restrict__ v,
                                        float* __restrict__ k_cache, float* __restrict__ v_cache,
                                        const int* __restrict__ slots, int n_tokens, int n_embd_kv) {
    xd_grid_dep_sync();
    xd_kv_store(k, v, k_cache, v_cache, slots, n_tokens, n_embd_kv);
}

extern "C" __global__ void kv_store_f16(const float* __restrict__ k, const float* __restrict__ v,
                                        uint16_t* __restrict__ k_cache, uint16_t* __restrict__ v_cache,
                                        const int* __restrict__ slots, int n_tokens, int n_embd_kv) {
    xd_grid_dep_sync();
    xd_kv_store(k, v, k_cache, v_cache, slots, n_tokens, n_embd_kv);
}

// A Q8_0 cache: one warp per 32-value block, the K block and the same V block, quantized as
// ggml's reference quantizer (and the CPU backend) does: d = amax / 127, q = round(x / d) with
// halves away from zero, d stored as f16. Threads: n_tokens * n_embd_kv (a multiple of 32), in
// blocks of a multiple of 32, so a warp is one KV block and leaves or stays as a whole.
__device__ __forceinline__ void xd_put_q8_0(float x, xd_kv_q8_0* __restrict__ blk, int lane) {
    const float amax = xd_warp_max(fabsf(x));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    blk->qs[lane] = int8_t(roundf(x * id));
    if (lane == 0) blk->d = xd_f2h(d);
}

extern "C" __global__ void kv_store_q8_0(const float* __restrict__ k, const float* __restrict__ v,
                                         xd_kv_q8_0* __restrict__ k_cache, xd_kv_q8_0* __restrict__ v_cache,
                                         const int* __restrict__ slots, int n_tokens, int n_embd_kv) {
    xd_grid_dep_sync();
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_tokens * n_embd_kv) return;
    const int lane = threadIdx.x % XD_WARP;
    const int per_row = n_embd_kv / 32;
    const long long blk = i / 32, t = blk / per_row;
    const long long at = (long long)slots[t] * per_row + blk % per_row;
    xd_put_q8_0(k[i], k_cache + at, lane);
    xd_put_q8_0(v[i], v_cache + at, lane);
}

// f32 to f16 bits, element-wise (for testing the conversion the f16 KV cache uses).
extern "C" __global__ void convert_f32_f16(const float* __restrict__ x, uint16_t* __restrict__ y, int n) {
    xd_grid_dep_sync();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = xd_f2h(x[i]);
}
