//! The CUDA backend's host code end to end, on the CUDA emulator: tiny-mixtral (2 layers,
//! 8 experts, top-2; Q8_0, F16, BF16 and Q4_K_M files; BF16 regenerated, see
//! tests/engine_common/regen.rs) through the engine's forward pass with `CudaBackend<EmuDevice>`, against
//! the CPU backend on the same weights and against llama.cpp's logits and expert choices
//! (tests/data/tiny-mixtral), the prompt through the matvecs and (F16, Q4_K_M) through the
//! prefill GEMMs. Then the GEMM of every weight type, and the MoE feed-forward through the
//! grouped GEMMs, against the CPU backend's matmul and ffn. Everything but the driver calls runs
//! as on a GPU: the weights are uploaded in their GGUF types, every op is a launch of the
//! kernels in kernels/.

mod emu_lib;
mod engine_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use xdan::backend::cpu::CpuBackend;
use xdan::backend::cuda::kernels::{kernel_names, PROGRAMS};
use xdan::backend::cuda::backend::GEMM_MIN_ROWS;
use xdan::backend::cuda::{CudaBackend, EmuDevice};
use xdan::backend::{Backend, KvLayout, KV_BLOCK};
use xdan::gguf::Gguf;
use xdan::model::forward::{forward, Batch, Scratch};
use xdan::model::{HParams, Weights};
use xdan::quant::GgmlType;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn build_emulator() -> PathBuf {
    emu_lib::emulator_lib("cuda-emu/lib")
}

