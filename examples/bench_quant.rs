//! Single-thread throughput of every quant type: dequantization (GB/s of f32 written) and row
//! dots (GB/s of weight bytes read, Gelem/s) through `vec_dot_rows` (the engine's matvec path:
//! SIMD where present) and through the scalar kernels, and a prompt's multiply: the rows against
//! 16 activation vectors at once (`vec_dot_rows_tokens`, a batch the size of one expert's share of
//! a 64-token prompt at top-2 of 8), in G multiply-adds per second.
//!
//! Weights are random blocks (`xdan::quant::random_weights`: every code drawn, scales in a real
//! model's range) in a buffer of 2^24 elements; Q8_1 and Q8_K, which it does not draw, quantize
//! smooth random data. Rows of 4096 elements are dotted with one activation vector.
//!
//! `cargo run --release --example bench_quant [TYPE ...]` (`XDAN_BENCH_ELEMS=n` changes the
//! buffer size, e.g. to measure in-cache kernel speed).
//!
//! With `XDAN_BENCH_GGML=DIR` (a llama.cpp build's `bin/` or `lib/`, holding `libggml-cpu.so`),
//! the same rows are also dotted by ggml's CPU `vec_dot` for the type, with its own activation
//! type quantized by its own `from_float`, and the table gains that rate and ours over it.

use std::time::Instant;
use xdan::quant::{
    can_randomize, dequantize, quantize_act, random_weights, vec_dot_rows, vec_dot_rows_tokens, vec_dot_scalar,
    vec_dot_type, GgmlType,
};

const ROW: usize = 4096;
/// Activation vectors of the prompt column.
const PROMPT: usize = 16;

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn weights(ty: GgmlType, n: usize) -> Vec<u8> {
    let bytes = ty.row_bytes(n as u64).unwrap() as usize;
    if can_randomize(ty) {
        // Random blocks: a short tile repeated would keep a lattice type's table lookups in
        // a few cache lines and let the branch predictor learn the data.
        let mut w = vec![0u8; bytes];
        random_weights(ty, 11, &mut w).unwrap();
        return w;
    }
    // Q8_1 and Q8_K (activation types, not drawn): smooth random data quantized, tiled.
    let mut tile = Vec::new();
    quantize_act(ty, &pseudo_random(1 << 16, 7), &mut tile).unwrap();
    let mut w = Vec::with_capacity(bytes);
    while w.len() < bytes {
        let k = tile.len().min(bytes - w.len());
        w.extend_from_slice(&tile[..k]);
    }
    w
}

/// Best of at least `reps` timings, in seconds; small buffers repeat until 50 ms have passed,
/// so that a short run is not one scheduler tick's luck.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut n = 0;
    while n < reps || start.elapsed().as_secs_f64() < 0.05 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    best
}

/// ggml's CPU dot products, loaded from a llama.cpp build (the peer's decode kernels).
struct Ggml {
    traits: unsafe extern "C" fn(u32) -> *const GgmlCpuTraits,
}

type GgmlVecDot =
    unsafe extern "C" fn(i32, *mut f32, usize, *const u8, usize, *const u8, usize, i32);

/// `struct ggml_type_traits_cpu` of ggml-cpu.h.
#[repr(C)]
struct GgmlCpuTraits {
    from_float: Option<unsafe extern "C" fn(*const f32, *mut u8, i64)>,
    vec_dot: Option<GgmlVecDot>,
    vec_dot_type: u32,
    nrows: i64,
}

impl Ggml {
    fn open(dir: &str) -> Result<Ggml, String> {
        let sym = |lib: &str, name: &str| -> Result<*mut libc::c_void, String> {
            let path = std::ffi::CString::new(format!("{dir}/{lib}")).unwrap();
            // SAFETY: dlopen/dlsym with valid C strings; the libraries stay loaded for the process.
            unsafe {
                let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                if h.is_null() {
                    return Err(format!("cannot open {dir}/{lib}"));
                }
                let name = std::ffi::CString::new(name).unwrap();
                let f = libc::dlsym(h, name.as_ptr());
                if f.is_null() {
                    return Err(format!("{dir}/{lib} has no {name:?}"));
                }
                Ok(f)
            }
        };
        sym("libggml-base.so", "ggml_type_size")?;
        let init = sym("libggml-cpu.so", "ggml_cpu_init")?;
        let traits = sym("libggml-cpu.so", "ggml_get_type_traits_cpu")?;
        // SAFETY: the symbols have these C signatures (ggml-cpu.h).
        unsafe {
            std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn()>(init)();
            Ok(Ggml { traits: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn(u32) -> *const GgmlCpuTraits>(traits) })
        }
    }

