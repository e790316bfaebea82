//! The CUDA backend on a real GPU (scripts/gpu-check.sh packs and runs this on a GPU machine):
//! every kernel compiled by NVRTC and loaded; tiny-mixtral (Q8_0, F16) through the engine's
//! forward on the GPU against the CPU backend and llama.cpp's logits and expert choices (the
//! checks tests/cuda_emu_model.rs makes on the emulator), with the prompt through the matvecs and
//! through the prefill GEMMs; then the launches and time of one decode step, decode matvec
//! timings of every quantized type at Mixtral-8x7B's shapes, and prefill-shaped GEMM timings.
//!
//! With `--mmvq-sweep` only the decode matvec timings, for every block shape of
//! `MmvqShape::SWEEP` side by side (see `sweep`).
//!
//! Usage: cargo run --release --example cuda_check [-- DATA_DIR] [--mmvq-sweep] (default
//! tests/data). Exits 1 when a check fails, 2 when there is no GPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use xdan::backend::cpu::CpuBackend;
use xdan::backend::cuda::device::{Arg, Counting, DevBuf, Device};
use xdan::backend::cuda::{devices, GpuDevice};
use xdan::backend::cuda::backend::{GEMM_BM, GEMM_BN, GEMM_THREADS};
use xdan::backend::cuda::{CudaBackend, MmvqShape};
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

/// The quantized types the benchmark times: name, kernel suffix, values and bytes per block.
const BENCH_TYPES: [(&str, &str, usize, usize); 20] = [
    ("Q4_0", "q4_0", 32, 18),
    ("Q4_1", "q4_1", 32, 20),
    ("Q5_0", "q5_0", 32, 22),
    ("Q5_1", "q5_1", 32, 24),
    ("Q8_0", "q8_0", 32, 34),
    ("Q2_K", "q2_k", 256, 84),
    ("Q3_K", "q3_k", 256, 110),
    ("Q4_K", "q4_k", 256, 144),
    ("Q5_K", "q5_k", 256, 176),
    ("Q6_K", "q6_k", 256, 210),
    ("IQ4_NL", "iq4_nl", 32, 18),
    ("IQ4_XS", "iq4_xs", 256, 136),
    ("IQ2_XXS", "iq2_xxs", 256, 66),
    ("IQ2_XS", "iq2_xs", 256, 74),
    ("IQ2_S", "iq2_s", 256, 82),
    ("IQ3_XXS", "iq3_xxs", 256, 98),
    ("IQ3_S", "iq3_s", 256, 110),
    ("IQ1_S", "iq1_s", 256, 50),
    ("IQ1_M", "iq1_m", 256, 56),
    ("MXFP4", "mxfp4", 32, 17),
];

/// Mean seconds per call of `f` over `n` calls after 3 warm-ups, launches queued back to back.
fn time_launches(dev: &GpuDevice, n: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..3 {
        f(i);
    }
    dev.synchronize().unwrap();
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    dev.synchronize().unwrap();
    t.elapsed().as_secs_f64() / n as f64
}

/// The decode matvec shapes of a Mixtral-8x7B layer: n_embd and n_ff.
const E: usize = 4096;
const F: usize = 14336;
/// Timed launches per measurement (after 3 warm-ups).
const N_LAUNCH: usize = 30;

/// Device buffers for the matvec timings: one type's weights (the fixture's real blocks repeated
/// over at least 4 expert matrices of F x E and at least 256 MiB, more than the L2 cache, so
/// that launches rotating through copies read from memory as decode does), and two activation
/// rows of F values as q8_1 (the first E values of row 0 serve the E-column shapes), the routing
/// ids [0, 1] and the output.
struct MatvecBench {
    w: DevBuf<GpuDevice>,
    /// Bytes of one F x E matrix.
    mat: usize,
    total: usize,
    xq: DevBuf<GpuDevice>,
    ids: DevBuf<GpuDevice>,
    y: DevBuf<GpuDevice>,
    sfx: &'static str,
    qk: usize,
    bb: usize,
}

