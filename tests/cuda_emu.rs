//! The CUDA kernels (kernels/*.cu), built unchanged by the host C++ compiler under the
//! emulation header kernels/emu/cuda_emu.h, checked against float64 references on the CPU:
//! quantized matvecs and the prefill GEMMs (dense and grouped by expert) on real GGML blocks (tests/data/quant/*_real.bin, whose .f32 twins are
//! llama.cpp's dequantization), the row gather, RMSNorm, RoPE, SwiGLU, the MoE router with
//! ties, MoE dispatch, and paged split-K decode attention. The same checks run again, on
//! small shapes, under AddressSanitizer and ThreadSanitizer, and a copy of RMSNorm with its
//! `__syncthreads()` removed must be reported by ThreadSanitizer.
//!
//! Then the fused ops of the decode step through the CUDA backend on the emulator (the library
//! of tests/emu_lib), against the same backend with each op its own launch and against the CPU
//! backend; and the launches of a decode step, fused and not.
//!
//! The harness (tests/cuda_emu/harness.cpp) runs one operation per process: inputs and
//! outputs are raw arrays in a scratch folder under the target directory.

mod emu_lib;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use xdan::backend::cpu::CpuBackend;
use xdan::backend::cuda::backend::{CudaAct, GEMM_MIN_ROWS};
use xdan::backend::cuda::device::Counting;
use xdan::backend::cuda::{CudaBackend, EmuDevice};
use xdan::backend::{Backend, Ffn, KvLayout, RopeParams, KV_BLOCK};
use xdan::gguf::{Gguf, GgufWriter};
use xdan::model::forward::{forward, Batch, Scratch};
use xdan::model::{HParams, Weights};
use xdan::quant::{quantize_weights, GgmlType};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ---- building and running the harness ---------------------------------------------------