fn f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}
fn i32s(path: &Path) -> Vec<i32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Logits of every prompt position and the chosen experts per layer (token-major, k each).
fn run<B: Backend>(be: &B, g: &Arc<Gguf>, hp: &HParams, kv_ty: GgmlType, tokens: &[u32]) -> (Vec<f32>, Vec<Vec<u32>>) {
    let w = Weights::load(be, g, hp, &mut |_| true).unwrap();
    let n = tokens.len();
    let n_blocks = n.div_ceil(KV_BLOCK) + 2;
    let layout = KvLayout { n_layer: hp.n_layer, n_slots: n_blocks * KV_BLOCK, n_embd_kv: hp.n_embd_kv(), ty: kv_ty };
    let mut kv = be.kv_new(&layout).unwrap();
    // The sequence's blocks out of order, as a paged cache hands them out.
    let table: Vec<u32> = (0..n.div_ceil(KV_BLOCK)).map(|b| (n_blocks - 1 - b) as u32).collect();
    let pos: Vec<u32> = (0..n as u32).collect();
    let slots: Vec<u32> = pos.iter().map(|&p| table[p as usize / KV_BLOCK] * KV_BLOCK as u32 + p % KV_BLOCK as u32).collect();
    let tok_seq = vec![0u32; n];
    let tables: [&[u32]; 1] = [&table];
    let out_rows: Vec<u32> = (0..n as u32).collect();
    let b = Batch { tokens, pos: &pos, slots: &slots, tok_seq: &tok_seq, tables: &tables, out_rows: &out_rows };
    let mut s = Scratch::new(be);
    let mut routes = vec![Vec::new(); hp.n_layer];
    let mut logits = vec![0f32; n * hp.n_vocab];
    forward(be, &w, hp, &hp.rope, &mut kv, &b, &mut s, &mut || true, Some(&mut routes), &mut logits).unwrap();
    (logits, routes)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

/// `gemm_min_rows`: 1 sends the prompt through the prefill GEMMs (gemm.cu), the default
/// (32, more than the prompt) through the matvecs.
fn check_variant(dev: &Arc<EmuDevice>, variant: &str, kv_ty: GgmlType, gemm_min_rows: usize, tol: f32) -> String {
    let dir = Path::new(ROOT).join("tests/data/tiny-mixtral").join(variant);
    let g = Arc::new(Gguf::open(engine_common::tiny_mixtral(variant), true).unwrap());
    let hp = HParams::from_gguf(&g).unwrap();
    let tokens = [1u32, 832, 165, 251, 189, 895, 149]; // prompt p1 of the fixtures
    let n = tokens.len();
    let nv = hp.n_vocab;
    let cuda = CudaBackend::new(dev.clone()).with_gemm_min_rows(gemm_min_rows);
    let (lc, rc) = run(&cuda, &g, &hp, kv_ty, &tokens);
    let (lp, rp) = run(&CpuBackend, &g, &hp, kv_ty, &tokens);
    let llama = f32s(&dir.join("logits_p1.bin"));
    let order = i32s(&dir.join("routing_order_p1.bin")); // [layer][token][8]
    assert!(lc.iter().all(|v| v.is_finite()), "{variant}: non-finite logits on the emulated GPU");

    // Expert choices: the emulated GPU picks what the CPU backend picks, and what llama.cpp picks.
    let k = hp.n_expert_used;
    assert_eq!(rc, rp, "{variant}: experts chosen on the emulated GPU differ from the CPU backend's");
    let mut agree = 0;
    for l in 0..hp.n_layer {
        for t in 0..n {
            let mut ours: Vec<i32> = rc[l][t * k..(t + 1) * k].iter().map(|&e| e as i32).collect();
            let mut theirs: Vec<i32> = order[(l * n + t) * 8..][..k].to_vec();
            ours.sort();
            theirs.sort();
            agree += (ours == theirs) as usize;
        }
    }
    assert_eq!(agree, hp.n_layer * n, "{variant}: expert choices differ from llama.cpp's");

    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let d_cpu = max_diff(&lc, &lp);
    let d_llama = max_diff(&lc, &llama);
    let d_cpu_llama = max_diff(&lp, &llama);
    for t in 0..n {
        let (a, b) = (argmax(&lc[t * nv..(t + 1) * nv]), argmax(&llama[t * nv..(t + 1) * nv]));
        assert_eq!(a, b, "{variant} position {t}: argmax {a} on the emulated GPU, {b} in llama.cpp");
    }
    assert!(d_cpu < tol, "{variant}: logits differ from the CPU backend's by {d_cpu} (> {tol})");
    assert!(d_llama < tol, "{variant}: logits differ from llama.cpp's by {d_llama} (> {tol})");
    let path = if gemm_min_rows <= n { "GEMM" } else { "matvec" };
    format!(
        "{variant} (KV {kv_ty}, {path}): 7-token prompt, experts = CPU = llama.cpp at {agree}/{agree} (layer, token), \
         argmax = llama.cpp at 7/7; max |logit diff| vs CPU backend {d_cpu:.1e}, vs llama.cpp {d_llama:.1e} \
         (CPU backend vs llama.cpp {d_cpu_llama:.1e})"
    )
}

#[test]
fn emulated_cuda_backend_runs_tiny_mixtral() {
    let lib = build_emulator();
    let dev = Arc::new(EmuDevice::open(lib.to_str().unwrap()).unwrap());
    // Every kernel of the embedded sources is launchable by name.
    for p in PROGRAMS {
        for k in kernel_names(p) {
            assert!(dev.has(&k), "kernel {k} of {} is not registered in kernels/emu/launch.cpp", p.name);
        }
    }
    // Q8_0: both sides quantize activations as ggml does (q8_0 integers, f16 scales), so what
    // is left is float summation order. F16: f16 KV cache on both sides. Q4_K_M (Q4_K, Q5_K,
    // Q6_K, Q8_0 weights): for K-quants the CPU quantizes activations to q8_K (256 values, f32
    // scale) and the GPU to q8_1 (32 values, f16 scale), as llama.cpp's CPU and CUDA backends
    // do; that moves logits (std 1) by about 0.06 here, with the same experts and argmax.
    // BF16: both backends multiply the exact BF16 weights with f32 activations; llama.cpp
    // rounds the activations to BF16 (2^-9 relative), which its own BF16 references show as up
    // to 0.02 of logit difference (FIXTURES.md), hence the wider bound.
    for (variant, kv, tol) in
        [("Q8_0", GgmlType::F32, 1e-3), ("F16", GgmlType::F16, 1e-2), ("BF16", GgmlType::F32, 5e-2), ("Q4_K_M", GgmlType::F32, 0.15)]
    {
        let line = check_variant(&dev, variant, kv, GEMM_MIN_ROWS, tol);
        println!("{line}");
    }
    // The prompt through the prefill GEMMs (weights and activations rounded to f16, f32 sums):
    // F16 differs from the CPU by f16 activations (2^-11 relative) where the matvec kept f32,
    // about 2e-3 on these logits; Q4_K_M (which holds Q4_K, Q5_K, Q6_K and Q8_0 weights, so
    // stands for the Q8_0 file too) by the CPU's 8-bit activations, as with the matvecs.
    for (variant, kv, tol) in [("F16", GgmlType::F16, 1e-2), ("Q4_K_M", GgmlType::F32, 0.15)] {
        let line = check_variant(&dev, variant, kv, 1, tol);
        println!("{line}");
    }
}

// ---- the prefill GEMM against the CPU backend --------------------------------------------------

/// Deterministic pseudo-random numbers (a 64-bit LCG), uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Values whose magnitude changes from one 32-block to the next, as hidden states do.
    fn acts(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|i| self.next() * (0.2 + 2.0 * ((i / 32) % 5) as f32)).collect()
    }
}

