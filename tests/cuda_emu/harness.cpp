// Test driver for the CUDA kernels built by the host compiler under kernels/emu/cuda_emu.h.
// Usage: harness OP DIR ARGS...; reads its inputs from files in DIR, writes its outputs there
// (raw little-endian arrays), and exits non-zero with a message on any error. The Rust test
// tests/cuda_emu.rs prepares the inputs and checks the outputs against the CPU.
#include "emu/cuda_emu.h"

#include "mmvq.cu"
#include "matvec_float.cu"
#include "gemm.cu"
#include "get_rows.cu"
#include "norm.cu"
#include "rope.cu"
#include "elementwise.cu"
#include "router.cu"
#include "attention.cu"

#include <fstream>
#include <string>

namespace {

std::string g_dir;

[[noreturn]] void fail(const std::string& msg) {
    std::fprintf(stderr, "harness: %s\n", msg.c_str());
    std::exit(2);
}

template <typename T>
std::vector<T> load(const char* name) {
    std::ifstream f(g_dir + "/" + name, std::ios::binary);
    if (!f) fail(std::string("cannot read ") + name);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (bytes.size() % sizeof(T)) fail(std::string("odd size: ") + name);
    std::vector<T> v(bytes.size() / sizeof(T));
    std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
}

template <typename T>
void store(const char* name, const std::vector<T>& v) {
    std::ofstream f(g_dir + "/" + name, std::ios::binary);
    f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * sizeof(T)));
    if (!f) fail(std::string("cannot write ") + name);
}

using MatvecQ = void (*)(const uint8_t*, long long, const int*, const xd_q8_1*, int, int, float*, int, int);
using MatvecF = void (*)(const uint8_t*, long long, const int*, const float*, int, int, float*, int, int);
using GetRows = void (*)(const uint8_t*, const int*, float*, int);
using Gemm = void (*)(const uint8_t*, long long, const int*, const int*, int, const float*, int, float*, int, int, int);

struct TypeEntry {
    const char* name;
    int qk, bytes;
    MatvecQ mq;
    MatvecF mf;
    GetRows gr;
    Gemm gm;
};

const TypeEntry kTypes[] = {
    {"F32", 1, 4, nullptr, mul_mat_vec_f32, get_rows_f32, mul_mat_f32},
    {"F16", 1, 2, nullptr, mul_mat_vec_f16, get_rows_f16, mul_mat_f16},
    {"BF16", 1, 2, nullptr, mul_mat_vec_bf16, get_rows_bf16, mul_mat_bf16},
    {"Q4_0", 32, 18, mul_mat_vec_q4_0, nullptr, get_rows_q4_0, mul_mat_q4_0},
    {"Q4_1", 32, 20, mul_mat_vec_q4_1, nullptr, get_rows_q4_1, mul_mat_q4_1},
    {"Q5_0", 32, 22, mul_mat_vec_q5_0, nullptr, get_rows_q5_0, mul_mat_q5_0},
    {"Q5_1", 32, 24, mul_mat_vec_q5_1, nullptr, get_rows_q5_1, mul_mat_q5_1},
    {"Q8_0", 32, 34, mul_mat_vec_q8_0, nullptr, get_rows_q8_0, mul_mat_q8_0},
    {"Q2_K", 256, 84, mul_mat_vec_q2_k, nullptr, get_rows_q2_k, mul_mat_q2_k},
    {"Q3_K", 256, 110, mul_mat_vec_q3_k, nullptr, get_rows_q3_k, mul_mat_q3_k},
    {"Q4_K", 256, 144, mul_mat_vec_q4_k, nullptr, get_rows_q4_k, mul_mat_q4_k},
    {"Q5_K", 256, 176, mul_mat_vec_q5_k, nullptr, get_rows_q5_k, mul_mat_q5_k},
    {"Q6_K", 256, 210, mul_mat_vec_q6_k, nullptr, get_rows_q6_k, mul_mat_q6_k},
    {"IQ4_NL", 32, 18, mul_mat_vec_iq4_nl, nullptr, get_rows_iq4_nl, mul_mat_iq4_nl},
    {"IQ4_XS", 256, 136, mul_mat_vec_iq4_xs, nullptr, get_rows_iq4_xs, mul_mat_iq4_xs},
    {"IQ2_XXS", 256, 66, mul_mat_vec_iq2_xxs, nullptr, get_rows_iq2_xxs, mul_mat_iq2_xxs},
    {"IQ2_XS", 256, 74, mul_mat_vec_iq2_xs, nullptr, get_rows_iq2_xs, mul_mat_iq2_xs},
    {"IQ2_S", 256, 82, mul_mat_vec_iq2_s, nullptr, get_rows_iq2_s, mul_mat_iq2_s},
    {"IQ3_XXS", 256, 98, mul_mat_vec_iq3_xxs, nullptr, get_rows_iq3_xxs, mul_mat_iq3_xxs},
    {"IQ3_S", 256, 110, mul_mat_vec_iq3_s, nullptr, get_rows_iq3_s, mul_mat_iq3_s},
    {"IQ1_S", 256, 50, mul_mat_vec_iq1_s, nullptr, get_rows_iq1_s, mul_mat_iq1_s},
    {"IQ1_M", 256, 56, mul_mat_vec_iq1_m, nullptr, get_rows_iq1_m, mul_mat_iq1_m},
    {"MXFP4", 32, 17, mul_mat_vec_mxfp4, nullptr, get_rows_mxfp4, mul_mat_mxfp4},
};

