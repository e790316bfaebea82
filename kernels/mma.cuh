// Warp-wide 16x16x16 matrix multiply-accumulate on the tensor cores: f16 x f16 -> f32, in the
// manner of nvcuda::wmma (whose mma.h NVRTC cannot include: the kernels use no CUDA headers),
// written with the PTX wmma instructions. A fragment's layout over the lanes is opaque; only
// these operations touch it, all of them warp-collective (every lane of the warp must call
// them together, with the same pointer and stride). Under the emulator (kernels/emu/cuda_emu.h)
// each lane holds the whole 16x16 tile and the operations are xd_emu's.
//
//   xd_mma_load_a(a, p, ldm): A[i][k] = p[i * ldm + k]   (row-major, f16 bits)
//   xd_mma_load_b(b, p, ldm): B[k][j] = p[j * ldm + k]   (column-major, f16 bits)
//   xd_mma(c, a, b):          C += A B, f32 accumulate
//   xd_mma_store_c(p, c, ldm): p[j * ldm + i] = C[i][j]  (column-major, f32)
//
// p points into shared memory (the .shared forms: the loads become ldmatrix), 32-byte aligned,
// and ldm is a multiple of 8 (f16) or 4 (f32), as PTX requires.
#pragma once
#include "common.cuh"

#if defined(__CUDA_ARCH__)

struct xd_frag_ab {
    uint32_t x[8];  // 16 f16 values as pairs
};
struct xd_frag_c {
    float x[8];
};

// A shared-memory pointer as a 32-bit .shared address. With it the fragment loads compile to
// ldmatrix (one instruction per 16x16 tile); from a generic address they were eight generic
// 32-bit loads each.
__device__ __forceinline__ unsigned xd_smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void xd_mma_zero(xd_frag_c& c) {
#pragma unroll
    for (int i = 0; i < 8; ++i) c.x[i] = 0.0f;
}

__device__ __forceinline__ void xd_mma_load_a(xd_frag_ab& a, const uint16_t* p, int ldm) {
    asm volatile("wmma.load.a.sync.aligned.row.m16n16k16.shared.f16 {%0,%1,%2,%3,%4,%5,%6,%7}, [%8], %9;"
                 : "=r"(a.x[0]), "=r"(a.x[1]), "=r"(a.x[2]), "=r"(a.x[3]), "=r"(a.x[4]), "=r"(a.x[5]),
                   "=r"(a.x[6]), "=r"(a.x[7])
                 : "r"(xd_smem_addr(p)), "r"(ldm)
                 : "memory");
}

__device__ __forceinline__ void xd_mma_load_b(xd_frag_ab& b, const uint16_t* p, int ldm) {
    asm volatile("wmma.load.b.sync.aligned.col.m16n16k16.shared.f16 {%0,%1,%2,%3,%4,%5,%6,%7}, [%8], %9;"
                 : "=r"(b.x[0]), "=r"(b.x[1]), "=r"(b.x[2]), "=r"(b.x[3]), "=r"(b.x[4]), "=r"(b.x[5]),
                   "=r"(b.x[6]), "=r"(b.x[7])
                 : "r"(xd_smem_addr(p)), "r"(ldm)
                 : "memory");
}

__device__ __forceinline__ void xd_mma(xd_frag_c& c, const xd_frag_ab& a, const xd_frag_ab& b) {
    asm volatile(
        "wmma.mma.sync.aligned.row.col.m16n16k16.f32.f32 {%0,%1,%2,%3,%4,%5,%6,%7}, "
        "{%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19,%20,%21,%22,%23}, "
        "{%0,%1,%2,%3,%4,%5,%6,%7};"
        : "+f"(c.x[0]), "+f"(c.x[1]), "+f"(c.x[2]), "+f"(c.x[3]), "+f"(c.x[4]), "+f"(c.x[5]), "+f"(c.x[6]),
          "+f"(c.x[7])
        : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(a.x[4]), "r"(a.x[5]), "r"(a.x[6]), "r"(a.x[7]),
          "r"(b.x[0]), "r"(b.x[1]), "r"(b.x[2]), "r"(b.x[3]), "r"(b.x[4]), "r"(b.x[5]), "r"(b.x[6]), "r"(b.x[7]));
}

__device__ __forceinline__ void xd_mma_store_c(float* p, const xd_frag_c& c, int ldm) {
    asm volatile("wmma.store.d.sync.aligned.col.m16n16k16.shared.f32 [%0], {%1,%2,%3,%4,%5,%6,%7,%8}, %9;"
                 :
                 : "r"(xd_smem_addr(p)), "f"(c.x[0]), "f"(c.x[1]), "f"(c.x[2]), "f"(c.x[3]), "f"(c.x[4]), "f"(c.x[5]),
                   "f"(c.x[6]), "f"(c.x[7]), "r"(ldm)
                 : "memory");
}

#else  // the emulator

using xd_frag_ab = xd_emu::MmaTile;
using xd_frag_c = xd_emu::MmaTile;

inline void xd_mma_zero(xd_frag_c& c) { xd_emu::mma_zero(c); }
inline void xd_mma_load_a(xd_frag_ab& a, const uint16_t* p, int ldm) { xd_emu::mma_load(a, p, ldm, false, xd_h2f); }
inline void xd_mma_load_b(xd_frag_ab& b, const uint16_t* p, int ldm) { xd_emu::mma_load(b, p, ldm, true, xd_h2f); }
inline void xd_mma(xd_frag_c& c, const xd_frag_ab& a, const xd_frag_ab& b) { xd_emu::mma(c, a, b); }
inline void xd_mma_store_c(float* p, const xd_frag_c& c, int ldm) { xd_emu::mma_store_col(p, c, ldm); }

#endif
