//! Decode and prefill throughput of one model through the engine's public API, next to the
//! memory roofline of the device it ran on (scripts/gpu-check.sh runs it on a GPU machine, on
//! Mixtral-8x7B-shaped random models from examples/make_model.rs).
//!
//!   bench_gpu --model PATH [--device cuda|cpu] [-p 512] [-n 64] [-r 3] [-t THREADS]
//!             [--depth 0] [--label TEXT] [--md FILE] [--bw-mib 1024] [--budget SECONDS]
//!             [--vram-gib GIB]
//!
//! Printed: load time; pp N (one step of N prompt tokens from an empty sequence) and tg N (N
//! single-token steps from an empty sequence, or after `--depth` untimed prompt tokens, in
//! steps of 512), each over `-r` repetitions, mean ± sd tokens/s;
//! the device's copy bandwidth measured in this run (a device-to-device copy of `--bw-mib` MiB,
//! mean of 10 after a warm-up and a sync; on the CPU a parallel memcpy), counted as read + write
//! bytes (the rate the memory moves data) and as its read half; the bytes a decode step must
//! stream, from the file's tensor sizes (every non-expert matrix incl. the output head, one row
//! of token_embd, and n_expert_used/n_expert of each expert tensor); the roofline
//! = counted copy rate / bytes per token (a decode step is almost only reads of the weights,
//! which the memory serves at about the rate it serves a copy's reads plus writes); the
//! fraction of it that tg achieved. `--md FILE` appends the row to a markdown table.
//!
//! `--vram-gib` sets the model's `vram_budget`: an MoE model over it keeps some experts in host
//! memory and runs them on the CPU. The roofline then adds the time the host's memory takes to
//! stream those experts' share of a token (their bytes x n_expert_used/n_expert, at the copy
//! rate of a parallel memcpy measured in the same run) to the device's time for the rest.
//!
//! `--budget` (default 150 s, counted from the start) stops the repetitions early rather than
//! overrun a caller's time limit: after loading, prefill may take half of what is left, decode
//! the rest, and a decode repetition past it ends early (at least one step; its rate is over the
//! steps made). Exits 2 when the device is absent, 1 on any other failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use xdan::engine::{Context, ContextParams, Device, Model, ModelParams};

fn die(code: i32, msg: &str) -> ! {
    eprintln!("bench_gpu: {msg}");
    println!("FAIL {msg}");
    std::process::exit(code)
}

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    match args.iter().position(|a| a == flag) {
        None => default,
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| die(2, &format!("{flag}: missing or bad value"))),
    }
}

fn stats(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64 } else { 0.0 };
    (m, var.sqrt())
}

/// Copy bandwidth (bytes read + written per second) and a name for the device.
fn copy_bandwidth(device: Device, bytes: usize) -> (f64, String) {
    const REPS: usize = 10;
    if device == Device::Cpu {
        use rayon::prelude::*;
        let src = vec![1u8; bytes];
        let mut dst = vec![0u8; bytes];
        let chunk = (bytes / rayon::current_num_threads().max(1)).max(1 << 16);
        let copy = |dst: &mut [u8]| dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        copy(&mut dst);
        let t = Instant::now();
        for _ in 0..REPS {
            copy(&mut dst);
        }
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box(&dst);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
            .unwrap_or_else(|| "CPU".into());
        return (2.0 * (bytes * REPS) as f64 / s, cpu);
    }
    use std::sync::Arc;
    use xdan::backend::cuda::device::{DevBuf, Device as _};
    use xdan::backend::cuda::{probe, GpuDevice};
    if let Err(e) = probe() {
        die(2, &format!("no GPU: {}", e.message));
    }
    let run = || -> xdan::Result<(f64, String)> {
        let dev = Arc::new(GpuDevice::open(0)?);
        let (a, b) = (DevBuf::new(&dev, bytes)?, DevBuf::new(&dev, bytes)?);
        // SAFETY: two distinct allocations of `bytes` each.
        unsafe { dev.copy(b.ptr, a.ptr, bytes)? };
        dev.synchronize()?;
        let t = Instant::now();
        for i in 0..REPS {
            // Alternate directions so no copy can be skipped as a repeat.
            let (d, s) = if i % 2 == 0 { (a.ptr, b.ptr) } else { (b.ptr, a.ptr) };
            unsafe { dev.copy(d, s, bytes)? };
        }
        dev.synchronize()?;
        Ok((2.0 * (bytes * REPS) as f64 / t.elapsed().as_secs_f64(), dev.name()))
    };
    run().unwrap_or_else(|e| die(1, &format!("copy bandwidth: {}", e.message)))
}

