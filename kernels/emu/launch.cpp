// The emulated kernels as a shared library with a cuLaunchKernel-like entry point, so the
// CUDA backend's host code (src/backend/cuda/backend.rs) runs unchanged against the emulator:
// device pointers are host pointers, and a launch names its kernel and passes an array of
// pointers to the argument values, as the driver API does. Built by the tests only.
#include "cuda_emu.h"

#include "../mmvq.cu"
#include "../matvec_float.cu"
#include "../gemm.cu"
#include "../get_rows.cu"
#include "../norm.cu"
#include "../rope.cu"
#include "../elementwise.cu"
#include "../router.cu"
#include "../attention.cu"

#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>

namespace {

template <typename... A, size_t... I>
void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <typename... A>
void call(void (*k)(A...), void** args) {
    call_with(k, args, std::index_sequence_for<A...>{});
}

struct Entry {
    const char* name;
    void (*run)(void**);
};

#define XD_REG(k) {#k, [](void** a) { call(k, a); }}

const Entry kKernels[] = {
    XD_REG(quantize_q8_1),
    XD_REG(mul_mat_vec_q4_0), XD_REG(mul_mat_vec_q4_1), XD_REG(mul_mat_vec_q5_0), XD_REG(mul_mat_vec_q5_1),
    XD_REG(mul_mat_vec_q8_0), XD_REG(mul_mat_vec_q2_k), XD_REG(mul_mat_vec_q3_k), XD_REG(mul_mat_vec_q4_k),
    XD_REG(mul_mat_vec_q5_k), XD_REG(mul_mat_vec_q6_k), XD_REG(mul_mat_vec_iq4_nl), XD_REG(mul_mat_vec_iq4_xs),
    XD_REG(mul_mat_vec_iq2_xxs), XD_REG(mul_mat_vec_iq2_xs), XD_REG(mul_mat_vec_iq2_s), XD_REG(mul_mat_vec_iq3_xxs),
    XD_REG(mul_mat_vec_iq3_s), XD_REG(mul_mat_vec_iq1_s), XD_REG(mul_mat_vec_iq1_m), XD_REG(mul_mat_vec_mxfp4),
    XD_REG(mul_mat_vec_swiglu_q4_0), XD_REG(mul_mat_vec_swiglu_q4_1), XD_REG(mul_mat_vec_swiglu_q5_0), XD_REG(mul_mat_vec_swiglu_q5_1),
    XD_REG(mul_mat_vec_swiglu_q8_0), XD_REG(mul_mat_vec_swiglu_q2_k), XD_REG(mul_mat_vec_swiglu_q3_k), XD_REG(mul_mat_vec_swiglu_q4_k),
    XD_REG(mul_mat_vec_swiglu_q5_k), XD_REG(mul_mat_vec_swiglu_q6_k), XD_REG(mul_mat_vec_swiglu_iq4_nl), XD_REG(mul_mat_vec_swiglu_iq4_xs),
    XD_REG(mul_mat_vec_swiglu_iq2_xxs), XD_REG(mul_mat_vec_swiglu_iq2_xs), XD_REG(mul_mat_vec_swiglu_iq2_s), XD_REG(mul_mat_vec_swiglu_iq3_xxs),
    XD_REG(mul_mat_vec_swiglu_iq3_s), XD_REG(mul_mat_vec_swiglu_iq1_s), XD_REG(mul_mat_vec_swiglu_iq1_m), XD_REG(mul_mat_vec_swiglu_mxfp4),
    XD_REG(mul_mat_vec_moe_q4_0), XD_REG(mul_mat_vec_moe_q4_1), XD_REG(mul_mat_vec_moe_q5_0), XD_REG(mul_mat_vec_moe_q5_1),
    XD_REG(mul_mat_vec_moe_q8_0), XD_REG(mul_mat_vec_moe_q2_k), XD_REG(mul_mat_vec_moe_q3_k), XD_REG(mul_mat_vec_moe_q4_k),
    XD_REG(mul_mat_vec_moe_q5_k), XD_REG(mul_mat_vec_moe_q6_k), XD_REG(mul_mat_vec_moe_iq4_nl), XD_REG(mul_mat_vec_moe_iq4_xs),
    XD_REG(mul_mat_vec_moe_iq2_xxs), XD_REG(mul_mat_vec_moe_iq2_xs), XD_REG(mul_mat_vec_moe_iq2_s), XD_REG(mul_mat_vec_moe_iq3_xxs),
    XD_REG(mul_mat_vec_moe_iq3_s), XD_REG(mul_mat_vec_moe_iq1_s), XD_REG(mul_mat_vec_moe_iq1_m), XD_REG(mul_mat_vec_moe_mxfp4),
    XD_REG(mul_mat_vec3_q4_0), XD_REG(mul_mat_vec3_q4_1), XD_REG(mul_mat_vec3_q5_0), XD_REG(mul_mat_vec3_q5_1),
    XD_REG(mul_mat_vec3_q8_0), XD_REG(mul_mat_vec3_q2_k), XD_REG(mul_mat_vec3_q3_k), XD_REG(mul_mat_vec3_q4_k),
    XD_REG(mul_mat_vec3_q5_k), XD_REG(mul_mat_vec3_q6_k), XD_REG(mul_mat_vec3_iq4_nl), XD_REG(mul_mat_vec3_iq4_xs),
    XD_REG(mul_mat_vec3_iq2_xxs), XD_REG(mul_mat_vec3_iq2_xs), XD_REG(mul_mat_vec3_iq2_s), XD_REG(mul_mat_vec3_iq3_xxs),
    XD_REG(mul_mat_vec3_iq3_s), XD_REG(mul_mat_vec3_iq1_s), XD_REG(mul_mat_vec3_iq1_m), XD_REG(mul_mat_vec3_mxfp4),
    XD_REG(mul_mat_vec_f32), XD_REG(mul_mat_vec_f16), XD_REG(mul_mat_vec_bf16),
    XD_REG(mul_mat_f32), XD_REG(mul_mat_f16), XD_REG(mul_mat_bf16), XD_REG(mul_mat_q4_0), XD_REG(mul_mat_q4_1), XD_REG(mul_mat_q5_0), XD_REG(mul_mat_q5_1), XD_REG(mul_mat_q8_0), XD_REG(mul_mat_q2_k), XD_REG(mul_mat_q3_k), XD_REG(mul_mat_q4_k), XD_REG(mul_mat_q5_k), XD_REG(mul_mat_q6_k), XD_REG(mul_mat_iq4_nl), XD_REG(mul_mat_iq4_xs), XD_REG(mul_mat_iq2_xxs), XD_REG(mul_mat_iq2_xs), XD_REG(mul_mat_iq2_s), XD_REG(mul_mat_iq3_xxs), XD_REG(mul_mat_iq3_s), XD_REG(mul_mat_iq1_s), XD_REG(mul_mat_iq1_m), XD_REG(mul_mat_mxfp4), XD_REG(moe_group),
    XD_REG(get_rows_f32), XD_REG(get_rows_f16), XD_REG(get_rows_bf16), XD_REG(get_rows_q4_0), XD_REG(get_rows_q4_1),
    XD_REG(get_rows_q5_0), XD_REG(get_rows_q5_1), XD_REG(get_rows_q8_0), XD_REG(get_rows_q2_k), XD_REG(get_rows_q3_k), XD_REG(get_rows_q4_k),
    XD_REG(get_rows_q5_k), XD_REG(get_rows_q6_k), XD_REG(get_rows_iq4_nl), XD_REG(get_rows_iq4_xs),
    XD_REG(get_rows_iq2_xxs), XD_REG(get_rows_iq2_xs), XD_REG(get_rows_iq2_s), XD_REG(get_rows_iq3_xxs),
    XD_REG(get_rows_iq3_s), XD_REG(get_rows_iq1_s), XD_REG(get_rows_iq1_m), XD_REG(get_rows_mxfp4),
    XD_REG(rms_norm), XD_REG(rms_norm_q8_1), XD_REG(add_rms_norm), XD_REG(rope_norm), XD_REG(rope_kv_store_f32),
    XD_REG(rope_kv_store_f16), XD_REG(swiglu), XD_REG(add_f32), XD_REG(moe_combine), XD_REG(kv_store_f32),
    XD_REG(kv_store_f16), XD_REG(kv_store_q8_0), XD_REG(convert_f32_f16),
    XD_REG(moe_router), XD_REG(moe_route_f32), XD_REG(moe_route_f16), XD_REG(moe_route_bf16), XD_REG(router_logits_f32), XD_REG(router_logits_f16), XD_REG(router_logits_bf16),
    XD_REG(attn_f32_32), XD_REG(attn_f32_64), XD_REG(attn_f32_96), XD_REG(attn_f32_128), XD_REG(attn_f32_160), XD_REG(attn_f32_192), XD_REG(attn_f32_224), XD_REG(attn_f32_256), XD_REG(attn_f16_32), XD_REG(attn_f16_64), XD_REG(attn_f16_96), XD_REG(attn_f16_128), XD_REG(attn_f16_160), XD_REG(attn_f16_192), XD_REG(attn_f16_224), XD_REG(attn_f16_256), XD_REG(attn_q8_0_32), XD_REG(attn_q8_0_64), XD_REG(attn_q8_0_96), XD_REG(attn_q8_0_128), XD_REG(attn_q8_0_160), XD_REG(attn_q8_0_192), XD_REG(attn_q8_0_224), XD_REG(attn_q8_0_256),
};

const Entry* find(const char* name) {
    for (const Entry& e : kKernels)
        if (std::strcmp(e.name, name) == 0) return &e;
    return nullptr;
}

}  // namespace

// The block shape the matvecs were built with: warps per block, rows per warp, stages.
extern "C" void xd_emu_mmvq_shape(int* s) {
    s[0] = XD_MMVQ_WARPS;
    s[1] = XD_MMVQ_ROWS;
    s[2] = XD_MMVQ_STAGES;
}

// 1 when `name` is a registered kernel.
extern "C" int xd_emu_has(const char* name) { return find(name) != nullptr; }

// Runs kernel `name` over grid g with blocks b; args[i] points at the i-th argument's value.
// Returns 0, or 1 for an unknown kernel.
extern "C" int xd_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                             unsigned bz, unsigned smem, void** args) {
    const Entry* e = find(name);
    if (!e) return 1;
    // One launch at a time, as on one stream of one GPU: __shared__ variables are statics
    // here, so two launches running at once (two host threads) would share them.
    static std::mutex one_at_a_time;
    std::lock_guard<std::mutex> hold(one_at_a_time);
    xd_emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), smem, [&] { e->run(args); });
    return 0;
}
