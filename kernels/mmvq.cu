// Decode matrix-vector products for the GGML quantized types, in the mmvq manner: the
// activation vector is first quantized to q8_1 blocks (quantize_q8_1), then each weight block's
// integers meet the activation's int8 values in __dp4a dot products and the scales are applied
// once per 16 or 32 values.
//
// Work split: one warp per output row; the row goes in chunks of 32 sub-blocks of 32 values,
// staged in shared memory by coalesced 16-byte loads; lane i takes sub-block i of each chunk
// (a 256-value super-block has 8 of them) and the warp sums at the end. Every quant type
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

// Warps per block of every matvec launch (128 threads; backend.rs MATVEC_ROWS): each warp has
// its own staging area in shared memory.
#define XD_MMVQ_WARPS 4
// Blocks per SM the register allocation must allow (10 x 4 warps: enough loads in flight to
// cover memory latency; at most 48 registers).
#define XD_MMVQ_MIN_BLOCKS 10
// The gate+up kernels carry two rows per warp (twice the loads in flight per warp): 9 blocks,
// at most 56 registers.
#define XD_MMVQ_SWIGLU_MIN_BLOCKS 9

struct alignas(16) xd_u128 {
    uint32_t v[4];
};

// Bytes [src, src + n) copied into `dst` (shared memory) as whole aligned 16-byte words by
// `step` threads, thread `lane` taking words lane, lane + step, ...: consecutive threads load
// consecutive words, so a warp's load instruction reads 512 contiguous bytes. A word reaching
// `limit` (the end of the row) is read byte by byte up to it. Returns the position of src's
// first byte in dst.
__device__ __forceinline__ int xd_stage(xd_u128* dst, const uint8_t* src, int n, const uint8_t* limit, int lane,
                                        int step) {
    const unsigned long long a = reinterpret_cast<unsigned long long>(src) & ~15ull;
    const int pre = int(reinterpret_cast<unsigned long long>(src) - a);
    const int words = (pre + n + 15) >> 4;
    const uint8_t* base = reinterpret_cast<const uint8_t*>(a);
    for (int i = lane; i < words; i += step) {
        const uint8_t* p = base + 16 * i;
        if (p + 16 <= limit) {
#if defined(__CUDA_ARCH__)
            xd_u128 r;
            asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                : "=r"(r.v[0]), "=r"(r.v[1]), "=r"(r.v[2]), "=r"(r.v[3])
                : "l"(p));
            dst[i] = r;
#else
            dst[i] = *reinterpret_cast<const xd_u128*>(p);
#endif
        } else {
            uint8_t* d = reinterpret_cast<uint8_t*>(dst + i);
            for (int j = 0; j < 16; ++j) d[j] = p + j < limit ? p[j] : uint8_t(0);
        }
    }
    return pre;
}

// Sub-blocks of 32 values per staging round: 32 (one per lane), or 64 or 128 for the types
// whose 32 sub-blocks take few bytes, so that each round still has some 600+ bytes of a row in
// flight per warp.
template <int QK, int BYTES>
struct XdStageSize {
    static constexpr int CHUNK = (32 / (QK / 32)) * BYTES;  // bytes of 32 sub-blocks
    static constexpr int R = CHUNK <= 300 ? 4 : (CHUNK <= 600 ? 2 : 1);
    static constexpr int SUBS_PER_ROUND = 32 * R;
    static constexpr int W = (R * CHUNK + 15) / 16 + 1;
    static constexpr int X = (SUBS_PER_ROUND * int(sizeof(xd_q8_1)) + 15) / 16 + 1;
};

