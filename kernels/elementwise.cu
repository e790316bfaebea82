// Element-wise kernels of the decode step: SwiGLU, residual add, the weighted sum of the
// chosen experts' outputs, and the KV-cache store.
#include "common.cuh"

// y = silu(g) * u.
extern "C" __global__ void swiglu(const float* __restrict__ g, const float* __restrict__ u,
                                  float* __restrict__ y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float v = g[i];
        y[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

// x += y (the residual stream).
extern "C" __global__ void add_f32(float* __restrict__ x, const float* __restrict__ y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// x[i] += sum_j weights[j] * e[j][i] over the k chosen experts' outputs e: [k][n].
extern "C" __global__ void moe_combine(float* __restrict__ x, const float* __restrict__ e,
                                       const float* __restrict__ weights, int k, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) acc += weights[j] * e[(long long)j * n + i];
        x[i] += acc;
    }
}

// Stores row t of k and v ([n_tokens][n_embd_kv]) in slot slots[t] of one layer's cache
// ([n_slots][n_embd_kv], f32). grid.x * blockDim.x >= n_tokens * n_embd_kv.
extern "C" __global__ void kv_store(const float* __restrict__ k, const float* __restrict__ v,
                                    float* __restrict__ k_cache, float* __restrict__ v_cache,
                                    const int* __restrict__ slots, int n_tokens, int n_embd_kv) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)n_tokens * n_embd_kv) {
        const long long t = i / n_embd_kv, c = i % n_embd_kv;
        const long long at = (long long)slots[t] * n_embd_kv + c;
        k_cache[at] = k[i];
        v_cache[at] = v[i];
    }
}