const GEMM_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
    GgmlType::MXFP4,
];

/// `n` weights of type `ty` as (raw bytes, their values): blocks of the real-weight fixtures
/// (tests/data/quant, whose .f32 twins are llama.cpp's dequantization) taken cyclically with a
/// period of one block less than the fixture holds, so that neighbouring matrices (experts) of
/// a stack differ. F32: pseudo-random values.
fn weights(ty: GgmlType, n: usize, rng: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    if ty == GgmlType::F32 {
        let w: Vec<f32> = (0..n).map(|_| 0.1 * rng.next()).collect();
        return (w.iter().flat_map(|x| x.to_le_bytes()).collect(), w);
    }
    let dir = Path::new(ROOT).join("tests/data/quant");
    let bin = std::fs::read(dir.join(format!("{ty}_real.bin"))).unwrap();
    let f = f32s(&dir.join(format!("{ty}_real.f32")));
    let qk = if matches!(ty, GgmlType::F16 | GgmlType::BF16) { 32 } else { ty.block_elems() };
    let bb = bin.len() / (f.len() / qk);
    let period = f.len() / qk - 1;
    let (mut b, mut v) = (Vec::new(), Vec::new());
    for blk in 0..n / qk {
        let src = blk % period;
        b.extend_from_slice(&bin[src * bb..][..bb]);
        v.extend_from_slice(&f[src * qk..][..qk]);
    }
    (b, v)
}

/// A GGUF in memory holding `tensors` (name, dims in GGML order, type, bytes).
fn gguf_of(tensors: Vec<(&str, Vec<u64>, GgmlType, Vec<u8>)>) -> Arc<Gguf> {
    let mut w = xdan::gguf::GgufWriter::new();
    for (name, dims, ty, data) in tensors {
        w.add_tensor(name, &dims, ty, data).unwrap();
    }
    Arc::new(Gguf::from_bytes(w.to_bytes()).unwrap())
}

/// The rows of `a` (n rows) on the host.
fn rows<B: Backend>(be: &B, a: &B::Act, n: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * cols];
    for r in 0..n {
        be.act_read_row(a, r, &mut out[r * cols..(r + 1) * cols]).unwrap();
    }
    out
}

/// `x` (t rows of k, held in `g` as the F32 table "x") as an activation of `be`.
fn input<B: Backend>(be: &B, g: &Arc<Gguf>, t: usize) -> B::Act {
    let table = be.weight(g, g.tensor("x").unwrap()).unwrap();
    let mut x = be.act_new();
    be.embed(&table, &(0..t as u32).collect::<Vec<_>>(), &mut x).unwrap();
    x
}

