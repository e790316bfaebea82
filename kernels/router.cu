// MoE router: softmax over the experts' logits, the k most probable experts (ties go to the
// lowest expert id), their probabilities renormalised to sum to 1. moe_router takes the logits
// (one warp per token); router_logits_f32 / _f16 / _bf16 compute them (one block per token),
// and moe_route_f32 / _f16 / _bf16 do both in one launch.
#include "common.cuh"

#define XD_ROUTER_MAX_PER_LANE 8  // up to 256 experts
#define XD_ROUTE_WARPS 8          // blockDim.x of router_logits_* and moe_route_*: 32 * XD_ROUTE_WARPS
#define XD_ROUTE_EXPERTS 8        // experts whose rows a block reads together
#define XD_ROUTE_UNROLL 8         // columns per thread and expert loaded together

// The routing of one token by one warp: lg its n_expert logits; writes ids and weights (k each)
// and, when probs is not null, the softmax (n_expert). A warp with live false runs the
// shuffles with the others and writes nothing.
__device__ __forceinline__ void xd_route_top_k(const float* lg, int n_expert, int k, bool live,
                                               int* __restrict__ ids, float* __restrict__ weights,
                                               float* __restrict__ probs) {
    const int lane = threadIdx.x % XD_WARP;
    const float neg_inf = __int_as_float(0xff800000);

    float p[XD_ROUTER_MAX_PER_LANE];
    float mx = neg_inf;
#pragma unroll
    for (int j = 0; j < XD_ROUTER_MAX_PER_LANE; ++j) {
        const int e = lane + XD_WARP * j;
        p[j] = e < n_expert ? lg[e] : neg_inf;
        mx = fmaxf(mx, p[j]);
    }
    mx = xd_warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < XD_ROUTER_MAX_PER_LANE; ++j) {
        const int e = lane + XD_WARP * j;
        p[j] = e < n_expert ? expf(p[j] - mx) : 0.0f;
        sum += p[j];
    }
    sum = xd_warp_sum(sum);
#pragma unroll
    for (int j = 0; j < XD_ROUTER_MAX_PER_LANE; ++j) {
        const int e = lane + XD_WARP * j;
        p[j] /= sum;
        if (live && probs && e < n_expert) probs[e] = p[j];
    }

    // k rounds of a warp arg-max over the experts not yet taken; the order (larger
    // probability, then smaller id) makes ties go to the lowest id.
    unsigned taken = 0;
    float chosen_sum = 0.0f;
    for (int r = 0; r < k; ++r) {
        float best = -1.0f;
        int best_id = 0x7fffffff;
#pragma unroll
        for (int j = 0; j < XD_ROUTER_MAX_PER_LANE; ++j) {
            const int e = lane + XD_WARP * j;
            if (e < n_expert && !(taken & (1u << j)) && p[j] > best) {
                best = p[j];
                best_id = e;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(XD_FULL_MASK, best, o);
            const int oid = __shfl_xor_sync(XD_FULL_MASK, best_id, o);
            if (ob > best || (ob == best && oid < best_id)) {
                best = ob;
                best_id = oid;
            }
        }
        if (best_id % XD_WARP == lane) taken |= 1u << (best_id / XD_WARP);
        chosen_sum += best;
        if (live && lane == 0) {
            ids[r] = best_id;
            weights[r] = best;
        }
    }
    if (live && lane == 0)
        for (int r = 0; r < k; ++r) weights[r] /= chosen_sum;
}

// logits: [n_tokens][n_expert]; ids, weights: [n_tokens][k]; probs (optional, may be null):
// [n_tokens][n_expert], the softmax before selection. blockDim.x is a multiple of 32.
extern "C" __global__ void moe_router(const float* __restrict__ logits, int n_tokens, int n_expert, int k,
                                      int* __restrict__ ids, float* __restrict__ weights,
                                      float* __restrict__ probs) {
    xd_grid_dep_sync();
    const int token = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    // A warp past the last token still runs the shuffles below with the others of its block.
    const bool live = token < n_tokens;
    const long long t = live ? token : 0;
    xd_route_top_k(logits + t * n_expert, n_expert, k, live, ids + t * k, weights + t * k,
                   probs ? probs + t * n_expert : nullptr);
}