// Lane `lane`'s share of the dot products of NW weight rows (same shape) with one q8_1
// activation row, in rounds of SUBS_PER_ROUND sub-blocks: each warp stages the round's part
// of its rows and the block the round's activations (shared by its warps) in shared memory
// with coalesced 16-byte loads, then lane i takes sub-blocks i, i + 32, ... of the round.
// (Lanes reading their own sub-blocks straight from global memory would touch a different
// 32-byte sector per lane on every load; activations staged per block are read once for all
// its rows.) The sums run in the order of a plain loop over u = lane, lane + 32, ... Every
// thread of the block must call this (it synchronizes the block); `live` is false for a warp
// past the last row.
template <int QK, int BYTES, float (*DOT)(const uint8_t*, int, const xd_q8_1&), int NW>
__device__ __forceinline__ void xd_rows_part(const uint8_t* const (&wrow)[NW], bool live, const xd_q8_1* __restrict__ xs,
                                             int nsub, int lane, xd_u128 (&sw)[NW][XdStageSize<QK, BYTES>::W],
                                             xd_u128* sx, float (&acc)[NW]) {
    constexpr int SUBS = QK / 32;
    constexpr int PER = XdStageSize<QK, BYTES>::SUBS_PER_ROUND;
    const int row_bytes = (nsub / SUBS) * BYTES;
    const uint8_t* xbytes = reinterpret_cast<const uint8_t*>(xs);
    const uint8_t* xend = xbytes + (long long)nsub * sizeof(xd_q8_1);
    for (int c = 0; c < nsub; c += PER) {
        const int nu = min(PER, nsub - c);
        const int wbytes = (nu / SUBS) * BYTES;
        int wpre[NW];
        if (live) {
#pragma unroll
            for (int m = 0; m < NW; ++m)
                wpre[m] = xd_stage(sw[m], wrow[m] + (c / SUBS) * BYTES, wbytes, wrow[m] + row_bytes, lane, XD_WARP);
        }
        const int xpre = xd_stage(sx, xbytes + (long long)c * sizeof(xd_q8_1), nu * int(sizeof(xd_q8_1)), xend,
                                  threadIdx.x, blockDim.x);
        __syncthreads();
        if (live) {
#pragma unroll
            for (int r = 0; r < PER / XD_WARP; ++r) {
                const int i = r * XD_WARP + lane;  // sub-block of the round
                if (i < nu) {
                    const xd_q8_1& a = *reinterpret_cast<const xd_q8_1*>(reinterpret_cast<const uint8_t*>(sx) + xpre +
                                                                         i * int(sizeof(xd_q8_1)));
#pragma unroll
                    for (int m = 0; m < NW; ++m)
                        acc[m] += DOT(reinterpret_cast<const uint8_t*>(sw[m]) + wpre[m] + (i / SUBS) * BYTES, i % SUBS, a);
                }
            }
        }
        // The next round overwrites the staging.
        __syncthreads();
    }
}

// The staging areas: weights per warp, activations per block.
#define XD_MMVQ_SMEM(NW)                                                                   \
    __shared__ xd_u128 s_w[XD_MMVQ_WARPS][NW][XdStageSize<QK, BYTES>::W];                  \
    __shared__ xd_u128 s_x[XdStageSize<QK, BYTES>::X];                                     \
    const int warp = threadIdx.x / XD_WARP;

template <int QK, int BYTES, float (*DOT)(const uint8_t*, int, const xd_q8_1&)>
__device__ __forceinline__ void xd_mmvq(const uint8_t* __restrict__ w, long long expert_stride,
                                        const int* __restrict__ ids, const xd_q8_1* __restrict__ x,
                                        int x_stride, int x_group, float* __restrict__ y, int ncols,
                                        int nrows) {
    const int lane = threadIdx.x % XD_WARP;
    const int row = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    const int slot = blockIdx.y;
    const long long expert = ids ? ids[slot] : 0;
    const xd_q8_1* xs = x + (long long)(slot / x_group) * x_stride;
    XD_MMVQ_SMEM(1)
    float acc[1] = {0.0f};
    // A warp past the last row stages no weights but helps with the activations.
    const uint8_t* wrow[1] = {w + expert * expert_stride + (long long)min(row, nrows - 1) * (ncols / QK) * BYTES};
    xd_rows_part<QK, BYTES, DOT, 1>(wrow, row < nrows, xs, ncols / 32, lane, s_w[warp], s_x, acc);
    // Every lane takes part in the reduction, rows past the end included.
    const float sum = xd_warp_sum(acc[0]);
    if (lane == 0 && row < nrows) y[(long long)slot * nrows + row] = sum;
}