/// Bound of |GEMM - CPU| for one output: the CPU rounds activations to 8 bits for quantized
/// weights (q8_0 per 32 values or q8_K per 256; either way at most amax/254 per value over a
/// 256-value block, +20% for q8_0's f16 scale), the GEMM rounds weights and activations to f16
/// (2^-11 relative each, 2^-25 absolute for subnormals), both sum in f32.
fn gemm_tol(ty: GgmlType, w: &[f32], x: &[f32]) -> f64 {
    let mut mag = 0f64;
    let mut q8 = 0f64;
    let mut abs = 0f64;
    for (wb, xb) in w.chunks(256).zip(x.chunks(256)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let sw: f64 = wb.iter().map(|v| v.abs() as f64).sum();
        q8 += amax / 254.0 * sw;
        mag += wb.iter().zip(xb).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>();
        abs += xb.iter().map(|v| v.abs() as f64).sum::<f64>() + sw;
    }
    let quantized = !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    (if quantized { 1.2 * q8 } else { 0.0 }) + 2f64.powi(-10) * mag + 2f64.powi(-24) * abs + 1e-6 * mag + 1e-7
}

/// Every weight type: matmul of 72 rows (a partial 64-row tile) by 512 columns on t = 1, 7, 33
/// tokens (and 260: two token tiles, one type), the GEMM on the emulated GPU against the CPU
/// backend; and two weights sharing one input (as Q, K, V do).
fn check_gemm_types(dev: &Arc<EmuDevice>) {
    let cuda = CudaBackend::new(dev.clone()).with_gemm_min_rows(1);
    let (nr, k) = (72usize, 512usize);
    let mut rng = Rng(0x6e33);
    for &ty in GEMM_TYPES {
        let (wb, wf) = weights(ty, nr * k, &mut rng);
        let (w2b, w2f) = weights(GgmlType::Q8_0, 40 * k, &mut rng);
        let tmax = if ty == GgmlType::Q4_K { 260 } else { 33 };
        let x = rng.acts(tmax * k);
        let g = gguf_of(vec![
            ("w", vec![k as u64, nr as u64], ty, wb),
            ("w2", vec![k as u64, 40], GgmlType::Q8_0, w2b),
            ("x", vec![k as u64, tmax as u64], GgmlType::F32, x.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ]);
        let mut worst = 0f64;
        for t in [1usize, 7, 33, 260].into_iter().filter(|&t| t <= tmax) {
            let mut got = Vec::new();
            let cpu_out = {
                let be = &CpuBackend;
                let (w, w2) = (be.weight(&g, g.tensor("w").unwrap()).unwrap(), be.weight(&g, g.tensor("w2").unwrap()).unwrap());
                let xa = input(be, &g, t);
                let (mut o, mut o2) = (be.act_new(), be.act_new());
                be.matmul(&xa, &[&w, &w2], &mut [&mut o, &mut o2]).unwrap();
                (rows(be, &o, t, nr), rows(be, &o2, t, 40))
            };
            {
                let be = &cuda;
                let (w, w2) = (be.weight(&g, g.tensor("w").unwrap()).unwrap(), be.weight(&g, g.tensor("w2").unwrap()).unwrap());
                let xa = input(be, &g, t);
                let (mut o, mut o2) = (be.act_new(), be.act_new());
                be.matmul(&xa, &[&w, &w2], &mut [&mut o, &mut o2]).unwrap();
                got.push(rows(be, &o, t, nr));
                got.push(rows(be, &o2, t, 40));
            }
            for (which, (gpu, cpu), wv, n) in [(ty, (&got[0], &cpu_out.0), &wf, nr), (GgmlType::Q8_0, (&got[1], &cpu_out.1), &w2f, 40)] {
                for tt in 0..t {
                    for r in 0..n {
                        let tol = gemm_tol(which, &wv[r * k..(r + 1) * k], &x[tt * k..(tt + 1) * k]);
                        let d = (gpu[tt * n + r] as f64 - cpu[tt * n + r] as f64).abs();
                        assert!(
                            d <= tol,
                            "GEMM {which} (beside {ty}) t={t} token {tt} row {r}: {} on the emulated GPU, {} on the CPU (|diff| {d} > {tol})",
                            gpu[tt * n + r],
                            cpu[tt * n + r]
                        );
                        if which == ty {
                            worst = worst.max(d / tol);
                        }
                    }
                }
            }
        }
        println!("GEMM {ty:7} {nr}x{k}, t = 1, 7, 33{}: max |GPU - CPU| / bound = {worst:.3}", if tmax > 33 { ", 260" } else { "" });
    }
}

/// The MoE feed-forward, top-2 of 8 experts on 33 tokens: the grouped GEMMs (moe_group, one
/// launch per projection over all experts) on the emulated GPU against the CPU backend's ffn,
/// with the same expert choices. Tolerance: each of the three products differs by the CPU's
/// 8-bit activations (up to ~1% of the sum of |w x| when a 256-block's largest value is several
/// times its typical one) and the GPU's f16 rounding; carried through SwiGLU to first order and
/// mixed by the routing weights, 3% of that propagated magnitude.
fn check_moe_ffn(dev: &Arc<EmuDevice>, ty: GgmlType, n_embd: usize, n_ff: usize, t: usize, path: FfnPath) {
    let (ne, k) = (8usize, 2usize);
    let mut rng = Rng(0x3e11 + n_ff as u64);
    let (gb, gf) = weights(ty, ne * n_ff * n_embd, &mut rng);
    let (ub, uf) = weights(ty, ne * n_ff * n_embd, &mut rng);
    let (db, df) = weights(ty, ne * n_embd * n_ff, &mut rng);
    let router: Vec<f32> = (0..ne * n_embd).map(|_| 0.05 * rng.next()).collect();
    let x = rng.acts(t * n_embd);
    let g = gguf_of(vec![
        ("gate", vec![n_embd as u64, (ne * n_ff) as u64], ty, gb),
        ("up", vec![n_embd as u64, (ne * n_ff) as u64], ty, ub),
        ("down", vec![n_ff as u64, (ne * n_embd) as u64], ty, db),
        ("router", vec![n_embd as u64, ne as u64], GgmlType::F32, router.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ("x", vec![n_embd as u64, t as u64], GgmlType::F32, x.iter().flat_map(|v| v.to_le_bytes()).collect()),
    ]);
    /// The ffn of `g`'s weights over its input, `calls` times on the same weights: the output
    /// and the chosen experts of the last call.
    #[allow(clippy::too_many_arguments)]
    fn run_ffn<B: Backend>(be: &B, g: &Arc<Gguf>, ne: usize, k: usize, n_ff: usize, t: usize, n_embd: usize, calls: usize) -> (Vec<f32>, Vec<u32>) {
        let wt = |n: &str| be.weight(g, g.tensor(n).unwrap()).unwrap();
        let f = xdan::backend::Ffn {
            router: Some(wt("router")),
            gate: wt("gate"),
            up: wt("up"),
            down: wt("down"),
            n_expert: ne,
            n_expert_used: k,
            n_ff,
        };
        let xa = input(be, g, t);
        let mut last = (Vec::new(), Vec::new());
        for _ in 0..calls {
            let mut out = be.act_new();
            let mut routes = Vec::new();
            be.ffn(&xa, &f, &mut out, Some(&mut routes)).unwrap();
            last = (rows(be, &out, t, n_embd), routes);
        }
        last
    }
    let (cpu, rc) = run_ffn(&CpuBackend, &g, ne, k, n_ff, t, n_embd, 1);
    // Every expert on the device; experts 1, 5 and 6 in host memory (the CPU computes their
    // slots, the device the rest, at the same bound); every expert on the host. With host
    // experts also the batch that brings the layer's experts to the device, which must give
    // the bits of the device holding them all. Last, the three experts this input picks most
    // on the host, and the same input three times with a look at the routing counts due at
    // the third (CudaBackend::with_rebalance_slots): a host expert the router picked takes a
    // cold device expert's place in the device buffer, and the third call computes it there;
    // brought over, the move copies it from the streamed buffers, and a fourth call streams
    // it from its new place.
    let some: Vec<bool> = (0..ne).map(|e| ![1, 5, 6].contains(&e)).collect();
    let mut picks: Vec<(usize, usize)> = (0..ne).map(|e| (rc.iter().filter(|&&r| r as usize == e).count(), e)).collect();
    picks.sort_by(|a, b| b.cmp(a));
    let cold: Vec<bool> = (0..ne).map(|e| !picks[..3].iter().any(|p| p.1 == e)).collect();
    let mut all_on_device = Vec::new();
    for (what, resident, stream, calls) in [
        ("", None, false, 1),
        (", experts 1 5 6 on the host", Some(some.clone()), false, 1),
        (", every expert on the host", Some(vec![false; ne]), false, 1),
        (", experts 1 5 6 brought over", Some(some), true, 1),
        (", every expert brought over", Some(vec![false; ne]), true, 1),
        (", the hottest on the host, moved by the routing", Some(cold.clone()), false, 3),
        (", the hottest on the host, brought over and moved", Some(cold), true, 4),
    ] {
        let plan: xdan::backend::cuda::host_experts::ExpertPlan =
            resident.map(|r| ["gate", "up", "down"].iter().map(|n| (n.to_string(), r.clone())).collect()).unwrap_or_default();
        // 66 slots over 8 experts are fewer than the default threshold: force the grouped GEMM.
        let cuda = match path {
            FfnPath::Gemm => CudaBackend::new(dev.clone()).with_gemm_min_rows(1),
            FfnPath::Matvec => CudaBackend::new(dev.clone()).with_fusion(false),
            FfnPath::Fused => CudaBackend::new(dev.clone()).with_fusion(true),
        };
        let slots = (t * k) as u64;
        let cuda = cuda
            .with_expert_plan(plan.clone())
            .with_stream_min_tokens(if stream { 1 } else { usize::MAX })
            .with_rebalance_slots(if calls > 1 { 3 * slots } else { 0 });
        let (gpu, rg) = run_ffn(&cuda, &g, ne, k, n_ff, t, n_embd, calls);
        assert_eq!(rg, rc, "{ty}{what}: experts chosen on the emulated GPU differ from the CPU backend's");
        if what.is_empty() {
            all_on_device = gpu.clone();
        }
        if stream {
            assert!(gpu == all_on_device, "{ty}{what}: not the bits of every expert on the device");
        }
        let traffic = cuda.expert_traffic();
        if plan.is_empty() {
            assert_eq!(traffic, None, "{ty}{what}");
        } else {
            let tr = traffic.unwrap();
            assert_eq!(tr.device_slots + tr.host_slots, calls as u64 * slots, "{ty}{what}: {tr:?}");
            // The rule of HostExperts::moves over the CPU's picks, 3 times over: the
            // hottest host expert moves when picked more than 1.5 times as often as the coldest
            // device expert, plus 2. With 3 tokens or fewer some device expert is never picked
            // (at most 6 experts are, the 3 most picked on the host), so there it must move.
            let hot = 3 * picks[0].0;
            let coldest = 3 * picks[3..].iter().map(|p| p.0).min().unwrap();
            let expect = calls > 1 && 2 * hot > 3 * coldest + 4;
            assert!(expect || calls == 1 || t > 3);
            assert_eq!(tr.moves, u64::from(expect), "{ty}{what}: {tr:?}, hottest host expert picked {hot} times, coldest device one {coldest}");
            if calls > 1 {
                println!("{ty}{what}: {tr:?} (hottest host expert picked {hot} times, coldest device one {coldest})");
            }
        }
        check_moe_out(ty, &format!("{what}: {path:?}"), &gpu, &cpu, &rc, &x, &router, &gf, &uf, &df, ne, k, t, n_embd, n_ff);
    }
}

/// How check_moe_ffn's GPU side computes the experts.
#[derive(Clone, Copy, Debug)]
enum FfnPath {
    /// The grouped prefill GEMMs.
    Gemm,
    /// The matvecs, a launch per projection.
    Matvec,
    /// The fused decode matvecs (gate+up+SwiGLU, down summed over the experts).
    Fused,
}

/// `gpu` against `cpu` (the ffn outputs of check_moe_ffn, `rc` the experts chosen) within the
/// propagated bound described there.
#[allow(clippy::too_many_arguments)]
fn check_moe_out(
    ty: GgmlType,
    what: &str,
    gpu: &[f32],
    cpu: &[f32],
    rc: &[u32],
    x: &[f32],
    router: &[f32],
    gf: &[f32],
    uf: &[f32],
    df: &[f32],
    ne: usize,
    k: usize,
    t: usize,
    n_embd: usize,
    n_ff: usize,
) {
    let mut used = [0usize; 8];
    rc.iter().for_each(|&e| used[e as usize] += 1);
    // The magnitude of each output: |terms| through the layer, in float64 from the weights'
    // values, with the CPU's routing weights recomputed (softmax over the top k).
    let mut worst = 0f64;
    for tok in 0..t {
        let xt = &x[tok * n_embd..][..n_embd];
        let logits: Vec<f64> = (0..ne).map(|e| (0..n_embd).map(|c| router[e * n_embd + c] as f64 * xt[c] as f64).sum()).collect();
        let sel = &rc[tok * k..][..k];
        let z: f64 = sel.iter().map(|&e| logits[e as usize].exp()).sum();
        let mut mag = vec![0f64; n_embd];
        for &e in sel {
            let e = e as usize;
            let wgt = logits[e].exp() / z;
            let h: Vec<f64> = (0..n_ff)
                .map(|r| {
                    let row = (e * n_ff + r) * n_embd;
                    let gv: f64 = (0..n_embd).map(|c| gf[row + c] as f64 * xt[c] as f64).sum();
                    let gm: f64 = (0..n_embd).map(|c| (gf[row + c] as f64 * xt[c] as f64).abs()).sum();
                    let uv: f64 = (0..n_embd).map(|c| uf[row + c] as f64 * xt[c] as f64).sum();
                    let um: f64 = (0..n_embd).map(|c| (uf[row + c] as f64 * xt[c] as f64).abs()).sum();
                    // To first order silu(g) u moves by silu'(g) dg u + silu(g) du, |silu'| < 1.1,
                    // |dg| and |du| a fraction of the |terms| sums gm and um; the down product
                    // then adds its own rounding of h = silu(g) u.
                    let silu = gv / (1.0 + (-gv).exp());
                    1.1 * gm * uv.abs() + silu.abs() * um + (silu * uv).abs()
                })
                .collect();
            for (c, m) in mag.iter_mut().enumerate() {
                let row = (e * n_embd + c) * n_ff;
                *m += wgt * (0..n_ff).map(|r| df[row + r].abs() as f64 * h[r]).sum::<f64>();
            }
        }
        for c in 0..n_embd {
            let tol = 0.03 * mag[c] + 1e-6;
            let d = (gpu[tok * n_embd + c] as f64 - cpu[tok * n_embd + c] as f64).abs();
            assert!(d <= tol, "MoE ffn {ty}{what} token {tok} col {c}: {} on the emulated GPU, {} on the CPU (|diff| {d} > {tol})", gpu[tok * n_embd + c], cpu[tok * n_embd + c]);
            worst = worst.max(d / tol);
        }
    }
    println!("MoE ffn {ty} top-{k} of {ne}, {t} tokens (per expert {used:?}), n_embd {n_embd}, n_ff {n_ff}{what} vs CPU ffn, max |diff| / bound = {worst:.3}");
}

#[test]
fn emulated_gemm_matches_cpu_backend() {
    let lib = build_emulator();
    let dev = Arc::new(EmuDevice::open(lib.to_str().unwrap()).unwrap());
    check_gemm_types(&dev);
    check_moe_ffn(&dev, GgmlType::Q8_0, 256, 96, 33, FfnPath::Gemm);
    check_moe_ffn(&dev, GgmlType::Q4_K, 256, 256, 33, FfnPath::Gemm);
    // Decode-sized batches through the matvecs, separate and fused (the fused down projection
    // sums a token's experts itself, so a host expert's slot must weigh nothing there too).
    check_moe_ffn(&dev, GgmlType::Q8_0, 256, 96, 3, FfnPath::Matvec);
    check_moe_ffn(&dev, GgmlType::Q4_K, 256, 256, 1, FfnPath::Fused);
}
