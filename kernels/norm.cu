// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, one block per row; and its fusions with the
// residual add before it (x += r) and with the q8_1 quantization of y that the next quantized
// matmul would launch (yq: the blocks of y, as quantize_q8_1 makes them).
#include "common.cuh"

// blockDim.x is a multiple of 32, at most 1024. With ADD, r is added to x first and the sum
// written back; with yq, n is a multiple of 32. The sums run in the same order in every variant,
// so each gives the bits of its unfused sequence.
template <bool ADD>
__device__ __forceinline__ void xd_rms_norm(float* __restrict__ x, const float* __restrict__ r,
                                            const float* __restrict__ w, float* __restrict__ y,
                                            xd_q8_1* __restrict__ yq, int n, float eps) {
    __shared__ float partial[32];
    float* xr = x + (long long)blockIdx.x * n;
    float* yr = y + (long long)blockIdx.x * n;
    const int lane = threadIdx.x % XD_WARP, warp = threadIdx.x / XD_WARP;
    const float* rr = ADD ? r + (long long)blockIdx.x * n : nullptr;
    // Each thread's values in batches of U whose loads are issued together (one memory latency
    // per batch rather than per value); the sums keep the order of a plain strided loop.
    constexpr int U = 8;
    const int step = blockDim.x;
    float ss = 0.0f;
    int i0 = threadIdx.x;
    for (; i0 + (U - 1) * step < n; i0 += U * step) {
        float v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = ADD ? xr[i0 + u * step] + rr[i0 + u * step] : xr[i0 + u * step];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (ADD) xr[i0 + u * step] = v[u];
            ss += v[u] * v[u];
        }
    }
    for (int i = i0; i < n; i += step) {
        float v = xr[i];
        if (ADD) {
            v += rr[i];
            xr[i] = v;
        }
        ss += v * v;
    }
    ss = xd_warp_sum(ss);
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    // Every warp sums the partials, so every thread holds the total without a broadcast.
    const int nwarps = blockDim.x / XD_WARP;
    ss = xd_warp_sum(lane < nwarps ? partial[lane] : 0.0f);
    const float scale = rsqrtf(ss / float(n) + eps);
    // With n a multiple of 32 a warp's lanes share the loop's trip count, and the 32 values a
    // warp holds in one trip are one q8_1 block.
    int j0 = threadIdx.x;
    for (; j0 + (U - 1) * step < n; j0 += U * step) {
        float xv[U], wv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            xv[u] = xr[j0 + u * step];
            wv[u] = w[j0 + u * step];
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const float v = xv[u] * scale * wv[u];
            yr[j0 + u * step] = v;
            if (yq) xd_quantize_warp_q8_1(v, yq + ((long long)blockIdx.x * n + j0 + u * step) / XD_WARP);
        }
    }
    for (int i = j0; i < n; i += step) {
        const float v = xr[i] * scale * w[i];
        yr[i] = v;
        if (yq) xd_quantize_warp_q8_1(v, yq + ((long long)blockIdx.x * n + i) / XD_WARP);
    }
}

extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    float* __restrict__ y, int n, float eps) {
    xd_grid_dep_sync();
    xd_rms_norm<false>(const_cast<float*>(x), nullptr, w, y, nullptr, n, eps);
}

// rms_norm that also writes yq ([rows][n / 32] blocks).
extern "C" __global__ void rms_norm_q8_1(const float* __restrict__ x, const float* __restrict__ w,
                                         float* __restrict__ y, xd_q8_1* __restrict__ yq, int n, float eps) {
    xd_grid_dep_sync();
    xd_rms_norm<false>(const_cast<float*>(x), nullptr, w, y, yq, n, eps);
}

// x += r, then y = rms_norm(x) * w; yq ([rows][n / 32] blocks) may be null.
extern "C" __global__ void add_rms_norm(float* __restrict__ x, const float* __restrict__ r,
                                        const float* __restrict__ w, float* __restrict__ y,
                                        xd_q8_1* __restrict__ yq, int n, float eps) {
    xd_grid_dep_sync();
    xd_rms_norm<true>(x, r, w, y, yq, n, eps);
}