/// Compiles the harness with `flags` into `target/tmp/cuda-emu/<name>/harness`. `kernel_dir`
/// is searched before kernels/ (the broken-kernel test puts its copy there).
fn build(name: &str, flags: &[&str], kernel_dir: Option<&Path>) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("harness");
    let mut cmd = Command::new(std::env::var("CXX").unwrap_or_else(|_| "g++".into()));
    cmd.args(["-std=c++20", "-g", "-fno-strict-aliasing", "-pthread", "-Wall", "-Werror"]);
    cmd.args(["-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable"]);
    cmd.args(flags);
    if let Some(k) = kernel_dir {
        cmd.arg(format!("-I{}", k.display()));
    }
    cmd.arg(format!("-I{ROOT}/kernels"));
    cmd.arg(format!("{ROOT}/tests/cuda_emu/harness.cpp"));
    cmd.arg("-o").arg(&exe);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler (g++ >= 12 is required): {e}"));
    assert!(
        out.status.success(),
        "compiling the emulated kernels ({name}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

struct Harness {
    exe: PathBuf,
    work: PathBuf,
    /// Extra environment (sanitizer options).
    env: Vec<(String, String)>,
    /// Sanitizer output seen so far (empty for the plain build).
    reports: std::cell::RefCell<String>,
}

impl Harness {
    fn new(exe: PathBuf, env: Vec<(String, String)>) -> Harness {
        let work = exe.parent().unwrap().join("work");
        std::fs::create_dir_all(&work).unwrap();
        Harness { exe, work, env, reports: Default::default() }
    }

    fn put(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.work.join(name), bytes).unwrap();
    }
    fn put_f32(&self, name: &str, v: &[f32]) {
        self.put(name, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
    }
    fn put_i32(&self, name: &str, v: &[i32]) {
        self.put(name, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
    }
    fn get(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.work.join(name)).unwrap_or_else(|e| panic!("harness output {name}: {e}"))
    }
    fn get_f32(&self, name: &str) -> Vec<f32> {
        f32s(&self.get(name))
    }
    fn get_i32(&self, name: &str) -> Vec<i32> {
        self.get(name).chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    /// Runs one operation; returns its stderr. Panics when it fails.
    fn run(&self, op: &str, args: &[String]) -> String {
        let mut cmd = Command::new(&self.exe);
        cmd.arg(op).arg(&self.work).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        self.reports.borrow_mut().push_str(&err);
        assert!(out.status.success(), "harness {op} {args:?} failed ({}):\n{err}", out.status);
        err
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn fixture(ty: &str) -> (Vec<u8>, Vec<f32>) {
    let dir = Path::new(ROOT).join("tests/data/quant");
    let bin = std::fs::read(dir.join(format!("{ty}_real.bin"))).unwrap();
    let f = f32s(&std::fs::read(dir.join(format!("{ty}_real.f32"))).unwrap());
    (bin, f)
}

/// Deterministic pseudo-random numbers (a 64-bit LCG), uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// Activations whose magnitude changes from one 32-block to the next, as hidden states do.
fn activations(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let block_scale = 0.2 + 2.0 * ((i / 32) % 5) as f32;
            rng.next() * block_scale
        })
        .collect()
}

/// (block elements, block bytes) of the types the harness knows.
fn type_shape(ty: &str) -> (usize, usize) {
    match ty {
        "F32" => (1, 4),
        "F16" | "BF16" => (1, 2),
        "Q4_0" | "IQ4_NL" => (32, 18),
        "Q4_1" => (32, 20),
        "Q5_0" => (32, 22),
        "Q5_1" => (32, 24),
        "Q8_0" => (32, 34),
        "Q2_K" => (256, 84),
        "Q3_K" => (256, 110),
        "Q4_K" => (256, 144),
        "Q5_K" => (256, 176),
        "Q6_K" => (256, 210),
        "IQ4_XS" => (256, 136),
        "IQ2_XXS" => (256, 66),
        "IQ2_XS" => (256, 74),
        "IQ2_S" => (256, 82),
        "IQ3_XXS" => (256, 98),
        "IQ3_S" => (256, 110),
        "IQ1_S" => (256, 50),
        "IQ1_M" => (256, 56),
        "MXFP4" => (32, 17),
        _ => panic!("no shape for {ty}"),
    }
}

const QUANT_TYPES: &[&str] = &[
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ2_XXS",
    "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "MXFP4",
];

/// The weights of a type as (raw bytes, dequantized f32) for `n` elements: the fixture's real
/// blocks (repeated when more are wanted); F32 pseudo-random.
fn weights(ty: &str, n: usize, rng: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    if ty == "F32" {
        let w = rng.vec(n, 0.1);
        return (w.iter().flat_map(|x| x.to_le_bytes()).collect(), w);
    }
    let (bin, f) = fixture(ty);
    let (be, bb) = type_shape(ty);
    if f.len() >= n {
        return (bin[..n / be * bb].to_vec(), f[..n].to_vec());
    }
    // More than the fixture holds: its blocks again, with a period of one block less, so that
    // stacked matrices (experts) and rows of the same length differ.
    let period = f.len() / be - 1;
    let (mut b, mut v) = (Vec::new(), Vec::new());
    for blk in 0..n / be {
        let src = blk % period;
        b.extend_from_slice(&bin[src * bb..][..bb]);
        v.extend_from_slice(&f[src * be..][..be]);
    }
    (b, v)
}

/// Decoded q8_1 activation blocks written by the harness: (d, s, 32 int8 values).
fn q8_blocks(raw: &[u8]) -> Vec<(f32, f32, [i8; 32])> {
    raw.chunks_exact(40)
        .map(|c| {
            let d = f32::from_le_bytes(c[0..4].try_into().unwrap());
            let s = f32::from_le_bytes(c[4..8].try_into().unwrap());
            let mut q = [0i8; 32];
            for (i, v) in q.iter_mut().enumerate() {
                *v = c[8 + i] as i8;
            }
            (d, s, q)
        })
        .collect()
}

// ---- the checks ------------------------------------------------------------------------------

struct Report {
    lines: Vec<String>,
}

/// Checks y = W x for one type and shape against float64 references: `strict` against the
/// activations as the kernel quantized them (only float rounding may differ), `loose` against
/// the original activations with the exact bound of the q8_1 rounding, sum over blocks of
/// d/2 * sum |w|.
fn check_matvec(h: &Harness, ty: &str, nrows: usize, ncols: usize, rng: &mut Rng, rep: &mut Report) {
    let (w, wf) = weights(ty, nrows * ncols, rng);
    let x = activations(rng, ncols);
    h.put("w.bin", &w);
    h.put_f32("x.f32", &x);
    h.run("matvec", &[ty.into(), nrows.to_string(), ncols.to_string()]);
    let y = h.get_f32("y.f32");
    assert_eq!(y.len(), nrows);
    let quantized = !matches!(ty, "F32" | "F16" | "BF16");
    let xq: Vec<f64> = if quantized {
        let blocks = q8_blocks(&h.get("xq.bin"));
        assert_eq!(blocks.len(), ncols / 32);
        // The quantizer itself: ggml's integers (x * 127 / amax rounded half to even), the
        // scale amax / 127 rounded to f16, s = d * sum(q).
        for (b, (d, s, q)) in blocks.iter().enumerate() {
            let xb = &x[b * 32..b * 32 + 32];
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let want_d = half::f16::from_f32(amax / 127.0).to_f32();
            assert_eq!(*d, want_d, "{ty}: q8_1 block {b} scale, amax {amax}");
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            for i in 0..32 {
                assert_eq!(q[i] as f32, (xb[i] * id).round_ties_even(), "{ty}: q8_1 block {b} value {i}");
            }
            let sum: i32 = q.iter().map(|&v| v as i32).sum();
            assert_eq!(*s, d * sum as f32, "{ty}: q8_1 block {b} sum");
        }
        blocks.iter().flat_map(|(d, _, q)| q.iter().map(move |&v| *d as f64 * v as f64)).collect()
    } else {
        x.iter().map(|&v| v as f64).collect()
    };
    // Float weights: also the CPU backend's own product (its dot of a weight row with f32
    // activations, qops::dot_rows). Both sum the same exact f32 products in f32, in different
    // orders, so each is within `tol` of the float64 sum and they are within 2 `tol` of each other.
    let cpu: Option<Vec<f32>> = (!quantized).then(|| {
        let gt = GgmlType::from_name(ty).unwrap();
        let act: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![0f32; nrows];
        xdan::quant::vec_dot_rows(gt, ncols, &w, &act, &mut out);
        out
    });
    let mut worst_strict = 0f64;
    let mut worst_loose = 0f64;
    let mut worst_cpu = 0f64;
    for r in 0..nrows {
        let row = &wf[r * ncols..(r + 1) * ncols];
        let mut strict = 0f64;
        let mut mag = 0f64;
        let mut exact = 0f64;
        let mut bound = 0f64;
        for c in 0..ncols {
            let wv = row[c] as f64;
            strict += wv * xq[c];
            mag += (wv * xq[c]).abs();
            exact += wv * x[c] as f64;
        }
        if quantized {
            // |x - d q| <= d0 / 2 + 127 |d - d0| per value, d0 = amax / 127 before f16 rounding.
            for b in 0..ncols / 32 {
                let amax = x[b * 32..b * 32 + 32].iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let d0 = amax / 127.0;
                let dh = half::f16::from_f32(d0 as f32).to_f32() as f64;
                let sw: f64 = row[b * 32..b * 32 + 32].iter().map(|v| v.abs() as f64).sum();
                bound += (d0 / 2.0 + 127.0 * (dh - d0).abs()) * sw;
            }
        }
        // f32 products and sums of a few hundred terms: a few ulp of the magnitude.
        let tol = 2e-6 * mag + 1e-7;
        let ds = (y[r] as f64 - strict).abs();
        assert!(ds <= tol, "{ty} {nrows}x{ncols} row {r}: got {}, float64 reference {strict} (|diff| {ds} > {tol})", y[r]);
        let dl = (y[r] as f64 - exact).abs();
        assert!(dl <= bound * 1.0001 + tol, "{ty} row {r}: {} vs unquantized {exact}: {dl} > q8_1 bound {bound}", y[r]);
        if let Some(c) = &cpu {
            let dc = (y[r] as f64 - c[r] as f64).abs();
            assert!(dc <= 2.0 * tol, "{ty} {nrows}x{ncols} row {r}: got {}, CPU backend {} (|diff| {dc} > {})", y[r], c[r], 2.0 * tol);
            worst_cpu = worst_cpu.max(dc / mag.max(1e-30));
        }
        worst_strict = worst_strict.max(ds / mag.max(1e-30));
        worst_loose = worst_loose.max(dl / bound.max(1e-30));
    }
    let loose = if quantized {
        format!(", max |err vs f32 x| / q8_1 bound = {worst_loose:.2}")
    } else {
        format!(", max |GPU - CPU backend| / sum|w*x| = {worst_cpu:.1e}")
    };
    rep.lines.push(format!("matvec {ty:7} {nrows:2}x{ncols:4}: max |err| / sum|w*xq| = {worst_strict:.1e}{loose}"));
}

/// f32 to the nearest f16 and back, as the GEMM stores its tiles.
fn f16r(v: f32) -> f64 {
    half::f16::from_f32(v).to_f32() as f64
}

/// The tolerance of one GEMM output against the float64 sum of the f16-rounded products: the
/// f32 accumulation over `ncols` terms (n u sum|terms|, u = 2^-24). The kernel decodes weights
/// bit for bit as the CPU does, so their f16 roundings are the test's own.
fn gemm_tol(ncols: usize, mag: f64) -> f64 {
    ncols as f64 * 2f64.powi(-24) * mag + 1e-9
}

/// The prefill GEMM (gemm.cu) on `n_tok` tokens: y[t][r] = dot(W[r], x[t]) with weights and
/// activations rounded to f16 and f32 accumulation, against float64 on the same f16 values;
/// every output written once (the kernel writes nothing past the shape: y starts at -1).
fn check_gemm(h: &Harness, ty: &str, nrows: usize, ncols: usize, n_tok: usize, rng: &mut Rng, rep: &mut Report) {
    let (w, wf) = weights(ty, nrows * ncols, rng);
    let x = activations(rng, n_tok * ncols);
    h.put("w.bin", &w);
    h.put_f32("x.f32", &x);
    h.run("gemm", &[ty.into(), nrows.to_string(), ncols.to_string(), n_tok.to_string()]);
    let y = h.get_f32("y.f32");
    assert_eq!(y.len(), n_tok * nrows);
    let mut worst = 0f64;
    for t in 0..n_tok {
        for r in 0..nrows {
            let (mut want, mut mag) = (0f64, 0f64);
            for c in 0..ncols {
                let p = f16r(wf[r * ncols + c]) * f16r(x[t * ncols + c]);
                want += p;
                mag += p.abs();
            }
            let tol = gemm_tol(ncols, mag);
            let d = (y[t * nrows + r] as f64 - want).abs();
            assert!(d <= tol, "gemm {ty} {nrows}x{ncols} token {t} row {r}: got {}, float64 {want} (|diff| {d} > {tol})", y[t * nrows + r]);
            worst = worst.max(d / mag.max(1e-30));
        }
    }
    rep.lines.push(format!("gemm {ty:7} {nrows:2}x{ncols:4}, {n_tok:3} tokens: max |err| / sum|w*x| (f16 w, x) = {worst:.1e}"));
}

/// The grouped MoE prefill: `n_tok` tokens' top-k experts `ids` (k per token, distinct) grouped
/// by moe_group, then one grouped GEMM launch (x_group = k: gate/up, each slot reads its token;
/// 1: down, a row per slot). Counts per expert and every slot's output are checked.
#[allow(clippy::too_many_arguments)]
fn check_moe_gemm(h: &Harness, ty: &str, nrows: usize, ncols: usize, ids: &[i32], k: usize, x_group: usize, rng: &mut Rng, rep: &mut Report) {
    let n_expert = 8;
    let n_tok = ids.len() / k;
    let (w, wf) = weights(ty, n_expert * nrows * ncols, rng);
    let x_rows = ids.len().div_ceil(x_group);
    let x = activations(rng, ncols * x_rows);
    h.put("w.bin", &w);
    h.put_i32("ids.i32", ids);
    h.put_f32("x.f32", &x);
    let args: Vec<String> = [nrows, ncols, n_expert, n_tok, k, x_group].iter().map(|v| v.to_string()).collect();
    h.run("moe_gemm", &[&[ty.to_string()], &args[..]].concat());
    let counts = h.get_i32("counts.i32");
    for (e, &c) in counts.iter().enumerate() {
        assert_eq!(c as usize, ids.iter().filter(|&&i| i as usize == e).count(), "moe_group: count of expert {e}");
    }
    let y = h.get_f32("y.f32");
    for (slot, &e) in ids.iter().enumerate() {
        let xo = slot / x_group * ncols;
        for r in 0..nrows {
            let row = &wf[(e as usize * nrows + r) * ncols..][..ncols];
            let terms: Vec<f64> = row.iter().zip(&x[xo..xo + ncols]).map(|(&a, &b)| f16r(a) * f16r(b)).collect();
            let want: f64 = terms.iter().sum();
            let mag: f64 = terms.iter().map(|v| v.abs()).sum();
            let got = y[slot * nrows + r] as f64;
            let tol = gemm_tol(ncols, mag);
            assert!((got - want).abs() <= tol, "moe_gemm {ty} slot {slot} expert {e} row {r}: {got} vs {want}");
        }
    }
    rep.lines.push(format!("moe gemm {ty}: {n_tok} tokens top-{k} of {n_expert} experts (counts {counts:?}), {nrows}x{ncols}, x_group {x_group}"));
}

fn check_get_rows(h: &Harness, ty: &str, rng: &mut Rng, rep: &mut Report) {
    let ncols = 512;
    let nrows = 16;
    let (w, _) = weights(ty, nrows * ncols, rng);
    let gt = xdan::quant::GgmlType::from_name(ty).unwrap();
    let mut wf = vec![0f32; nrows * ncols];
    xdan::quant::dequantize(gt, &w, &mut wf).unwrap();
    let ids = [3i32, 0, 15, 7, 3];
    h.put("table.bin", &w);
    h.put_i32("ids.i32", &ids);
    h.run("get_rows", &[ty.into(), ncols.to_string()]);
    let out = h.get_f32("out.f32");
    // The kernels' block decoders (dequant.cuh, shared with the GEMM) must give the CPU
    // dequantizer's values bit for bit.
    assert_eq!(out.len(), ids.len() * ncols);
    for (t, &id) in ids.iter().enumerate() {
        for c in 0..ncols {
            let want = wf[id as usize * ncols + c];
            let got = out[t * ncols + c];
            assert!(got.to_bits() == want.to_bits(), "get_rows {ty} id {id} col {c}: {got:e} vs CPU {want:e}");
        }
    }
    rep.lines.push(format!("get_rows {ty:7}: {} rows equal to the CPU dequantizer bit for bit", ids.len()));
}

fn check_rms_norm(h: &Harness, rows: usize, n: usize, threads: usize, rng: &mut Rng, rep: &mut Report) {
    let x = rng.vec(rows * n, 3.0);
    let w: Vec<f32> = (0..n).map(|_| 1.0 + 0.1 * rng.next()).collect();
    let eps = 1e-5f32;
    h.put_f32("x.f32", &x);
    h.put_f32("w.f32", &w);
    h.run("rms_norm", &[rows.to_string(), n.to_string(), eps.to_string(), threads.to_string()]);
    let y = h.get_f32("y.f32");
    let mut worst = 0f64;
    for r in 0..rows {
        let xr = &x[r * n..(r + 1) * n];
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        let scale = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..n {
            let want = xr[i] as f64 * scale * w[i] as f64;
            let err = (y[r * n + i] as f64 - want).abs();
            assert!(err <= 1e-5 * want.abs() + 1e-6, "rms_norm {rows}x{n} [{r},{i}]: {} vs {want}", y[r * n + i]);
            worst = worst.max(err);
        }
    }
    rep.lines.push(format!("rms_norm {rows}x{n} ({threads} threads): max |err| {worst:.1e}"));
}

fn check_rope(h: &Harness, n_rot: usize, freq_scale: f32, factors: bool, rep: &mut Report, rng: &mut Rng) {
    let (nt, nh, hd, base) = (4usize, 3usize, 32usize, 1e6f32);
    let pos = [0i32, 1, 17, 100000];
    let x = rng.vec(nt * nh * hd, 1.0);
    let ff: Vec<f32> = (0..n_rot / 2).map(|i| 1.0 + i as f32 * 0.25).collect();
    h.put_f32("x.f32", &x);
    h.put_i32("pos.i32", &pos);
    h.put_f32("ff.f32", &ff);
    let mut args: Vec<String> = [nt, nh, hd, n_rot].iter().map(|v| v.to_string()).collect();
    args.extend([base.to_string(), freq_scale.to_string(), (factors as i32).to_string()]);
    h.run("rope", &args);
    let y = h.get_f32("y.f32");
    let mut worst = 0f64;
    for t in 0..nt {
        for head in 0..nh {
            let o = (t * nh + head) * hd;
            for i in 0..hd / 2 {
                let (a, b) = (x[o + 2 * i] as f64, x[o + 2 * i + 1] as f64);
                let (wa, wb) = if 2 * i < n_rot {
                    let mut theta = pos[t] as f64 * freq_scale as f64 * (base as f64).powf(-2.0 * i as f64 / n_rot as f64);
                    if factors {
                        theta /= ff[i] as f64;
                    }
                    (a * theta.cos() - b * theta.sin(), a * theta.sin() + b * theta.cos())
                } else {
                    (a, b)
                };
                // The angle is exact to double precision; sin/cos are rounded to f32.
                for (got, want) in [(y[o + 2 * i], wa), (y[o + 2 * i + 1], wb)] {
                    let err = (got as f64 - want).abs();
                    assert!(err <= 1e-6 * (1.0 + a.abs() + b.abs()), "rope pos {} head {head} pair {i}: {got} vs {want}", pos[t]);
                    worst = worst.max(err);
                }
            }
        }
    }
    rep.lines.push(format!(
        "rope_norm n_rot {n_rot}/{hd}, freq_scale {freq_scale}, freq_factors {factors}, positions {pos:?}: max |err| {worst:.1e}"
    ));
}

fn check_swiglu_combine(h: &Harness, rng: &mut Rng, rep: &mut Report) {
    let n = 300;
    let g = rng.vec(n, 4.0);
    let u = rng.vec(n, 2.0);
    h.put_f32("g.f32", &g);
    h.put_f32("u.f32", &u);
    h.run("swiglu", &[n.to_string()]);
    let y = h.get_f32("y.f32");
    for i in 0..n {
        let (gv, uv) = (g[i] as f64, u[i] as f64);
        let want = gv / (1.0 + (-gv).exp()) * uv;
        assert!((y[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "swiglu {i}: {} vs {want}", y[i]);
    }
    let (k, nt) = (2, 3);
    let x = rng.vec(nt * n, 1.0);
    let e = rng.vec(nt * k * n, 1.0);
    let w = [0.7f32, 0.3, 0.5, 0.5, 0.9, 0.1];
    h.put_f32("x.f32", &x);
    h.put_f32("e.f32", &e);
    h.put_f32("w.f32", &w);
    h.run("combine", &[k.to_string(), n.to_string(), nt.to_string()]);
    let y = h.get_f32("y.f32");
    for t in 0..nt {
        for i in 0..n {
            let mix: f64 = (0..k).map(|j| w[t * k + j] as f64 * e[(t * k + j) * n + i] as f64).sum();
            let want = x[t * n + i] as f64 + mix;
            assert!((y[t * n + i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "moe_combine + add token {t} [{i}]");
        }
    }
    rep.lines.push(format!("swiglu, moe_combine, add_f32: {n} values ok"));
}

/// The router on the logits given; checks probabilities against a float64 softmax and the
/// choice against a CPU selection on the kernel's own probabilities (larger first, ties to the
/// lower id), plus `expect` where given.
fn check_router(h: &Harness, ne: usize, k: usize, logits: &[f32], expect: &[Option<Vec<i32>>]) -> Vec<i32> {
    let nt = logits.len() / ne;
    h.put_f32("logits.f32", logits);
    h.run("router", &[nt.to_string(), ne.to_string(), k.to_string()]);
    let ids = h.get_i32("ids.i32");
    let wts = h.get_f32("weights.f32");
    let probs = h.get_f32("probs.f32");
    for t in 0..nt {
        let lg = &logits[t * ne..(t + 1) * ne];
        let mx = lg.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
        let z: f64 = lg.iter().map(|&v| (v as f64 - mx).exp()).sum();
        for e in 0..ne {
            let want = (lg[e] as f64 - mx).exp() / z;
            let got = probs[t * ne + e] as f64;
            assert!((got - want).abs() <= 1e-6 * want + 1e-9, "router token {t} expert {e}: p {got} vs {want}");
        }
        let p = &probs[t * ne..(t + 1) * ne];
        let mut order: Vec<usize> = (0..ne).collect();
        order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap().then(a.cmp(&b)));
        let want_ids: Vec<i32> = order[..k].iter().map(|&e| e as i32).collect();
        assert_eq!(&ids[t * k..(t + 1) * k], &want_ids[..], "router token {t}: chosen experts");
        if let Some(Some(e)) = expect.get(t) {
            assert_eq!(&ids[t * k..(t + 1) * k], &e[..], "router token {t}: chosen experts (ties)");
        }
        let total: f64 = want_ids.iter().map(|&e| p[e as usize] as f64).sum();
        for j in 0..k {
            let want = p[want_ids[j] as usize] as f64 / total;
            assert!((wts[t * k + j] as f64 - want).abs() <= 1e-6, "router token {t} weight {j}");
        }
    }
    ids
}

fn check_routers(h: &Harness, rng: &mut Rng, rep: &mut Report) -> Vec<i32> {
    // 8 experts, top-2, with ties: all equal; a tie for first; a tie for second; random.
    let mut logits = vec![0.5f32; 8];
    logits.extend([0.1, 2.0, -1.0, 2.0, 0.3, 0.0, 1.0, -3.0]);
    logits.extend([3.0, 1.0, -1.0, 1.5, 0.2, 1.5, 1.5, 0.0]);
    logits.extend(rng.vec(8, 3.0));
    let expect = [Some(vec![0, 1]), Some(vec![1, 3]), Some(vec![0, 3]), None];
    let ids = check_router(h, 8, 2, &logits, &expect);
    // 40 experts (two per lane for some lanes), top-4, 3 tokens (a warp past the end in the
    // last block): a tie between expert 33 (lane 1, second slot) and expert 1.
    let mut l40 = rng.vec(40 * 3, 1.0);
    l40[33] = 5.0;
    l40[1] = 5.0;
    l40[7] = 4.0;
    l40[39] = 4.5;
    let expect40 = [Some(vec![1, 33, 39, 7])];
    check_router(h, 40, 4, &l40, &expect40);
    rep.lines.push("moe_router: 8 experts top-2 (4 tokens, ties), 40 experts top-4 (3 tokens, ties) ok".into());
    ids[6..8].to_vec()
}

/// MoE dispatch: `ids.len()` slots over n_expert stacked matrices; slot j reads activation row
/// j / x_group (x_group = k: the gate/up projections of k experts per token; 1: down).
fn check_moe(h: &Harness, ty: &str, nrows: usize, ncols: usize, ids: &[i32], x_group: usize, rng: &mut Rng, rep: &mut Report) {
    let n_expert = 8;
    let (w, wf) = weights(ty, n_expert * nrows * ncols, rng);
    let slots = ids.len();
    let x_rows = slots.div_ceil(x_group);
    let x = activations(rng, ncols * x_rows);
    h.put("w.bin", &w);
    h.put_i32("ids.i32", ids);
    h.put_f32("x.f32", &x);
    let mut args = vec![ty.to_string()];
    args.extend([nrows, ncols, n_expert, slots, x_rows, x_group].iter().map(|v| v.to_string()));
    h.run("moe", &args);
    let y = h.get_f32("y.f32");
    let blocks = q8_blocks(&h.get("xq.bin"));
    let xq: Vec<f64> = blocks.iter().flat_map(|(d, _, q)| q.iter().map(move |&v| *d as f64 * v as f64)).collect();
    for (slot, &e) in ids.iter().enumerate() {
        let xo = slot / x_group * ncols;
        for r in 0..nrows {
            let row = &wf[(e as usize * nrows + r) * ncols..][..ncols];
            let want: f64 = row.iter().zip(&xq[xo..xo + ncols]).map(|(&a, &b)| a as f64 * b).sum();
            let mag: f64 = row.iter().zip(&xq[xo..xo + ncols]).map(|(&a, &b)| (a as f64 * b).abs()).sum();
            let got = y[slot * nrows + r] as f64;
            assert!((got - want).abs() <= 2e-6 * mag + 1e-7, "moe {ty} slot {slot} expert {e} row {r}: {got} vs {want}");
        }
    }
    rep.lines.push(format!("moe dispatch {ty}: slots {ids:?} of {n_expert} experts, {nrows}x{ncols}, {x_group} slot(s) per activation row"));
}

/// A KV cache element type, numbered as the harness's `attn` op takes it.
#[derive(Clone, Copy, Debug)]
enum Kv {
    F32 = 0,
    F16 = 1,
    Q8_0 = 2,
}

/// Attention over a paged cache: sequences of lengths `lens`, their 16-slot blocks scattered
/// over the cache in reverse order. With `causal`, every position of each sequence is a query
/// seeing the positions up to its own (as in a prefill); else one query per sequence seeing all
/// (decode).
#[allow(clippy::too_many_arguments)]
fn check_attention(h: &Harness, lens: &[usize], causal: bool, kv: Kv, nh: usize, nkv: usize, hd: usize, split: usize, rng: &mut Rng, rep: &mut Report) {
    let row = nkv * hd;
    let total_blocks: usize = lens.iter().map(|l| l.div_ceil(16)).sum();
    let n_blocks_pool = 2 * total_blocks + 1;
    let mut tables: Vec<i32> = Vec::new();
    let mut table_of = Vec::new();
    let mut next = n_blocks_pool as i32 - 1;
    for &len in lens {
        table_of.push(tables.len() as i32);
        for _ in 0..len.div_ceil(16) {
            tables.push(next);
            next -= 2;
        }
    }
    // K/V per sequence position, stored at their slots.
    let mut slots = Vec::new();
    let mut kv_at = Vec::new(); // (sequence, position) of each stored row
    for (s, &len) in lens.iter().enumerate() {
        for p in 0..len {
            slots.push(tables[table_of[s] as usize + p / 16] * 16 + (p % 16) as i32);
            kv_at.push((s, p));
        }
    }
    let knew = rng.vec(slots.len() * row, 1.0);
    let vnew = rng.vec(slots.len() * row, 1.0);
    // What the cache holds: the values themselves, rounded to f16, or Q8_0 blocks of 32 as the
    // CPU quantizes them (the kernel must store the same blocks).
    let cached = |v: &[f32]| -> Vec<f32> {
        match kv {
            Kv::F32 => v.to_vec(),
            Kv::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
            Kv::Q8_0 => v
                .chunks_exact(32)
                .flat_map(|c| {
                    let mut y = [0.0f32; 32];
                    xdan::quant::legacy::BlockQ8_0::quantize(c).dequantize(&mut y);
                    y
                })
                .collect(),
        }
    };
    let (kref, vref) = (cached(&knew), cached(&vnew));
    let row_of = |s: usize, p: usize| kv_at.iter().position(|&x| x == (s, p)).unwrap();
    // Queries: (sequence, visible positions).
    let queries: Vec<(usize, usize)> = lens
        .iter()
        .enumerate()
        .flat_map(|(s, &len)| if causal { (1..=len).map(|n| (s, n)).collect::<Vec<_>>() } else { vec![(s, len)] })
        .collect();
    let nt = queries.len();
    let q = rng.vec(nt * nh * hd, 1.0);
    let scale = 1.0 / (hd as f32).sqrt();
    h.put_f32("knew.f32", &knew);
    h.put_f32("vnew.f32", &vnew);
    h.put_i32("slots.i32", &slots);
    h.put_f32("q.f32", &q);
    h.put_i32("tables.i32", &tables);
    h.put_i32("table_off.i32", &queries.iter().map(|&(s, _)| table_of[s]).collect::<Vec<_>>());
    h.put_i32("n_kv.i32", &queries.iter().map(|&(_, n)| n as i32).collect::<Vec<_>>());
    let mut args: Vec<String> = [nt, nh, nkv, hd, split, n_blocks_pool * 16].iter().map(|v| v.to_string()).collect();
    args.push(scale.to_string());
    args.push((kv as i32).to_string());
    h.run("attn", &args);
    let out = h.get_f32("out.f32");
    let mut worst = 0f64;
    for (t, &(s, n)) in queries.iter().enumerate() {
        for head in 0..nh {
            let kvh = head / (nh / nkv);
            let qh = &q[(t * nh + head) * hd..][..hd];
            let sc: Vec<f64> = (0..n)
                .map(|p| {
                    let k = &kref[row_of(s, p) * row + kvh * hd..][..hd];
                    qh.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale as f64
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = sc.iter().map(|v| (v - mx).exp()).sum();
            for c in 0..hd {
                let want: f64 =
                    (0..n).map(|p| (sc[p] - mx).exp() / z * vref[row_of(s, p) * row + kvh * hd + c] as f64).sum();
                let got = out[(t * nh + head) * hd + c] as f64;
                let err = (got - want).abs();
                assert!(err <= 2e-6, "attention lens {lens:?} query {t} (seq {s}, {n} positions) head {head} dim {c}: {got} vs {want}");
                worst = worst.max(err);
            }
        }
    }
    let kind = format!("{}, {kv:?} KV", if causal { "causal batch" } else { "decode" });
    rep.lines.push(format!(
        "attention {kind} lens {lens:?} split {split} heads {nh}/{nkv} dim {hd}: {nt} queries, max |err| {worst:.1e}"
    ));
}

/// The f32 -> f16 conversion of the f16 KV cache, bit for bit against the `half` crate, on
/// random values over the whole range and the edge cases (subnormals, ties, overflow, NaN).
fn check_f2h(h: &Harness, rng: &mut Rng, rep: &mut Report) {
    let mut x: Vec<f32> = (0..4000).map(|i| rng.next() * 2f32.powi((i % 40) - 28)).collect();
    x.extend([0.0, -0.0, 65504.0, 65520.0, 65519.99, 1e9, -1e9, f32::INFINITY, f32::NEG_INFINITY]);
    x.extend([5.96e-8, 2.98e-8, 2.9802322e-8, 2.9802326e-8, 6.1e-5, 6.097e-5, 1.0009765625, 1.00048828125, 1.00146484375]);
    x.extend((0..2000).map(|i| f32::from_bits(0x3300_0000 + i * 0x0001_3579)));
    h.put_f32("x.f32", &x);
    h.run("f2h", &[]);
    let got: Vec<u16> = h.get("h.u16").chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    for (i, &v) in x.iter().enumerate() {
        let want = half::f16::from_f32(v).to_bits();
        assert_eq!(got[i], want, "f32 {v:e} ({:#x}) -> f16 {:#06x}, want {want:#06x}", v.to_bits(), got[i]);
    }
    let nan = f32::NAN;
    h.put_f32("x.f32", &[nan]);
    h.run("f2h", &[]);
    let g = h.get("h.u16");
    assert!(half::f16::from_bits(u16::from_le_bytes([g[0], g[1]])).is_nan(), "NaN must stay NaN");
    rep.lines.push(format!("convert_f32_f16: {} values bit-exact with the half crate, NaN kept", x.len()));
}

/// Every check; `small` keeps shapes and counts down for the sanitizer builds.
fn run_all(h: &Harness, small: bool) -> Report {
    let mut rep = Report { lines: Vec::new() };
    let mut rng = Rng(0x5eed);
    for ty in QUANT_TYPES.iter().chain(&["F16", "BF16", "F32"]) {
        check_matvec(h, ty, 16, 512, &mut rng, &mut rep);
        if !small {
            check_matvec(h, ty, 4, 2048, &mut rng, &mut rep);
            check_matvec(h, ty, 3, 2048, &mut rng, &mut rep); // a block with a row past the end
        }
        if !small || *ty == "Q4_K" {
            check_get_rows(h, ty, &mut rng, &mut rep);
        }
        // Rows not a multiple of the 64-row tile; 1, 7, 33 tokens (and 150: two token tiles).
        if !small {
            for n_tok in [1, 7, 33] {
                check_gemm(h, ty, 72, 512, n_tok, &mut rng, &mut rep);
            }
            if matches!(*ty, "Q4_K" | "IQ2_XXS" | "Q8_0") {
                check_gemm(h, ty, 136, 256, 150, &mut rng, &mut rep);
            }
        } else if matches!(*ty, "Q4_K" | "IQ2_XXS" | "F16" | "BF16") {
            check_gemm(h, ty, 72, 256, 7, &mut rng, &mut rep);
        }
    }
    // Rows that start and end off the 16-byte grid the matvecs stage weights on, a row shorter
    // than one 32-sub-block chunk, and one chunk and a bit (under the sanitizers too: no read
    // past the last row).
    for ty in QUANT_TYPES {
        let qk = type_shape(ty).0;
        check_matvec(h, ty, 5, 3 * qk, &mut rng, &mut rep);
        check_matvec(h, ty, 3, if qk == 256 { 1280 } else { 1312 }, &mut rng, &mut rep);
    }
    check_rms_norm(h, 3, 256, 128, &mut rng, &mut rep);
    if !small {
        check_rms_norm(h, 2, 1000, 256, &mut rng, &mut rep);
        check_rms_norm(h, 1, 4096, 1024, &mut rng, &mut rep);
    }
    check_rope(h, 32, 1.0, false, &mut rep, &mut rng);
    check_rope(h, 16, 0.25, true, &mut rep, &mut rng);
    check_swiglu_combine(h, &mut rng, &mut rep);
    let top2 = check_routers(h, &mut rng, &mut rep);
    // Top-2 of 8 for one token (gate/up: both slots read the token; down: one row per slot),
    // then three tokens' choices at once.
    let three = [top2[0], top2[1], 7, 0, 2, 7];
    for (ty, nrows, ncols) in [("Q8_0", 2, 512), ("Q4_K", 4, 256)] {
        check_moe(h, ty, nrows, ncols, &top2, 2, &mut rng, &mut rep);
        check_moe(h, ty, nrows, ncols, &top2, 1, &mut rng, &mut rep);
        check_moe(h, ty, nrows, ncols, &three, 2, &mut rng, &mut rep);
    }
    // Grouped MoE prefill: top-2 of 8 for 33 tokens (pseudo-random distinct pairs), gate/up
    // (x_group 2) and down (x_group 1); 260 tokens on one expert once (three 128-token tiles).
    let pairs = |n: usize, rng: &mut Rng| -> Vec<i32> {
        (0..n)
            .flat_map(|_| {
                let a = ((rng.next() + 1.0) * 4.0) as i32 % 8;
                let b = (a + 1 + ((rng.next() + 1.0) * 3.5) as i32 % 7) % 8;
                [a, b]
            })
            .collect()
    };
    let ids33 = pairs(33, &mut rng);
    for (ty, nrows, ncols) in [("Q8_0", 40, 256), ("IQ2_XXS", 72, 256)] {
        check_moe_gemm(h, ty, nrows, ncols, &ids33, 2, 2, &mut rng, &mut rep);
        if !small {
            check_moe_gemm(h, ty, nrows, ncols, &ids33, 2, 1, &mut rng, &mut rep);
        }
    }
    if !small {
        // Every token picks expert 3 (260 tokens: three token tiles) and one of the others.
        let ids260: Vec<i32> = (0..260).flat_map(|t| [3, [0, 1, 2, 4, 5, 6, 7][t % 7]]).collect();
        check_moe_gemm(h, "Q4_K", 24, 256, &ids260, 2, 2, &mut rng, &mut rep);
    }
    if small {
        check_attention(h, &[17, 33], false, Kv::F32, 8, 2, 32, 32, &mut rng, &mut rep);
        check_attention(h, &[17], false, Kv::F16, 8, 2, 32, 32, &mut rng, &mut rep);
        check_attention(h, &[17], false, Kv::Q8_0, 8, 2, 32, 32, &mut rng, &mut rep);
    } else {
        for len in [1, 15, 16, 17, 31, 32, 33, 100] {
            check_attention(h, &[len], false, Kv::F32, 8, 2, 32, 32, &mut rng, &mut rep);
        }
        check_attention(h, &[17, 1, 100, 33], false, Kv::F32, 8, 2, 32, 32, &mut rng, &mut rep);
        check_attention(h, &[17, 1, 100, 33], false, Kv::F16, 8, 2, 32, 32, &mut rng, &mut rep);
        check_attention(h, &[100], false, Kv::F32, 4, 4, 128, 16, &mut rng, &mut rep);
        check_attention(h, &[100, 5], false, Kv::F16, 4, 1, 256, 64, &mut rng, &mut rep);
        check_attention(h, &[47], false, Kv::F32, 2, 2, 64, 256, &mut rng, &mut rep);
        check_attention(h, &[20, 35], true, Kv::F32, 4, 2, 32, 16, &mut rng, &mut rep);
        check_attention(h, &[20, 35], true, Kv::F16, 4, 2, 32, 16, &mut rng, &mut rep);
        check_attention(h, &[17, 1, 100, 33], false, Kv::Q8_0, 8, 2, 32, 32, &mut rng, &mut rep);
        check_attention(h, &[100, 5], false, Kv::Q8_0, 4, 1, 256, 64, &mut rng, &mut rep);
        check_attention(h, &[20, 35], true, Kv::Q8_0, 4, 2, 32, 16, &mut rng, &mut rep);
        // Each lane's share of a head: 3 values (scalar loads), 4 (the backend's decode split of
        // 64 at head_dim 128, f16 and Q8_0 caches), 5.
        check_attention(h, &[40, 9], false, Kv::F16, 4, 2, 96, 16, &mut rng, &mut rep);
        check_attention(h, &[300, 64, 65], false, Kv::F16, 8, 2, 128, 64, &mut rng, &mut rep);
        check_attention(h, &[130], false, Kv::Q8_0, 4, 2, 128, 64, &mut rng, &mut rep);
        check_attention(h, &[70], false, Kv::F32, 2, 1, 160, 32, &mut rng, &mut rep);
    }
    check_f2h(h, &mut rng, &mut rep);
    rep
}

fn print(rep: &Report, what: &str) {
    println!("{what}:");
    for l in &rep.lines {
        println!("  {l}");
    }
}

#[test]
fn emulated_kernels_match_cpu() {
    let exe = build("plain", &["-O2"], None);
    let h = Harness::new(exe, vec![]);
    let rep = run_all(&h, false);
    print(&rep, "emulated kernels vs float64 CPU references");
}

#[test]
fn emulated_kernels_under_asan() {
    let exe = build("asan", &["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"], None);
    let h = Harness::new(exe, vec![("ASAN_OPTIONS".into(), "detect_leaks=1:abort_on_error=0:exitcode=23".into())]);
    let rep = run_all(&h, true);
    assert!(!h.reports.borrow().contains("ERROR: AddressSanitizer"), "ASan reported:\n{}", h.reports.borrow());
    assert!(!h.reports.borrow().contains("runtime error"), "UBSan reported:\n{}", h.reports.borrow());
    print(&rep, "AddressSanitizer + UBSan build, no report");
}

#[test]
fn emulated_kernels_under_tsan() {
    let exe = build("tsan", &["-O1", "-fsanitize=thread"], None);
    let h = Harness::new(exe, vec![("TSAN_OPTIONS".into(), "exitcode=66".into())]);
    let rep = run_all(&h, true);
    assert!(!h.reports.borrow().contains("ThreadSanitizer"), "TSan reported:\n{}", h.reports.borrow());
    print(&rep, "ThreadSanitizer build, no report");
}

/// The quantized matvecs built for other block shapes (kernels/mmvq.cu's XD_MMVQ_* defines):
/// the classic 4 warps x 1 row with one staging buffer, and 2 warps x 3 rows with two (rows
/// of a warp that straddle the matrices of mul_mat_vec3 and the end of the rows), must give
/// the default build's results bit for bit (every shape sums a row's sub-blocks in the same
/// order); within each build, mul_mat_vec3 equals three plain matvecs and the fused gate+up
/// equals the plain matvecs followed by the swiglu kernel, bit for bit. Rows of 2.5 to 4
/// staging rounds, so the double buffering turns over.
#[test]
fn emulated_matvecs_agree_across_block_shapes() {
    let builds = [
        ("default", vec!["-O1"]),
        ("4x1x1", vec!["-O1", "-DXD_MMVQ_WARPS=4", "-DXD_MMVQ_ROWS=1", "-DXD_MMVQ_STAGES=1"]),
        ("2x3x2", vec!["-O1", "-DXD_MMVQ_WARPS=2", "-DXD_MMVQ_ROWS=3", "-DXD_MMVQ_STAGES=2"]),
    ];
    let harnesses: Vec<(&str, Harness)> = std::thread::scope(|s| {
        let jobs: Vec<_> = builds
            .iter()
            .map(|(name, flags)| s.spawn(move || (*name, Harness::new(build(&format!("shape-{name}"), flags, None), vec![]))))
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let mut rng = Rng(0x5a9e);
    let mut lines = Vec::new();
    // IQ2_XXS, IQ3_S and IQ1_S also copy their grid into shared memory (1, 2 and 8 KB), which the
    // staging of each shape must leave room for.
    for (ty, ncols) in [("Q8_0", 2560), ("Q4_K", 5120), ("Q6_K", 1280), ("IQ2_XXS", 4352), ("IQ3_S", 1536), ("IQ1_S", 2304)] {
        // 64 gate rows: whole q8_1 blocks, which the fused gate+up also quantizes (checked in the
        // harness against quantize_q8_1), over several thread blocks in every shape.
        let (n0, n1, n2, slots) = (64, 69, 5, 2);
        let qk = type_shape(ty).0;
        let ws: Vec<Vec<u8>> = [n0, n1, n2].iter().map(|&n| weights(ty, n * ncols, &mut rng).0).collect();
        let x = activations(&mut rng, ncols * slots);
        // MoE dispatch: 3 slots over 4 experts of n1 rows, 2 slots per activation row.
        let (we, _) = weights(ty, 4 * n1 * ncols, &mut rng);
        let ids = [3, 0, 2];
        let mut reference: Option<Vec<Vec<u32>>> = None;
        for (name, h) in &harnesses {
            for (i, w) in ws.iter().enumerate() {
                h.put(&format!("w{i}.bin"), w);
            }
            h.put_f32("x.f32", &x);
            h.run("fused", &[ty, &n0.to_string(), &n1.to_string(), &n2.to_string(), &ncols.to_string(), &slots.to_string()].map(String::from));
            let (y3, yp, ys, yu) = (h.get_f32("y3.f32"), h.get_f32("yp.f32"), h.get_f32("ys.f32"), h.get_f32("yu.f32"));
            assert_eq!(y3.len(), slots * (n0 + n1 + n2));
            assert!(yp.iter().all(|v| v.is_finite() && *v != -2.0), "{name} {ty}: a plain matvec left a row unwritten");
            assert_eq!(bits(&y3), bits(&yp), "{name} {ty}: mul_mat_vec3 differs from three plain matvecs");
            assert_eq!(bits(&ys), bits(&yu), "{name} {ty}: the fused gate+up differs from matvecs + swiglu");
            h.put("w.bin", &we);
            h.put_i32("ids.i32", &ids);
            h.put_f32("x.f32", &x);
            h.run("moe", &[ty.to_string(), n1.to_string(), ncols.to_string(), "4".into(), "3".into(), "2".into(), "2".into()]);
            let ym = h.get_f32("y.f32");
            // The down projection of 2 tokens' top-2 experts, weighted and summed in one launch.
            h.put_i32("ids.i32", &[1, 3, 2, 1]);
            h.put_f32("wts.f32", &[0.625, 0.375, 0.8, 0.2]);
            h.put_f32("x.f32", &activations(&mut Rng(0x77), ncols * 4));
            h.run("moe_down", &[ty.to_string(), n1.to_string(), ncols.to_string(), "4".into(), "2".into(), "2".into()]);
            let (yd, yr) = (h.get_f32("y.f32"), h.get_f32("yr.f32"));
            assert!(yd.iter().all(|v| v.is_finite() && *v != -1.0), "{name} {ty}: the MoE down kernel left a row unwritten");
            assert_eq!(bits(&yd), bits(&yr), "{name} {ty}: the MoE down + combine kernel differs from matvecs + moe_combine");
            let got = vec![bits(&yp), bits(&ys), bits(&ym), bits(&yd)];
            match &reference {
                None => reference = Some(got),
                Some(r) => {
                    for (what, (a, b)) in ["plain matvecs", "fused gate+up", "MoE dispatch", "MoE down + combine"].iter().zip(r.iter().zip(&got)) {
                        assert_eq!(a, b, "{ty} {what}: the {name} build differs from the default one");
                    }
                }
            }
        }
        lines.push(format!(
            "{ty} {n0}+{n1}+{n2} rows x {ncols} ({} blocks per row), MoE 3 slots, MoE down + combine 2 x top-2: same bits in every build",
            ncols / qk
        ));
    }
    for l in lines {
        println!("  {l}");
    }
}

/// A copy of norm.cu without its `__syncthreads()`: warps then read the partial sums of other
/// warps with no barrier in between, which ThreadSanitizer must report as a data race.
#[test]
fn tsan_catches_missing_syncthreads() {
    let src = std::fs::read_to_string(format!("{ROOT}/kernels/norm.cu")).unwrap();
    assert_eq!(src.matches("__syncthreads();").count(), 1, "norm.cu has one barrier to remove");
    let broken = src.replace("__syncthreads();", "/* barrier removed */");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu").join("broken-src");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("norm.cu"), broken).unwrap();
    let exe = build("tsan-broken", &["-O1", "-fsanitize=thread"], Some(&dir));
    // halt_on_error: the first report ends the run, with TSan's exit code.
    let h = Harness::new(exe, vec![("TSAN_OPTIONS".into(), "exitcode=66:halt_on_error=1".into())]);
    let mut rng = Rng(7);
    let x = rng.vec(256, 1.0);
    h.put_f32("x.f32", &x);
    h.put_f32("w.f32", &vec![1.0; 256]);
    let out = Command::new(&h.exe)
        .args(["rms_norm"])
        .arg(&h.work)
        .args(["1", "256", "1e-5", "128"])
        .envs(h.env.iter().cloned())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARNING: ThreadSanitizer: data race"),
        "TSan did not report the missing barrier (status {}):\n{err}",
        out.status
    );
    assert!(err.contains("rms_norm"), "the race report should point into rms_norm:\n{err}");
    println!("TSan reported the removed __syncthreads in rms_norm (exit status {})", out.status);
}

/// A copy of gemm.cu without the barrier that ends a step, between writing the next step's
/// tiles and the warps' tensor-core loads of them: ThreadSanitizer must see the emulated
/// fragment loads race the writes.
#[test]
fn tsan_catches_missing_syncthreads_in_gemm() {
    let src = std::fs::read_to_string(format!("{ROOT}/kernels/gemm.cu")).unwrap();
    let barrier = "        if (more) put(b ^ 1);\n        __syncthreads();\n";
    assert_eq!(src.matches(barrier).count(), 1, "gemm.cu has one barrier per step, after storing the next step's tiles");
    let broken = src.replace(barrier, "        if (more) put(b ^ 1);\n");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu").join("broken-gemm-src");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gemm.cu"), broken).unwrap();
    let exe = build("tsan-broken-gemm", &["-O1", "-fsanitize=thread"], Some(&dir));
    let h = Harness::new(exe, vec![("TSAN_OPTIONS".into(), "exitcode=66:halt_on_error=1".into())]);
    let mut rng = Rng(11);
    let (w, _) = weights("F32", 72 * 256, &mut rng);
    h.put("w.bin", &w);
    h.put_f32("x.f32", &rng.vec(7 * 256, 1.0));
    let out = Command::new(&h.exe)
        .args(["gemm"])
        .arg(&h.work)
        .args(["F32", "72", "256", "7"])
        .envs(h.env.iter().cloned())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARNING: ThreadSanitizer: data race"), "TSan did not report the missing barrier (status {}):\n{err}", out.status);
    assert!(err.contains("xd_gemm"), "the race report should point into the GEMM:\n{err}");
    println!("TSan reported the removed __syncthreads in the GEMM (exit status {})", out.status);
}

// ---- the fused ops of the decode step, through the backend -----------------------------------
//
// The CUDA backend on the emulator with its fused kernels (add + RMSNorm + q8_1, RoPE + KV
// store, attention output + q8_1, router matvec + top-k) against the same backend running each
// op as its own launch, which must give the same bits, and against the CPU backend.


fn emu_device() -> Arc<EmuDevice> {
    let lib = emu_lib::emulator_lib("cuda-emu/backend-lib");
    Arc::new(EmuDevice::open(lib.to_str().unwrap()).unwrap())
}

/// A GGUF in memory holding f32 `tensors` (name, dims in GGML order, values), stored as `ty`.
fn gguf_f32(tensors: &[(&str, Vec<u64>, GgmlType, &[f32])]) -> Arc<Gguf> {
    let mut w = GgufWriter::new();
    for (name, dims, ty, v) in tensors {
        let mut bytes = Vec::new();
        quantize_weights(*ty, v, &mut bytes).unwrap();
        w.add_tensor(name, dims, *ty, bytes).unwrap();
    }
    Arc::new(Gguf::from_bytes(w.to_bytes()).unwrap())
}

fn act_rows<B: Backend>(be: &B, a: &B::Act, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        be.act_read_row(a, r, &mut out[r * cols..(r + 1) * cols]).unwrap();
    }
    out
}

/// The F32 table `name` of `g` (rows of `cols`) as an activation of `be`, rows `ids`.
fn act_of<B: Backend>(be: &B, g: &Arc<Gguf>, name: &str, ids: &[u32]) -> B::Act {
    let table = be.weight(g, g.tensor(name).unwrap()).unwrap();
    let mut a = be.act_new();
    be.embed(&table, ids, &mut a).unwrap();
    a
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

/// add_rms_norm, then a Q8_0 matmul of the normed rows (which reads the q8_1 shadow on the
/// fused backend); then the shadow made stale by each way of rewriting the rows, each followed
/// by the matmul again. Returns every intermediate result.
fn norm_sequence<B: Backend>(be: &B, g: &Arc<Gguf>, rows: usize, n: usize, check_shadow: &dyn Fn(&B::Act) -> Option<bool>) -> Vec<Vec<f32>> {
    let ids: Vec<u32> = (0..rows as u32).collect();
    let mut x = act_of(be, g, "x", &ids);
    let y = act_of(be, g, "y", &ids);
    let w = be.weight(g, g.tensor("norm").unwrap()).unwrap();
    let wq = be.weight(g, g.tensor("wq").unwrap()).unwrap();
    let nq = g.tensor("wq").unwrap().n_rows() as usize;
    let mut out = be.act_new();
    let mut mm = be.act_new();
    let mut res = Vec::new();
    let shadow = |a: &B::Act, want: bool, when: &str| {
        if let Some(has) = check_shadow(a) {
            assert_eq!(has, want && n % 32 == 0, "q8_1 shadow {when}");
        }
    };
    be.add_rms_norm(&mut x, &y, &w, 1e-5, &mut out).unwrap();
    shadow(&out, true, "after add_rms_norm");
    shadow(&x, false, "of the residual after add_rms_norm");
    res.push(act_rows(be, &x, rows, n));
    res.push(act_rows(be, &out, rows, n));
    be.matmul(&out, &[&wq], &mut [&mut mm]).unwrap();
    res.push(act_rows(be, &mm, rows, nq));
    // Stale: rewritten in place by an add.
    be.add(&mut out, &y).unwrap();
    shadow(&out, false, "after an in-place add");
    be.matmul(&out, &[&wq], &mut [&mut mm]).unwrap();
    res.push(act_rows(be, &mm, rows, nq));
    // Stale: rewritten in place by RoPE (heads of 32).
    let rope = RopeParams { n_rot: 32, freq_base: 10000.0, freq_scale: 1.0, freq_factors: None };
    if n % 32 == 0 {
        be.rope(&mut out, n / 32, &ids.iter().map(|i| 3 * i + 1).collect::<Vec<_>>(), &rope).unwrap();
        shadow(&out, false, "after RoPE");
        be.matmul(&out, &[&wq], &mut [&mut mm]).unwrap();
        res.push(act_rows(be, &mm, rows, nq));
    }
    // A fresh shadow from rms_norm, then stale: rewritten whole, with another row count.
    be.rms_norm(&x, &w, 1e-5, &mut out).unwrap();
    shadow(&out, true, "after rms_norm");
    be.matmul(&out, &[&wq], &mut [&mut mm]).unwrap();
    res.push(act_rows(be, &mm, rows, nq));
    let fewer: Vec<u32> = ids.iter().rev().skip(rows / 2).copied().collect();
    let table = be.weight(g, g.tensor("y").unwrap()).unwrap();
    be.embed(&table, &fewer, &mut out).unwrap();
    shadow(&out, false, "after embed");
    be.matmul(&out, &[&wq], &mut [&mut mm]).unwrap();
    res.push(act_rows(be, &mm, fewer.len(), nq));
    // And stale by act_resize alone (the next writer is the GEMM-free matmul's input).
    be.rms_norm(&x, &w, 1e-5, &mut out).unwrap();
    be.act_resize(&mut out, rows, n).unwrap();
    shadow(&out, false, "after act_resize");
    res
}

#[test]
fn fused_norm_and_q8_1_shadow() {
    let dev = emu_device();
    let fused = CudaBackend::new(dev.clone()).with_fusion(true);
    let plain = CudaBackend::new(dev.clone()).with_fusion(false);
    let mut rng = Rng(0xf05e);
    // Rows of whole q8_1 blocks (the shadow is made) and not (it is not); 1 and 3 rows (decode),
    // 40 (a prefill-sized batch through the same kernels).
    for (n, rows) in [(256usize, 1usize), (256, 3), (256, 40), (1024, 2), (48, 3)] {
        let x = activations(&mut rng, 40 * n);
        let y = rng.vec(40 * n, 2.0);
        let norm: Vec<f32> = (0..n).map(|_| 1.0 + 0.5 * rng.next()).collect();
        let wq = rng.vec(24 * n, 0.1);
        let g = gguf_f32(&[
            ("x", vec![n as u64, 40], GgmlType::F32, &x),
            ("y", vec![n as u64, 40], GgmlType::F32, &y),
            ("norm", vec![n as u64], GgmlType::F32, &norm),
            ("wq", vec![n as u64, 24], if n % 32 == 0 { GgmlType::Q8_0 } else { GgmlType::F32 }, &wq),
        ]);
        let shadow = |a: &CudaAct<EmuDevice>| Some(a.has_q8_shadow());
        let f = norm_sequence(&fused, &g, rows, n, &shadow);
        let no_shadow = |a: &CudaAct<EmuDevice>| {
            assert!(!a.has_q8_shadow(), "the unfused backend made a q8_1 shadow");
            None
        };
        let p = norm_sequence(&plain, &g, rows, n, &no_shadow);
        let c = norm_sequence(&CpuBackend, &g, rows, n, &|_| None);
        assert_eq!(f.len(), p.len());
        for (i, ((a, b), cpu)) in f.iter().zip(&p).zip(&c).enumerate() {
            assert!(bits(a) == bits(b), "n {n}, {rows} rows, result {i}: the fused ops differ from the separate ones");
            // The CPU sums in another order; its Q8_0 matmul quantizes the same integers. From
            // 32 rows on the matmuls (results 2 on) go through the GEMM, which rounds weights
            // and activations to f16.
            let tol = if rows >= GEMM_MIN_ROWS && i >= 2 { 1e-2 } else { 2e-5 };
            let d = max_rel(a, cpu);
            assert!(d < tol, "n {n}, {rows} rows, result {i}: |GPU - CPU| / max|CPU| = {d} (> {tol})");
        }
        println!("add_rms_norm (+ q8_1 shadow) n {n}, {rows} rows: fused = separate ops bit for bit, = CPU, stale shadows dropped");
    }
}

fn rope_kv_sequence<B: Backend>(be: &B, g: &Arc<Gguf>, fused: bool, nh: usize, nkv: usize, hd: usize, p: &RopeParams, kv_ty: GgmlType) -> (Vec<f32>, Vec<f32>, Vec<u8>) {
    let pos = [3u32, 100, 7, 4000];
    let slots = [5u32, 17, 40, 6];
    let ids: Vec<u32> = (0..pos.len() as u32).collect();
    let mut q = act_of(be, g, "q", &ids);
    let mut k = act_of(be, g, "k", &ids);
    let v = act_of(be, g, "v", &ids);
    let layout = KvLayout { n_layer: 2, n_slots: 4 * KV_BLOCK, n_embd_kv: nkv * hd, ty: kv_ty };
    let mut kv = be.kv_new(&layout).unwrap();
    if fused {
        be.rope_kv_store(&mut q, &mut k, &v, nh, nkv, &pos, p, &mut kv, 1, &slots).unwrap();
    } else {
        be.rope(&mut q, nh, &pos, p).unwrap();
        be.rope(&mut k, nkv, &pos, p).unwrap();
        be.kv_store(&mut kv, 1, &slots, &k, &v).unwrap();
    }
    let mut cache = Vec::new();
    be.kv_export(&kv, 1, &slots, &mut cache).unwrap();
    (act_rows(be, &q, pos.len(), nh * hd), act_rows(be, &k, pos.len(), nkv * hd), cache)
}

#[test]
fn fused_rope_kv_store() {
    let dev = emu_device();
    let fused = CudaBackend::new(dev.clone()).with_fusion(true);
    let plain = CudaBackend::new(dev.clone()).with_fusion(false);
    let mut rng = Rng(0x40be);
    // Whole heads rotated; half of each head with frequency factors; f32, f16 and Q8_0 caches
    // (Q8_0 takes the separate ops: its blocks need the amax of 32 values).
    for (nh, nkv, hd, n_rot, factors, kv_ty) in [
        (8usize, 2usize, 32usize, 32usize, false, GgmlType::F32),
        (4, 4, 64, 32, true, GgmlType::F16),
        (6, 2, 64, 64, false, GgmlType::F16),
        (6, 2, 64, 64, false, GgmlType::Q8_0),
    ] {
        let ff = factors.then(|| (0..n_rot / 2).map(|i| 1.0 + i as f32 * 0.5).collect());
        let p = RopeParams { n_rot, freq_base: 10000.0, freq_scale: 0.5, freq_factors: ff };
        let (q, k, v) = (rng.vec(4 * nh * hd, 1.0), rng.vec(4 * nkv * hd, 1.0), rng.vec(4 * nkv * hd, 1.0));
        let g = gguf_f32(&[
            ("q", vec![(nh * hd) as u64, 4], GgmlType::F32, &q),
            ("k", vec![(nkv * hd) as u64, 4], GgmlType::F32, &k),
            ("v", vec![(nkv * hd) as u64, 4], GgmlType::F32, &v),
        ]);
        let f = rope_kv_sequence(&fused, &g, true, nh, nkv, hd, &p, kv_ty);
        let s = rope_kv_sequence(&plain, &g, false, nh, nkv, hd, &p, kv_ty);
        let c = rope_kv_sequence(&CpuBackend, &g, true, nh, nkv, hd, &p, kv_ty);
        assert!(bits(&f.0) == bits(&s.0) && bits(&f.1) == bits(&s.1), "{nh}/{nkv}x{hd}: rotated Q/K differ from rope_norm's");
        assert!(f.2 == s.2, "{nh}/{nkv}x{hd}: the stored K/V rows differ from kv_store's");
        let dec = |b: &[u8]| -> Vec<f32> {
            match kv_ty {
                GgmlType::F16 => b.chunks_exact(2).map(|c| xdan::quant::block::f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
                GgmlType::Q8_0 => b
                    .chunks_exact(34)
                    .flat_map(|c| {
                        let d = xdan::quant::block::f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
                        c[2..].iter().map(move |&q| d * q as i8 as f32)
                    })
                    .collect(),
                _ => f32s(b),
            }
        };
        // V goes into the cache unrotated: the same bytes as the CPU's, whatever the type.
        let half = f.2.len() / 2;
        assert!(f.2[half..] == c.2[half..], "{nh}/{nkv}x{hd}: the V rows in the {kv_ty} cache differ from the CPU's");
        let dq = max_rel(&f.0, &c.0).max(max_rel(&f.1, &c.1));
        let dc = max_rel(&dec(&f.2), &dec(&c.2));
        // The CPU's angles follow llama.cpp's f32 recurrence, the GPU's are computed in double:
        // at position 4000 they part by about 1e-5 of the values (f16 cache: its rounding; Q8_0:
        // a K value that lands on the other side of a rounding boundary moves by a code).
        let tol_c = match kv_ty {
            GgmlType::F16 => 1e-3,
            GgmlType::Q8_0 => 1e-2,
            _ => 2e-4,
        };
        assert!(dq < 2e-4 && dc < tol_c, "{nh}/{nkv}x{hd}: vs the CPU backend, Q/K {dq}, cache {dc}");
        println!("rope_kv_store {nh} heads / {nkv} KV heads of {hd}, n_rot {n_rot}, KV {kv_ty}: = rope, rope, kv_store bit for bit; vs CPU {dq:.1e} (Q/K), {dc:.1e} (cache)");
    }
}

fn run_ffn<B: Backend>(be: &B, g: &Arc<Gguf>, ne: usize, k: usize, n_ff: usize, t: usize, n_embd: usize) -> (Vec<f32>, Vec<u32>) {
    let wt = |n: &str| be.weight(g, g.tensor(n).unwrap()).unwrap();
    let f = Ffn { router: Some(wt("router")), gate: wt("gate"), up: wt("up"), down: wt("down"), n_expert: ne, n_expert_used: k, n_ff };
    let xa = act_of(be, g, "x", &(0..t as u32).collect::<Vec<_>>());
    let mut out = be.act_new();
    let mut routes = Vec::new();
    be.ffn(&xa, &f, &mut out, Some(&mut routes)).unwrap();
    (act_rows(be, &out, t, n_embd), routes)
}

#[test]
fn fused_router() {
    let dev = emu_device();
    let fused = CudaBackend::new(dev.clone()).with_fusion(true);
    let plain = CudaBackend::new(dev.clone()).with_fusion(false);
    let mut rng = Rng(0x7007);
    // Small experts: the emulator runs a CUDA thread per OS thread, and the router is the point.
    let (n_embd, n_ff) = (128usize, 32usize);
    // 8 experts top-2 (Mixtral), 40 top-3 (a second pass over the lanes), 64 top-8 (as many
    // as a model may have, which the CPU backend's routing relies on), and the kernels' most,
    // 256 (against moe_router only); a router of each float type.
    for (ne, k, router_ty) in [(8usize, 2usize, GgmlType::F32), (40, 3, GgmlType::F16), (64, 8, GgmlType::BF16), (256, 8, GgmlType::F32)] {
        let mut router = rng.vec(ne * n_embd, 0.05);
        // Experts 2 and 5 share a row: equal logits, which must go to the lower id.
        let r2 = router[2 * n_embd..3 * n_embd].to_vec();
        router[5 * n_embd..6 * n_embd].copy_from_slice(&r2);
        let gate = rng.vec(ne * n_ff * n_embd, 0.1);
        let up = rng.vec(ne * n_ff * n_embd, 0.1);
        let down = rng.vec(ne * n_embd * n_ff, 0.1);
        // (the many-expert cases on decode batches only)
        for t in [1usize, 3, 40].into_iter().filter(|&t| ne == 8 || t < 40) {
            let mut x = activations(&mut rng, t * n_embd);
            // Token 0 leans on expert 2's row, so the tie is among its top choices.
            for c in 0..n_embd {
                x[c] = 4.0 * r2[c];
            }
            let g = gguf_f32(&[
                ("router", vec![n_embd as u64, ne as u64], router_ty, &router),
                ("gate", vec![n_embd as u64, (ne * n_ff) as u64], GgmlType::Q8_0, &gate),
                ("up", vec![n_embd as u64, (ne * n_ff) as u64], GgmlType::Q8_0, &up),
                ("down", vec![n_ff as u64, (ne * n_embd) as u64], GgmlType::Q8_0, &down),
                ("x", vec![n_embd as u64, t as u64], GgmlType::F32, &x),
            ]);
            let (of, rf) = run_ffn(&fused, &g, ne, k, n_ff, t, n_embd);
            let (op, rp) = run_ffn(&plain, &g, ne, k, n_ff, t, n_embd);
            assert_eq!(rf, rp, "top-{k} of {ne}, {t} tokens: the fused router chose other experts than moe_router");
            assert!(bits(&of) == bits(&op), "top-{k} of {ne}, {t} tokens: ffn outputs differ from the unfused router's");
            assert_eq!(rf[..2], [2, 5], "top-{k} of {ne}: token 0's tied experts 2 and 5 in the wrong order");
            if ne > 64 {
                continue;
            }
            let (oc, rc) = run_ffn(&CpuBackend, &g, ne, k, n_ff, t, n_embd);
            assert_eq!(rf, rc, "top-{k} of {ne}, {t} tokens: experts differ from the CPU backend's (GPU left, CPU right)");
            let d = max_rel(&of, &oc);
            assert!(d < 1e-4, "top-{k} of {ne}, {t} tokens: |GPU - CPU| / max|CPU| = {d}");
        }
        println!("router top-{k} of {ne} ({router_ty}), 1/3{} tokens: fused = router matvec + moe_router bit for bit, experts = {}, tie to the lower id", if ne == 8 { "/40" } else { "" }, if ne > 64 { "moe_router's" } else { "CPU" });
    }
}

/// tiny-mixtral, decode steps from an empty cache (the emulator runs a CUDA thread per OS
/// thread, so no long prompt): sequence 0 alone, then sequences 0 and 1 together, in turn, each
/// feeding back its argmax. Returns the logits of every step; `on_step` runs before each.
fn decode_run<B: Backend>(be: &B, g: &Arc<Gguf>, hp: &HParams, kv_ty: GgmlType, on_step: &mut dyn FnMut()) -> Vec<Vec<f32>> {
    let w = Weights::load(be, g, hp, &mut |_| true).unwrap();
    let layout = KvLayout { n_layer: hp.n_layer, n_slots: 4 * KV_BLOCK, n_embd_kv: hp.n_embd_kv(), ty: kv_ty };
    let mut kv = be.kv_new(&layout).unwrap();
    // The sequences' blocks out of order, as a paged cache hands them out.
    let tables: [&[u32]; 2] = [&[3, 1], &[0, 2]];
    let slot = |s: usize, p: u32| tables[s][p as usize / KV_BLOCK] * KV_BLOCK as u32 + p % KV_BLOCK as u32;
    let mut s = Scratch::new(be);
    let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b }) as u32;
    let (mut tok, mut pos) = ([1u32, 832], [0u32, 0]);
    let mut out = Vec::new();
    for i in 0..4 {
        on_step();
        let seqs: &[usize] = if i % 2 == 0 { &[0] } else { &[0, 1] };
        let tokens: Vec<u32> = seqs.iter().map(|&q| tok[q]).collect();
        let p: Vec<u32> = seqs.iter().map(|&q| pos[q]).collect();
        let tok_seq: Vec<u32> = seqs.iter().map(|&q| q as u32).collect();
        let slots: Vec<u32> = seqs.iter().map(|&q| slot(q, pos[q])).collect();
        let out_rows: Vec<u32> = (0..seqs.len() as u32).collect();
        let b = Batch { tokens: &tokens, pos: &p, slots: &slots, tok_seq: &tok_seq, tables: &tables, out_rows: &out_rows };
        let mut logits = vec![0f32; seqs.len() * hp.n_vocab];
        forward(be, &w, hp, &hp.rope, &mut kv, &b, &mut s, &mut || true, None, &mut logits).unwrap();
        for (r, &q) in seqs.iter().enumerate() {
            tok[q] = argmax(&logits[r * hp.n_vocab..(r + 1) * hp.n_vocab]);
            pos[q] += 1;
        }
        out.push(logits);
    }
    out
}

#[test]
fn fused_decode_step_launches_and_bits() {
    let dev = emu_device();
    // Per layer at most (Q8_0): QKV, RoPE + KV store, attention, wo, add + norm (+ q8_1),
    // router, gate/up (+ q8_1), down + combine, add + norm; the fusions save four quantizes,
    // two RoPEs, two adds, a router launch, two of the three QKV matvecs, the swiglu and the
    // combine. F16 weights take f32 rows (no quantizes to save) and their Q, K, V and gate,
    // up, SwiGLU, down and combine are separate launches.
    for (variant, kv_ty, most, saved) in [("Q8_0", GgmlType::F32, 9.0, 13), ("F16", GgmlType::F16, 14.0, 4)] {
        let dir = Path::new(ROOT).join("tests/data/tiny-mixtral").join(variant);
        let g = Arc::new(Gguf::open(dir.join(format!("tiny-mixtral-{variant}.gguf")), true).unwrap());
        let hp = HParams::from_gguf(&g).unwrap();
        let mut counts = Vec::new();
        let mut logits = Vec::new();
        for fuse in [false, true] {
            let cd = Arc::new(Counting::new(dev.clone()));
            let be = CudaBackend::new(cd.clone()).with_fusion(fuse);
            // The launches of a one-token step (the third: its cache is not empty).
            let mut seen = 0;
            let mut one: Option<BTreeMap<String, usize>> = None;
            let l = decode_run(&be, &g, &hp, kv_ty, &mut || {
                let c = cd.take_counts();
                if seen == 3 {
                    one = Some(c);
                }
                seen += 1;
            });
            counts.push(one.unwrap());
            logits.push(l);
        }
        let cpu = decode_run(&CpuBackend, &g, &hp, kv_ty, &mut || {});
        assert_eq!(logits[0].len(), cpu.len());
        for (i, ((f, p), c)) in logits[1].iter().zip(&logits[0]).zip(&cpu).enumerate() {
            assert!(bits(f) == bits(p), "{variant} step {i}: logits of the fused decode differ from the unfused");
            let d = f.iter().zip(c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let tol = if variant == "Q8_0" { 1e-3 } else { 1e-2 };
            assert!(d < tol, "{variant} step {i}: logits differ from the CPU backend's by {d} (> {tol})");
        }
        let per_layer = |c: &BTreeMap<String, usize>| (c.values().sum::<usize>() as f64 - 4.0) / hp.n_layer as f64;
        let show = |c: &BTreeMap<String, usize>| c.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", ");
        let (before, after) = (counts[0].values().sum::<usize>(), counts[1].values().sum::<usize>());
        println!("{variant} decode step ({} layers): {before} launches unfused, {after} fused", hp.n_layer);
        println!("  unfused: {}", show(&counts[0]));
        println!("  fused:   {}", show(&counts[1]));
        // Besides the layers: the embedding, the first norm, the output norm and matmul. The
        // last layer's add stays apart from the output norm (one saving less).
        assert!(per_layer(&counts[1]) <= most, "{variant}: {after} launches per decode step: {}", show(&counts[1]));
        assert!(before - after >= saved * hp.n_layer - 1, "{variant}: the fusions saved only {} launches", before - after);
    }
}
