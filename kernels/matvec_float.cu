// Matrix-vector products for F32, F16 and BF16 weights with f32 activations, one warp per row,
// with the same slot dispatch as the quantized kernels (see mmvq.cu): slot j multiplies expert
// ids[j]'s matrix (byte offset ids[j] * expert_stride) with x + (j / x_group) * x_stride into
// y + j * nrows.
#include "common.cuh"

// W: the element type of the weights (float, uint16_t for f16, xd_bf16); xd_wval widens it.
template <typename W>
__device__ __forceinline__ void xd_mul_mat_vec_float(const uint8_t* __restrict__ w, long long expert_stride,
                                                     const int* __restrict__ ids, const float* __restrict__ x,
                                                     int x_stride, int x_group, float* __restrict__ y, int ncols,
                                                     int nrows) {
    const int lane = threadIdx.x % XD_WARP;
    const int row = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    const int slot = blockIdx.y;
    const long long expert = ids ? ids[slot] : 0;
    const W* wr = reinterpret_cast<const W*>(w + expert * expert_stride) + (long long)row * ncols;
    const float* xs = x + (long long)(slot / x_group) * x_stride;
    float acc = 0.0f;
    if (row < nrows)
        acc = xd_dot_lane(wr, xs, ncols, lane);
    acc = xd_warp_sum(acc);
    if (lane == 0 && row < nrows) y[(long long)slot * nrows + row] = acc;
}

#define XD_MATVEC_FLOAT_KERNEL(name, W)                                                                    \
    extern "C" __global__ void name(const uint8_t* __restrict__ w, long long expert_stride,               \
                                    const int* __restrict__ ids, const float* __restrict__ x, int x_stride, \
                                    int x_group, float* __restrict__ y, int ncols, int nrows) {             \
        xd_grid_dep_sync();                                                                                 \
        xd_mul_mat_vec_float<W>(w, expert_stride, ids, x, x_stride, x_group, y, ncols, nrows);            \
    }

XD_MATVEC_FLOAT_KERNEL(mul_mat_vec_f32, float)
XD_MATVEC_FLOAT_KERNEL(mul_mat_vec_f16, uint16_t)
XD_MATVEC_FLOAT_KERNEL(mul_mat_vec_bf16, xd_bf16)
