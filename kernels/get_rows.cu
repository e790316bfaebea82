// Embedding gather: out[t] = row ids[t] of the table, as f32. Quantized rows are decoded 4
// consecutive values per thread by the block decoders the prefill GEMM uses (dequant.cuh).
#include "dequant.cuh"

// grid (n_ids); any block size; ids are checked by the caller.
extern "C" __global__ void get_rows_f32(const uint8_t* __restrict__ table, const int* __restrict__ ids,
                                        float* __restrict__ out, int ncols) {
    xd_grid_dep_sync();
    const float* row = reinterpret_cast<const float*>(table) + (long long)ids[blockIdx.x] * ncols;
    for (int i = threadIdx.x; i < ncols; i += blockDim.x) out[(long long)blockIdx.x * ncols + i] = row[i];
}

extern "C" __global__ void get_rows_f16(const uint8_t* __restrict__ table, const int* __restrict__ ids,
                                        float* __restrict__ out, int ncols) {
    xd_grid_dep_sync();
    const uint16_t* row = reinterpret_cast<const uint16_t*>(table) + (long long)ids[blockIdx.x] * ncols;
    for (int i = threadIdx.x; i < ncols; i += blockDim.x)
        out[(long long)blockIdx.x * ncols + i] = xd_h2f(row[i]);
}

extern "C" __global__ void get_rows_bf16(const uint8_t* __restrict__ table, const int* __restrict__ ids,
                                         float* __restrict__ out, int ncols) {
    xd_grid_dep_sync();
    const uint16_t* row = reinterpret_cast<const uint16_t*>(table) + (long long)ids[blockIdx.x] * ncols;
    for (int i = threadIdx.x; i < ncols; i += blockDim.x)
        out[(long long)blockIdx.x * ncols + i] = xd_bf2f(row[i]);
}

template <int QK, int BYTES, void (*DQ)(const uint8_t*, int, int, float*)>
__device__ __forceinline__ void xd_get_rows(const uint8_t* __restrict__ table, const int* __restrict__ ids,
                                            float* __restrict__ out, int ncols) {
    constexpr int SUBS = QK / 32;
    const uint8_t* row = table + (long long)ids[blockIdx.x] * (ncols / QK) * BYTES;
    float* o = out + (long long)blockIdx.x * ncols;
    for (int i = 4 * threadIdx.x; i < ncols; i += 4 * blockDim.x) {  // ncols is a multiple of 32
        const int u = i / 32;
        float v[4];
        DQ(row + (u / SUBS) * BYTES, u % SUBS, i % 32, v);
#pragma unroll
        for (int j = 0; j < 4; ++j) o[i + j] = v[j];
    }
}

#define XD_GET_ROWS_KERNEL(name, qk, bytes, dq)                                                       \
    extern "C" __global__ void name(const uint8_t* __restrict__ table, const int* __restrict__ ids, \
                                    float* __restrict__ out, int ncols) {                           \
        xd_grid_dep_sync();                                                                         \
        xd_get_rows<qk, bytes, dq>(table, ids, out, ncols);                                         \
    }

XD_GET_ROWS_KERNEL(get_rows_q4_0, 32, 18, xd_dq_q4_0)
XD_GET_ROWS_KERNEL(get_rows_q4_1, 32, 20, xd_dq_q4_1)
XD_GET_ROWS_KERNEL(get_rows_q5_0, 32, 22, xd_dq_q5_0)
XD_GET_ROWS_KERNEL(get_rows_q5_1, 32, 24, xd_dq_q5_1)
XD_GET_ROWS_KERNEL(get_rows_q8_0, 32, 34, xd_dq_q8_0)
XD_GET_ROWS_KERNEL(get_rows_q2_k, 256, 84, xd_dq_q2_k)
XD_GET_ROWS_KERNEL(get_rows_q3_k, 256, 110, xd_dq_q3_k)
XD_GET_ROWS_KERNEL(get_rows_q4_k, 256, 144, xd_dq_q4_k)
XD_GET_ROWS_KERNEL(get_rows_q5_k, 256, 176, xd_dq_q5_k)
XD_GET_ROWS_KERNEL(get_rows_q6_k, 256, 210, xd_dq_q6_k)
XD_GET_ROWS_KERNEL(get_rows_iq4_nl, 32, 18, xd_dq_iq4_nl)
XD_GET_ROWS_KERNEL(get_rows_iq4_xs, 256, 136, xd_dq_iq4_xs)
XD_GET_ROWS_KERNEL(get_rows_iq2_xxs, 256, 66, xd_dq_iq2_xxs)
XD_GET_ROWS_KERNEL(get_rows_iq2_xs, 256, 74, xd_dq_iq2_xs)
XD_GET_ROWS_KERNEL(get_rows_iq2_s, 256, 82, xd_dq_iq2_s)
XD_GET_ROWS_KERNEL(get_rows_iq3_xxs, 256, 98, xd_dq_iq3_xxs)
XD_GET_ROWS_KERNEL(get_rows_iq3_s, 256, 110, xd_dq_iq3_s)
XD_GET_ROWS_KERNEL(get_rows_iq1_s, 256, 50, xd_dq_iq1_s)
XD_GET_ROWS_KERNEL(get_rows_iq1_m, 256, 56, xd_dq_iq1_m)
XD_GET_ROWS_KERNEL(get_rows_mxfp4, 32, 17, xd_dq_mxfp4)
