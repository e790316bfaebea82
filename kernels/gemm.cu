// Prefill matrix products: y[slot][r] = dot(W_e[r], x[slot / x_group]) for a batch of slots, on
// the tensor cores. Weights are decoded by the block decoders of dequant.cuh, shared with the row
// gather, to exactly the values of the CPU dequantizer.
//
// A block computes a 64-row x 128-token tile of the output; its eight warps each own a 32 x 32
// corner (two row halves x four token quarters) and multiply with 16x16x16 f16 MMAs into f32
// accumulators. The columns go by in steps of 32 (one sub-block of every row), through two
// shared-memory buffers: while the warps multiply step s out of one, each thread already has
// step s + 1's weights and activations loading from global memory into registers, and stores
// them, converted to f16, into the other buffer afterwards; one barrier per step. The loads of a
// step are independent of each other (every address is computed before the loop, rows past the
// end read a valid row and are zeroed after the load), so they are in flight together instead
// of one memory latency each. Per step a thread decodes 8 consecutive values of one row's
// sub-block (4 threads per row) and loads 4 x 4 activations (a token's 32 values are 8 threads'
// 16-byte loads side by side). Warps whose 32 tokens are all past the end skip their multiplies.
//
// Grouped MoE: grid.z runs over experts. counts[e] tokens chose expert e, and
// lists[e * cap + i] (i < counts[e]) are their slots; a block whose token tile starts past
// counts[e] returns at once. With counts and lists null the block is dense: slot = token
// index, expert 0, n_tok tokens. x rows are 16-byte aligned (ncols is a multiple of 32).
#include "dequant.cuh"
#include "mma.cuh"

#define XD_GEMM_BM 64       // weight rows per block
#define XD_GEMM_BN 128      // tokens per block
#define XD_GEMM_BK 32       // columns per step
#define XD_GEMM_LD 40       // f16 stride of the shared tiles: BK + 8 keeps 32-byte fragment alignment
#define XD_GEMM_THREADS 256
#define XD_GEMM_XLOADS (XD_GEMM_BN * XD_GEMM_BK / 4 / XD_GEMM_THREADS)  // 16-byte activation loads per thread and step

__device__ __forceinline__ uint32_t xd_gemm_pack(float a, float b) {
    return uint32_t(xd_f2h(a)) | (uint32_t(xd_f2h(b)) << 16);
}