// The fused matvecs (QKV, gate+up+SwiGLU) of a few types.
using Matvec3 = void (*)(const uint8_t*, const uint8_t*, const uint8_t*, float*, float*, float*, int, int, int,
                         const xd_q8_1*, int, int);
using MatvecSwiglu = void (*)(const uint8_t*, const uint8_t*, long long, const int*, const xd_q8_1*, int, int, float*,
                              int, int, xd_q8_1*, int*);
using MatvecMoe = void (*)(const uint8_t*, long long, const int*, const xd_q8_1*, int, int, const float*, float*, int,
                           int);
struct FusedEntry {
    const char* name;
    Matvec3 m3;
    MatvecSwiglu sw;
    MatvecMoe moe;
};
const FusedEntry kFused[] = {
    {"Q8_0", mul_mat_vec3_q8_0, mul_mat_vec_swiglu_q8_0, mul_mat_vec_moe_q8_0},
    {"Q4_K", mul_mat_vec3_q4_k, mul_mat_vec_swiglu_q4_k, mul_mat_vec_moe_q4_k},
    {"Q6_K", mul_mat_vec3_q6_k, mul_mat_vec_swiglu_q6_k, mul_mat_vec_moe_q6_k},
    {"IQ2_XXS", mul_mat_vec3_iq2_xxs, mul_mat_vec_swiglu_iq2_xxs, mul_mat_vec_moe_iq2_xxs},
    {"IQ3_S", mul_mat_vec3_iq3_s, mul_mat_vec_swiglu_iq3_s, mul_mat_vec_moe_iq3_s},
    {"IQ1_S", mul_mat_vec3_iq1_s, mul_mat_vec_swiglu_iq1_s, mul_mat_vec_moe_iq1_s},
};

const TypeEntry& type_named(const std::string& n) {
    for (const auto& t : kTypes)
        if (n == t.name) return t;
    fail("unknown type " + n);
}

const FusedEntry& fused_named(const std::string& n) {
    for (const auto& f : kFused)
        if (n == f.name) return f;
    fail("no fused kernels registered for type " + n);
}

int iarg(char** argv, int argc, int i) {
    if (i >= argc) fail("missing argument " + std::to_string(i));
    return std::stoi(argv[i]);
}
float farg(char** argv, int argc, int i) {
    if (i >= argc) fail("missing argument " + std::to_string(i));
    return std::stof(argv[i]);
}