impl MatvecBench {
    /// None when the type has no fixture blocks.
    fn new(dev: &Arc<GpuDevice>, data: &Path, sfx: &'static str, ty: &str, qk: usize, bb: usize, quantize: &str) -> Option<MatvecBench> {
        let blocks = std::fs::read(data.join("quant").join(format!("{ty}_real.bin"))).ok().filter(|b| !b.is_empty())?;
        let mat = F * E / qk * bb;
        let total = 4 * mat * (256usize << 20).div_ceil(4 * mat);
        let mut w = Vec::with_capacity(total);
        while w.len() < total {
            let n = (total - w.len()).min(if w.is_empty() { blocks.len() } else { w.len() });
            if w.is_empty() {
                w.extend_from_slice(&blocks[..n]);
            } else {
                w.extend_from_within(..n);
            }
        }
        let wb = DevBuf::new(dev, total).unwrap();
        unsafe { dev.upload(wb.ptr, &w).unwrap() };
        drop(w);
        let x: Vec<u8> = (0..2 * F).flat_map(|i| ((i % 17) as f32 * 0.1 - 0.8).to_le_bytes()).collect();
        let xb = DevBuf::new(dev, x.len()).unwrap();
        let xq = DevBuf::new(dev, 2 * F / 32 * 40).unwrap();
        let y = DevBuf::new(dev, 2 * F * 4).unwrap();
        let ids = DevBuf::new(dev, 8).unwrap();
        unsafe {
            dev.upload(xb.ptr, &x).unwrap();
            dev.upload(ids.ptr, &[0, 0, 0, 0, 1, 0, 0, 0]).unwrap();
            dev.launch(quantize, [(2 * F / 32).div_ceil(4) as u32, 1, 1], [128, 1, 1], 0, &[Arg::Ptr(xb.ptr), Arg::Ptr(xq.ptr), Arg::I32((2 * F) as i32)])
                .unwrap();
        }
        Some(MatvecBench { w: wb, mat, total, xq, ids, y, sfx, qk, bb })
    }

    /// y = W x for `rows` x `cols` weights at byte `off`, `slots` slots (expert i for slot i).
    fn matvec(&self, dev: &GpuDevice, shape: MmvqShape, tag: &str, off: usize, rows: usize, cols: usize, slots: u32) {
        unsafe {
            dev.launch(
                &format!("mul_mat_vec_{}{tag}", self.sfx),
                [rows.div_ceil(shape.rows_per_block() as usize) as u32, slots, 1],
                [shape.threads(), 1, 1],
                0,
                &[
                    Arg::Ptr(self.w.ptr + off as u64),
                    Arg::I64(if slots > 1 { self.mat as i64 } else { 0 }),
                    Arg::Ptr(if slots > 1 { self.ids.ptr } else { 0 }),
                    Arg::Ptr(self.xq.ptr),
                    Arg::I32((cols / 32) as i32),
                    Arg::I32(1),
                    Arg::Ptr(self.y.ptr),
                    Arg::I32(cols as i32),
                    Arg::I32(rows as i32),
                ],
            )
            .unwrap()
        }
    }

    /// Gate (experts 0 and 1 at byte `off`) and up (2 matrices further) with SwiGLU: 2 slots of
    /// one activation row.
    fn swiglu(&self, dev: &GpuDevice, shape: MmvqShape, tag: &str, off: usize) {
        unsafe {
            dev.launch(
                &format!("mul_mat_vec_swiglu_{}{tag}", self.sfx),
                [F.div_ceil(shape.rows_per_block() as usize) as u32, 2, 1],
                [shape.threads(), 1, 1],
                0,
                &[
                    Arg::Ptr(self.w.ptr + off as u64),
                    Arg::Ptr(self.w.ptr + (off + 2 * self.mat) as u64),
                    Arg::I64(self.mat as i64),
                    Arg::Ptr(self.ids.ptr),
                    Arg::Ptr(self.xq.ptr),
                    Arg::I32((E / 32) as i32),
                    Arg::I32(2),
                    Arg::Ptr(self.y.ptr),
                    Arg::I32(E as i32),
                    Arg::I32(F as i32),
                ],
            )
            .unwrap()
        }
    }

