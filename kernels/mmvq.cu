// Decode matrix-vector products for the GGML quantized types, in the mmvq manner: the
// activation vector is first quantized to q8_1 blocks (quantize_q8_1), then each weight block's
// integers meet the activation's int8 values in __dp4a dot products and the scales are applied
// once per 16 or 32 values.
//
// Work split: each warp takes XD_MMVQ_ROWS output rows (see the block shape below); the rows
// go in chunks of 32 sub-blocks of 32 values, staged in shared memory by coalesced 16-byte
// loads; lane i takes sub-block i of each chunk (a 256-value super-block has 8 of them) and the
// warp sums at the end. Every quant type
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
    xd_grid_dep_sync();
    const int blk = blockIdx.x * (blockDim.x / XD_WARP) + threadIdx.x / XD_WARP;
    // A whole warp is past the end or not, so the warp's shuffles stay complete.
    if (blk * XD_WARP >= n) return;
    xd_quantize_warp_q8_1(x[blk * XD_WARP + threadIdx.x % XD_WARP], y + blk);
}

// ---- the kernels ----------------------------------------------------------------------------

// Block shape of every quantized matvec launch, fixed at compile time (NVRTC gets -D defines for
// another shape; backend.rs launches with the same numbers, see MmvqShape in mmvq_shape.rs):
// XD_MMVQ_WARPS warps per block, XD_MMVQ_ROWS output rows per warp, so a block has
// WARPS x ROWS rows. The activation's q8_1 blocks are staged once per block for all of them
// (5 KB per round for 4096 columns against 1 KB of an IQ2_XXS row: more rows per block read
// less of it per weight byte). XD_MMVQ_STAGES: 2 overlaps the loads of the next round with
// the dot products of this one (double-buffered shared memory), 1 does not; 0 picks 2 where
// the two buffers fit the 48 KB of static shared memory, else 1.
#ifndef XD_MMVQ_WARPS
#define XD_MMVQ_WARPS 4
#endif
#ifndef XD_MMVQ_ROWS
#define XD_MMVQ_ROWS 1
#endif
#ifndef XD_MMVQ_STAGES
#define XD_MMVQ_STAGES 0
#endif
static_assert(XD_MMVQ_WARPS >= 1 && XD_MMVQ_WARPS <= 32, "XD_MMVQ_WARPS: 1 to 32 warps per block");
static_assert(XD_MMVQ_ROWS >= 1 && XD_MMVQ_ROWS <= 4, "XD_MMVQ_ROWS: 1 to 4 rows per warp");
static_assert(XD_MMVQ_STAGES >= 0 && XD_MMVQ_STAGES <= 2, "XD_MMVQ_STAGES: 0 (auto), 1 or 2");

// Blocks per SM the register allocation must allow, from the weight rows a warp carries (NW:
// ROWS, twice that for gate+up): about 40 warps per SM at one row (at most 48 registers), fewer
// as each warp holds more accumulators and row pointers (36 warps: 56 registers; 32: 64; 24: 80).
#define XD_MMVQ_MIN_BLOCKS(NW)                                                                      \
    (((NW) <= 1 ? 40 : (NW) <= 2 ? 36 : (NW) <= 4 ? 32 : 24) / XD_MMVQ_WARPS > 0                   \
         ? ((NW) <= 1 ? 40 : (NW) <= 2 ? 36 : (NW) <= 4 ? 32 : 24) / XD_MMVQ_WARPS                  \
         : 1)

// The QKV kernels pick each row's matrix, pointer and output apart: with several rows per warp
// they get the register budget of twice as many rows (at 4 rows, 64 registers spill).
#define XD_MMVQ3_MIN_BLOCKS XD_MMVQ_MIN_BLOCKS(XD_MMVQ_ROWS == 1 ? 1 : 2 * XD_MMVQ_ROWS)

struct alignas(16) xd_u128 {
    uint32_t v[4];
};