    /// Seconds (best of `reps`) for ggml to dot every row of `w` with `x`, or None when ggml
    /// has no CPU dot for the type.
    fn time_dot(&self, ty: GgmlType, w: &[u8], rb: usize, x: &[f32], reps: usize) -> Option<f64> {
        // SAFETY: ggml's traits table is static; the activation buffer is sized for its type
        // (at most 4 bytes per value plus block headers) and the rows are whole blocks of `ty`.
        unsafe {
            let t = &*(self.traits)(ty as u32);
            let dot = t.vec_dot?;
            let act_ty = GgmlType::from_id(t.vec_dot_type)?;
            let mut act = vec![0u8; act_ty.row_bytes(x.len() as u64)? as usize];
            match act_ty {
                GgmlType::F32 => act.copy_from_slice(std::slice::from_raw_parts(x.as_ptr().cast(), x.len() * 4)),
                _ => (((*(self.traits)(act_ty as u32)).from_float)?)(x.as_ptr(), act.as_mut_ptr(), x.len() as i64),
            }
            let mut sink = 0f32;
            let secs = time(reps, || {
                for row in w.chunks_exact(rb) {
                    let mut s = 0f32;
                    dot(ROW as i32, &mut s, 0, row.as_ptr(), 0, act.as_ptr(), 0, 1);
                    sink += s;
                }
            });
            std::hint::black_box(sink);
            Some(secs)
        }
    }
}

fn main() {
    let n_elems: usize =
        std::env::var("XDAN_BENCH_ELEMS").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 24);
    let n_elems = n_elems.div_ceil(ROW).max(1) * ROW;
    #[allow(non_snake_case)]
    let N = n_elems;
    let filter: Vec<String> = std::env::args().skip(1).map(|s| s.to_uppercase()).collect();
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::MXFP4,
    ];
    #[cfg(target_arch = "x86_64")]
    let simd = xdan::quant::avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    println!("CPU: {} (one thread; AVX2 kernels {})", cpu_model(), if simd { "on" } else { "off" });
    println!("{} elements per type ({} MiB of f32), rows of {ROW}\n", N, N * 4 >> 20);
    let ggml = std::env::var("XDAN_BENCH_GGML").ok().map(|dir| match Ggml::open(&dir) {
        Ok(g) => {
            println!("peer: ggml's CPU vec_dot from {dir}");
            g
        }
        Err(e) => {
            eprintln!("XDAN_BENCH_GGML: {e}");
            std::process::exit(2);
        }
    });
    let (peer_head, peer_rule) =
        if ggml.is_some() { (" ggml dot Gelem/s | xdan / ggml |", "---|---|") } else { ("", "") };
    println!("| type | bytes/elem | dequant GB/s (f32 out) | dot GB/s (weights) | dot Gelem/s | {PROMPT} tokens G mul-add/s | scalar dot GB/s | scalar dot Gelem/s | SIMD kernel |{peer_head}");
    println!("|---|---|---|---|---|---|---|---|---|{peer_rule}");
    let x = pseudo_random(ROW, 3);
    let mut out = vec![0f32; N];
    for ty in types {
        if !filter.is_empty() && !filter.iter().any(|f| f == ty.name()) {
            continue;
        }
        let w = weights(ty, N);
        let t_deq = time(3, || dequantize(ty, &w, &mut out).unwrap());
        let mut act = Vec::new();
        quantize_act(vec_dot_type(ty), &x, &mut act).unwrap();
        let rb = ty.row_bytes(ROW as u64).unwrap() as usize;
        let mut sink = 0f32;
        let mut dots = vec![0f32; w.len() / rb];
        let mut ours = || {
            vec_dot_rows(ty, ROW, &w, &act, &mut dots);
            sink += dots[0];
        };
        // With the peer, the two alternate in rounds (best of each), so that a change of the
        // machine's speed during the run moves both.
        let mut t_dot = f64::INFINITY;
        let mut t_peer = ggml.as_ref().map(|_| f64::INFINITY);
        for _ in 0..if ggml.is_some() { 5 } else { 1 } {
            t_dot = t_dot.min(time(5, &mut ours));
            if let (Some(g), Some(tp)) = (&ggml, &mut t_peer) {
                match g.time_dot(ty, &w, rb, &x, 5) {
                    Some(t) => *tp = tp.min(t),
                    None => t_peer = None,
                }
            }
        }
        let mut acts = Vec::new();
        for k in 0..PROMPT {
            let mut a = Vec::new();
            quantize_act(vec_dot_type(ty), &pseudo_random(ROW, 10 + k as u64), &mut a).unwrap();
            acts.extend(a);
        }
        let mut prompt_out = vec![0f32; w.len() / rb * PROMPT];
        let t_prompt = time(3, || {
            vec_dot_rows_tokens(ty, ROW, &w, &acts, PROMPT, &mut prompt_out);
            sink += prompt_out[0];
        });
        let t_sc = time(2, || {
            for row in w.chunks_exact(rb) {
                sink += vec_dot_scalar(ty, ROW, row, &act);
            }
        });
        std::hint::black_box(sink);
        let peer = match (&ggml, t_peer) {
            (None, _) => String::new(),
            (Some(_), Some(t)) => format!(" {:.2} | {:.2} |", N as f64 / t / 1e9, t / t_dot),
            (Some(_), None) => " - | - |".into(),
        };
        #[cfg(target_arch = "x86_64")]
        let has = simd && xdan::quant::avx2::has_kernel(ty);
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        let gb = |bytes: usize, t: f64| bytes as f64 / t / 1e9;
        println!(
            "| {} | {:.4} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |{peer}",
            ty.name(),
            w.len() as f64 / N as f64,
            gb(N * 4, t_deq),
            gb(w.len(), t_dot),
            N as f64 / t_dot / 1e9,
            (N * PROMPT) as f64 / t_prompt / 1e9,
            gb(w.len(), t_sc),
            N as f64 / t_sc / 1e9,
            if has { "AVX2" } else { "-" },
        );
    }
}