    /// Seconds per launch and weight bytes read of: E x E, F x E, E x F, 2 experts' fused
    /// gate+up+SwiGLU, 2 experts' down; every launch reads another copy of the weights.
    fn time(&self, dev: &GpuDevice, shape: MmvqShape, tag: &str) -> [(f64, usize); 5] {
        let one = |rows: usize, cols: usize| {
            let bytes = rows * cols / self.qk * self.bb;
            let copies = self.total / bytes;
            (time_launches(dev, N_LAUNCH, |i| self.matvec(dev, shape, tag, (i % copies) * bytes, rows, cols, 1)), bytes)
        };
        let quads = self.total / (4 * self.mat);
        let swiglu = time_launches(dev, N_LAUNCH, |i| self.swiglu(dev, shape, tag, (i % quads) * 4 * self.mat));
        let pairs = self.total / (2 * self.mat);
        let down = time_launches(dev, N_LAUNCH, |i| self.matvec(dev, shape, tag, (i % pairs) * 2 * self.mat, E, F, 2));
        [one(E, E), one(F, E), one(E, F), (swiglu, 4 * self.mat), (down, 2 * self.mat)]
    }

    /// The outputs of an F x E matvec and of the fused gate+up on the first copy, for comparing
    /// shapes (every shape sums in the same order, so they must agree bit for bit).
    fn outputs(&self, dev: &GpuDevice, shape: MmvqShape, tag: &str) -> Vec<u8> {
        let mut out = vec![0u8; 3 * F * 4];
        self.matvec(dev, shape, tag, 0, F, E, 1);
        unsafe { dev.download(self.y.ptr, &mut out[..F * 4]).unwrap() };
        self.swiglu(dev, shape, tag, 0);
        unsafe { dev.download(self.y.ptr, &mut out[F * 4..]).unwrap() };
        out
    }
}

fn us_gbs((s, bytes): (f64, usize)) -> String {
    format!("{:7.1} {:6.0}", s * 1e6, bytes as f64 / s / 1e9)
}

const COLUMNS: &str = "        4096x4096        14336x4096        4096x14336      2x gate+up+swiglu          2x down (MoE)";

/// Decode-shaped matvec timings for every quantized type at the shapes of a Mixtral-8x7B layer,
/// with the block shape the backend launches: 4096x4096 (attention), 14336x4096 (an expert's
/// gate or up), 4096x14336 (its down); then the MoE dispatch as decode runs it: gate+up+SwiGLU
/// of 2 experts in one launch, and the 2 experts' down projections in one launch. GB/s counts
/// the weight bytes each launch reads.
fn bench(dev: &Arc<GpuDevice>, data: &Path) {
    let shape = dev.mmvq_shape();
    println!("matvec timings (block shape {shape}), one activation row (decode), mean of {N_LAUNCH} launches after 3 warm-ups (us, GB/s of weights):");
    println!("  {:8} {COLUMNS}", "type");
    for (ty, sfx, qk, bb) in BENCH_TYPES {
        let Some(b) = MatvecBench::new(dev, data, sfx, ty, qk, bb, "quantize_q8_1") else {
            println!("  {ty:8} (no fixture blocks)");
            continue;
        };
        let t = b.time(dev, shape, "");
        println!("  {ty:8} {}", t.map(|c| format!("{:>17}", us_gbs(c))).join(" "));
    }
}