// Bytes [src, src + n) copied into `dst` (shared memory) as whole aligned 16-byte words by
// `step` threads, thread `lane` taking words lane, lane + step, ...: consecutive threads load
// consecutive words, so a warp's load instruction reads 512 contiguous bytes. A word reaching
// `limit` (the end of the row) takes only the bytes before it (the rest zero). On the GPU the
// copies are asynchronous (cp.async: global to shared memory without a register round trip;
// weights bypass L1, activations, read by every block, stay there); xd_stage_wait completes
// them. Returns the position of src's first byte in dst.
template <bool WEIGHTS>
__device__ __forceinline__ int xd_stage(xd_u128* dst, const uint8_t* src, int n, const uint8_t* limit, int lane,
                                        int step) {
    const unsigned long long a = reinterpret_cast<unsigned long long>(src) & ~15ull;
    const int pre = int(reinterpret_cast<unsigned long long>(src) - a);
    const int words = (pre + n + 15) >> 4;
    const uint8_t* base = reinterpret_cast<const uint8_t*>(a);
    // Bytes from base to the limit, once in 32 bits (a row or an activation vector is far below
    // 2 GB), so each word's clamp is a subtract and a min rather than 64-bit pointer compares.
    const int avail = int(limit - base);
    for (int i = lane; i < words; i += step) {
        const uint8_t* p = base + 16 * i;
        const int have = min(avail - 16 * i, 16);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst + i));
        if (WEIGHTS)
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(p), "r"(have) : "memory");
        else
            asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(p), "r"(have) : "memory");
#else
        if (have == 16) {
            dst[i] = *reinterpret_cast<const xd_u128*>(p);
        } else {
            uint8_t* d = reinterpret_cast<uint8_t*>(dst + i);
            for (int j = 0; j < 16; ++j) d[j] = j < have ? p[j] : uint8_t(0);
        }
#endif
    }
    return pre;
}

// Marks the copies issued since the last call as one group.
__device__ __forceinline__ void xd_stage_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Waits until at most PENDING of this thread's committed groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void xd_stage_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
#endif
}

// Sub-blocks of 32 values per staging round: 32 (one per lane), or 64 or 128 for the types
// whose 32 sub-blocks take few bytes, so that each round still has some 600+ bytes of a row in
// flight per warp. W and X: 16-byte words of one weight row's and of the activations' staging.
template <int QK, int BYTES>
struct XdStageSize {
    static constexpr int CHUNK = (32 / (QK / 32)) * BYTES;  // bytes of 32 sub-blocks
    static constexpr int R = CHUNK <= 300 ? 4 : (CHUNK <= 600 ? 2 : 1);
    static constexpr int SUBS_PER_ROUND = 32 * R;
    static constexpr int W = (R * CHUNK + 15) / 16 + 1;
    static constexpr int X = (SUBS_PER_ROUND * int(sizeof(xd_q8_1)) + 15) / 16 + 1;
};

// The staging buffers of a block whose warps carry NW weight rows each: STAGES copies of the
// warps' weight rows and of the activations, each 16-byte words; and the dot product's lookup
// table (TAB bytes, XdDotTable), copied once per block.
template <int QK, int BYTES, int NW, int TAB>
struct XdStaging {
    using S = XdStageSize<QK, BYTES>;
    static constexpr int BYTES_PER_STAGE = (XD_MMVQ_WARPS * NW * S::W + S::X) * 16;
    static constexpr int LIMIT = 48 * 1024 - TAB;  // static shared memory of one block, less the table
    static constexpr int STAGES =
        XD_MMVQ_STAGES != 0 ? XD_MMVQ_STAGES : (2 * BYTES_PER_STAGE <= LIMIT ? 2 : 1);
    static_assert(STAGES * BYTES_PER_STAGE <= LIMIT,
                  "the matvec staging of XD_MMVQ_WARPS x XD_MMVQ_ROWS rows (x2 for gate+up) exceeds 48 KB of "
                  "shared memory for this type: fewer rows per block, or XD_MMVQ_STAGES 1");
    xd_u128 w[STAGES][XD_MMVQ_WARPS][NW][S::W];
    xd_u128 x[STAGES][S::X];
    xd_u128 tab[TAB > 0 ? TAB / 16 : 1];
};

