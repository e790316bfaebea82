//! Engine throughput, llama-bench style: prefill of `-p N` tokens (pp N) and decode of `-n N`
//! tokens one at a time from an empty context (tg N), `-r` repetitions, mean ± sd tokens/s.
//!
//! cargo run --release --example bench_engine -- --model PATH -p 64 -n 64 -r 3 -t 2 [-d 0] [--device cpu|cuda|auto]
//!
//! `-d N` (llama-bench's `-d`) first fills the sequence with N tokens, untimed, so each test runs
//! after an N-token context ("pp64 @ d2048"): attention's share grows with the context.
//!
//! `--kv f16|f32|q8_0` (default f16, llama-bench's `-ctk`/`-ctv`) picks the KV cache type.
//!
//! `--device` (default cpu) picks where the model runs; the header names the device. On a GPU
//! the CPU columns say how much host time the launches and copies take.

use std::path::PathBuf;
use std::time::Instant;

use xdan::engine::{Context, ContextParams, Device, KvType, Model, ModelParams};

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {flag}")))
        .unwrap_or(default)
}

fn stats(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64 } else { 0.0 };
    (m, var.sqrt())
}

/// CPU time used by this process so far (user + system), seconds: on a shared machine the
/// wall-clock rate says as much about the neighbours as about the engine.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model: String = arg(&args, "--model", String::new());
    if model.is_empty() {
        eprintln!("usage: bench_engine --model PATH [-p 64] [-n 64] [-r 3] [-t 2] [-d 0] [--kv f16|f32|q8_0] [--device cpu|cuda|auto] [--cuda-device 0]");
        std::process::exit(2);
    }
    let device = match arg(&args, "--device", "cpu".to_string()).as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda,
        "auto" => Device::Auto,
        other => {
            eprintln!("--device {other}: expected cpu, cuda or auto");
            std::process::exit(2);
        }
    };
    let kv_type = match arg(&args, "--kv", "f16".to_string()).as_str() {
        "f16" => KvType::F16,
        "f32" => KvType::F32,
        "q8_0" => KvType::Q8_0,
        other => {
            eprintln!("--kv {other}: expected f16, f32 or q8_0");
            std::process::exit(2);
        }
    };
    let cuda_device: i32 = arg(&args, "--cuda-device", 0);
    let (pp, tg, reps, threads): (usize, usize, usize, usize) = (arg(&args, "-p", 64), arg(&args, "-n", 64), arg(&args, "-r", 3), arg(&args, "-t", 2));
    let depth: usize = arg(&args, "-d", 0);
    let mp = ModelParams { device, cuda_device, n_threads: threads, ..Default::default() };
    let m = Model::load(&PathBuf::from(&model), &mp, None).unwrap_or_else(|e| {
        eprintln!("{model}: {:?}: {}", e.kind, e.message);
        std::process::exit(1)
    });
    let n_vocab = m.n_vocab() as u64;
    let n_batch = pp.max(depth.min(512)).max(1);
    let cp = ContextParams { n_ctx: (depth + pp.max(tg) + 16) as u32, n_batch: n_batch as u32, n_threads: threads, kv_type, ..Default::default() };
    let mut c = Context::new(&m, &cp).unwrap_or_else(|e| {
        eprintln!("context: {:?}: {}", e.kind, e.message);
        std::process::exit(1)
    });
    let mut seed = 0x1234_5678u64;
    let mut tok = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) % n_vocab) as i32
    };
    println!("model: {model}");
    println!(
        "device: {}, machine: {} ({} logical CPUs), threads: {threads}, KV {kv_type:?}",
        m.device_name(),
        cpu_name(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("| test | t/s (mean ± sd) | reps | CPU ms per token | CPUs busy |");
    println!("|---|---:|---:|---:|---:|");
    // Warm-up (pages in the weights, sizes the buffers).
    c.step(0, &[tok()]).unwrap();
    c.seq_clear(0).unwrap();
    let at = if depth > 0 { format!(" @ d{depth}") } else { String::new() };
    // Each repetition: an empty sequence filled with `depth` tokens (untimed), then `run`, timed
    // in wall and process CPU seconds.
    let mut bench = |name: String, n_tok: usize, run: &mut dyn FnMut(&mut Context, &mut dyn FnMut() -> i32)| {
        let (mut r, mut cpu, mut wall) = (Vec::new(), 0.0, 0.0);
        for _ in 0..reps {
            c.seq_clear(0).unwrap();
            let fill: Vec<i32> = (0..depth).map(|_| tok()).collect();
            for chunk in fill.chunks(n_batch) {
                c.step(0, chunk).unwrap();
            }
            let (c0, s) = (cpu_seconds(), Instant::now());
            run(&mut c, &mut tok);
            let w = s.elapsed().as_secs_f64();
            (cpu, wall) = (cpu + cpu_seconds() - c0, wall + w);
            r.push(n_tok as f64 / w);
        }
        let (mu, sd) = stats(&r);
        println!("| {name} | {mu:.2} ± {sd:.2} | {reps} | {:.3} | {:.2} |", cpu * 1e3 / (n_tok * reps) as f64, cpu / wall);
    };
    if pp > 0 {
        bench(format!("pp{pp}{at}"), pp, &mut |c, tok| {
            let t: Vec<i32> = (0..pp).map(|_| tok()).collect();
            c.step(0, &t).unwrap();
        });
    }
    if tg > 0 {
        bench(format!("tg{tg}{at}"), tg, &mut |c, tok| {
            for _ in 0..tg {
                c.step(0, &[tok()]).unwrap();
            }
        });
    }
}
