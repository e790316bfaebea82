// MoE router: softmax over the experts' logits, the k most probable experts (ties go to the
// lowest expert id), their probabilities renormalised to sum to 1. One warp per token.
#include "common.cuh"

#define XD_ROUTER_MAX_PER_LANE 8  // up to 256 experts

// logits: [n_tokens][n_expert]; ids, weights: [n_tokens][k]; probs (optional, may be null):
// [n_tokens][n_expert], the softmax before selection. blockDim.x is a multiple of 32.
extern "C" __global__ void moe_router(const float* __restrict__ logits, int n_tokens, int n_expert, int k,
                                      int* __restrict__ ids, float* __restrict__ weights,
                                      float* __restrict__ probs) {
    const int lane = threadIdx.x % XD_WARP;
    const int token = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    // A warp past the last token still runs the shuffles below with the others of its block.
    const bool live = token < n_tokens;
    const float neg_inf = __int_as_float(0xff800000);
    const float* lg = logits + (long long)(live ? token : 0) * n_expert;

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
        if (live && probs && e < n_expert) probs[(long long)token * n_expert + e] = p[j];
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
            ids[(long long)token * k + r] = best_id;
            weights[(long long)token * k + r] = best;
        }
    }
    if (live && lane == 0)
        for (int r = 0; r < k; ++r) weights[(long long)token * k + r] /= chosen_sum;
}
