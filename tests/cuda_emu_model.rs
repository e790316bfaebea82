//! The CUDA backend's host code end to end, on the CUDA emulator: tiny-mixtral (2 layers,
//! 8 experts, top-2; Q8_0, F16 and Q4_K_M files) through the engine's forward pass with `CudaBackend<EmuDevice>`, against
//! the CPU backend on the same weights and against llama.cpp's logits and expert choices
//! (tests/data/tiny-mixtral). Everything but the driver calls runs as on a GPU: the weights are
//! uploaded in their GGUF types, every op is a launch of the kernels in kernels/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use xdan::backend::cpu::CpuBackend;
use xdan::backend::cuda::kernels::{kernel_names, PROGRAMS};
use xdan::backend::cuda::{CudaBackend, EmuDevice};
use xdan::backend::{Backend, KvLayout, KV_BLOCK};
use xdan::gguf::Gguf;
use xdan::model::forward::{forward, Batch, Scratch};
use xdan::model::{HParams, Weights};
use xdan::quant::GgmlType;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn build_emulator() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu").join("lib");
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libxdan_cuda_emu.so");
    let out = Command::new(std::env::var("CXX").unwrap_or_else(|_| "g++".into()))
        .args(["-std=c++20", "-O2", "-g", "-fno-strict-aliasing", "-pthread", "-shared", "-fPIC", "-Wall", "-Werror"])
        .args(["-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable"])
        .arg(format!("{ROOT}/kernels/emu/launch.cpp"))
        .arg("-o")
        .arg(&lib)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler (g++ >= 12 is required): {e}"));
    assert!(out.status.success(), "building the emulator library failed:\n{}", String::from_utf8_lossy(&out.stderr));
    lib
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

fn check_variant(dev: &Arc<EmuDevice>, variant: &str, kv_ty: GgmlType, tol: f32) -> String {
    let dir = Path::new(ROOT).join("tests/data/tiny-mixtral").join(variant);
    let g = Arc::new(Gguf::open(dir.join(format!("tiny-mixtral-{variant}.gguf")), true).unwrap());
    let hp = HParams::from_gguf(&g).unwrap();
    let tokens = [1u32, 832, 165, 251, 189, 895, 149]; // prompt p1 of the fixtures
    let n = tokens.len();
    let nv = hp.n_vocab;
    let cuda = CudaBackend::new(dev.clone());
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
    format!(
        "{variant} (KV {kv_ty}): 7-token prompt, experts = CPU = llama.cpp at {agree}/{agree} (layer, token), \
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
    for (variant, kv, tol) in [("Q8_0", GgmlType::F32, 1e-3), ("F16", GgmlType::F16, 1e-2), ("Q4_K_M", GgmlType::F32, 0.15)] {
        let line = check_variant(&dev, variant, kv, tol);
        println!("{line}");
    }
}