/// Bytes a decode step reads from the weights (see the module comment), the file's size, and
/// the experts' part of the first.
fn bytes_per_token(m: &Model) -> (f64, f64, f64) {
    let info = m.info();
    let used = if info.n_expert > 0 { info.n_expert_used as f64 / info.n_expert as f64 } else { 1.0 };
    let (mut per_tok, mut total, mut experts) = (0f64, 0f64, 0f64);
    for t in m.gguf().tensors() {
        total += t.n_bytes as f64;
        per_tok += if t.name.contains("_exps") {
            experts += t.n_bytes as f64 * used;
            t.n_bytes as f64 * used
        } else if t.name.starts_with("token_embd") {
            t.row_bytes() as f64
        } else {
            t.n_bytes as f64
        };
    }
    (per_tok, total, experts)
}

fn append_md(path: &Path, row: &str) {
    // The header once per file, whatever text a caller put before the table.
    let new = !std::fs::read_to_string(path).map(|s| s.contains("| device |")).unwrap_or(false);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap_or_else(|e| die(1, &format!("{}: {e}", path.display())));
    if new {
        let _ = writeln!(
            f,
            "| device | model | size GB | copy GB/s (r+w) | GB read per token | pp t/s | tg t/s | roofline t/s | % of roofline |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
        );
    }
    let _ = writeln!(f, "{row}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(arg(&args, "--model", String::new()));
    if model.as_os_str().is_empty() {
        die(2, "usage: bench_gpu --model PATH [--device cuda|cpu] [-p 512] [-n 64] [-r 3] [-t N] [--label TEXT] [--md FILE]");
    }
    let device = match arg(&args, "--device", "cuda".to_string()).as_str() {
        "cuda" => Device::Cuda,
        "cpu" => Device::Cpu,
        d => die(2, &format!("--device {d}: cuda or cpu")),
    };
    let (pp, tg, reps, threads): (usize, usize, usize, usize) = (arg(&args, "-p", 512), arg(&args, "-n", 64), arg(&args, "-r", 3).max(1), arg(&args, "-t", 0));
    let budget: f64 = arg(&args, "--budget", 150.0);
    let label: String = arg(&args, "--label", model.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    let md: String = arg(&args, "--md", String::new());
    let bw_bytes = arg::<usize>(&args, "--bw-mib", 1024).max(1) << 20;
    let depth: usize = arg(&args, "--depth", 0);
    let vram_budget = (arg::<f64>(&args, "--vram-gib", 0.0) * (1u64 << 30) as f64) as u64;
    let start = Instant::now();

    let (bw, dev_name) = copy_bandwidth(device, bw_bytes);
    println!("device: {dev_name}");
    println!("copy bandwidth: {:.1} GB/s counted read+write, {:.1} GB/s read half ({} MiB copies)", bw / 1e9, bw / 2e9, bw_bytes >> 20);

    let t = Instant::now();
    let m = Model::load(&model, &ModelParams { device, n_threads: threads, vram_budget, ..Default::default() }, None)
        .unwrap_or_else(|e| die(if e.kind == xdan::ErrorKind::Device { 2 } else { 1 }, &format!("{}: {}", model.display(), e.message)));
    println!("load: {:.1} s ({}) on {}", t.elapsed().as_secs_f64(), model.display(), m.device_name());
    let (per_tok, total, experts_per_tok) = bytes_per_token(&m);
    let info = m.info();
    // Experts in host memory (the device name says how many): their share streams from there.
    let n_host: f64 = m.device_name().split_once(" + cpu (").and_then(|(_, r)| r.split(' ').next()?.parse().ok()).unwrap_or(0.0);
    let n_experts = info.n_layer as f64 * info.n_expert.max(1) as f64;
    let host_per_tok = experts_per_tok * n_host / n_experts;
    let (host_bw, dev_name) = if n_host > 0.0 {
        let (hb, cpu) = copy_bandwidth(Device::Cpu, bw_bytes);
        println!("host copy bandwidth: {:.1} GB/s counted read+write ({cpu})", hb / 1e9);
        (hb, format!("{dev_name} + {cpu}"))
    } else {
        (f64::INFINITY, dev_name)
    };
    let roofline = 1.0 / ((per_tok - host_per_tok) / bw + host_per_tok / host_bw);
    println!(
        "model: {:.2} GB in the file, {:.3} GB read per decode token ({:.3} of them from host memory); roofline {:.1} tok/s",
        total / 1e9,
        per_tok / 1e9,
        host_per_tok / 1e9,
        roofline,
    );

    let n_vocab = m.n_vocab() as u64;
    const DEPTH_STEP: usize = 512;
    let cp = ContextParams {
        n_ctx: (pp.max(depth) + tg + 16) as u32,
        n_batch: pp.max(depth.min(DEPTH_STEP)).max(1) as u32,
        n_threads: threads,
        ..Default::default()
    };
    let mut c = Context::new(&m, &cp).unwrap_or_else(|e| die(1, &format!("context: {}", e.message)));
    let mut seed = 0x1234_5678u64;
    let mut tok = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (3 + (seed >> 33) % (n_vocab - 3)) as i32
    };
    let fail = |what: &str, e: xdan::Error| -> ! { die(1, &format!("{what}: {}", e.message)) };
    // Warm-up of both paths (prefill and decode): first launches, module loads, buffer sizing.
    let warm: Vec<i32> = (0..pp.clamp(1, 32)).map(|_| tok()).collect();
    c.step(0, &warm).unwrap_or_else(|e| fail("warm-up prefill", e));
    c.step(0, &[tok()]).unwrap_or_else(|e| fail("warm-up step", e));
    c.seq_clear(0).unwrap_or_else(|e| fail("clear", e));
    // What is left of the budget after loading: half for prefill, the rest for decode.
    let left = |t0: &Instant| budget - t0.elapsed().as_secs_f64();
    let pp_until = left(&start) / 2.0;

    let mut pp_rate = (f64::NAN, 0.0);
    if pp > 0 {
        let (mut r, t0) = (Vec::new(), Instant::now());
        while r.len() < reps && (r.is_empty() || t0.elapsed().as_secs_f64() < pp_until) {
            let toks: Vec<i32> = (0..pp).map(|_| tok()).collect();
            c.seq_clear(0).unwrap_or_else(|e| fail("clear", e));
            let s = Instant::now();
            c.step(0, &toks).unwrap_or_else(|e| fail("prefill", e));
            r.push(pp as f64 / s.elapsed().as_secs_f64());
        }
        pp_rate = stats(&r);
        println!("pp{pp}: {:.1} ± {:.1} tok/s ({} reps)", pp_rate.0, pp_rate.1, r.len());
    }
    let mut tg_rate = (f64::NAN, 0.0);
    if tg > 0 {
        let mut r = Vec::new();
        while r.len() < reps && (r.is_empty() || left(&start) > 0.0) {
            c.seq_clear(0).unwrap_or_else(|e| fail("clear", e));
            for at in (0..depth).step_by(DEPTH_STEP) {
                let toks: Vec<i32> = (at..depth.min(at + DEPTH_STEP)).map(|_| tok()).collect();
                c.step(0, &toks).unwrap_or_else(|e| fail("context before decode", e));
            }
            let s = Instant::now();
            let mut done = 0;
            // Past the budget a repetition ends early: the rate over the steps it made.
            while done < tg && (done == 0 || left(&start) > 0.0) {
                c.step(0, &[tok()]).unwrap_or_else(|e| fail("decode", e));
                done += 1;
            }
            if done < tg {
                println!("tg: budget reached after {done} of {tg} steps");
            }
            r.push(done as f64 / s.elapsed().as_secs_f64());
        }
        tg_rate = stats(&r);
        let at = if depth > 0 { format!(" after {depth} tokens") } else { String::new() };
        println!("tg{tg}{at}: {:.1} ± {:.1} tok/s ({} reps)", tg_rate.0, tg_rate.1, r.len());
    }
    let logits = c.logits(0).unwrap_or_else(|e| fail("logits", e));
    if !logits.iter().all(|v| v.is_finite()) {
        die(1, "non-finite logits after decoding");
    }
    if let Some(t) = m.expert_traffic() {
        let all = (t.device_slots + t.host_slots).max(1);
        println!(
            "routed expert slots of the layers with host experts: {:.1}% on the device ({} of {}; the placement alone holds {:.1}% of the experts), {} experts moved to the device by the routing",
            100.0 * t.device_slots as f64 / all as f64,
            t.device_slots,
            all,
            100.0 * (1.0 - n_host / n_experts),
            t.moves
        );
    }
    let frac = tg_rate.0 / roofline;
    println!("decode at {:.1}% of the roofline; total {:.1} s", 100.0 * frac, start.elapsed().as_secs_f64());
    let row = format!(
        "| {dev_name} | {label} | {:.2} | {:.0} | {:.3} | {:.1} ± {:.1} | {:.1} ± {:.1} | {:.0} | {:.1}% |",
        total / 1e9,
        bw / 1e9,
        per_tok / 1e9,
        pp_rate.0,
        pp_rate.1,
        tg_rate.0,
        tg_rate.1,
        roofline,
        100.0 * frac
    );
    println!("{row}");
    if !md.is_empty() {
        append_md(Path::new(&md), &row);
    }
}
