//! The CUDA backend on a real GPU (scripts/gpu-check.sh packs and runs this on a GPU machine):
//! every kernel compiled by NVRTC and loaded; tiny-mixtral (Q8_0, F16) through the engine's
//! forward on the GPU against the CPU backend and llama.cpp's logits and expert choices (the
//! checks tests/cuda_emu_model.rs makes on the emulator), with the prompt through the matvecs and
//! through the prefill GEMMs; then decode-shaped matvec and prefill-shaped GEMM timings.
//!
//! Usage: cargo run --release --example cuda_check [-- DATA_DIR] (default tests/data).
//! Exits 1 when a check fails, 2 when there is no GPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use xdan::backend::cpu::CpuBackend;
use xdan::backend::cuda::device::{Arg, DevBuf, Device};
use xdan::backend::cuda::{devices, GpuDevice};
use xdan::backend::cuda::CudaBackend;
use xdan::backend::{Backend, KvLayout, KV_BLOCK};
use xdan::gguf::Gguf;
use xdan::model::forward::{forward, Batch, Scratch};
use xdan::model::{HParams, Weights};
use xdan::quant::GgmlType;

fn f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}
fn i32s(path: &Path) -> Vec<i32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn run<B: Backend>(be: &B, g: &Arc<Gguf>, hp: &HParams, kv_ty: GgmlType, tokens: &[u32]) -> xdan::Result<(Vec<f32>, Vec<Vec<u32>>)> {
    let w = Weights::load(be, g, hp, &mut |_| true)?;
    let n = tokens.len();
    let n_blocks = n.div_ceil(KV_BLOCK) + 2;
    let layout = KvLayout { n_layer: hp.n_layer, n_slots: n_blocks * KV_BLOCK, n_embd_kv: hp.n_embd_kv(), ty: kv_ty };
    let mut kv = be.kv_new(&layout)?;
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
    forward(be, &w, hp, &hp.rope, &mut kv, &b, &mut s, &mut || true, Some(&mut routes), &mut logits)?;
    Ok((logits, routes))
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

/// The tiny-mixtral checks of one variant; false when one fails.
fn parity(gpu: &CudaBackend<GpuDevice>, data: &Path, variant: &str, kv_ty: GgmlType, tol: f32) -> bool {
    let dir = data.join("tiny-mixtral").join(variant);
    let g = Arc::new(Gguf::open(dir.join(format!("tiny-mixtral-{variant}.gguf")), true).expect("fixture model"));
    let hp = HParams::from_gguf(&g).unwrap();
    let tokens = [1u32, 832, 165, 251, 189, 895, 149];
    let (n, nv, k) = (tokens.len(), hp.n_vocab, hp.n_expert_used);
    let (lc, rc) = match run(gpu, &g, &hp, kv_ty, &tokens) {
        Ok(r) => r,
        Err(e) => {
            println!("FAIL {variant}: the GPU forward pass failed: {e}");
            return false;
        }
    };
    let (lp, rp) = run(&CpuBackend, &g, &hp, kv_ty, &tokens).unwrap();
    let llama = f32s(&dir.join("logits_p1.bin"));
    let order = i32s(&dir.join("routing_order_p1.bin"));
    let mut ok = true;
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
    let argmax_ok = (0..n).filter(|&t| argmax(&lc[t * nv..(t + 1) * nv]) == argmax(&llama[t * nv..(t + 1) * nv])).count();
    let md = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let (d_cpu, d_llama) = (md(&lc, &lp), md(&lc, &llama));
    ok &= rc == rp && agree == hp.n_layer * n && argmax_ok == n && d_cpu < tol && d_llama < tol;
    ok &= lc.iter().all(|v| v.is_finite());
    println!(
        "{} {variant} (KV {kv_ty}): experts = CPU: {}, = llama.cpp {agree}/{}; argmax = llama.cpp {argmax_ok}/{n}; \
         max |logit diff| vs CPU {d_cpu:.2e}, vs llama.cpp {d_llama:.2e} (tolerance {tol})",
        if ok { "ok  " } else { "FAIL" },
        rc == rp,
        hp.n_layer * n
    );
    ok
}

/// Decode-shaped matvec timings: a `rows` x `cols` matrix of the fixture's blocks repeated.
fn bench(dev: &Arc<GpuDevice>, data: &Path) {
    let (rows, cols) = (4096usize, 4096usize);
    println!("matvec {rows}x{cols}, one activation row (decode), mean of 50 launches after 5 warm-ups:");
    for (ty, sfx, qk, bb) in [
        ("Q4_0", "q4_0", 32, 18),
        ("Q8_0", "q8_0", 32, 34),
        ("Q4_K", "q4_k", 256, 144),
        ("Q6_K", "q6_k", 256, 210),
        ("IQ4_XS", "iq4_xs", 256, 136),
        ("IQ2_XXS", "iq2_xxs", 256, 66),
    ] {
        let blocks = std::fs::read(data.join("quant").join(format!("{ty}_real.bin"))).unwrap();
        let nbytes = rows * cols / qk * bb;
        let w: Vec<u8> = blocks.iter().cycle().take(nbytes).copied().collect();
        let x: Vec<u8> = (0..cols).flat_map(|i| ((i % 17) as f32 * 0.1 - 0.8).to_le_bytes()).collect();
        let (wb, xb) = (DevBuf::new(dev, nbytes).unwrap(), DevBuf::new(dev, cols * 4).unwrap());
        let (qb, yb) = (DevBuf::new(dev, cols / 32 * 40).unwrap(), DevBuf::new(dev, rows * 4).unwrap());
        unsafe {
            dev.upload(wb.ptr, &w).unwrap();
            dev.upload(xb.ptr, &x).unwrap();
        }
        let step = || unsafe {
            dev.launch("quantize_q8_1", [(cols / 32).div_ceil(4) as u32, 1, 1], [128, 1, 1], 0, &[Arg::Ptr(xb.ptr), Arg::Ptr(qb.ptr), Arg::I32(cols as i32)])
                .unwrap();
            dev.launch(
                &format!("mul_mat_vec_{sfx}"),
                [(rows / 4) as u32, 1, 1],
                [128, 1, 1],
                0,
                &[
                    Arg::Ptr(wb.ptr),
                    Arg::I64(0),
                    Arg::Ptr(0),
                    Arg::Ptr(qb.ptr),
                    Arg::I32((cols / 32) as i32),
                    Arg::I32(1),
                    Arg::Ptr(yb.ptr),
                    Arg::I32(cols as i32),
                    Arg::I32(rows as i32),
                ],
            )
            .unwrap();
        };
        for _ in 0..5 {
            step();
        }
        dev.synchronize().unwrap();
        let t = Instant::now();
        for _ in 0..50 {
            step();
        }
        dev.synchronize().unwrap();
        let s = t.elapsed().as_secs_f64() / 50.0;
        println!("  {ty:8} {:8.1} us  {:7.1} GB/s of weights", s * 1e6, nbytes as f64 / s / 1e9);
    }
}

/// Prefill-shaped GEMM timings: a 4096 x 4096 matrix of the fixture's blocks repeated, times
/// 512 activation rows.
fn bench_gemm(dev: &Arc<GpuDevice>, data: &Path) {
    let (rows, cols, toks) = (4096usize, 4096usize, 512usize);
    println!("prefill GEMM {rows}x{cols} by {toks} rows, mean of 20 launches after 3 warm-ups:");
    for (ty, sfx, qk, bb) in [("Q4_0", "q4_0", 32, 18), ("Q8_0", "q8_0", 32, 34), ("Q4_K", "q4_k", 256, 144), ("Q6_K", "q6_k", 256, 210), ("IQ2_XXS", "iq2_xxs", 256, 66)] {
        let blocks = std::fs::read(data.join("quant").join(format!("{ty}_real.bin"))).unwrap();
        let nbytes = rows * cols / qk * bb;
        let w: Vec<u8> = blocks.iter().cycle().take(nbytes).copied().collect();
        let x: Vec<u8> = (0..cols * toks).flat_map(|i| ((i % 17) as f32 * 0.1 - 0.8).to_le_bytes()).collect();
        let (wb, xb, yb) = (DevBuf::new(dev, nbytes).unwrap(), DevBuf::new(dev, x.len()).unwrap(), DevBuf::new(dev, rows * toks * 4).unwrap());
        unsafe {
            dev.upload(wb.ptr, &w).unwrap();
            dev.upload(xb.ptr, &x).unwrap();
        }
        let step = || unsafe {
            dev.launch(
                &format!("mul_mat_{sfx}"),
                [(rows / 32) as u32, toks.div_ceil(256) as u32, 1],
                [256, 1, 1],
                0,
                &[
                    Arg::Ptr(wb.ptr),
                    Arg::I64(0),
                    Arg::Ptr(0),
                    Arg::Ptr(0),
                    Arg::I32(toks as i32),
                    Arg::Ptr(xb.ptr),
                    Arg::I32(1),
                    Arg::Ptr(yb.ptr),
                    Arg::I32(cols as i32),
                    Arg::I32(rows as i32),
                    Arg::I32(toks as i32),
                ],
            )
            .unwrap();
        };
        for _ in 0..3 {
            step();
        }
        dev.synchronize().unwrap();
        let t = Instant::now();
        for _ in 0..20 {
            step();
        }
        dev.synchronize().unwrap();
        let s = t.elapsed().as_secs_f64() / 20.0;
        println!("  {ty:8} {:8.1} us  {:6.1} TFLOP/s", s * 1e6, 2.0 * (rows * cols * toks) as f64 / s / 1e12);
    }
}

fn main() {
    let data = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"))));
    match devices() {
        Ok(d) if !d.is_empty() => {
            for x in &d {
                println!("device {}: {} (sm_{}), {} MiB", x.ordinal, x.name, x.arch, x.total_mem >> 20);
            }
        }
        Ok(_) => {
            println!("no CUDA device");
            std::process::exit(2);
        }
        Err(e) => {
            println!("no CUDA: {e}");
            std::process::exit(2);
        }
    }
    let dev = match GpuDevice::open(0) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            println!("FAIL opening the GPU: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", dev.name());
    let t = Instant::now();
    match dev.preload() {
        Ok(n) => println!("ok   {n} kernels compiled and loaded in {:.1} s", t.elapsed().as_secs_f64()),
        Err(e) => {
            println!("FAIL loading the kernels: {e}");
            std::process::exit(1);
        }
    }
    let gpu = CudaBackend::new(dev.clone());
    let mut ok = true;
    ok &= parity(&gpu, &data, "Q8_0", GgmlType::F32, 1e-3);
    ok &= parity(&gpu, &data, "F16", GgmlType::F16, 1e-2);
    // The same prompts through the tensor-core prefill GEMMs (f16 weights and activations; the
    // tolerances of tests/cuda_emu_model.rs: Q8_0 then differs from the CPU's 8-bit activations).
    println!("the prompt through the prefill GEMMs (gemm.cu):");
    let gemm = CudaBackend::new(dev.clone()).with_gemm_min_rows(1);
    ok &= parity(&gemm, &data, "Q8_0", GgmlType::F32, 0.15);
    ok &= parity(&gemm, &data, "F16", GgmlType::F16, 1e-2);
    bench(&dev, &data);
    bench_gemm(&dev, &data);
    if let Err(e) = dev.synchronize() {
        println!("FAIL: {e}");
        ok = false;
    }
    std::process::exit(if ok { 0 } else { 1 });
}
