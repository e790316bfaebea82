// Matrix-vector products for F32 and F16 weights with f32 activations, one warp per row, with
// the same slot dispatch as the quantized kernels (see mmvq.cu): slot j multiplies expert
// ids[j]'s matrix (byte offset ids[j] * expert_stride) with x + (j / x_group) * x_stride into
// y + j * nrows.
#include "common.cuh"

extern "C" __global__ void mul_mat_vec_f32(const uint8_t* __restrict__ w, long long expert_stride,
                                           const int* __restrict__ ids, const float* __restrict__ x,
                                           int x_stride, int x_group, float* __restrict__ y, int ncols, int nrows) {
    const int lane = threadIdx.x % XD_WARP;
    const int row = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    const int slot = blockIdx.y;
    const long long expert = ids ? ids[slot] : 0;
    const float* wr = reinterpret_cast<const float*>(w + expert * expert_stride) + (long long)row * ncols;
    const float* xs = x + (long long)(slot / x_group) * x_stride;
    float acc = 0.0f;
    if (row < nrows)
        acc = xd_dot_lane(wr, xs, ncols, lane);
    acc = xd_warp_sum(acc);
    if (lane == 0 && row < nrows) y[(long long)slot * nrows + row] = acc;
}

extern "C" __global__ void mul_mat_vec_f16(const uint8_t* __restrict__ w, long long expert_stride,
                                           const int* __restrict__ ids, const float* __restrict__ x,
                                           int x_stride, int x_group, float* __restrict__ y, int ncols, int nrows) {
    const int lane = threadIdx.x % XD_WARP;
    const int row = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    const int slot = blockIdx.y;
    const long long expert = ids ? ids[slot] : 0;
    const uint16_t* wr = reinterpret_cast<const uint16_t*>(w + expert * expert_stride) + (long long)row * ncols;
    const float* xs = x + (long long)(slot / x_group) * x_stride;
    float acc = 0.0f;
    if (row < nrows)
        acc = xd_dot_lane(wr, xs, ncols, lane);
    acc = xd_warp_sum(acc);
    if (lane == 0 && row < nrows) y[(long long)slot * nrows + row] = acc;
}
