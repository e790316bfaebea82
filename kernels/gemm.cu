// Prefill matrix products: y[slot][r] = dot(W_e[r], x[slot / x_group]) for a batch of slots, on
// the tensor cores. Weights are decoded by the block decoders of dequant.cuh, shared with the row
// gather, to exactly the values of the CPU dequantizer.
//
// A block computes a 32-row x 256-token tile of the output. Per step of 32 columns (one
// sub-block of every row) it dequantizes the 32 x 32 weights to f16 in shared memory, converts
// the 256 x 32 activations to f16 beside them, and its eight warps (32 tokens each, 32 x 32
// outputs) multiply them with 16x16x16 f16 MMAs into f32 accumulators. Each thread decodes a run
// of 4 consecutive values of one row's sub-block (8 threads read a row's sub-block bytes side by
// side). The tile is wide in tokens so that each decoded weight serves up to 256 of them. Warps
// whose 32 tokens are all past the end skip their multiplies.
//
// Grouped MoE: grid.z runs over experts. counts[e] tokens chose expert e, and
// lists[e * cap + i] (i < counts[e]) are their slots; a block whose token tile starts past
// counts[e] returns at once. With counts and lists null the block is dense: slot = token
// index, expert 0, n_tok tokens.
#include "dequant.cuh"
#include "mma.cuh"

#define XD_GEMM_BM 32       // weight rows per block
#define XD_GEMM_BN 256      // tokens per block
#define XD_GEMM_BK 32       // columns per step
#define XD_GEMM_LD 40       // f16 stride of the shared tiles: BK + 8 keeps 32-byte fragment alignment
#define XD_GEMM_THREADS 256

template <int QK, int BYTES, void (*DQ)(const uint8_t*, int, int, float*)>
__device__ __forceinline__ void xd_gemm(const uint8_t* __restrict__ w, long long expert_stride,
                                        const int* __restrict__ counts, const int* __restrict__ lists, int cap,
                                        const float* __restrict__ x, int x_group, float* __restrict__ y, int ncols,
                                        int nrows, int n_tok) {
    __shared__ __align__(32) uint16_t sw[XD_GEMM_BM * XD_GEMM_LD];  // weights [row][k]
    __shared__ __align__(32) uint16_t sx[XD_GEMM_BN * XD_GEMM_LD];  // activations [token][k]
    __shared__ __align__(32) float stage[XD_GEMM_THREADS / 32][256];  // one 16x16 result per warp
    __shared__ int slot_of[XD_GEMM_BN];

    const int e = blockIdx.z;
    const int n_e = counts ? counts[e] : n_tok;
    const int tok0 = blockIdx.y * XD_GEMM_BN;
    if (tok0 >= n_e) return;  // the whole block: no barrier has been reached yet
    const int row0 = blockIdx.x * XD_GEMM_BM;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wt = warp;                        // the warp's 32 tokens (all 32 rows)
    const bool live = tok0 + wt * 32 < n_e;     // warp-uniform: some of its tokens exist

    for (int i = tid; i < XD_GEMM_BN; i += XD_GEMM_THREADS) {
        const int t = tok0 + i;
        slot_of[i] = t < n_e ? (lists ? lists[(long long)e * cap + t] : t) : -1;
    }
    __syncthreads();

    // This thread's weights: values lj .. lj + 3 of one row's sub-block. Activations: a warp
    // reads 32 consecutive values of one token per load.
    const int lr = tid / 8, lj = 4 * (tid % 8);
    const int grow = row0 + lr;
    const uint8_t* wrow = w + e * expert_stride + (long long)min(grow, nrows - 1) * (ncols / QK) * BYTES;
    constexpr int SUBS = QK / 32;

    xd_frag_c acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) xd_mma_zero(acc[i][j]);

    for (int k0 = 0; k0 < ncols; k0 += XD_GEMM_BK) {
        const int u = k0 / 32;
        __syncthreads();  // the previous step's fragments are loaded
        {
            // Rows past the end decode the last row (wrow is clamped) and store zeros.
            float v[4];
            DQ(wrow + (u / SUBS) * BYTES, u % SUBS, lj, v);
            uint16_t* dst = sw + lr * XD_GEMM_LD + lj;
#pragma unroll
            for (int j = 0; j < 4; ++j) dst[j] = xd_f2h(grow < nrows ? v[j] : 0.0f);
        }
#pragma unroll 8
        for (int q = 0; q < XD_GEMM_BN / 8; ++q) {
            const int t = q * 8 + warp, slot = slot_of[t];
            const float v = slot < 0 ? 0.0f : x[(long long)(slot / x_group) * ncols + k0 + lane];
            sx[t * XD_GEMM_LD + lane] = xd_f2h(v);
        }
        __syncthreads();
        if (!live) continue;
#pragma unroll
        for (int kk = 0; kk < XD_GEMM_BK; kk += 16) {
            xd_frag_ab a[2], b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) xd_mma_load_a(a[i], sw + (i * 16) * XD_GEMM_LD + kk, XD_GEMM_LD);
#pragma unroll
            for (int j = 0; j < 2; ++j) xd_mma_load_b(b[j], sx + (wt * 32 + j * 16) * XD_GEMM_LD + kk, XD_GEMM_LD);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) xd_mma(acc[i][j], a[i], b[j]);
        }
    }

    // Each 16x16 result goes through the warp's stage (column-major: [token][row]) to y.
    if (!live) return;  // no barrier follows
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            xd_mma_store_c(stage[warp], acc[i][j], 16);
            __syncwarp();
