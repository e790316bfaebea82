// CUDA emulation for the host C++ compiler (g++ >= 12, -std=c++20): lets the kernel sources in
// kernels/ build unchanged on a machine without a GPU, so their arithmetic can be tested against
// the CPU implementation and their synchronisation checked by ThreadSanitizer.
//
// Model: a launch runs its blocks one after another; each block runs as blockDim OS threads (one
// per CUDA thread). __syncthreads is a std::barrier over the block's threads; warp operations
// (__shfl_*_sync, __ballot_sync, __syncwarp, warp reductions built on them) exchange values
// through a per-warp buffer guarded by a per-warp std::barrier, so every lane of a warp must reach
// them, as on the GPU with a full mask. __shared__ variables are function statics: one copy,
// which is right because only one block runs at a time. Timing, memory coalescing and the
// GPU's float rounding of intrinsics (__expf, rsqrtf) are not emulated. Tensor-core tiles
// (mma.cuh) are emulated with full copies per lane; see MmaTile.
#pragma once
#ifndef XDAN_CUDA_EMU
#define XDAN_CUDA_EMU 1
#endif

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3() = default;
    constexpr dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static const
#define __align__(n) __attribute__((aligned(n)))
// Dynamic shared memory: on the GPU an extern __shared__ array, here the launch's buffer.
#define XD_DYN_SMEM(type, name) type* name = reinterpret_cast<type*>(xd_emu::dyn_smem())

namespace xd_emu {

struct Warp {
    std::barrier<> bar;
    uint64_t slot[32] = {};
    explicit Warp(int n) : bar(n) {}
};

struct Block {
    std::barrier<> bar;
    std::vector<std::unique_ptr<Warp>> warps;
    std::vector<unsigned char> smem;
    explicit Block(int n) : bar(n) {}
};

inline thread_local Block* tl_block = nullptr;
inline thread_local int tl_lane = 0;
inline thread_local int tl_warp = 0;

inline unsigned char* dyn_smem() { return tl_block->smem.data(); }

inline Warp& warp() { return *tl_block->warps[tl_warp]; }

// Every lane publishes `v`, waits for the warp, reads lane `src`'s value, and waits again so
// no lane overwrites its slot before the others have read it.
template <typename T>
inline T exchange(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    Warp& w = warp();
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slot[tl_lane] = bits;
    w.bar.arrive_and_wait();
    uint64_t got = w.slot[src & 31];
    w.bar.arrive_and_wait();
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

// Tensor-core tiles (kernels/mma.cuh): every lane holds a full copy of the 16x16 tile, so loads
// read shared memory concurrently (no race) and each lane multiplies on its own copy; a store
// writes each element from one lane only (lane i: elements i, i + 32, ...). Loads and stores
// first meet at the warp's barrier, as the PTX .sync.aligned forms need every lane there.
struct MmaTile {
    float v[256];  // [row][col]
};

inline void mma_zero(MmaTile& t) {
    for (float& x : t.v) x = 0.0f;
}

// t[i][j] = cvt(p[i * ldm + j]), or with `col` (a column-major tile) cvt(p[j * ldm + i]).
template <typename T, typename Cvt>
inline void mma_load(MmaTile& t, const T* p, int ldm, bool col, Cvt cvt) {
    warp().bar.arrive_and_wait();
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) t.v[i * 16 + j] = cvt(col ? p[j * ldm + i] : p[i * ldm + j]);
}

// c += a b: the f16 products are exact in f32; the sums run in k order.
inline void mma(MmaTile& c, const MmaTile& a, const MmaTile& b) {
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float acc = c.v[i * 16 + j];
            for (int k = 0; k < 16; ++k) acc += a.v[i * 16 + k] * b.v[k * 16 + j];
            c.v[i * 16 + j] = acc;
        }
}

// p[j * ldm + i] = c[i][j] (column-major).
inline void mma_store_col(float* p, const MmaTile& c, int ldm) {
    warp().bar.arrive_and_wait();
    for (int e = tl_lane; e < 256; e += 32) p[(e % 16) * ldm + e / 16] = c.v[e];
}

