// Decode matrix-vector products for the GGML quantized types, in the mmvq manner: the
// activation vector is first quantized to q8_1 blocks (quantize_q8_1), then each weight block's
// integers meet the activation's int8 values in __dp4a dot products and the scales are applied
// once per 16 or 32 values.
//
// Work split: one warp per output row; lane i takes the 32-value sub-blocks i, i+32, ... of the
// row (a 256-value super-block has 8 of them) and the warp sums at the end. Every quant type
// provides `dot_<type>(block, sub, a)`: the dot product of sub-block `sub` of `block` with the
// q8_1 block `a` of the same 32 columns.
//
// Batches and MoE dispatch use the same kernels: grid.y runs over "slots"; slot j multiplies
// expert ids[j]'s matrix (at byte offset ids[j] * expert_stride; expert 0 when ids is null)
// with activation row x + (j / x_group) * x_stride into y + j * nrows. A batch of tokens is
// one slot per token (ids null, x_group 1); the gate/up projections of k experts per token
// are k slots per activation row (x_group k); the down projection one row per slot.
#include "quant_dot.cuh"

// ---- activation quantization ------------------------------------------------------------

// One warp per 32 values; n is a multiple of 32. The integers are ggml's (q = x * 127 / amax,
// rounded half to even, as its AVX2 quantizer does) and the scale is rounded to f16 as ggml's
// q8_0 / q8_1 store it, so that for the weight types whose CPU dot products take q8_0 or q8_1
// activations the GPU sees the same activations as the CPU backend. `s` is d * sum(q) with
// that d, exactly.
extern "C" __global__ void quantize_q8_1(const float* __restrict__ x, xd_q8_1* __restrict__ y, int n) {
    const int lane = threadIdx.x % XD_WARP;
    const int blk = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    const bool live = blk * XD_WARP < n;
    const float v = live ? x[blk * XD_WARP + lane] : 0.0f;
    const float amax = xd_warp_max(fabsf(v));
    const float d = xd_h2f(xd_f2h(amax / 127.0f));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const int q = int(rintf(v * id));
    const int sum = xd_warp_sum_int(q);
    if (live) {
        reinterpret_cast<int8_t*>(y[blk].qs)[lane] = int8_t(q);
        if (lane == 0) {
            y[blk].d = d;
            y[blk].s = d * float(sum);
        }
    }
}

// ---- the kernels ----------------------------------------------------------------------------

template <int QK, int BYTES, float (*DOT)(const uint8_t*, int, const xd_q8_1&)>
__device__ __forceinline__ void xd_mmvq(const uint8_t* __restrict__ w, long long expert_stride,
                                        const int* __restrict__ ids, const xd_q8_1* __restrict__ x,
                                        int x_stride, int x_group, float* __restrict__ y, int ncols,
                                        int nrows) {
    const int lane = threadIdx.x % XD_WARP;
    const int row = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    const int slot = blockIdx.y;
    const long long expert = ids ? ids[slot] : 0;
    const int nsub = ncols / 32;
    constexpr int SUBS = QK / 32;
    const uint8_t* wrow = w + expert * expert_stride + (long long)row * (ncols / QK) * BYTES;
    const xd_q8_1* xs = x + (long long)(slot / x_group) * x_stride;
    float acc = 0.0f;
    if (row < nrows) {
        for (int u = lane; u < nsub; u += XD_WARP) acc += DOT(wrow + (u / SUBS) * BYTES, u % SUBS, xs[u]);
    }
    // Every lane takes part in the reduction, rows past the end included.
    acc = xd_warp_sum(acc);
    if (lane == 0 && row < nrows) y[(long long)slot * nrows + row] = acc;
}

#define XD_MMVQ_KERNEL(name, qk, bytes, dot)                                                      \
    extern "C" __global__ void name(const uint8_t* __restrict__ w, long long expert_stride,       \
                                    const int* __restrict__ ids, const xd_q8_1* __restrict__ x,   \
                                    int x_stride, int x_group, float* __restrict__ y, int ncols,  \
                                    int nrows) {                                                  \
        xd_mmvq<qk, bytes, dot>(w, expert_stride, ids, x, x_stride, x_group, y, ncols, nrows);    \
    }

XD_MMVQ_KERNEL(mul_mat_vec_q4_0, 32, 18, dot_q4_0)
XD_MMVQ_KERNEL(mul_mat_vec_q4_1, 32, 20, dot_q4_1)
XD_MMVQ_KERNEL(mul_mat_vec_q5_0, 32, 22, dot_q5_0)
XD_MMVQ_KERNEL(mul_mat_vec_q5_1, 32, 24, dot_q5_1)
XD_MMVQ_KERNEL(mul_mat_vec_q8_0, 32, 34, dot_q8_0)
XD_MMVQ_KERNEL(mul_mat_vec_q2_k, 256, 84, dot_q2_k)
XD_MMVQ_KERNEL(mul_mat_vec_q3_k, 256, 110, dot_q3_k)
XD_MMVQ_KERNEL(mul_mat_vec_q4_k, 256, 144, dot_q4_k)
XD_MMVQ_KERNEL(mul_mat_vec_q5_k, 256, 176, dot_q5_k)
XD_MMVQ_KERNEL(mul_mat_vec_q6_k, 256, 210, dot_q6_k)
XD_MMVQ_KERNEL(mul_mat_vec_iq4_nl, 32, 18, dot_iq4_nl)
XD_MMVQ_KERNEL(mul_mat_vec_iq4_xs, 256, 136, dot_iq4_xs)
XD_MMVQ_KERNEL(mul_mat_vec_iq2_xxs, 256, 66, dot_iq2_xxs)
XD_MMVQ_KERNEL(mul_mat_vec_iq2_xs, 256, 74, dot_iq2_xs)
XD_MMVQ_KERNEL(mul_mat_vec_iq2_s, 256, 82, dot_iq2_s)
XD_MMVQ_KERNEL(mul_mat_vec_iq3_xxs, 256, 98, dot_iq3_xxs)
XD_MMVQ_KERNEL(mul_mat_vec_iq3_s, 256, 110, dot_iq3_s)
XD_MMVQ_KERNEL(mul_mat_vec_iq1_s, 256, 50, dot_iq1_s)
XD_MMVQ_KERNEL(mul_mat_vec_iq1_m, 256, 56, dot_iq1_m)
XD_MMVQ_KERNEL(mul_mat_vec_mxfp4, 32, 17, dot_mxfp4)