// The router logits of token blockIdx.x, logits[e] = dot(w[e], x[token]) (w: [n_expert][ncols]
// f32, f16 or bf16), into `out` (every thread of the block calls it). All the block's threads
// share each row: thread i takes columns i, i + blockDim.x, ..., and the rows of
// XD_ROUTE_EXPERTS experts at a time, XD_ROUTE_UNROLL columns each, are loaded before their
// multiply-adds, so a 4096-column router of 8 experts is two rounds of loads per thread rather
// than a warp's 8 rounds per expert. The sums: each thread's in column order, the warp sum,
// then the warps in order; the same in both kernels below, so the fused router chooses what
// router_logits + moe_router choose.
template <typename W>
__device__ __forceinline__ void xd_router_logits(const W* __restrict__ w, const float* __restrict__ xs, int ncols,
                                                 int n_expert, float* out) {
    constexpr int E = XD_ROUTE_EXPERTS, U = XD_ROUTE_UNROLL;
    __shared__ float s_part[XD_ROUTE_WARPS][E];
    const int lane = threadIdx.x % XD_WARP, warp = threadIdx.x / XD_WARP, nt = int(blockDim.x);
    for (int e0 = 0; e0 < n_expert; e0 += E) {
        float acc[E];
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] = 0.0f;
        for (int i = int(threadIdx.x); i < ncols; i += nt * U) {
            float xv[U], wv[E][U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int c = i + u * nt;
                xv[u] = c < ncols ? xs[c] : 0.0f;
#pragma unroll
                for (int e = 0; e < E; ++e)
                    wv[e][u] = c < ncols && e0 + e < n_expert ? xd_wval(w, (long long)(e0 + e) * ncols + c) : 0.0f;
            }
#pragma unroll
            for (int e = 0; e < E; ++e)
#pragma unroll
                for (int u = 0; u < U; ++u)
                    if (i + u * nt < ncols) acc[e] += wv[e][u] * xv[u];
        }
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const float v = xd_warp_sum(acc[e]);
            if (lane == 0) s_part[warp][e] = v;
        }
        __syncthreads();
        const int e = int(threadIdx.x);
        if (e < E && e0 + e < n_expert) {
            float sum = 0.0f;
            for (int q = 0; q < XD_ROUTE_WARPS; ++q) sum += s_part[q][e];
            out[e0 + e] = sum;
        }
        __syncthreads();
    }
}

// logits: [n_tokens][n_expert]. grid (n_tokens); blockDim.x = 32 * XD_ROUTE_WARPS.
#define XD_ROUTER_LOGITS_KERNEL(name, W)                                                                 \
    extern "C" __global__ void __launch_bounds__(32 * XD_ROUTE_WARPS)                                    \
        name(const W* __restrict__ w, const float* __restrict__ x, int ncols, int n_expert,              \
             float* __restrict__ logits) {                                                               \
        xd_grid_dep_sync();                                                                              \
        xd_router_logits(w, x + (long long)blockIdx.x * ncols, ncols, n_expert,                          \
                         logits + (long long)blockIdx.x * n_expert);                                     \
    }

XD_ROUTER_LOGITS_KERNEL(router_logits_f32, float)
XD_ROUTER_LOGITS_KERNEL(router_logits_f16, uint16_t)
XD_ROUTER_LOGITS_KERNEL(router_logits_bf16, xd_bf16)

// The router logits and the routing of one token per block: xd_router_logits into shared
// memory, then warp 0 routes them as moe_router does. ids, weights: [n_tokens][k].
// grid (n_tokens); blockDim.x = 32 * XD_ROUTE_WARPS.
template <typename W>
__device__ __forceinline__ void xd_route(const W* __restrict__ w, const float* __restrict__ x, int ncols,
                                         int n_expert, int k, int* __restrict__ ids,
                                         float* __restrict__ weights) {
    __shared__ float s_logits[XD_ROUTER_MAX_PER_LANE * XD_WARP];
    const long long t = blockIdx.x;
    xd_router_logits(w, x + t * ncols, ncols, n_expert, s_logits);
    if (threadIdx.x / XD_WARP == 0) xd_route_top_k(s_logits, n_expert, k, true, ids + t * k, weights + t * k, nullptr);
}

extern "C" __global__ void __launch_bounds__(32 * XD_ROUTE_WARPS)
    moe_route_f32(const float* __restrict__ w, const float* __restrict__ x, int ncols, int n_expert, int k,
                  int* __restrict__ ids, float* __restrict__ weights) {
    xd_grid_dep_sync();
    xd_route(w, x, ncols, n_expert, k, ids, weights);
}

extern "C" __global__ void __launch_bounds__(32 * XD_ROUTE_WARPS)
    moe_route_f16(const uint16_t* __restrict__ w, const float* __restrict__ x, int ncols, int n_expert, int k,
                  int* __restrict__ ids, float* __restrict__ weights) {
    xd_grid_dep_sync();
    xd_route(w, x, ncols, n_expert, k, ids, weights);
}

extern "C" __global__ void __launch_bounds__(32 * XD_ROUTE_WARPS)
    moe_route_bf16(const xd_bf16* __restrict__ w, const float* __restrict__ x, int ncols, int n_expert, int k,
                   int* __restrict__ ids, float* __restrict__ weights) {
    xd_grid_dep_sync();
    xd_route(w, x, ncols, n_expert, k, ids, weights);
}