/// `--mmvq-sweep`: the matvec timings of `bench` for every block shape of `MmvqShape::SWEEP`
/// (mmvq.cu compiled once per shape, side by side, and loaded next to each other), in one table;
/// then per type the fastest shape of each column, and per shape the total time of a decode
/// layer's matvecs (4096x4096 x 2, gate+up, down) over the main types. Every shape's outputs must
/// equal the first one's bit for bit. False when they do not.
fn sweep(dev: &Arc<GpuDevice>, data: &Path) -> bool {
    let shapes = MmvqShape::SWEEP;
    let t = Instant::now();
    let compiled = match dev.load_mmvq_variants(&shapes) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL compiling mmvq.cu for the sweep: {e}");
            return false;
        }
    };
    let each: Vec<String> = shapes.iter().zip(&compiled).map(|(s, c)| format!("{s} {}", c.map_or("cached".into(), |t| format!("{t:.1} s")))).collect();
    println!("mmvq.cu for {} shapes in {:.1} s, side by side (NVRTC, each: {})", shapes.len(), t.elapsed().as_secs_f64(), each.join(", "));
    let quantize = format!("quantize_q8_1@{}", shapes[0].label());
    // The types of the Mixtral mixes first; the others after.
    let main = ["IQ2_XXS", "Q4_K", "Q6_K", "Q8_0", "IQ4_XS", "Q2_K"];
    let mut order: Vec<_> = main.iter().filter_map(|m| BENCH_TYPES.iter().find(|t| t.0 == *m)).copied().collect();
    order.extend(BENCH_TYPES.iter().filter(|t| !main.contains(&t.0)).copied());
    println!("matvec block shapes (WARPSxROWS[xSTAGES]; no STAGES: 2 buffers where they fit), one activation row, mean of {N_LAUNCH} launches (us, GB/s of weights):");
    println!("  {:8} {:7} {COLUMNS}", "type", "shape");
    let mut ok = true;
    let mut layer = vec![0f64; shapes.len()];
    for (ty, sfx, qk, bb) in order {
        let Some(b) = MatvecBench::new(dev, data, sfx, ty, qk, bb, &quantize) else {
            println!("  {ty:8} (no fixture blocks)");
            continue;
        };
        let mut best = [(f64::MAX, 0usize); 5];
        let mut first: Option<Vec<u8>> = None;
        for (si, &sh) in shapes.iter().enumerate() {
            let tag = format!("@{}", sh.label());
            let t = b.time(dev, sh, &tag);
            for c in 0..5 {
                if t[c].0 < best[c].0 {
                    best[c] = (t[c].0, si);
                }
            }
            if main.contains(&ty) {
                layer[si] += 2.0 * t[0].0 + t[3].0 + t[4].0;
            }
            let out = b.outputs(dev, sh, &tag);
            let same = match &first {
                None => {
                    first = Some(out);
                    ""
                }
                Some(f) if *f == out => "",
                Some(_) => {
                    ok = false;
                    "  FAIL: outputs differ from the first shape's"
                }
            };
            println!("  {ty:8} {:7} {}{same}", sh.label(), t.map(|c| format!("{:>17}", us_gbs(c))).join(" "));
        }
        println!("  {ty:8} {:7} {}", "fastest", best.map(|(_, si)| format!("{:>17}", shapes[si].label())).join(" "));
    }
    println!("a decode layer's matvecs (4096x4096 x 2, 2x gate+up, 2x down) summed over {}:", main.join(", "));
    for (sh, t) in shapes.iter().zip(&layer) {
        println!("  {:7} {:8.1} us{}", sh.label(), t * 1e6, if *sh == MmvqShape::DEFAULT { "  (the default)" } else { "" });
    }
    println!("{} every shape's F x E matvec and fused gate+up outputs equal the first shape's bit for bit", if ok { "ok  " } else { "FAIL" });
    ok
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
                [rows.div_ceil(GEMM_BM) as u32, toks.div_ceil(GEMM_BN) as u32, 1],
                [GEMM_THREADS, 1, 1],
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
        let s = time_launches(dev, 20, |_| step());
        println!("  {ty:8} {:8.1} us  {:6.1} TFLOP/s", s * 1e6, 2.0 * (rows * cols * toks) as f64 / s / 1e12);
    }
}