// The staging of a block running DOT over NW rows per warp.
template <int QK, int BYTES, XdDotFn DOT, int NW>
using XdStagingFor = XdStaging<QK, BYTES, NW, XdDotTable<DOT>::BYTES>;

// Lane `lane`'s share of the dot products of NW weight rows (same shape) with one q8_1
// activation row, in rounds of SUBS_PER_ROUND sub-blocks: each warp stages the round's part
// of its rows and the block the round's activations (shared by its warps) in shared memory
// with coalesced 16-byte loads, then lane i takes sub-blocks i, i + 32, ... of the round.
// (Lanes reading their own sub-blocks straight from global memory would touch a different
// 32-byte sector per lane on every load; activations staged per block are read once for all
// its rows.) With two stages the next round's loads are in flight during this round's dot
// products. The sums run in the order of a plain loop over u = lane, lane + 32, ..., whatever
// the block shape. Every thread of the block must call this (it synchronizes the block); rows
// with live[m] false (past the last row) are neither staged nor summed.
template <int QK, int BYTES, XdDotFn DOT, int NW>
__device__ __forceinline__ void xd_rows_part(const uint8_t* const (&wrow)[NW], const bool (&live)[NW],
                                             const xd_q8_1* __restrict__ xs, int nsub, int lane, int warp,
                                             XdStagingFor<QK, BYTES, DOT, NW>& st, float (&acc)[NW]) {
    constexpr int SUBS = QK / 32;
    constexpr int PER = XdStageSize<QK, BYTES>::SUBS_PER_ROUND;
    constexpr int STAGES = XdStagingFor<QK, BYTES, DOT, NW>::STAGES;
    using Tab = XdDotTable<DOT>;
    const int row_bytes = (nsub / SUBS) * BYTES;
    const uint8_t* xbytes = reinterpret_cast<const uint8_t*>(xs);
    const uint8_t* xend = xbytes + (long long)nsub * sizeof(xd_q8_1);
    // Issues the copies of the round starting at sub-block c into buffer b.
    auto issue = [&](int c, int b) {
        const int nu = min(PER, nsub - c);
#pragma unroll
        for (int m = 0; m < NW; ++m)
            if (live[m])
                xd_stage<true>(st.w[b][warp][m], wrow[m] + (c / SUBS) * BYTES, (nu / SUBS) * BYTES, wrow[m] + row_bytes,
                               lane, XD_WARP);
        xd_stage<false>(st.x[b], xbytes + (long long)c * sizeof(xd_q8_1), nu * int(sizeof(xd_q8_1)), xend, threadIdx.x,
                        blockDim.x);
        xd_stage_commit();
    };
    // The lookup table joins the first round's copies (visible after its wait and barrier).
    if (Tab::BYTES > 0) {
        const uint8_t* t = reinterpret_cast<const uint8_t*>(Tab::src());
        xd_stage<false>(st.tab, t, Tab::BYTES, t + Tab::BYTES, threadIdx.x, blockDim.x);
    }
    issue(0, 0);
    const uint8_t* tab = reinterpret_cast<const uint8_t*>(st.tab);
    int b = 0;
    for (int c = 0; c < nsub; c += PER) {
        const bool next = STAGES == 2 && c + PER < nsub;
        if (next) issue(c + PER, b ^ 1);
        // This round's copies are done (the next round's may still be in flight), and every
        // thread's are visible to the block.
        if (next)
            xd_stage_wait<1>();
        else
            xd_stage_wait<0>();
        __syncthreads();
        const int nu = min(PER, nsub - c);
        // Where the staged bytes start within their first word (the copies' `pre`).
        const int xpre = int(reinterpret_cast<unsigned long long>(xbytes + (long long)c * sizeof(xd_q8_1)) & 15);
        // With 4 or more rows per warp the rows give the independent work; unrolling the round's
        // sub-blocks too would multiply the code (and the compile time) for little.
#pragma unroll(NW >= 4 ? 1 : PER / XD_WARP)
        for (int r = 0; r < PER / XD_WARP; ++r) {
            const int i = r * XD_WARP + lane;  // sub-block of the round
            if (i < nu) {
                const xd_q8_1& a = *reinterpret_cast<const xd_q8_1*>(reinterpret_cast<const uint8_t*>(st.x[b]) + xpre +
                                                                     i * int(sizeof(xd_q8_1)));
#pragma unroll
                for (int m = 0; m < NW; ++m) {
                    if (live[m]) {
                        const uint8_t* wsrc = wrow[m] + (c / SUBS) * BYTES;
                        const int wpre = int(reinterpret_cast<unsigned long long>(wsrc) & 15);
                        acc[m] += DOT(reinterpret_cast<const uint8_t*>(st.w[b][warp][m]) + wpre + (i / SUBS) * BYTES,
                                      i % SUBS, a, tab);
                    }
                }
            }
        }
        // The next round's copies overwrite this buffer (one stage), or the round after (two).
        __syncthreads();
        if (STAGES == 1 && c + PER < nsub) issue(c + PER, 0);
        if (STAGES == 2) b ^= 1;
    }
}