template <int QK, int BYTES, void (*DQ)(const uint8_t*, int, int, float*)>
__device__ __forceinline__ void xd_gemm(const uint8_t* __restrict__ w, long long expert_stride,
                                        const int* __restrict__ counts, const int* __restrict__ lists, int cap,
                                        const float* __restrict__ x, int x_group, float* __restrict__ y, int ncols,
                                        int nrows, int n_tok) {
    __shared__ __align__(32) uint16_t sw[2][XD_GEMM_BM * XD_GEMM_LD];  // weights [row][k]
    __shared__ __align__(32) uint16_t sx[2][XD_GEMM_BN * XD_GEMM_LD];  // activations [token][k]
    __shared__ __align__(32) float stage[XD_GEMM_THREADS / 32][256];    // one 16x16 result per warp
    __shared__ int slot_of[XD_GEMM_BN];

    const int e = blockIdx.z;
    const int n_e = counts ? counts[e] : n_tok;
    const int tok0 = blockIdx.y * XD_GEMM_BN;
    if (tok0 >= n_e) return;  // the whole block: no barrier has been reached yet
    const int row0 = blockIdx.x * XD_GEMM_BM;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wr = warp / 4, wc = warp % 4;          // the warp's 32 rows and 32 tokens
    const bool live = tok0 + wc * 32 < n_e;          // warp-uniform: some of its tokens exist

    for (int i = tid; i < XD_GEMM_BN; i += XD_GEMM_THREADS) {
        const int t = tok0 + i;
        slot_of[i] = t < n_e ? (lists ? lists[(long long)e * cap + t] : t) : -1;
    }
    __syncthreads();

    // This thread's weights: values lj .. lj + 7 of row lr's sub-block of the step.
    const int lr = tid / 4, lj = 8 * (tid % 4);
    const int grow = row0 + lr;
    const bool wlive = grow < nrows;
    const uint8_t* wrow = w + e * expert_stride + (long long)min(grow, nrows - 1) * (ncols / QK) * BYTES;
    constexpr int SUBS = QK / 32;
    // Its activations: columns xc .. xc + 3 of tokens xt + 32 i. A token past the end reads its
    // tile's first token (which exists) and is zeroed.
    const int xc = 4 * (tid % 8), xt = tid / 8;
    const float* xrow[XD_GEMM_XLOADS];
    bool xlive[XD_GEMM_XLOADS];
#pragma unroll
    for (int i = 0; i < XD_GEMM_XLOADS; ++i) {
        const int slot = slot_of[xt + 32 * i];
        xlive[i] = slot >= 0;
        xrow[i] = x + (long long)((xlive[i] ? slot : slot_of[0]) / x_group) * ncols + xc;
    }

    float wv[8];
    xd_words4 xv[XD_GEMM_XLOADS];
    // Step u's loads, into registers: the activations first, so that they are in flight while
    // the IQ decoders wait for a grid index before their lookup.
    auto fetch = [&](int u) {
#pragma unroll
        for (int i = 0; i < XD_GEMM_XLOADS; ++i) xv[i] = xd_ld128a(reinterpret_cast<const uint8_t*>(xrow[i] + u * 32));
        const uint8_t* blk = wrow + (u / SUBS) * BYTES;
        DQ(blk, u % SUBS, lj, wv);
        DQ(blk, u % SUBS, lj + 4, wv + 4);
    };
    // ... and into buffer b as f16.
    auto put = [&](int b) {
        xd_words4 h;
#pragma unroll
        for (int i = 0; i < 4; ++i) h.w[i] = int(wlive ? xd_gemm_pack(wv[2 * i], wv[2 * i + 1]) : 0u);
        *reinterpret_cast<xd_words4*>(&sw[b][lr * XD_GEMM_LD + lj]) = h;
#pragma unroll
        for (int i = 0; i < XD_GEMM_XLOADS; ++i) {
            xd_h4 f;
#pragma unroll
            for (int j = 0; j < 4; ++j) f.v[j] = xd_f2h(xlive[i] ? __int_as_float(xv[i].w[j]) : 0.0f);
            *reinterpret_cast<xd_h4*>(&sx[b][(xt + 32 * i) * XD_GEMM_LD + xc]) = f;
        }
    };

    xd_frag_c acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) xd_mma_zero(acc[i][j]);

    const int steps = ncols / XD_GEMM_BK;
    fetch(0);
    put(0);
    __syncthreads();
    for (int s = 0; s < steps; ++s) {
        const int b = s & 1;
        const bool more = s + 1 < steps;  // block-uniform
        if (more) fetch(s + 1);
        if (live) {
#pragma unroll
            for (int kk = 0; kk < XD_GEMM_BK; kk += 16) {
                xd_frag_ab a[2], bf[2];
#pragma unroll
                for (int i = 0; i < 2; ++i) xd_mma_load_a(a[i], &sw[b][(wr * 32 + i * 16) * XD_GEMM_LD + kk], XD_GEMM_LD);
#pragma unroll
                for (int j = 0; j < 2; ++j) xd_mma_load_b(bf[j], &sx[b][(wc * 32 + j * 16) * XD_GEMM_LD + kk], XD_GEMM_LD);
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j) xd_mma(acc[i][j], a[i], bf[j]);
            }
        }
        // Buffer b ^ 1 was last read in step s - 1, before the barrier that ended it.
        if (more) put(b ^ 1);
        __syncthreads();
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
                const int row = row0 + wr * 32 + i * 16 + r;
                const int slot = slot_of[wc * 32 + j * 16 + t];
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
