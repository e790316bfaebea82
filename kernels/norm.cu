// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, one block per row.
#include "common.cuh"

// blockDim.x is a multiple of 32, at most 1024.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    float* __restrict__ y, int n, float eps) {
    __shared__ float partial[32];
    const float* xr = x + (long long)blockIdx.x * n;
    float* yr = y + (long long)blockIdx.x * n;
    const int lane = threadIdx.x % XD_WARP, warp = threadIdx.x / XD_WARP;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = xd_warp_sum(ss);
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    // Every warp sums the partials, so every thread holds the total without a broadcast.
    const int nwarps = blockDim.x / XD_WARP;
    ss = xd_warp_sum(lane < nwarps ? partial[lane] : 0.0f);
    const float scale = rsqrtf(ss / float(n) + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}