// Gate and up projections with SwiGLU in one pass: y = silu(x.W_gate[r]) * (x.W_up[r]), with
// the slots, experts and activation rows of xd_mmvq (both matrices of the same type, shape and
// expert stride). Saves the launch and the memory round trip of the separate swiglu.
template <int QK, int BYTES, float (*DOT)(const uint8_t*, int, const xd_q8_1&)>
__device__ __forceinline__ void xd_mmvq_swiglu(const uint8_t* __restrict__ wg, const uint8_t* __restrict__ wu,
                                               long long expert_stride, const int* __restrict__ ids,
                                               const xd_q8_1* __restrict__ x, int x_stride, int x_group,
                                               float* __restrict__ y, int ncols, int nrows) {
    const int lane = threadIdx.x % XD_WARP;
    const int row = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    const int slot = blockIdx.y;
    const long long expert = ids ? ids[slot] : 0;
    const long long off = expert * expert_stride + (long long)row * (ncols / QK) * BYTES;
    const xd_q8_1* xs = x + (long long)(slot / x_group) * x_stride;
    XD_MMVQ_SMEM(2)
    float acc[2] = {0.0f, 0.0f};
    const uint8_t* wrow[2] = {wg + off, wu + off};
    xd_rows_part<QK, BYTES, DOT, 2>(wrow, row < nrows, xs, ncols / 32, lane, s_w[warp], s_x, acc);
    const float g = xd_warp_sum(acc[0]);
    const float u = xd_warp_sum(acc[1]);
    // The expression of the swiglu kernel (elementwise.cu), so the two paths agree bit for bit.
    if (lane == 0 && row < nrows) y[(long long)slot * nrows + row] = g / (1.0f + expf(-g)) * u;
}

// Up to three matrices of one type over the same activation rows in one launch (the Q, K and V
// projections): rows [0, n0) are W0's, the next n1 W1's, the next n2 W2's; y_i is
// [slots][n_i]. grid.x covers n0 + n1 + n2 rows, grid.y the activation rows.
template <int QK, int BYTES, float (*DOT)(const uint8_t*, int, const xd_q8_1&)>
__device__ __forceinline__ void xd_mmvq3(const uint8_t* __restrict__ w0, const uint8_t* __restrict__ w1,
                                         const uint8_t* __restrict__ w2, float* __restrict__ y0,
                                         float* __restrict__ y1, float* __restrict__ y2, int n0, int n1, int n2,
                                         const xd_q8_1* __restrict__ x, int x_stride, int ncols) {
    const int lane = threadIdx.x % XD_WARP;
    int row = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    const int slot = blockIdx.y;
    const uint8_t* w = w0;
    float* y = y0;
    int n = n0;
    if (row >= n0) {
        row -= n0;
        w = w1;
        y = y1;
        n = n1;
        if (row >= n1) {
            row -= n1;
            w = w2;
            y = y2;
            n = n2;
        }
    }
    const xd_q8_1* xs = x + (long long)slot * x_stride;
    XD_MMVQ_SMEM(1)
    float acc[1] = {0.0f};
    const uint8_t* wrow[1] = {w + (long long)min(row, max(n - 1, 0)) * (ncols / QK) * BYTES};
    xd_rows_part<QK, BYTES, DOT, 1>(wrow, row < n, xs, ncols / 32, lane, s_w[warp], s_x, acc);
    const float sum = xd_warp_sum(acc[0]);
    if (lane == 0 && row < n) y[(long long)slot * n + row] = sum;
}

#define XD_MMVQ_KERNEL(name, qk, bytes, dot)                                                      \
    extern "C" __global__ void __launch_bounds__(XD_WARP * XD_MMVQ_WARPS, XD_MMVQ_MIN_BLOCKS) name(const uint8_t* __restrict__ w, long long expert_stride,       \
                                    const int* __restrict__ ids, const xd_q8_1* __restrict__ x,   \
                                    int x_stride, int x_group, float* __restrict__ y, int ncols,  \
                                    int nrows) {                                                  \
        xd_mmvq<qk, bytes, dot>(w, expert_stride, ids, x, x_stride, x_group, y, ncols, nrows);    \
    }

#define XD_MMVQ_SWIGLU_KERNEL(name, qk, bytes, dot)                                               \
    extern "C" __global__ void __launch_bounds__(XD_WARP * XD_MMVQ_WARPS, XD_MMVQ_SWIGLU_MIN_BLOCKS) name(const uint8_t* __restrict__ wg, const uint8_t* __restrict__ wu, \
                                    long long expert_stride, const int* __restrict__ ids,         \
                                    const xd_q8_1* __restrict__ x, int x_stride, int x_group,     \
                                    float* __restrict__ y, int ncols, int nrows) {                \
        xd_mmvq_swiglu<qk, bytes, dot>(wg, wu, expert_stride, ids, x, x_stride, x_group, y, ncols, nrows); \
    }

