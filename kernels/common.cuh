// Shared definitions of the xdan CUDA kernels: integer types, f16 and bf16 conversion, unaligned
// block loads, warp reductions, and the q8_1 activation block the quantized matvecs consume.
//
// The sources build three ways: by NVRTC at run time (no CUDA headers: NVRTC ships none, so
// nothing here includes any), and by the host compiler under kernels/emu/cuda_emu.h for tests.
#pragma once

#if defined(__CUDACC_RTC__)
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#endif

#define XD_FULL_MASK 0xffffffffu
#define XD_WARP 32

// The first statement of every kernel. Under programmatic dependent launch (sm_90+, the host's
// XDAN_CUDA_PDL) a kernel's blocks may be scheduled before the kernel ahead of it in the stream
// has finished; here they wait until it has, and its memory is visible, then allow the next
// kernel's launch to begin in turn. Nothing precedes it, so no kernel touches memory early. A
// launch without that attribute passes both at once.
__device__ __forceinline__ void xd_grid_dep_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// f16 bits to f32. On the GPU one cvt instruction; the portable path (the emulator's) decodes
// the bits, subnormals included.
__device__ __forceinline__ float xd_h2f(uint16_t h) {
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            int e = 113;
            while (!(man & 0x400u)) {
                man <<= 1;
                --e;
            }
            bits = sign | (uint32_t(e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    return __uint_as_float(bits);
#endif
}

// f32 to f16 bits, rounding to nearest even (overflow to inf, NaN kept a NaN).
__device__ __forceinline__ uint16_t xd_f2h(float f) {
#if defined(__CUDA_ARCH__)
    uint16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    const uint32_t x = __float_as_uint(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mant = x & 0x7fffffu;
    const int exp = int((x >> 23) & 0xffu);
    if (exp == 255) return uint16_t(sign | 0x7c00u | (mant ? 0x200u : 0u));
    const int e = exp - 112;  // the f16 exponent field
    if (e >= 31) return uint16_t(sign | 0x7c00u);
    if (e <= 0) {  // subnormal in f16 (or zero)
        if (e < -10) return uint16_t(sign);
        mant |= 0x800000u;
        const int shift = 14 - e;
        uint32_t h = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (h & 1u))) ++h;
        return uint16_t(sign | h);
    }
    uint32_t h = (uint32_t(e) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
    return uint16_t(sign | h);
#endif
}

// GGML blocks are 2-byte aligned at best (Q4_0 is 18 bytes), so 32-bit words are read as two
// 16-bit halves.
__device__ __forceinline__ uint32_t xd_ld16(const uint8_t* p) {
    return *reinterpret_cast<const uint16_t*>(p);
}
__device__ __forceinline__ int xd_ld32(const uint8_t* p) {
    const uint16_t* q = reinterpret_cast<const uint16_t*>(p);
    return int(uint32_t(q[0]) | (uint32_t(q[1]) << 16));
}
__device__ __forceinline__ float xd_ldh(const uint8_t* p) { return xd_h2f(uint16_t(xd_ld16(p))); }

// A word at a 4-byte aligned address: one load where xd_ld32 makes two and a permute. For the
// block types whose size is a multiple of 4, whose blocks (in device memory and as the matvecs
// stage them) all start 4-byte aligned. The emulator traps on a misaligned address, so a type
// that does not qualify fails its tests rather than the GPU.
__device__ __forceinline__ int xd_ld32a(const uint8_t* p) {
#if !defined(__CUDA_ARCH__)
    if (reinterpret_cast<unsigned long long>(p) & 3) __builtin_trap();
#endif
    return *reinterpret_cast<const int*>(p);
}

// Four f16 values as one 8-byte access (attention's f16 cache rows, the GEMM's f16 tiles).
struct alignas(8) xd_h4 {
    uint16_t v[4];
};

// Four words at a 16-byte aligned address in one load (block types whose size is a multiple of 16).
struct alignas(16) xd_words4 {
    int w[4];
};
__device__ __forceinline__ xd_words4 xd_ld128a(const uint8_t* p) {
#if !defined(__CUDA_ARCH__)
    if (reinterpret_cast<unsigned long long>(p) & 15) __builtin_trap();
#endif
    return *reinterpret_cast<const xd_words4*>(p);
}

// One thread's count of `add` into *counter towards `total`, for a result several blocks write
// and the last of them finishes: true for the call that completes the total, which sets the
// counter back to zero for the next launch (every contribution is in by then). The caller makes
// its block's stores visible first (__threadfence, then __syncthreads), and the finishing block
// fences again and reads the others' stores past its L1 (__ldcg).
__device__ __forceinline__ bool xd_count_in(int* counter, int add, int total) {
    if (atomicAdd(counter, add) + add != total) return false;
    *counter = 0;
    return true;
}

__device__ __forceinline__ float xd_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(XD_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ int xd_warp_sum_int(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(XD_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float xd_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(XD_FULL_MASK, v, o));
    return v;
}

// Activations quantized for the integer dot products: 32 values as int8 with scale `d`, and
// `s` = d * sum(qs) for the weight types with an offset (Q4_1, Q5_1, K-quant mins). Like ggml's
// q8_1 (d holds an f16 value, see quantize_q8_1), but stored as f32: a scratch buffer, not a
// file format, whose int8 words stay 4-byte aligned.
struct xd_q8_1 {
    float d;
    float s;
    int qs[8];
};

// One warp quantizes 32 values (lane i holds v, value i of the block) into `blk`, with the
// arithmetic of quantize_q8_1 (mmvq.cu, which calls it), so a kernel that writes an activation
// can leave its q8_1 blocks beside it, bit for bit what quantize_q8_1 would make of it. Every lane of the
// warp must call it.
__device__ __forceinline__ void xd_quantize_warp_q8_1(float v, xd_q8_1* __restrict__ blk) {
    const int lane = threadIdx.x % XD_WARP;
    const float amax = xd_warp_max(fabsf(v));
    const float d = xd_h2f(xd_f2h(amax / 127.0f));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const int q = int(rintf(v * id));
    const int sum = xd_warp_sum_int(q);
    reinterpret_cast<int8_t*>(blk->qs)[lane] = int8_t(q);
    if (lane == 0) {
        blk->d = d;
        blk->s = d * float(sum);
    }
}

// One 32-value block of a Q8_0 KV row (GGML's block_q8_0): value i is d * qs[i], d f16 bits.
struct xd_kv_q8_0 {
    uint16_t d;
    int8_t qs[32];
};

// A value into an f32 or f16 KV cache (the KV store and its fusion with RoPE).
__device__ __forceinline__ void xd_kv_put(float* p, float v) { *p = v; }
__device__ __forceinline__ void xd_kv_put(uint16_t* p, float v) { *p = xd_f2h(v); }

// A BF16 value: the upper 16 bits of an f32. Its own type (not uint16_t, which is f16 here) so
// the weight readers below pick the right conversion by overload.
struct xd_bf16 {
    uint16_t bits;
};

// bf16 to f32: the bits shifted into the top half; exact (NaN, inf, subnormals included).
__device__ __forceinline__ float xd_bf2f(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }

// A weight value of an f32, f16 or bf16 matrix.
__device__ __forceinline__ float xd_wval(const float* w, long long i) { return w[i]; }
__device__ __forceinline__ float xd_wval(const uint16_t* w, long long i) { return xd_h2f(w[i]); }
__device__ __forceinline__ float xd_wval(const xd_bf16* w, long long i) { return xd_bf2f(w[i].bits); }

// Lane `lane`'s share of dot(w, x) over n values: w[i] * x[i] for i = lane, lane + 32, ...
// summed in that order (one multiply-add chain per lane, then xd_warp_sum by the caller). The
// loads of 16 steps are issued before their multiply-adds, so a lane has them in flight together
// instead of one memory latency per step; the sum is the plain loop's, bit for bit.
template <typename W>
__device__ __forceinline__ float xd_dot_lane(const W* __restrict__ w, const float* __restrict__ x, int n, int lane) {
    constexpr int U = 16;
    float acc = 0.0f;
    int i = lane;
    for (; i + (U - 1) * XD_WARP < n; i += U * XD_WARP) {
        float a[U], b[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            a[u] = xd_wval(w, i + u * XD_WARP);
            b[u] = x[i + u * XD_WARP];
        }
#pragma unroll
        for (int u = 0; u < U; ++u) acc += a[u] * b[u];
    }
    for (; i < n; i += XD_WARP) acc += xd_wval(w, i) * x[i];
    return acc;
}