// The NR weight rows of a warp, rows row0 .. row0 + NR - 1 of the matrix at `we`: rows past
// nrows are not live (and point at the last row, so no address leaves the matrix); sums zeroed.
template <int QK, int BYTES, int NR>
__device__ __forceinline__ void xd_warp_rows(const uint8_t* we, int row0, int nrows, int ncols,
                                             const uint8_t* (&wrow)[NR], bool (&live)[NR], float (&acc)[NR]) {
#pragma unroll
    for (int m = 0; m < NR; ++m) {
        acc[m] = 0.0f;
        live[m] = row0 + m < nrows;
        wrow[m] = we + (long long)min(row0 + m, nrows - 1) * (ncols / QK) * BYTES;
    }
}

// The block's staging, and this thread's lane and warp.
#define XD_MMVQ_SMEM(NW)                                   \
    __shared__ XdStagingFor<QK, BYTES, DOT, NW> s_stage;   \
    const int lane = threadIdx.x % XD_WARP;                \
    const int warp = threadIdx.x / XD_WARP;                \
    const int row0 = (blockIdx.x * XD_MMVQ_WARPS + warp) * XD_MMVQ_ROWS;

template <int QK, int BYTES, XdDotFn DOT>
__device__ __forceinline__ void xd_mmvq(const uint8_t* __restrict__ w, long long expert_stride,
                                        const int* __restrict__ ids, const xd_q8_1* __restrict__ x,
                                        int x_stride, int x_group, float* __restrict__ y, int ncols,
                                        int nrows) {
    constexpr int NR = XD_MMVQ_ROWS;
    XD_MMVQ_SMEM(NR)
    const int slot = blockIdx.y;
    const long long expert = ids ? ids[slot] : 0;
    const xd_q8_1* xs = x + (long long)(slot / x_group) * x_stride;
    float acc[NR];
    const uint8_t* wrow[NR];
    bool live[NR];
    xd_warp_rows<QK, BYTES, NR>(w + expert * expert_stride, row0, nrows, ncols, wrow, live, acc);
    // A warp past the last row stages no weights but helps with the activations.
    xd_rows_part<QK, BYTES, DOT, NR>(wrow, live, xs, ncols / 32, lane, warp, s_stage, acc);
#pragma unroll
    for (int m = 0; m < NR; ++m) {
        // Every lane takes part in the reduction, rows past the end included.
        const float sum = xd_warp_sum(acc[m]);
        if (lane == 0 && live[m]) y[(long long)slot * nrows + row0 + m] = sum;
    }
}