#define XD_MMVQ3_KERNEL(name, qk, bytes, dot)                                                     \
    extern "C" __global__ void __launch_bounds__(XD_WARP * XD_MMVQ_WARPS, XD_MMVQ_MIN_BLOCKS) name(const uint8_t* __restrict__ w0, const uint8_t* __restrict__ w1, \
                                    const uint8_t* __restrict__ w2, float* __restrict__ y0,       \
                                    float* __restrict__ y1, float* __restrict__ y2, int n0, int n1, \
                                    int n2, const xd_q8_1* __restrict__ x, int x_stride, int ncols) { \
        xd_mmvq3<qk, bytes, dot>(w0, w1, w2, y0, y1, y2, n0, n1, n2, x, x_stride, ncols);          \
    }

// Every kernel shape for every type.
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
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q4_0, 32, 18, dot_q4_0)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q4_1, 32, 20, dot_q4_1)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q5_0, 32, 22, dot_q5_0)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q5_1, 32, 24, dot_q5_1)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q8_0, 32, 34, dot_q8_0)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q2_k, 256, 84, dot_q2_k)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q3_k, 256, 110, dot_q3_k)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q4_k, 256, 144, dot_q4_k)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q5_k, 256, 176, dot_q5_k)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_q6_k, 256, 210, dot_q6_k)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_iq4_nl, 32, 18, dot_iq4_nl)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_iq4_xs, 256, 136, dot_iq4_xs)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_iq2_xxs, 256, 66, dot_iq2_xxs)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_iq2_xs, 256, 74, dot_iq2_xs)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_iq2_s, 256, 82, dot_iq2_s)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_iq3_xxs, 256, 98, dot_iq3_xxs)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_iq3_s, 256, 110, dot_iq3_s)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_iq1_s, 256, 50, dot_iq1_s)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_iq1_m, 256, 56, dot_iq1_m)
XD_MMVQ_SWIGLU_KERNEL(mul_mat_vec_swiglu_mxfp4, 32, 17, dot_mxfp4)
XD_MMVQ3_KERNEL(mul_mat_vec3_q4_0, 32, 18, dot_q4_0)
XD_MMVQ3_KERNEL(mul_mat_vec3_q4_1, 32, 20, dot_q4_1)
XD_MMVQ3_KERNEL(mul_mat_vec3_q5_0, 32, 22, dot_q5_0)
XD_MMVQ3_KERNEL(mul_mat_vec3_q5_1, 32, 24, dot_q5_1)
XD_MMVQ3_KERNEL(mul_mat_vec3_q8_0, 32, 34, dot_q8_0)
XD_MMVQ3_KERNEL(mul_mat_vec3_q2_k, 256, 84, dot_q2_k)
XD_MMVQ3_KERNEL(mul_mat_vec3_q3_k, 256, 110, dot_q3_k)
XD_MMVQ3_KERNEL(mul_mat_vec3_q4_k, 256, 144, dot_q4_k)
XD_MMVQ3_KERNEL(mul_mat_vec3_q5_k, 256, 176, dot_q5_k)
XD_MMVQ3_KERNEL(mul_mat_vec3_q6_k, 256, 210, dot_q6_k)
XD_MMVQ3_KERNEL(mul_mat_vec3_iq4_nl, 32, 18, dot_iq4_nl)
XD_MMVQ3_KERNEL(mul_mat_vec3_iq4_xs, 256, 136, dot_iq4_xs)
XD_MMVQ3_KERNEL(mul_mat_vec3_iq2_xxs, 256, 66, dot_iq2_xxs)
XD_MMVQ3_KERNEL(mul_mat_vec3_iq2_xs, 256, 74, dot_iq2_xs)
XD_MMVQ3_KERNEL(mul_mat_vec3_iq2_s, 256, 82, dot_iq2_s)
XD_MMVQ3_KERNEL(mul_mat_vec3_iq3_xxs, 256, 98, dot_iq3_xxs)
XD_MMVQ3_KERNEL(mul_mat_vec3_iq3_s, 256, 110, dot_iq3_s)
XD_MMVQ3_KERNEL(mul_mat_vec3_iq1_s, 256, 50, dot_iq1_s)
XD_MMVQ3_KERNEL(mul_mat_vec3_iq1_m, 256, 56, dot_iq1_m)
XD_MMVQ3_KERNEL(mul_mat_vec3_mxfp4, 32, 17, dot_mxfp4)