/// Decode steps of tiny-mixtral (Q8_0) on the GPU after a 7-token prompt, with the fused kernels
/// of the decode step or without: the launches of one step by kernel, and the wall time of a
/// step (the shapes are tiny, so this is the fixed cost per step: launches, uploads, the logits
/// download). Returns the logits of every step.
fn decode_steps<D: Device>(dev: &Arc<D>, data: &Path, fuse: bool, note: &str) -> Vec<f32> {
    let dir = data.join("tiny-mixtral").join("Q8_0");
    let g = Arc::new(Gguf::open(dir.join("tiny-mixtral-Q8_0.gguf"), true).expect("fixture model"));
    let hp = HParams::from_gguf(&g).unwrap();
    let cd = Arc::new(Counting::new(dev.clone()));
    let be = CudaBackend::new(cd.clone()).with_fusion(fuse);
    let w = Weights::load(&be, &g, &hp, &mut |_| true).unwrap();
    let mut all = Vec::new();
    const STEPS: usize = 20;
    let prompt = [1u32, 832, 165, 251, 189, 895, 149];
    let n_max = prompt.len() + STEPS + 1;
    let n_blocks = n_max.div_ceil(KV_BLOCK);
    let layout = KvLayout { n_layer: hp.n_layer, n_slots: n_blocks * KV_BLOCK, n_embd_kv: hp.n_embd_kv(), ty: GgmlType::F32 };
    let mut kv = be.kv_new(&layout).unwrap();
    let table: Vec<u32> = (0..n_blocks as u32).rev().collect();
    let slot = |p: u32| table[p as usize / KV_BLOCK] * KV_BLOCK as u32 + p % KV_BLOCK as u32;
    let tables: [&[u32]; 1] = [&table];
    let mut s = Scratch::new(&be);
    let mut step = |tokens: &[u32], p0: u32, s: &mut Scratch<CudaBackend<Counting<D>>>, kv: &mut _| -> u32 {
        let n = tokens.len() as u32;
        let pos: Vec<u32> = (p0..p0 + n).collect();
        let slots: Vec<u32> = pos.iter().map(|&p| slot(p)).collect();
        let tok_seq = vec![0u32; tokens.len()];
        let out_rows = [n - 1];
        let b = Batch { tokens, pos: &pos, slots: &slots, tok_seq: &tok_seq, tables: &tables, out_rows: &out_rows };
        let mut logits = vec![0f32; hp.n_vocab];
        forward(&be, &w, &hp, &hp.rope, kv, &b, s, &mut || true, None, &mut logits).unwrap();
        let t = argmax(&logits) as u32;
        all.extend_from_slice(&logits);
        t
    };
    let mut tok = step(&prompt, 0, &mut s, &mut kv);
    let mut p = prompt.len() as u32;
    // One step to warm up, then a counted one, then timed ones.
    tok = step(&[tok], p, &mut s, &mut kv);
    p += 1;
    cd.take_counts();
    tok = step(&[tok], p, &mut s, &mut kv);
    p += 1;
    let counts = cd.take_counts();
    let total: usize = counts.values().sum();
    let t = Instant::now();
    for _ in 0..STEPS - 2 {
        tok = step(&[tok], p, &mut s, &mut kv);
        p += 1;
    }
    let per = t.elapsed().as_secs_f64() / (STEPS - 2) as f64;
    drop(step);
    println!(
        "decode step{}{note}, tiny-mixtral Q8_0 ({} layers): {total} launches ({:.1} per layer, embedding and output included), {:.1} us per step",
        if fuse { "" } else { " without the fused kernels" },
        hp.n_layer,
        total as f64 / hp.n_layer as f64,
        per * 1e6
    );
    println!("  {}", counts.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", "));
    all
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sweep_only = args.iter().any(|a| a == "--mmvq-sweep");
    if let Some(a) = args.iter().find(|a| a.starts_with("--") && *a != "--mmvq-sweep") {
        println!("unknown option {a} (usage: cuda_check [DATA_DIR] [--mmvq-sweep])");
        std::process::exit(1);
    }
    let data = PathBuf::from(args.iter().find(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"))));
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
    println!("{}, matvec block shape {}", dev.name(), dev.mmvq_shape());
    if sweep_only {
        let ok = sweep(&dev, &data);
        std::process::exit(if ok && dev.synchronize().is_ok() { 0 } else { 1 });
    }
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
    // The fused kernels sum as the separate ones do: the same bits, step after step.
    println!("CUDA graphs: {}", if dev.graphs_available() { "available" } else { "not available (or XDAN_CUDA_GRAPHS=0)" });
    let unfused = decode_steps(&dev, &data, false, "");
    let fused = decode_steps(&dev, &data, true, "");
    let xdan::backend::cuda::graph::Stats { direct, captured, replayed } = dev.graph_stats();
    println!("  launch queues so far: {direct} issued op by op, {captured} captured as graphs, {replayed} replayed");
    dev.set_graphs(false);
    let plain = decode_steps(&dev, &data, true, " with graphs off");
    dev.set_graphs(true);
    let d_plain = fused.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("{} decode logits with graph replay and without: max |diff| {d_plain:.1e}", if d_plain == 0.0 { "ok  " } else { "FAIL" });
    ok &= d_plain == 0.0;
    let same = fused.len() == unfused.len() && fused.iter().zip(&unfused).all(|(a, b)| a.to_bits() == b.to_bits());
    let d = fused.iter().zip(&unfused).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("{} decode logits with and without the fused kernels: {} (max |diff| {d:.1e})", if d < 1e-3 { "ok  " } else { "FAIL" }, if same { "identical" } else { "not identical" });
    ok &= d < 1e-3;
    bench(&dev, &data);
    bench_gemm(&dev, &data);
    if let Err(e) = dev.synchronize() {
        println!("FAIL: {e}");
        ok = false;
    }
    std::process::exit(if ok { 0 } else { 1 });
}