// Gate and up projections with SwiGLU in one pass: y = silu(x.W_gate[r]) * (x.W_up[r]), with
// the slots, experts and activation rows of xd_mmvq (both matrices of the same type, shape and
// expert stride). Saves the launch and the memory round trip of the separate swiglu. Weight row
// 2m of a warp is gate row row0 + m, 2m + 1 the up row.
//
// With yq not null (nrows a multiple of 32) it also leaves y's q8_1 blocks for the down
// projection, as quantize_q8_1 makes them: a block of 32 rows is written by several thread
// blocks, so each adds the rows it wrote to counts[slot][row / 32] (zero before the launch),
// and the one that completes the 32 quantizes them and sets the count back to zero.
template <int QK, int BYTES, XdDotFn DOT>
__device__ __forceinline__ void xd_mmvq_swiglu(const uint8_t* __restrict__ wg, const uint8_t* __restrict__ wu,
                                               long long expert_stride, const int* __restrict__ ids,
                                               const xd_q8_1* __restrict__ x, int x_stride, int x_group,
                                               float* y, int ncols, int nrows, xd_q8_1* __restrict__ yq,
                                               int* counts) {
    constexpr int NR = XD_MMVQ_ROWS;
    XD_MMVQ_SMEM(2 * NR)
    const int slot = blockIdx.y;
    const long long expert = ids ? ids[slot] : 0;
    const xd_q8_1* xs = x + (long long)(slot / x_group) * x_stride;
    float acc[2 * NR];
    const uint8_t* wrow[2 * NR];
    bool live[2 * NR];
#pragma unroll
    for (int m = 0; m < NR; ++m) {
        const long long off = expert * expert_stride + (long long)min(row0 + m, nrows - 1) * (ncols / QK) * BYTES;
        acc[2 * m] = acc[2 * m + 1] = 0.0f;
        live[2 * m] = live[2 * m + 1] = row0 + m < nrows;
        wrow[2 * m] = wg + off;
        wrow[2 * m + 1] = wu + off;
    }
    xd_rows_part<QK, BYTES, DOT, 2 * NR>(wrow, live, xs, ncols / 32, lane, warp, s_stage, acc);
#pragma unroll
    for (int m = 0; m < NR; ++m) {
        const float g = xd_warp_sum(acc[2 * m]);
        const float u = xd_warp_sum(acc[2 * m + 1]);
        // The expression of the swiglu kernel (elementwise.cu), so the two paths agree bit for bit.
        if (lane == 0 && live[2 * m]) y[(long long)slot * nrows + row0 + m] = g / (1.0f + expf(-g)) * u;
    }
    if (yq == nullptr) return;
    // The block's rows [r0, r1) meet at most two 32-row blocks (at most 16 rows per block).
    __shared__ int s_done[2];
    const int r0 = blockIdx.x * XD_MMVQ_WARPS * NR;
    const int r1 = min(r0 + XD_MMVQ_WARPS * NR, nrows);
    const int g0 = r0 / 32, g1 = (r1 - 1) / 32;
    int* cnt = counts + (long long)slot * (nrows / 32);
    __threadfence();
    __syncthreads();
    if (threadIdx.x < 2) {
        const int grp = g0 + threadIdx.x;
        int done = -1;
        if (grp <= g1) {
            if (xd_count_in(cnt + grp, min(r1, 32 * grp + 32) - max(r0, 32 * grp), 32)) done = grp;
        }
        s_done[threadIdx.x] = done;
    }
    __syncthreads();
    // Warp i quantizes the completed block s_done[i] (its rows read past the L1, after a fence).
    for (int i = warp; i < 2; i += XD_MMVQ_WARPS) {
        if (s_done[i] < 0) continue;
        __threadfence();
        const long long at = (long long)slot * nrows + 32 * s_done[i];
        xd_quantize_warp_q8_1(__ldcg(y + at + lane), yq + at / 32);
    }
}

// Which of xd_mmvq3's matrices (0, 1 or 2) row `row` of the launch belongs to; `row` becomes the
// row within it and `n` that matrix's row count.
__device__ __forceinline__ int xd_mmvq3_matrix(int& row, int& n, int n0, int n1, int n2) {
    if (row < n0) {
        n = n0;
        return 0;
    }
    row -= n0;
    if (row < n1) {
        n = n1;
        return 1;
    }
    row -= n1;
    n = n2;
    return 2;
}