// y[slot][row] for `slots` slots: slot j uses expert ids[j] (or expert 0 with no ids) and
// activation row j / x_group of x ([x_rows][ncols]).
void matvec(const TypeEntry& t, const std::vector<uint8_t>& w, const std::vector<int>* ids, int slots,
            const std::vector<float>& x, int x_rows, int x_group, int nrows, int ncols, std::vector<float>& y) {
    if (ncols % (t.qk == 1 ? 1 : t.qk) != 0) fail("ncols is not a whole number of blocks");
    if (x_group < 1 || (slots + x_group - 1) / x_group > x_rows) fail("x_group does not fit the activation rows");
    const long long row_bytes = (long long)(ncols / t.qk) * t.bytes;
    const long long expert_stride = row_bytes * nrows;
    y.assign((size_t)slots * nrows, 0.0f);
    const int* idp = ids ? ids->data() : nullptr;
    if (t.mf) {
        // The float matvecs: one row per warp, 4 warps (backend.rs MATVEC_ROWS).
        const dim3 grid((nrows + 3) / 4, slots), block(128);
        XD_LAUNCH(t.mf, grid, block, 0, w.data(), expert_stride, idp, x.data(), ncols, x_group, y.data(), ncols, nrows);
    } else {
        // The quantized ones: the block shape they were built with.
        const int rows_per_block = XD_MMVQ_WARPS * XD_MMVQ_ROWS;
        const dim3 grid((nrows + rows_per_block - 1) / rows_per_block, slots), block(32 * XD_MMVQ_WARPS);
        const int nb = ncols / 32 * x_rows;
        std::vector<xd_q8_1> xq((size_t)nb);
        XD_LAUNCH(quantize_q8_1, dim3((nb + 3) / 4), dim3(128), 0, x.data(), xq.data(), nb * 32);
        XD_LAUNCH(t.mq, grid, block, 0, w.data(), expert_stride, idp, xq.data(), ncols / 32, x_group, y.data(), ncols,
                  nrows);
        store("xq.bin", xq);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) fail("usage: harness OP DIR ARGS...");
    const std::string op = argv[1];
    g_dir = argv[2];
    if (op == "matvec") {  // TYPE NROWS NCOLS: w.bin, x.f32 -> y.f32 (+ xq.bin)
        const TypeEntry& t = type_named(argv[3]);
        const int nrows = iarg(argv, argc, 4), ncols = iarg(argv, argc, 5);
        auto w = load<uint8_t>("w.bin");
        auto x = load<float>("x.f32");
        if ((long long)w.size() != (long long)(ncols / t.qk) * t.bytes * nrows) fail("w.bin size");
        if ((int)x.size() != ncols) fail("x.f32 size");
        std::vector<float> y;
        matvec(t, w, nullptr, 1, x, 1, 1, nrows, ncols, y);
        store("y.f32", y);
    } else if (op == "fused") {
        // TYPE N0 N1 N2 NCOLS SLOTS: w0.bin, w1.bin, w2.bin (N_i rows), x.f32 (SLOTS rows) ->
        // y3.f32 (mul_mat_vec3: [slot][N0], then [slot][N1], [slot][N2]), yp.f32 (the same by
        // three plain matvecs), ys.f32 (mul_mat_vec_swiglu with gate W0, up the first N0 rows of
        // W1), yu.f32 (the swiglu kernel on the plain matvecs' outputs).
        const TypeEntry& t = type_named(argv[3]);
        const FusedEntry& fe = fused_named(argv[3]);
        const int n[3] = {iarg(argv, argc, 4), iarg(argv, argc, 5), iarg(argv, argc, 6)};
        const int ncols = iarg(argv, argc, 7), slots = iarg(argv, argc, 8);
        if (n[1] < n[0]) fail("N1 < N0");
        std::vector<uint8_t> w[3] = {load<uint8_t>("w0.bin"), load<uint8_t>("w1.bin"), load<uint8_t>("w2.bin")};
        const long long row_bytes = (long long)(ncols / t.qk) * t.bytes;
        for (int i = 0; i < 3; ++i)
            if ((long long)w[i].size() != row_bytes * n[i]) fail("w" + std::to_string(i) + ".bin size");
        auto x = load<float>("x.f32");
        if ((long long)x.size() != (long long)ncols * slots) fail("x.f32 size");
        const int nb = ncols / 32 * slots;
        std::vector<xd_q8_1> xq((size_t)nb);
        XD_LAUNCH(quantize_q8_1, dim3((nb + 3) / 4), dim3(128), 0, x.data(), xq.data(), nb * 32);
        const int rpb = XD_MMVQ_WARPS * XD_MMVQ_ROWS;
        const dim3 block(32 * XD_MMVQ_WARPS);
        std::vector<float> y3, yp;
        std::vector<float> o[3];
        for (int i = 0; i < 3; ++i) {
            o[i].assign((size_t)slots * n[i], -1.0f);
            std::vector<float> p((size_t)slots * n[i], -2.0f);
            XD_LAUNCH(t.mq, dim3((n[i] + rpb - 1) / rpb, slots), block, 0, w[i].data(), 0LL, (const int*)nullptr,
                      xq.data(), ncols / 32, 1, p.data(), ncols, n[i]);
            yp.insert(yp.end(), p.begin(), p.end());
        }
        XD_LAUNCH(fe.m3, dim3((n[0] + n[1] + n[2] + rpb - 1) / rpb, slots), block, 0, w[0].data(), w[1].data(),
                  w[2].data(), o[0].data(), o[1].data(), o[2].data(), n[0], n[1], n[2], xq.data(), ncols / 32, ncols);
        for (int i = 0; i < 3; ++i) y3.insert(y3.end(), o[i].begin(), o[i].end());
        std::vector<float> ys((size_t)slots * n[0], -1.0f);
        // With N0 a multiple of 32 the kernel also leaves the q8_1 blocks of its output.
        const bool with_q = n[0] % 32 == 0;
        std::vector<xd_q8_1> ysq(with_q ? (size_t)slots * n[0] / 32 : 0);
        std::vector<int> counts(with_q ? (size_t)slots * n[0] / 32 : 0, 0);
        XD_LAUNCH(fe.sw, dim3((n[0] + rpb - 1) / rpb, slots), block, 0, w[0].data(), w[1].data(), 0LL,
                  (const int*)nullptr, xq.data(), ncols / 32, 1, ys.data(), ncols, n[0],
                  with_q ? ysq.data() : nullptr, with_q ? counts.data() : nullptr);
        if (with_q) {
            for (int c : counts)
                if (c != 0) fail("the fused gate+up left a row counter at " + std::to_string(c));
            std::vector<xd_q8_1> want(ysq.size());
            const int nq = int(ys.size());
            XD_LAUNCH(quantize_q8_1, dim3((nq / 32 + 3) / 4), dim3(128), 0, ys.data(), want.data(), nq);
            if (std::memcmp(want.data(), ysq.data(), want.size() * sizeof(xd_q8_1)) != 0)
                fail("the fused gate+up's q8_1 blocks differ from quantize_q8_1 of its output");
        }
        // The unfused path: plain matvecs of W0 and of W1's first N0 rows, then swiglu.
        std::vector<float> g(yp.begin(), yp.begin() + (long long)slots * n[0]), u((size_t)slots * n[0]);
        for (int s2 = 0; s2 < slots; ++s2)
            for (int r = 0; r < n[0]; ++r) u[(size_t)s2 * n[0] + r] = yp[(size_t)slots * n[0] + (size_t)s2 * n[1] + r];
        std::vector<float> yu(g.size());
        const int ng = int(g.size());
        XD_LAUNCH(swiglu, dim3((ng + 127) / 128), dim3(128), 0, g.data(), u.data(), yu.data(), ng);
        store("y3.f32", y3);
        store("yp.f32", yp);
        store("ys.f32", ys);
        store("yu.f32", yu);
    } else if (op == "moe_down") {
        // TYPE NROWS NCOLS N_EXPERT N_TOK K: w.bin (N_EXPERT matrices), ids.i32 and wts.f32
        // (N_TOK * K), x.f32 (N_TOK * K rows) -> y.f32 (mul_mat_vec_moe: the k experts' down
        // rows weighted and summed), yr.f32 (the same by the MoE matvec, then moe_combine).
        const TypeEntry& t = type_named(argv[3]);
        const FusedEntry& fe = fused_named(argv[3]);
        const int nrows = iarg(argv, argc, 4), ncols = iarg(argv, argc, 5), n_expert = iarg(argv, argc, 6);
        const int nt = iarg(argv, argc, 7), k = iarg(argv, argc, 8);
        auto w = load<uint8_t>("w.bin");
        auto ids = load<int>("ids.i32");
        auto wts = load<float>("wts.f32");
        auto x = load<float>("x.f32");
        const long long stride = (long long)(ncols / t.qk) * t.bytes * nrows;
        if ((long long)w.size() != stride * n_expert) fail("w.bin size");
        if ((int)ids.size() != nt * k || (int)wts.size() != nt * k) fail("ids/wts size");
        for (int id : ids)
            if (id < 0 || id >= n_expert) fail("expert id out of range");
        if ((long long)x.size() != (long long)ncols * nt * k) fail("x.f32 size");
        const int nb = ncols / 32 * nt * k;
        std::vector<xd_q8_1> xq((size_t)nb);
        XD_LAUNCH(quantize_q8_1, dim3((nb + 3) / 4), dim3(128), 0, x.data(), xq.data(), nb * 32);
        const int rpb = XD_MMVQ_WARPS * XD_MMVQ_ROWS;
        std::vector<float> y((size_t)nt * nrows, -1.0f), e((size_t)nt * k * nrows, -1.0f), yr((size_t)nt * nrows);
        XD_LAUNCH(fe.moe, dim3((nrows + rpb - 1) / rpb, nt), dim3(32 * XD_MMVQ_WARPS), 0, w.data(), stride, ids.data(),
                  xq.data(), ncols / 32, k, wts.data(), y.data(), ncols, nrows);
        XD_LAUNCH(t.mq, dim3((nrows + rpb - 1) / rpb, nt * k), dim3(32 * XD_MMVQ_WARPS), 0, w.data(), stride, ids.data(),
                  xq.data(), ncols / 32, 1, e.data(), ncols, nrows);
        const int n = nt * nrows;
        XD_LAUNCH(moe_combine, dim3((n + 63) / 64), dim3(64), 0, yr.data(), e.data(), wts.data(), k, nrows, nt);
        store("y.f32", y);
        store("yr.f32", yr);
    } else if (op == "moe") {  // TYPE NROWS NCOLS N_EXPERT SLOTS X_ROWS X_GROUP: w.bin, ids.i32, x.f32 -> y.f32
        const TypeEntry& t = type_named(argv[3]);
        const int nrows = iarg(argv, argc, 4), ncols = iarg(argv, argc, 5), n_expert = iarg(argv, argc, 6);
        const int k = iarg(argv, argc, 7), x_rows = iarg(argv, argc, 8), x_group = iarg(argv, argc, 9);
        auto w = load<uint8_t>("w.bin");
        auto ids = load<int>("ids.i32");
        auto x = load<float>("x.f32");
        if ((long long)w.size() != (long long)(ncols / t.qk) * t.bytes * nrows * n_expert) fail("w.bin size");
        if ((int)ids.size() != k) fail("ids size");
        for (int id : ids)
            if (id < 0 || id >= n_expert) fail("expert id out of range");
        if ((int)x.size() != ncols * x_rows) fail("x.f32 size");
        std::vector<float> y;
        matvec(t, w, &ids, k, x, x_rows, x_group, nrows, ncols, y);
        store("y.f32", y);
    } else if (op == "gemm") {  // TYPE NROWS NCOLS N_TOK: w.bin, x.f32 -> y.f32 (dense prefill GEMM)
        const TypeEntry& t = type_named(argv[3]);
        const int nrows = iarg(argv, argc, 4), ncols = iarg(argv, argc, 5), n_tok = iarg(argv, argc, 6);
        auto w = load<uint8_t>("w.bin");
        auto x = load<float>("x.f32");
        if (ncols % 32 || (long long)w.size() != (long long)(ncols / t.qk) * t.bytes * nrows) fail("w.bin size");
        if ((long long)x.size() != (long long)ncols * n_tok) fail("x.f32 size");
        std::vector<float> y((size_t)n_tok * nrows, -1.0f);
        XD_LAUNCH(t.gm, dim3((nrows + XD_GEMM_BM - 1) / XD_GEMM_BM, (n_tok + XD_GEMM_BN - 1) / XD_GEMM_BN, 1), dim3(XD_GEMM_THREADS), 0, w.data(), 0LL, nullptr, nullptr,
                  n_tok, x.data(), 1, y.data(), ncols, nrows, n_tok);
        store("y.f32", y);
    } else if (op == "moe_gemm") {  // TYPE NROWS NCOLS N_EXPERT N_TOK K X_GROUP: w.bin, ids.i32, x.f32 -> y.f32, counts.i32
        // Slots (n_tok * k of them, ids[slot] their experts) grouped by moe_group, then one
        // grouped GEMM launch: y[slot] = W_ids[slot] x[slot / x_group].
        const TypeEntry& t = type_named(argv[3]);
        const int nrows = iarg(argv, argc, 4), ncols = iarg(argv, argc, 5), n_expert = iarg(argv, argc, 6);
        const int n_tok = iarg(argv, argc, 7), k = iarg(argv, argc, 8), x_group = iarg(argv, argc, 9);
        auto w = load<uint8_t>("w.bin");
        auto ids = load<int>("ids.i32");
        auto x = load<float>("x.f32");
        const long long expert_stride = (long long)(ncols / t.qk) * t.bytes * nrows;
        if (ncols % 32 || (long long)w.size() != expert_stride * n_expert) fail("w.bin size");
        if ((long long)ids.size() != (long long)n_tok * k) fail("ids size");
        if ((long long)x.size() != (long long)ncols * ((n_tok * k + x_group - 1) / x_group)) fail("x.f32 size");
        std::vector<int> counts(n_expert), lists((size_t)n_expert * n_tok);
        XD_LAUNCH(moe_group, dim3(1), dim3(256), 0, ids.data(), n_tok * k, n_expert, n_tok, counts.data(), lists.data());
        std::vector<float> y((size_t)n_tok * k * nrows, -1.0f);
        XD_LAUNCH(t.gm, dim3((nrows + XD_GEMM_BM - 1) / XD_GEMM_BM, (n_tok + XD_GEMM_BN - 1) / XD_GEMM_BN, n_expert), dim3(XD_GEMM_THREADS), 0, w.data(), expert_stride,
                  counts.data(), lists.data(), n_tok, x.data(), x_group, y.data(), ncols, nrows, n_tok);
        store("y.f32", y);
        store("counts.i32", counts);
    } else if (op == "get_rows") {  // TYPE NCOLS: table.bin, ids.i32 -> out.f32
        const TypeEntry& t = type_named(argv[3]);
        const int ncols = iarg(argv, argc, 4);
        auto table = load<uint8_t>("table.bin");
        auto ids = load<int>("ids.i32");
        std::vector<float> out(ids.size() * (size_t)ncols);
        XD_LAUNCH(t.gr, dim3((unsigned)ids.size()), dim3(64), 0, table.data(), ids.data(), out.data(), ncols);
        store("out.f32", out);
    } else if (op == "rms_norm") {  // ROWS N EPS BLOCK: x.f32, w.f32 -> y.f32
        const int rows = iarg(argv, argc, 3), n = iarg(argv, argc, 4);
        const float eps = farg(argv, argc, 5);
        const int threads = iarg(argv, argc, 6);
        auto x = load<float>("x.f32");
        auto w = load<float>("w.f32");
        std::vector<float> y((size_t)rows * n);
        XD_LAUNCH(rms_norm, dim3(rows), dim3(threads), 0, x.data(), w.data(), y.data(), n, eps);
        store("y.f32", y);
    } else if (op == "rope") {  // N_TOKENS N_HEADS HEAD_DIM N_ROT BASE SCALE FACTORS(0/1): x.f32, pos.i32 [, ff.f32] -> y.f32
        const int nt = iarg(argv, argc, 3), nh = iarg(argv, argc, 4), hd = iarg(argv, argc, 5);
        const int nr = iarg(argv, argc, 6);
        const float base = farg(argv, argc, 7), fscale = farg(argv, argc, 8);
        const bool with_ff = iarg(argv, argc, 9) != 0;
        auto x = load<float>("x.f32");
        auto pos = load<int>("pos.i32");
        std::vector<float> ff = with_ff ? load<float>("ff.f32") : std::vector<float>();
        XD_LAUNCH(rope_norm, dim3(nt, nh), dim3(32), 0, x.data(), pos.data(), nh, hd, nr, base, fscale,
                  with_ff ? ff.data() : nullptr);
        store("y.f32", x);
    } else if (op == "swiglu") {  // N: g.f32, u.f32 -> y.f32
        const int n = iarg(argv, argc, 3);
        auto g = load<float>("g.f32");
        auto u = load<float>("u.f32");
        std::vector<float> y(n);
        XD_LAUNCH(swiglu, dim3((n + 127) / 128), dim3(128), 0, g.data(), u.data(), y.data(), n);
        store("y.f32", y);
    } else if (op == "combine") {  // K N N_TOKENS: x.f32, e.f32, w.f32 -> y.f32 (x + mixture of e)
        const int k = iarg(argv, argc, 3), n = iarg(argv, argc, 4), nt = iarg(argv, argc, 5);
        auto x = load<float>("x.f32");
        auto e = load<float>("e.f32");
        auto w = load<float>("w.f32");
        std::vector<float> mix((size_t)nt * n);
        XD_LAUNCH(moe_combine, dim3((nt * n + 63) / 64), dim3(64), 0, mix.data(), e.data(), w.data(), k, n, nt);
        XD_LAUNCH(add_f32, dim3((nt * n + 63) / 64), dim3(64), 0, x.data(), mix.data(), nt * n);
        store("y.f32", x);
    } else if (op == "router") {  // N_TOKENS N_EXPERT K: logits.f32 -> ids.i32, weights.f32, probs.f32
        const int nt = iarg(argv, argc, 3), ne = iarg(argv, argc, 4), k = iarg(argv, argc, 5);
        auto logits = load<float>("logits.f32");
        std::vector<int> ids((size_t)nt * k);
        std::vector<float> weights((size_t)nt * k), probs((size_t)nt * ne);
        XD_LAUNCH(moe_router, dim3((nt + 1) / 2), dim3(64), 0, logits.data(), nt, ne, k, ids.data(),
                  weights.data(), probs.data());
        store("ids.i32", ids);
        store("weights.f32", weights);
        store("probs.f32", probs);
    } else if (op == "attn") {
        // N_TOKENS N_HEADS N_KV HEAD_DIM SPLIT_LEN N_SLOTS SCALE KV (0 f32, 1 f16, 2 q8_0):
        // knew.f32 / vnew.f32 [n_store][n_kv * hd] stored at slots.i32 by kv_store; then
        // q.f32 [n_tokens][n_heads * hd], tables.i32, table_off.i32, n_kv.i32 -> out.f32
        const int nt = iarg(argv, argc, 3), nh = iarg(argv, argc, 4), nkv = iarg(argv, argc, 5);
        const int hd = iarg(argv, argc, 6), split = iarg(argv, argc, 7), n_slots = iarg(argv, argc, 8);
        const float scale = farg(argv, argc, 9);
        const int kv_ty = iarg(argv, argc, 10);
        auto knew = load<float>("knew.f32");
        auto vnew = load<float>("vnew.f32");
        auto slots = load<int>("slots.i32");
        auto q = load<float>("q.f32");
        auto tables = load<int>("tables.i32");
        auto table_off = load<int>("table_off.i32");
        auto n_kv = load<int>("n_kv.i32");
        const int row = nkv * hd;
        const int n_store = int(slots.size());
        if ((int)knew.size() != n_store * row || vnew.size() != knew.size()) fail("knew/vnew size");
        for (int sl : slots)
            if (sl < 0 || sl >= n_slots) fail("slot out of range");
        std::vector<float> kc((size_t)n_slots * row, 0.0f), vc(kc.size(), 0.0f);
        std::vector<uint16_t> kh(kc.size(), 0), vh(kc.size(), 0);
        std::vector<xd_kv_q8_0> kq(kc.size() / 32), vq(kc.size() / 32);
        const long long total = (long long)n_store * row;
        const dim3 sg(unsigned((total + 127) / 128)), sb(128);
        if (kv_ty == 1)
            XD_LAUNCH(kv_store_f16, sg, sb, 0, knew.data(), vnew.data(), kh.data(), vh.data(), slots.data(), n_store, row);
        else if (kv_ty == 2)
            XD_LAUNCH(kv_store_q8_0, sg, sb, 0, knew.data(), vnew.data(), kq.data(), vq.data(), slots.data(), n_store, row);
        else
            XD_LAUNCH(kv_store_f32, sg, sb, 0, knew.data(), vnew.data(), kc.data(), vc.data(), slots.data(), n_store, row);
        int max_len = 0;
        for (int n : n_kv) max_len = std::max(max_len, n);
        const int n_splits = (max_len + split - 1) / split;
        std::vector<float> ml((size_t)nt * nh * n_splits * 2), acc((size_t)nt * nh * n_splits * hd);
        std::vector<int> counts((size_t)nt * nh, 0);
        std::vector<float> out((size_t)nt * nh * hd);
        std::vector<xd_q8_1> out_q(out.size() / 32);
        const dim3 ag(nh, n_splits, nt), ab(32 * XD_ATTN_WARPS);
        // The kernel of this head_dim and cache type.
#define XD_ATTN_CASE(d)                                                                                       \
    case d:                                                                                                   \
        if (kv_ty == 1)                                                                                       \
            XD_LAUNCH(attn_f16_##d, ag, ab, 0, q.data(), kh.data(), vh.data(), tables.data(), table_off.data(), \
                      n_kv.data(), nh, nkv, split, scale, ml.data(), acc.data(), counts.data(), out.data(),   \
                      out_q.data());                                                                          \
        else if (kv_ty == 2)                                                                                  \
            XD_LAUNCH(attn_q8_0_##d, ag, ab, 0, q.data(), kq.data(), vq.data(), tables.data(), table_off.data(), \
                      n_kv.data(), nh, nkv, split, scale, ml.data(), acc.data(), counts.data(), out.data(),   \
                      out_q.data());                                                                          \
        else                                                                                                  \
            XD_LAUNCH(attn_f32_##d, ag, ab, 0, q.data(), kc.data(), vc.data(), tables.data(), table_off.data(), \
                      n_kv.data(), nh, nkv, split, scale, ml.data(), acc.data(), counts.data(), out.data(),   \
                      out_q.data());                                                                          \
        break;
        switch (hd) {
            XD_ATTN_CASE(32)
            XD_ATTN_CASE(64)
            XD_ATTN_CASE(96)
            XD_ATTN_CASE(128)
            XD_ATTN_CASE(160)
            XD_ATTN_CASE(192)
            XD_ATTN_CASE(224)
            XD_ATTN_CASE(256)
            default:
                fail("head_dim " + std::to_string(hd));
        }
#undef XD_ATTN_CASE
        // The merge leaves its counters as it found them, for the next launch.
        for (int c : counts)
            if (c != 0) fail("attention left a split counter at " + std::to_string(c));
        // The q8_1 blocks beside the output are quantize_q8_1's of it.
        std::vector<xd_q8_1> want_q(out_q.size());
        const int nq = int(out.size());
        XD_LAUNCH(quantize_q8_1, dim3((nq / 32 + 3) / 4), dim3(128), 0, out.data(), want_q.data(), nq);
        if (std::memcmp(want_q.data(), out_q.data(), out_q.size() * sizeof(xd_q8_1)) != 0)
            fail("attention's q8_1 blocks differ from quantize_q8_1 of its output");
        store("out.f32", out);
    } else if (op == "f2h") {  // x.f32 -> h.u16
        auto x = load<float>("x.f32");
        std::vector<uint16_t> h(x.size());
        const int n = int(x.size());
        XD_LAUNCH(convert_f32_f16, dim3((n + 255) / 256), dim3(256), 0, x.data(), h.data(), n);
        store("h.u16", h);
    } else {
        fail("unknown op " + op);
    }
    return 0;
}