// Runs `body` for every block of `grid`, with `block` threads each. Blocks run in turn; the
// block's threads are created once per launch and meet at a barrier between blocks.
inline void launch(dim3 grid, dim3 block, size_t dyn_smem_bytes, const std::function<void()>& body) {
    const int nthreads = int(block.x * block.y * block.z);
    if (nthreads <= 0 || nthreads > 1024) {
        std::fprintf(stderr, "cuda_emu: bad block size %d\n", nthreads);
        std::abort();
    }
    Block blk(nthreads);
    blk.smem.assign(dyn_smem_bytes, 0);
    const int nwarps = (nthreads + 31) / 32;
    for (int w = 0; w < nwarps; ++w) {
        int lanes = std::min(32, nthreads - 32 * w);
        blk.warps.emplace_back(new Warp(lanes));
    }
    std::barrier<> between(nthreads);
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (int t = 0; t < nthreads; ++t) {
        threads.emplace_back([&, t] {
            tl_block = &blk;
            tl_lane = t % 32;
            tl_warp = t / 32;
            blockDim = block;
            gridDim = grid;
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        blockIdx = dim3(bx, by, bz);
                        body();
                        between.arrive_and_wait();
                    }
            tl_block = nullptr;
        });
    }
    for (auto& th : threads) th.join();
}

}  // namespace xd_emu

// Launch a kernel: XD_LAUNCH(kernel, grid, block, dyn_smem_bytes, args...).
#define XD_LAUNCH(kernel, grid, block, smem, ...) \
    xd_emu::launch((grid), (block), (smem), [&] { kernel(__VA_ARGS__); })

inline void __syncthreads() { xd_emu::tl_block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { xd_emu::warp().bar.arrive_and_wait(); }

template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int base = xd_emu::tl_lane & ~(width - 1);
    return xd_emu::exchange(v, base + (src & (width - 1)));
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    int lane = xd_emu::tl_lane;
    int base = lane & ~(width - 1);
    return xd_emu::exchange(v, base + (((lane - base) ^ mask) & (width - 1)));
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = xd_emu::tl_lane;
    int base = lane & ~(width - 1);
    int src = (lane - base) + int(delta);
    return xd_emu::exchange(v, src < width ? base + src : lane);
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = xd_emu::tl_lane;
    int base = lane & ~(width - 1);
    int src = (lane - base) - int(delta);
    return xd_emu::exchange(v, src >= 0 ? base + src : lane);
}
inline unsigned __ballot_sync(unsigned, int pred) {
    xd_emu::Warp& w = xd_emu::warp();
    w.slot[xd_emu::tl_lane] = pred ? 1 : 0;
    w.bar.arrive_and_wait();
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= unsigned(w.slot[i] & 1) << i;
    w.bar.arrive_and_wait();
    return r;
}

// Signed 8-bit 4-way dot product with 32-bit accumulate.
inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i)
        c += int(int8_t(uint32_t(a) >> (8 * i))) * int(int8_t(uint32_t(b) >> (8 * i)));
    return c;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
// Blocks run in turn here (a barrier between them), so one block's stores are visible to the
// next without a fence; a compiler barrier keeps the accesses in program order (ThreadSanitizer
// supports no thread fence).
inline void __threadfence() { asm volatile("" ::: "memory"); }

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline int atomicMax(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {}
    return old;
}
inline int atomicCAS(int* p, int cmp, int v) {
    std::atomic_ref<int>(*p).compare_exchange_strong(cmp, v);
    return cmp;
}
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
    std::atomic_ref<unsigned>(*p).compare_exchange_strong(cmp, v);
    return cmp;
}

// CUDA's integer min/max are global functions.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
// Byte i of the result is byte (s >> 4i) & 7 of the eight bytes {y:x}; with bit 3 of that
// selector nibble set, that byte's sign bit repeated (prmt's default mode).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = uint64_t(x) | (uint64_t(y) << 32);
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) {
        const unsigned n = (s >> (4 * i)) & 15u;
        unsigned b = unsigned(v >> (8 * (n & 7u))) & 0xffu;
        if (n & 8u) b = (b & 0x80u) ? 0xffu : 0u;
        r |= b << (8 * i);
    }
    return r;
}
// Per-byte subtraction, each byte modulo 256.
inline unsigned __vsub4(unsigned a, unsigned b) {
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= ((((a >> (8 * i)) & 0xffu) - ((b >> (8 * i)) & 0xffu)) & 0xffu) << (8 * i);
    return r;
}