// Up to three matrices of one type over the same activation rows in one launch (the Q, K and V
// projections): rows [0, n0) are W0's, the next n1 W1's, the next n2 W2's; y_i is
// [slots][n_i]. grid.x covers n0 + n1 + n2 rows, grid.y the activation rows. The rows of one
// warp may belong to different matrices.
template <int QK, int BYTES, XdDotFn DOT>
__device__ __forceinline__ void xd_mmvq3(const uint8_t* __restrict__ w0, const uint8_t* __restrict__ w1,
                                         const uint8_t* __restrict__ w2, float* __restrict__ y0,
                                         float* __restrict__ y1, float* __restrict__ y2, int n0, int n1, int n2,
                                         const xd_q8_1* __restrict__ x, int x_stride, int ncols) {
    constexpr int NR = XD_MMVQ_ROWS;
    XD_MMVQ_SMEM(NR)
    const int slot = blockIdx.y;
    const long long row_bytes = (long long)(ncols / QK) * BYTES;
    float acc[NR];
    const uint8_t* wrow[NR];
    bool live[NR];
#pragma unroll
    for (int m = 0; m < NR; ++m) {
        int row = row0 + m, n;
        const int mat = xd_mmvq3_matrix(row, n, n0, n1, n2);
        const uint8_t* w = mat == 0 ? w0 : mat == 1 ? w1 : w2;
        acc[m] = 0.0f;
        live[m] = row < n;
        wrow[m] = w + (long long)min(row, max(n - 1, 0)) * row_bytes;
    }
    const xd_q8_1* xs = x + (long long)slot * x_stride;
    xd_rows_part<QK, BYTES, DOT, NR>(wrow, live, xs, ncols / 32, lane, warp, s_stage, acc);
#pragma unroll
    for (int m = 0; m < NR; ++m) {
        const float sum = xd_warp_sum(acc[m]);
        if (lane == 0 && live[m]) {
            int row = row0 + m, n;
            const int mat = xd_mmvq3_matrix(row, n, n0, n1, n2);
            float* yy = mat == 0 ? y0 : mat == 1 ? y1 : y2;
            yy[(long long)slot * n + row] = sum;
        }
    }
}

// The down projection of a token's k experts and their weighted sum in one pass (decode MoE):
// y[t][r] = sum over j < k of wts[t * k + j] * (W_ids[t * k + j][r] . x[t * k + j]), slot t * k + j
// taking expert ids[...] (0 when ids is null) at expert_stride bytes and activation row
// x + (t * k + j) * x_stride. The sum is moe_combine's (elementwise.cu), over the values the plain
// matvec would write, so the two paths agree bit for bit. grid (row blocks, tokens); a block
// runs the k slots one after another over the same rows.
template <int QK, int BYTES, XdDotFn DOT>
__device__ __forceinline__ void xd_mmvq_moe(const uint8_t* __restrict__ w, long long expert_stride,
                                            const int* __restrict__ ids, const xd_q8_1* __restrict__ x,
                                            int x_stride, int k, const float* __restrict__ wts,
                                            float* __restrict__ y, int ncols, int nrows) {
    constexpr int NR = XD_MMVQ_ROWS;
    XD_MMVQ_SMEM(NR)
    const int tok = blockIdx.y;
    float out[NR];
#pragma unroll
    for (int m = 0; m < NR; ++m) out[m] = 0.0f;
    for (int j = 0; j < k; ++j) {
        const int slot = tok * k + j;
        const long long expert = ids ? ids[slot] : 0;
        float acc[NR];
        const uint8_t* wrow[NR];
        bool live[NR];
        xd_warp_rows<QK, BYTES, NR>(w + expert * expert_stride, row0, nrows, ncols, wrow, live, acc);
        xd_rows_part<QK, BYTES, DOT, NR>(wrow, live, x + (long long)slot * x_stride, ncols / 32, lane, warp, s_stage,
                                         acc);
        const float wj = wts[slot];
#pragma unroll
        for (int m = 0; m < NR; ++m) {
            const float e = xd_warp_sum(acc[m]);
            out[m] += wj * e;
        }
    }
#pragma unroll
    for (int m = 0; m < NR; ++m)
        if (lane == 0 && row0 + m < nrows) y[(long long)tok * nrows + row0 + m] = out[m];
}

