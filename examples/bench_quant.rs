//! Single-thread throughput of every quant type: dequantization (GB/s of f32 written) and row
//! dots (GB/s of weight bytes read, Gelem/s), dispatching (SIMD where present) and scalar.
//!
//! Weights are the real fixture blocks (`tests/data/quant/<TYPE>_real.bin`) tiled into a buffer
//! of 2^24 elements, far bigger than L2; rows of 4096 elements dotted with one activation vector.
//!
//! `cargo run --release --example bench_quant [TYPE ...]` (`XDAN_BENCH_ELEMS=n` changes the
//! buffer size, e.g. to measure in-cache kernel speed).

use std::path::PathBuf;
use std::time::Instant;
use xdan::quant::{dequantize, quantize_act, vec_dot, vec_dot_scalar, vec_dot_type, GgmlType};

const ROW: usize = 4096;

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
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant");
    let tile = match std::fs::read(dir.join(format!("{}_real.bin", ty.name()))) {
        Ok(t) => t,
        Err(_) => {
            // F32, Q8_1, Q8_K have no fixture: quantize smooth random data.
            let mut t = Vec::new();
            quantize_act(ty, &pseudo_random(1 << 16, 7), &mut t).unwrap();
            t
        }
    };
    let mut w = Vec::with_capacity(bytes);
    while w.len() < bytes {
        let k = tile.len().min(bytes - w.len());
        w.extend_from_slice(&tile[..k]);
    }
    w
}

/// Best of `reps` timings, in seconds.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
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
    println!("| type | bytes/elem | dequant GB/s (f32 out) | dot GB/s (weights) | dot Gelem/s | scalar dot GB/s | scalar dot Gelem/s | SIMD kernel |");
    println!("|---|---|---|---|---|---|---|---|");
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
        let t_dot = time(5, || {
            for row in w.chunks_exact(rb) {
                sink += vec_dot(ty, ROW, row, &act);
            }
        });
        let t_sc = time(2, || {
            for row in w.chunks_exact(rb) {
                sink += vec_dot_scalar(ty, ROW, row, &act);
            }
        });
        std::hint::black_box(sink);
        #[cfg(target_arch = "x86_64")]
        let has = simd && xdan::quant::avx2::has_kernel(ty);
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        let gb = |bytes: usize, t: f64| bytes as f64 / t / 1e9;
        println!(
            "| {} | {:.4} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            ty.name(),
            w.len() as f64 / N as f64,
            gb(N * 4, t_deq),
            gb(w.len(), t_dot),
            N as f64 / t_dot / 1e9,
            gb(w.len(), t_sc),
            N as f64 / t_sc / 1e9,
            if has { "AVX2" } else { "-" },
        );
    }
}