#pragma unroll
            for (int q = 0; q < 8; ++q) {
                const int el = lane + 32 * q, t = el / 16, r = el % 16;
                const int row = row0 + i * 16 + r;
                const int slot = slot_of[wt * 32 + j * 16 + t];
                if (row < nrows && slot >= 0) y[(long long)slot * nrows + row] = stage[warp][el];
            }
            __syncwarp();
        }
}

#define XD_GEMM_KERNEL(name, qk, bytes, dq)                                                             \
    extern "C" __global__ void __launch_bounds__(XD_GEMM_THREADS)                                     \
        name(const uint8_t* __restrict__ w, long long expert_stride, const int* __restrict__ counts,   \
             const int* __restrict__ lists, int cap, const float* __restrict__ x, int x_group,         \
             float* __restrict__ y, int ncols, int nrows, int n_tok) {                                  \
        xd_grid_dep_sync();                                                                             \
        xd_gemm<qk, bytes, dq>(w, expert_stride, counts, lists, cap, x, x_group, y, ncols, nrows, n_tok); \
    }

// Float weights take the f16 tiles too, so the GEMM rounds them: F32 to f16's 11-bit
// significand. BF16's 8-bit significand fits, so a BF16 weight in f16's normal range
// [2^-14, 65504] passes exactly; smaller ones lose low bits (f16 subnormals; 0 from 2^-25 down) and
// larger ones become inf. (The matvecs read all three in f32, exactly.)
XD_GEMM_KERNEL(mul_mat_f32, 32, 128, xd_dq_f32)
XD_GEMM_KERNEL(mul_mat_f16, 32, 64, xd_dq_f16)
XD_GEMM_KERNEL(mul_mat_bf16, 32, 64, xd_dq_bf16)
XD_GEMM_KERNEL(mul_mat_q4_0, 32, 18, xd_dq_q4_0)
XD_GEMM_KERNEL(mul_mat_q4_1, 32, 20, xd_dq_q4_1)
XD_GEMM_KERNEL(mul_mat_q5_0, 32, 22, xd_dq_q5_0)
XD_GEMM_KERNEL(mul_mat_q5_1, 32, 24, xd_dq_q5_1)
XD_GEMM_KERNEL(mul_mat_q8_0, 32, 34, xd_dq_q8_0)
XD_GEMM_KERNEL(mul_mat_q2_k, 256, 84, xd_dq_q2_k)
XD_GEMM_KERNEL(mul_mat_q3_k, 256, 110, xd_dq_q3_k)
XD_GEMM_KERNEL(mul_mat_q4_k, 256, 144, xd_dq_q4_k)
XD_GEMM_KERNEL(mul_mat_q5_k, 256, 176, xd_dq_q5_k)
XD_GEMM_KERNEL(mul_mat_q6_k, 256, 210, xd_dq_q6_k)
XD_GEMM_KERNEL(mul_mat_iq4_nl, 32, 18, xd_dq_iq4_nl)
XD_GEMM_KERNEL(mul_mat_iq4_xs, 256, 136, xd_dq_iq4_xs)
XD_GEMM_KERNEL(mul_mat_iq2_xxs, 256, 66, xd_dq_iq2_xxs)
XD_GEMM_KERNEL(mul_mat_iq2_xs, 256, 74, xd_dq_iq2_xs)
XD_GEMM_KERNEL(mul_mat_iq2_s, 256, 82, xd_dq_iq2_s)
XD_GEMM_KERNEL(mul_mat_iq3_xxs, 256, 98, xd_dq_iq3_xxs)
XD_GEMM_KERNEL(mul_mat_iq3_s, 256, 110, xd_dq_iq3_s)
XD_GEMM_KERNEL(mul_mat_iq1_s, 256, 50, xd_dq_iq1_s)
XD_GEMM_KERNEL(mul_mat_iq1_m, 256, 56, xd_dq_iq1_m)
XD_GEMM_KERNEL(mul_mat_mxfp4, 32, 17, xd_dq_mxfp4)

// Groups the slots of a routed batch by expert, on the device: counts[e] = the number of slots
// with ids[slot] == e, lists[e * cap + i] their slots in order. A token picks an expert at most
// once, so cap = n_tok suffices; a list that would overflow stops at cap (bad ids read as fewer
// tokens, never past the buffer). One block; thread e scans for expert e (n_slots is a prompt's
// k * n_tok, a few thousand reads of one broadcast array).
extern "C" __global__ void moe_group(const int* __restrict__ ids, int n_slots, int n_expert, int cap,
                                     int* __restrict__ counts, int* __restrict__ lists) {
    xd_grid_dep_sync();
    for (int e = threadIdx.x; e < n_expert; e += blockDim.x) {
        int n = 0;
        for (int s = 0; s < n_slots; ++s)
            if (ids[s] == e && n < cap) lists[(long long)e * cap + n++] = s;
        counts[e] = n;
    }
}