#define XD_MMVQ_KERNEL(name, qk, bytes, dot)                                                      \
    extern "C" __global__ void __launch_bounds__(XD_WARP * XD_MMVQ_WARPS, XD_MMVQ_MIN_BLOCKS(XD_MMVQ_ROWS)) name(const uint8_t* __restrict__ w, long long expert_stride,       \
                                    const int* __restrict__ ids, const xd_q8_1* __restrict__ x,   \
                                    int x_stride, int x_group, float* __restrict__ y, int ncols,  \
                                    int nrows) {                                                  \
        xd_grid_dep_sync();                                                                       \
        xd_mmvq<qk, bytes, dot>(w, expert_stride, ids, x, x_stride, x_group, y, ncols, nrows);    \
    }

#define XD_MMVQ_SWIGLU_KERNEL(name, qk, bytes, dot)                                               \
    extern "C" __global__ void __launch_bounds__(XD_WARP * XD_MMVQ_WARPS, XD_MMVQ_MIN_BLOCKS(2 * XD_MMVQ_ROWS)) name(const uint8_t* __restrict__ wg, const uint8_t* __restrict__ wu, \
                                    long long expert_stride, const int* __restrict__ ids,         \
                                    const xd_q8_1* __restrict__ x, int x_stride, int x_group,     \
                                    float* y, int ncols, int nrows, xd_q8_1* __restrict__ yq,     \
                                    int* counts) {                                                \
        xd_grid_dep_sync();                                                                       \
        xd_mmvq_swiglu<qk, bytes, dot>(wg, wu, expert_stride, ids, x, x_stride, x_group, y, ncols, nrows, yq, counts); \
    }

#define XD_MMVQ_MOE_KERNEL(name, qk, bytes, dot)                                                  \
    extern "C" __global__ void __launch_bounds__(XD_WARP * XD_MMVQ_WARPS, XD_MMVQ_MIN_BLOCKS(XD_MMVQ_ROWS)) name(const uint8_t* __restrict__ w, long long expert_stride, \
                                    const int* __restrict__ ids, const xd_q8_1* __restrict__ x,   \
                                    int x_stride, int k, const float* __restrict__ wts,           \
                                    float* __restrict__ y, int ncols, int nrows) {                \
        xd_grid_dep_sync();                                                                       \
        xd_mmvq_moe<qk, bytes, dot>(w, expert_stride, ids, x, x_stride, k, wts, y, ncols, nrows); \
    }

#define XD_MMVQ3_KERNEL(name, qk, bytes, dot)                                                     \
    extern "C" __global__ void __launch_bounds__(XD_WARP * XD_MMVQ_WARPS, XD_MMVQ3_MIN_BLOCKS) name(const uint8_t* __restrict__ w0, const uint8_t* __restrict__ w1, \
                                    const uint8_t* __restrict__ w2, float* __restrict__ y0,       \
                                    float* __restrict__ y1, float* __restrict__ y2, int n0, int n1, \
                                    int n2, const xd_q8_1* __restrict__ x, int x_stride, int ncols) { \
        xd_grid_dep_sync();                                                                           \
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
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q4_0, 32, 18, dot_q4_0)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q4_1, 32, 20, dot_q4_1)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q5_0, 32, 22, dot_q5_0)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q5_1, 32, 24, dot_q5_1)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q8_0, 32, 34, dot_q8_0)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q2_k, 256, 84, dot_q2_k)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q3_k, 256, 110, dot_q3_k)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q4_k, 256, 144, dot_q4_k)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q5_k, 256, 176, dot_q5_k)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_q6_k, 256, 210, dot_q6_k)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_iq4_nl, 32, 18, dot_iq4_nl)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_iq4_xs, 256, 136, dot_iq4_xs)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_iq2_xxs, 256, 66, dot_iq2_xxs)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_iq2_xs, 256, 74, dot_iq2_xs)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_iq2_s, 256, 82, dot_iq2_s)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_iq3_xxs, 256, 98, dot_iq3_xxs)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_iq3_s, 256, 110, dot_iq3_s)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_iq1_s, 256, 50, dot_iq1_s)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_iq1_m, 256, 56, dot_iq1_m)
XD_MMVQ_MOE_KERNEL(mul_mat_vec_moe_mxfp4, 32, 17, dot_mxfp4)
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
